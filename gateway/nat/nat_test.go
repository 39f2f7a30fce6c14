package nat_test

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/snowgate/snowgate/gateway/nat"
	"github.com/snowgate/snowgate/internal/ippacket"
	ipt "github.com/snowgate/snowgate/internal/ippacket/ippackettest"
)

var (
	t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

	cV4 = netip.MustParseAddr("100.64.0.1")
	cV6 = netip.MustParseAddr("fd00:2021:1111::1")

	pA4a = netip.MustParseAddr("100.96.0.1")
	pA4b = netip.MustParseAddr("100.96.0.2")
	pA6a = netip.MustParseAddr("fd00:2021:1111:8000::1")
	pA6b = netip.MustParseAddr("fd00:2021:1111:8000::2")
	pB4a = netip.MustParseAddr("100.96.0.3")
	pB6a = netip.MustParseAddr("fd00:2021:1111:8000::3")

	r4a = netip.MustParseAddr("198.18.0.1")
	r4b = netip.MustParseAddr("198.18.0.2")
	r6a = netip.MustParseAddr("2001:db8::1")

	router4 = netip.MustParseAddr("198.18.0.254")
	router6 = netip.MustParseAddr("2001:db8::fe")
)

// kind builds the client's packet and the resource's reply of one protocol.
type kind struct {
	name  string
	out   func(src, dst netip.Addr, id uint16) []byte
	reply func(src, dst netip.Addr, id uint16) []byte
}

var kinds = []kind{
	{"udp",
		func(s, d netip.Addr, id uint16) []byte {
			return ipt.UDP(netip.AddrPortFrom(s, id), netip.AddrPortFrom(d, 53), []byte("query"))
		},
		func(s, d netip.Addr, id uint16) []byte {
			return ipt.UDP(netip.AddrPortFrom(s, 53), netip.AddrPortFrom(d, id), []byte("answer"))
		}},
	{"tcp",
		func(s, d netip.Addr, id uint16) []byte {
			return ipt.TCP(netip.AddrPortFrom(s, id), netip.AddrPortFrom(d, 443), 1000, 2000, ipt.ACK, []byte("GET"))
		},
		func(s, d netip.Addr, id uint16) []byte {
			return ipt.TCP(netip.AddrPortFrom(s, 443), netip.AddrPortFrom(d, id), 1000, 2000, ipt.ACK, []byte("200"))
		}},
	{"echo",
		func(s, d netip.Addr, id uint16) []byte { return ipt.Echo(s, d, id, 7, []byte("ping")) },
		func(s, d netip.Addr, id uint16) []byte { return ipt.EchoReply(s, d, id, 7, []byte("ping")) }},
}

func newTable(t testing.TB, cfg nat.Config) *nat.Table {
	t.Helper()
	tb, err := nat.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := tb.AddClient(nat.ClientIPs{V4: cV4, V6: cV6}); err != nil {
		t.Fatal(err)
	}
	return tb
}

func configure(t testing.TB, tb *nat.Table, domain string, proxies, reals []netip.Addr, now time.Time) nat.Setup {
	t.Helper()
	s, err := tb.Configure(cV6, nat.Assignment{Resource: "res-" + domain, Domain: domain, ProxyIPs: proxies, RealIPs: reals}, now)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func clientOf(a netip.Addr) netip.Addr {
	if a.Is4() {
		return cV4
	}
	return cV6
}

func mustVerdict(t *testing.T, what string, got nat.Verdict, err error, want nat.Verdict, wantErr error) {
	t.Helper()
	if got != want || (wantErr == nil && err != nil) || (wantErr != nil && !errors.Is(err, wantErr)) {
		t.Fatalf("%s: verdict %v, %v; want %v, %v", what, got, err, want, wantErr)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, k := range kinds {
		for _, proxy := range []netip.Addr{pA4a, pA6a} {
			t.Run(k.name+"/"+proxy.String(), func(t *testing.T) {
				tb := newTable(t, nat.Config{})
				configure(t, tb, "a.example", []netip.Addr{pA4a, pA6a}, []netip.Addr{r4a, r6a}, t0)
				real, cl := r4a, cV4
				if proxy.Is6() {
					real, cl = r6a, cV6
				}
				pkt := k.out(cl, proxy, 40000)
				v, err := tb.TranslateOutgoing(pkt, t0)
				mustVerdict(t, "outgoing", v, err, nat.Translated, nil)
				if err := ipt.Verify(pkt); err != nil {
					t.Fatalf("outgoing checksums: %v", err)
				}
				src, dst, sport, _ := flowID(pkt)
				if src != cl || dst != real || sport != 40000 {
					t.Fatalf("outgoing = %v:%d → %v, want %v:40000 → %v", src, sport, dst, cl, real)
				}
				rep := k.reply(real, cl, 40000)
				v, err = tb.TranslateIncoming(rep, t0.Add(time.Second))
				mustVerdict(t, "incoming", v, err, nat.Translated, nil)
				if err := ipt.Verify(rep); err != nil {
					t.Fatalf("incoming checksums: %v", err)
				}
				src, dst, _, dport := flowID(rep)
				if src != proxy || dst != cl || dport != 40000 {
					t.Fatalf("incoming = %v → %v:%d, want %v → %v:40000", src, dst, dport, proxy, cl)
				}
			})
		}
	}
}

// Two proxy IPs of different domains resolve to the same real IP, and the
// client uses the same source port (or echo id) to both: the second flow gets
// another port so that replies map back to the right proxy IP.
func TestSharedRealIPRewritesPort(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			tb := newTable(t, nat.Config{})
			configure(t, tb, "a.example", []netip.Addr{pA4a}, []netip.Addr{r4a}, t0)
			configure(t, tb, "b.example", []netip.Addr{pB4a}, []netip.Addr{r4a}, t0)
			p1, p2 := k.out(cV4, pA4a, 5000), k.out(cV4, pB4a, 5000)
			for _, p := range [][]byte{p1, p2} {
				v, err := tb.TranslateOutgoing(p, t0)
				mustVerdict(t, "outgoing", v, err, nat.Translated, nil)
				if err := ipt.Verify(p); err != nil {
					t.Fatal(err)
				}
			}
			_, d1, s1, _ := flowID(p1)
			_, d2, s2, _ := flowID(p2)
			if d1 != r4a || d2 != r4a || s1 != 5000 || s2 == 5000 {
				t.Fatalf("outside ports %d, %d to %v %v: want 5000 and another", s1, s2, d1, d2)
			}
			for _, c := range []struct {
				port  uint16
				proxy netip.Addr
			}{{s1, pA4a}, {s2, pB4a}} {
				rep := k.reply(r4a, cV4, c.port)
				v, err := tb.TranslateIncoming(rep, t0)
				mustVerdict(t, "incoming", v, err, nat.Translated, nil)
				if err := ipt.Verify(rep); err != nil {
					t.Fatal(err)
				}
				src, _, _, dport := flowID(rep)
				if src != c.proxy || dport != 5000 {
					t.Fatalf("reply to %d → from %v port %d, want %v port 5000", c.port, src, dport, c.proxy)
				}
			}
			// The same flow again keeps its outside port.
			p3 := k.out(cV4, pB4a, 5000)
			if v, err := tb.TranslateOutgoing(p3, t0); v != nat.Translated {
				t.Fatal(v, err)
			}
			if _, _, s3, _ := flowID(p3); s3 != s2 {
				t.Fatalf("second packet of flow got port %d, want %d", s3, s2)
			}
		})
	}
}

func TestICMPErrorTranslated(t *testing.T) {
	for _, k := range kinds {
		for _, fam := range []struct {
			cl, proxy, other, real, router netip.Addr
		}{{cV4, pA4a, pB4a, r4a, router4}, {cV6, pA6a, pB6a, r6a, router6}} {
			t.Run(k.name+"/"+fam.proxy.String(), func(t *testing.T) {
				tb := newTable(t, nat.Config{})
				configure(t, tb, "a.example", []netip.Addr{fam.proxy}, []netip.Addr{fam.real}, t0)
				configure(t, tb, "b.example", []netip.Addr{fam.other}, []netip.Addr{fam.real}, t0)
				// The first flow holds port 6000 so the second is rewritten.
				if v, err := tb.TranslateOutgoing(k.out(fam.cl, fam.other, 6000), t0); v != nat.Translated {
					t.Fatal(v, err)
				}
				pkt := k.out(fam.cl, fam.proxy, 6000)
				if v, err := tb.TranslateOutgoing(pkt, t0); v != nat.Translated {
					t.Fatal(v, err)
				}
				_, _, outPort, _ := flowID(pkt)
				for _, quoteLen := range []int{len(pkt), ipHeaderLen(pkt) + 8} {
					q := append([]byte(nil), pkt[:quoteLen]...)
					icmpErr := ipt.Unreachable(fam.router, fam.cl, q)
					v, err := tb.TranslateIncoming(icmpErr, t0)
					mustVerdict(t, "icmp error", v, err, nat.Translated, nil)
					if err := ipt.Verify(icmpErr); err != nil {
						t.Fatalf("quote %d bytes: %v", quoteLen, err)
					}
					outer, err := ippacket.Parse(icmpErr)
					if err != nil {
						t.Fatal(err)
					}
					quoted, err := outer.Quoted()
					if err != nil {
						t.Fatal(err)
					}
					if outer.Src() != fam.proxy || outer.Dst() != fam.cl {
						t.Fatalf("outer %v → %v, want %v → %v", outer.Src(), outer.Dst(), fam.proxy, fam.cl)
					}
					var qport uint16
					if s, _, err := quoted.Ports(); err == nil {
						qport = s
					} else if qport, err = quoted.EchoID(); err != nil {
						t.Fatal(err)
					}
					if quoted.Src() != fam.cl || quoted.Dst() != fam.proxy || qport != 6000 {
						t.Fatalf("quote %v:%d → %v, want %v:6000 → %v (outside port was %d)",
							quoted.Src(), qport, quoted.Dst(), fam.cl, fam.proxy, outPort)
					}
				}
				// An error about a flow the NAT never saw is not NAT traffic.
				stranger := k.out(fam.cl, fam.real, 9999)
				v, err := tb.TranslateIncoming(ipt.Unreachable(fam.router, fam.cl, stranger), t0)
				mustVerdict(t, "unrelated icmp error", v, err, nat.NotNAT, nil)
			})
		}
	}
}

func ipHeaderLen(b []byte) int {
	p, err := ippacket.Parse(b)
	if err != nil {
		panic(err)
	}
	return p.HeaderLen()
}

func TestVerdicts(t *testing.T) {
	tb := newTable(t, nat.Config{})
	setup := configure(t, tb, "a.example", []netip.Addr{pA4a, pA4b, pA6a, pA6b}, []netip.Addr{r4a}, t0)
	if got := setup.Unreachable(); len(got) != 2 || got[0] != pA6a || got[1] != pA6b {
		t.Fatalf("Unreachable() = %v, want the IPv6 proxy IPs", got)
	}
	gre := ipt.IP(cV4, pA4a, 47, make([]byte, 8))
	frag := ipt.UDP(netip.AddrPortFrom(cV4, 1), netip.AddrPortFrom(pA4a, 2), nil)
	header.IPv4(frag).SetFlagsFragmentOffset(0, 64)
	header.IPv4(frag).SetChecksum(0)
	header.IPv4(frag).SetChecksum(^header.IPv4(frag).CalculateChecksum())
	tests := []struct {
		name    string
		pkt     []byte
		in      bool
		want    nat.Verdict
		wantErr error
	}{
		{"v4 to mapped proxy", ipt.UDP(netip.AddrPortFrom(cV4, 1), netip.AddrPortFrom(pA4b, 53), nil), false, nat.Translated, nil},
		{"v6 proxy without AAAA", ipt.UDP(netip.AddrPortFrom(cV6, 1), netip.AddrPortFrom(pA6a, 53), nil), false, nat.Unreachable, nat.ErrNoRealIP},
		{"unassigned proxy", ipt.UDP(netip.AddrPortFrom(cV4, 1), netip.AddrPortFrom(pB4a, 53), nil), false, nat.Unreachable, nat.ErrNoTranslation},
		{"not a proxy IP", ipt.UDP(netip.AddrPortFrom(cV4, 1), netip.AddrPortFrom(r4b, 53), nil), false, nat.NotNAT, nil},
		{"spoofed source", ipt.UDP(netip.MustParseAddrPort("100.64.0.99:1"), netip.AddrPortFrom(pA4a, 53), nil), false, nat.Drop, nat.ErrUnknownClient},
		{"other protocol", gre, false, nat.Drop, nat.ErrUnsupportedProtocol},
		{"echo reply to proxy", ipt.EchoReply(cV4, pA4a, 1, 1, []byte("ping")), false, nat.Drop, nat.ErrUnsupportedProtocol},
		{"non-first fragment", frag, false, nat.Drop, nat.ErrUnsupportedProtocol},
		{"garbage out", []byte{0x45, 1, 2}, false, nat.Drop, nat.ErrMalformed},
		{"garbage in", []byte{0x60}, true, nat.Drop, nat.ErrMalformed},
		{"reply without session", ipt.UDP(netip.AddrPortFrom(r4a, 53), netip.AddrPortFrom(cV4, 1234), nil), true, nat.NotNAT, nil},
		{"to unknown client", ipt.UDP(netip.AddrPortFrom(r4a, 53), netip.MustParseAddrPort("100.64.0.99:1"), nil), true, nat.NotNAT, nil},
		{"echo request to client", ipt.Echo(r4a, cV4, 1, 1, []byte("ping")), true, nat.NotNAT, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var v nat.Verdict
			var err error
			if tt.in {
				v, err = tb.TranslateIncoming(tt.pkt, t0)
			} else {
				v, err = tb.TranslateOutgoing(tt.pkt, t0)
			}
			mustVerdict(t, tt.name, v, err, tt.want, tt.wantErr)
		})
	}
}

func TestRoundRobin(t *testing.T) {
	tb := newTable(t, nat.Config{})
	s := configure(t, tb, "a.example",
		[]netip.Addr{pA6b, pA4b, pA4a, pA6a, netip.MustParseAddr("100.96.0.9")},
		[]netip.Addr{r4b, r6a, r4a, r4a}, t0)
	want := []nat.Mapping{
		{Proxy: pA4a, Real: r4a}, {Proxy: pA4b, Real: r4b}, {Proxy: netip.MustParseAddr("100.96.0.9"), Real: r4a},
		{Proxy: pA6a, Real: r6a}, {Proxy: pA6b, Real: r6a},
	}
	if len(s.Mappings) != len(want) {
		t.Fatalf("mappings %v, want %v", s.Mappings, want)
	}
	for i := range want {
		if s.Mappings[i] != want[i] {
			t.Fatalf("mappings %v, want %v", s.Mappings, want)
		}
	}
}

func TestConfigureErrors(t *testing.T) {
	tb := newTable(t, nat.Config{MaxProxyIPsPerClient: 4})
	if _, err := tb.Configure(cV6, nat.Assignment{Domain: "x", ProxyIPs: []netip.Addr{r4a}}, t0); !errors.Is(err, nat.ErrNotProxyIP) {
		t.Fatalf("non-proxy IP: %v", err)
	}
	if _, err := tb.Configure(netip.MustParseAddr("fd00:2021:1111::99"), nat.Assignment{}, t0); !errors.Is(err, nat.ErrUnknownClient) {
		t.Fatalf("unknown client: %v", err)
	}
	configure(t, tb, "a.example", []netip.Addr{pA4a, pA4b, pA6a, pA6b}, nil, t0)
	if _, err := tb.Configure(cV4, nat.Assignment{Domain: "b", ProxyIPs: []netip.Addr{pB4a}}, t0); !errors.Is(err, nat.ErrTooManyProxyIPs) {
		t.Fatalf("over limit: %v", err)
	}
	// Re-configuring the same proxy IPs does not count twice.
	configure(t, tb, "a.example", []netip.Addr{pA4a, pA4b, pA6a, pA6b}, []netip.Addr{r4a}, t0)
	if _, err := nat.New(nat.Config{MaxSessionsPerClient: -1}); !errors.Is(err, nat.ErrInvalidConfig) {
		t.Fatalf("negative limit: %v", err)
	}
	if err := tb.AddClient(nat.ClientIPs{V4: cV4, V6: netip.MustParseAddr("fd00:2021:1111::5")}); !errors.Is(err, nat.ErrInvalidConfig) {
		t.Fatalf("address reuse: %v", err)
	}
	if err := tb.AddClient(nat.ClientIPs{V4: cV4, V6: cV6}); err != nil {
		t.Fatalf("same client again: %v", err)
	}
	if err := tb.AddClient(nat.ClientIPs{}); !errors.Is(err, nat.ErrInvalidConfig) {
		t.Fatalf("no address: %v", err)
	}
}

func sendUDP(t *testing.T, tb *nat.Table, proxy netip.Addr, port uint16, now time.Time) (nat.Verdict, error) {
	t.Helper()
	return tb.TranslateOutgoing(ipt.UDP(netip.AddrPortFrom(clientOf(proxy), port), netip.AddrPortFrom(proxy, 53), nil), now)
}

func replyUDP(tb *nat.Table, real netip.Addr, port uint16, now time.Time) ([]byte, nat.Verdict, error) {
	p := ipt.UDP(netip.AddrPortFrom(real, 53), netip.AddrPortFrom(clientOf(real), port), nil)
	v, err := tb.TranslateIncoming(p, now)
	return p, v, err
}

func TestExpiry(t *testing.T) {
	t.Run("udp confirmed", func(t *testing.T) {
		tb := newTable(t, nat.Config{})
		configure(t, tb, "a.example", []netip.Addr{pA4a}, []netip.Addr{r4a}, t0)
		if _, ok := tb.PollTimeout(); ok {
			t.Fatal("timeout without sessions")
		}
		sendUDP(t, tb, pA4a, 1000, t0)
		if at, ok := tb.PollTimeout(); !ok || !at.Equal(t0.Add(nat.UnconfirmedTTL)) {
			t.Fatalf("PollTimeout = %v %v, want unconfirmed deadline", at, ok)
		}
		reply := t0.Add(10 * time.Second)
		if _, v, err := replyUDP(tb, r4a, 1000, reply); v != nat.Translated {
			t.Fatal(v, err)
		}
		// The poll deadline is a lower bound; handling it reschedules.
		at, _ := tb.PollTimeout()
		tb.HandleTimeout(at)
		if at, ok := tb.PollTimeout(); !ok || !at.Equal(reply.Add(nat.UDPTTL)) {
			t.Fatalf("PollTimeout = %v %v, want %v", at, ok, reply.Add(nat.UDPTTL))
		}
		tb.HandleTimeout(reply.Add(nat.UDPTTL - time.Nanosecond))
		if tb.Stats().Sessions != 1 {
			t.Fatal("expired early")
		}
		tb.HandleTimeout(reply.Add(nat.UDPTTL))
		if s := tb.Stats(); s.Sessions != 0 {
			t.Fatalf("not expired: %+v", s)
		}
		_, v, err := replyUDP(tb, r4a, 1000, reply.Add(nat.UDPTTL))
		mustVerdict(t, "late reply", v, err, nat.Drop, nat.ErrExpiredSession)
	})
	t.Run("unconfirmed", func(t *testing.T) {
		tb := newTable(t, nat.Config{})
		configure(t, tb, "a.example", []netip.Addr{pA4a}, []netip.Addr{r4a}, t0)
		sendUDP(t, tb, pA4a, 1000, t0)
		sendUDP(t, tb, pA4a, 1000, t0.Add(30*time.Second)) // refreshes
		tb.HandleTimeout(t0.Add(89 * time.Second))
		if tb.Stats().Sessions != 1 {
			t.Fatal("expired early")
		}
		// Lazily expired on lookup, without HandleTimeout.
		_, v, err := replyUDP(tb, r4a, 1000, t0.Add(90*time.Second))
		mustVerdict(t, "reply after unconfirmed TTL", v, err, nat.Drop, nat.ErrExpiredSession)
	})
	t.Run("tcp ttl, fin, rst", func(t *testing.T) {
		tb := newTable(t, nat.Config{})
		configure(t, tb, "a.example", []netip.Addr{pA4a}, []netip.Addr{r4a}, t0)
		out := func(port uint16, flags ipt.TCPFlags, now time.Time) {
			p := ipt.TCP(netip.AddrPortFrom(cV4, port), netip.AddrPortFrom(pA4a, 443), 1000, 2000, flags, nil)
			if v, err := tb.TranslateOutgoing(p, now); v != nat.Translated {
				t.Fatal(v, err)
			}
		}
		in := func(port uint16, flags ipt.TCPFlags, now time.Time) nat.Verdict {
			p := ipt.TCP(netip.AddrPortFrom(r4a, 443), netip.AddrPortFrom(cV4, port), 1000, 2000, flags, nil)
			v, _ := tb.TranslateIncoming(p, now)
			return v
		}
		out(1, ipt.SYN, t0)
		in(1, ipt.SYN|ipt.ACK, t0)
		out(2, ipt.SYN, t0)
		in(2, ipt.SYN|ipt.ACK, t0)
		out(3, ipt.SYN, t0)
		in(3, ipt.SYN|ipt.ACK, t0)
		out(2, ipt.FIN|ipt.ACK, t0.Add(time.Second))
		in(2, ipt.FIN|ipt.ACK, t0.Add(2*time.Second))
		in(3, ipt.RST, t0.Add(3*time.Second))
		if at, _ := tb.PollTimeout(); !at.Equal(t0.Add(3 * time.Second)) {
			t.Fatalf("PollTimeout after RST = %v", at)
		}
		tb.HandleTimeout(t0.Add(3 * time.Second))
		if s := tb.Stats(); s.Sessions != 2 {
			t.Fatalf("after RST: %+v", s)
		}
		// A RST right after a scan is collected one scan interval later; the
		// flow is dead for lookups at once.
		out(4, ipt.SYN, t0.Add(3*time.Second))
		out(4, ipt.RST, t0.Add(3*time.Second+100*time.Millisecond))
		if at, _ := tb.PollTimeout(); !at.Equal(t0.Add(4 * time.Second)) {
			t.Fatalf("PollTimeout after second RST = %v", at)
		}
		if v := in(4, ipt.ACK, t0.Add(3*time.Second+200*time.Millisecond)); v == nat.Translated {
			t.Fatal("reply after RST translated")
		}
		tb.HandleTimeout(t0.Add(4 * time.Second))
		tb.HandleTimeout(t0.Add(7 * time.Second))
		if s := tb.Stats(); s.Sessions != 1 {
			t.Fatalf("after FIN linger: %+v", s)
		}
		if v := in(1, ipt.ACK, t0.Add(nat.TCPTTL-time.Second)); v != nat.Translated {
			t.Fatalf("TCP flow dead before %v: %v", nat.TCPTTL, v)
		}
		tb.HandleTimeout(t0.Add(2 * nat.TCPTTL))
		if s := tb.Stats(); s.Sessions != 0 {
			t.Fatalf("after TCP TTL: %+v", s)
		}
	})
}

func TestTableFull(t *testing.T) {
	tb := newTable(t, nat.Config{MaxSessionsPerClient: 2})
	configure(t, tb, "a.example", []netip.Addr{pA4a}, []netip.Addr{r4a}, t0)
	for port := uint16(1); port <= 2; port++ {
		if v, err := sendUDP(t, tb, pA4a, port, t0); v != nat.Translated {
			t.Fatal(v, err)
		}
	}
	v, err := sendUDP(t, tb, pA4a, 3, t0)
	mustVerdict(t, "third flow", v, err, nat.Drop, nat.ErrTableFull)
	// Existing flows still work.
	if v, err := sendUDP(t, tb, pA4a, 1, t0.Add(time.Second)); v != nat.Translated {
		t.Fatal(v, err)
	}
	// Once the old flows expired, a new one fits without HandleTimeout.
	if v, err := sendUDP(t, tb, pA4a, 3, t0.Add(2*time.Minute)); v != nat.Translated {
		t.Fatal(v, err)
	}
	if s := tb.Stats(); s.Sessions > 2 {
		t.Fatalf("over limit: %+v", s)
	}
}

func TestReconfigure(t *testing.T) {
	tb := newTable(t, nat.Config{})
	configure(t, tb, "a.example", []netip.Addr{pA4a}, []netip.Addr{r4a}, t0)
	pkt := ipt.UDP(netip.AddrPortFrom(cV4, 1000), netip.AddrPortFrom(pA4a, 53), nil)
	tb.TranslateOutgoing(pkt, t0)
	// Re-resolution gives another real IP: the old flow keeps its real IP,
	// a new flow takes the new one.
	configure(t, tb, "a.example", []netip.Addr{pA4a}, []netip.Addr{r4b}, t0)
	for _, c := range []struct {
		port uint16
		real netip.Addr
	}{{1000, r4a}, {1001, r4b}} {
		p := ipt.UDP(netip.AddrPortFrom(cV4, c.port), netip.AddrPortFrom(pA4a, 53), nil)
		if v, err := tb.TranslateOutgoing(p, t0); v != nat.Translated {
			t.Fatal(v, err)
		}
		if _, dst, _, _ := flowID(p); dst != c.real {
			t.Fatalf("port %d → %v, want %v", c.port, dst, c.real)
		}
		if rep, v, err := replyUDP(tb, c.real, c.port, t0); v != nat.Translated {
			t.Fatal(v, err)
		} else if src, _, _, _ := flowID(rep); src != pA4a {
			t.Fatalf("reply from %v", src)
		}
	}
	// The client re-assigns the proxy IP to another domain: its sessions go.
	configure(t, tb, "b.example", []netip.Addr{pA4a}, []netip.Addr{r4a}, t0)
	if s := tb.Stats(); s.Sessions != 0 || s.Translations != 1 {
		t.Fatalf("after re-assignment: %+v", s)
	}
	_, v, err := replyUDP(tb, r4a, 1000, t0)
	mustVerdict(t, "reply of dropped flow", v, err, nat.Drop, nat.ErrExpiredSession)
	if m, ok := tb.Mapping(cV4, pA4a); !ok || m.Real != r4a {
		t.Fatalf("Mapping = %v %v", m, ok)
	}
	// Remove drops the domain.
	if n, err := tb.Remove(cV4, "res-b.example", "b.example", t0); n != 1 || err != nil {
		t.Fatalf("Remove = %d %v", n, err)
	}
	v, err = sendUDP(t, tb, pA4a, 1000, t0)
	mustVerdict(t, "after Remove", v, err, nat.Unreachable, nat.ErrNoTranslation)
	// RemoveClient drops everything; the client's packets are then refused.
	configure(t, tb, "a.example", []netip.Addr{pA4a}, []netip.Addr{r4a}, t0)
	sendUDP(t, tb, pA4a, 1000, t0)
	tb.RemoveClient(cV4)
	if s := tb.Stats(); s != (nat.Stats{}) {
		t.Fatalf("after RemoveClient: %+v", s)
	}
	v, err = sendUDP(t, tb, pA4a, 1000, t0)
	mustVerdict(t, "after RemoveClient", v, err, nat.Drop, nat.ErrUnknownClient)
	if _, ok := tb.PollTimeout(); ok {
		t.Fatal("timeout after RemoveClient")
	}
}

func TestZeroAllocsExistingFlow(t *testing.T) {
	tb := newTable(t, nat.Config{})
	configure(t, tb, "a.example", []netip.Addr{pA4a}, []netip.Addr{r4a}, t0)
	outT := ipt.UDP(netip.AddrPortFrom(cV4, 1000), netip.AddrPortFrom(pA4a, 53), make([]byte, 100))
	inT := ipt.UDP(netip.AddrPortFrom(r4a, 53), netip.AddrPortFrom(cV4, 1000), make([]byte, 100))
	buf := make([]byte, len(outT))
	copy(buf, outT)
	tb.TranslateOutgoing(buf, t0)
	allocs := testing.AllocsPerRun(100, func() {
		copy(buf, outT)
		if v, _ := tb.TranslateOutgoing(buf, t0); v != nat.Translated {
			t.Fatal(v)
		}
		copy(buf, inT)
		if v, _ := tb.TranslateIncoming(buf, t0); v != nat.Translated {
			t.Fatal(v)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocs per round trip", allocs)
	}
}

func TestBuildUnreachable(t *testing.T) {
	for _, k := range kinds {
		for _, proxy := range []netip.Addr{pA4a, pA6a} {
			cl := clientOf(proxy)
			pkt := k.out(cl, proxy, 1234)
			buf := make([]byte, 1280)
			n, err := nat.BuildUnreachable(buf, pkt)
			if err != nil {
				t.Fatal(err)
			}
			reply := buf[:n]
			if err := ipt.Verify(reply); err != nil {
				t.Fatalf("%s to %v: %v", k.name, proxy, err)
			}
			p, err := ippacket.Parse(reply)
			if err != nil {
				t.Fatal(err)
			}
			typ, code, _ := p.ICMP()
			wantTyp := uint8(3)
			if proxy.Is6() {
				wantTyp = 1
			}
			if p.Src() != proxy || p.Dst() != cl || typ != wantTyp || code != 0 {
				t.Fatalf("reply %v → %v type %d code %d", p.Src(), p.Dst(), typ, code)
			}
			// In place, into the packet's own buffer.
			own := make([]byte, len(pkt)+100)
			copy(own, pkt)
			if n2, err := nat.BuildUnreachable(own, own[:len(pkt)]); err != nil || string(own[:n2]) != string(reply) {
				t.Fatalf("in place: %v", err)
			}
		}
	}
	if _, err := nat.BuildUnreachable(nil, []byte{1}); !errors.Is(err, nat.ErrMalformed) {
		t.Fatalf("garbage: %v", err)
	}
}
