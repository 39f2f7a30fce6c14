package nat_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/snowgate/snowgate/gateway/nat"
	"github.com/snowgate/snowgate/internal/ippacket"
	ipt "github.com/snowgate/snowgate/internal/ippacket/ippackettest"
)

// fuzzTable returns a table with one client, two domains sharing a real IP
// and a live session of every kind and family (ports 1000, and 1000 again to
// the other domain so that one is rewritten), plus those sessions' packets.
func fuzzTable(t testing.TB) (*nat.Table, [][]byte) {
	tb := newTable(t, nat.Config{MaxSessionsPerClient: 64})
	configure(t, tb, "a.example", []netip.Addr{pA4a, pA6a}, []netip.Addr{r4a, r6a}, t0)
	configure(t, tb, "b.example", []netip.Addr{pB4a, pB6a}, []netip.Addr{r4a, r6a}, t0)
	var out [][]byte
	for _, k := range kinds {
		for _, proxy := range []netip.Addr{pA4a, pB4a, pA6a, pB6a} {
			p := k.out(clientOf(proxy), proxy, 1000)
			if v, err := tb.TranslateOutgoing(p, t0); v != nat.Translated {
				t.Fatal(v, err)
			}
			out = append(out, p)
		}
	}
	return tb, out
}

func FuzzTranslate(f *testing.F) {
	_, translated := fuzzTable(f)
	for _, k := range kinds {
		f.Add(k.out(cV4, pA4a, 1000), false, uint8(0))
		f.Add(k.out(cV6, pB6a, 1000), false, uint8(1))
		f.Add(k.out(cV4, pA4b, 7), false, uint8(2))
		f.Add(k.reply(r4a, cV4, 1000), true, uint8(0))
		f.Add(k.reply(r6a, cV6, 1001), true, uint8(3))
	}
	for _, p := range translated {
		router := router4
		if p[0]>>4 == 6 {
			router = router6
		}
		f.Add(ipt.Unreachable(router, clientOf(router), p), true, uint8(0))
		f.Add(ipt.Unreachable(router, clientOf(router), p[:ipHeaderLen(p)+8]), true, uint8(200))
	}
	f.Add([]byte{}, false, uint8(0))
	f.Add([]byte{0x45}, true, uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, incoming bool, step uint8) {
		tb, _ := fuzzTable(t)
		now := t0.Add(time.Duration(step) * time.Second)
		for _, in := range []bool{incoming, !incoming} {
			buf := append([]byte(nil), data...)
			var v nat.Verdict
			var err error
			if in {
				v, err = tb.TranslateIncoming(buf, now)
			} else {
				v, err = tb.TranslateOutgoing(buf, now)
			}
			switch v {
			case nat.Translated, nat.NotNAT:
				if err != nil {
					t.Fatalf("%v with error %v", v, err)
				}
			case nat.Drop, nat.Unreachable:
				if err == nil {
					t.Fatalf("%v without error", v)
				}
			default:
				t.Fatalf("verdict %v", v)
			}
			if v == nat.NotNAT && string(buf) != string(data) {
				t.Fatal("NotNAT packet was modified")
			}
			if v == nat.Translated {
				p, err := ippacket.Parse(buf)
				if err != nil {
					t.Fatalf("translated packet does not parse: %v", err)
				}
				if !in && (p.Dst() == pA4a || p.Dst() == pB4a || p.Dst() == pA6a || p.Dst() == pB6a) {
					t.Fatalf("outgoing still to proxy %v", p.Dst())
				}
				if in && p.Src() != pA4a && p.Src() != pB4a && p.Src() != pA6a && p.Src() != pB6a {
					t.Fatalf("incoming from %v, not a proxy IP", p.Src())
				}
			}
			tb.HandleTimeout(now.Add(time.Duration(step) * time.Minute))
		}
		if s := tb.Stats(); s.Sessions > 64 {
			t.Fatalf("over limit: %+v", s)
		}
	})
}
