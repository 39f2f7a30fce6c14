package ippacket_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"pgregory.net/rapid"

	"github.com/snowgate/snowgate/internal/ippacket"
	ipt "github.com/snowgate/snowgate/internal/ippacket/ippackettest"
)

func mustParse(t testing.TB, b []byte) ippacket.Packet {
	t.Helper()
	p, err := ippacket.Parse(b)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return p
}

// TestRewriteNAT plays the gateway's DNS-resource NAT: the destination proxy
// IP becomes the real IP on the way in, the source goes back on the way out,
// and ICMP errors about the translated packet are translated too.
func TestRewriteNAT(t *testing.T) {
	for _, fam := range []struct {
		name                string
		client, proxy, real netip.Addr
		router              netip.Addr
	}{
		{"v4", v4a, v4c, v4b, netip.MustParseAddr("203.0.113.1")},
		{"v6", v6a, v6c, v6b, netip.MustParseAddr("2001:db8:ffff::1")},
	} {
		for _, pk := range []struct {
			name string
			in   func(src, dst netip.Addr) []byte
		}{
			{"udp", func(s, d netip.Addr) []byte { return ipt.UDP(ap(s, 5353), ap(d, 53), []byte("abc")) }},
			{"tcp", func(s, d netip.Addr) []byte {
				return ipt.TCP(ap(s, 40000), ap(d, 443), 99, 0, ipt.ACK|ipt.PSH, []byte("hello!"))
			}},
			{"echo", func(s, d netip.Addr) []byte { return ipt.Echo(s, d, 42, 3, []byte("ping")) }},
		} {
			t.Run(fam.name+"/"+pk.name, func(t *testing.T) {
				in := pk.in(fam.client, fam.proxy)
				p := mustParse(t, in)
				if err := p.SetDst(fam.real); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(in, pk.in(fam.client, fam.real)) {
					t.Fatalf("inbound rewrite differs from a packet built for the real IP:\n%x\n%x", in, pk.in(fam.client, fam.real))
				}
				// The reply, and an ICMP error quoting the translated packet.
				out := pk.in(fam.real, fam.client)
				if err := mustParse(t, out).SetSrc(fam.proxy); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(out, pk.in(fam.proxy, fam.client)) {
					t.Fatal("outbound rewrite differs")
				}
				for _, n := range []int{len(in), p.HeaderLen() + 8} {
					e := ipt.Unreachable(fam.router, fam.client, in[:n])
					ep := mustParse(t, e)
					q, err := ep.Quoted()
					if err != nil {
						t.Fatal(err)
					}
					if err := q.SetDst(fam.proxy); err != nil {
						t.Fatal(err)
					}
					want := ipt.Unreachable(fam.router, fam.client, pk.in(fam.client, fam.proxy)[:n])
					if !bytes.Equal(e, want) {
						t.Fatalf("quote of %d bytes: translated error differs:\n%x\n%x", n, e, want)
					}
					if err := ipt.Verify(e, ipt.AllowZeroUDPChecksum); err != nil {
						t.Fatal(err)
					}
				}
			})
		}
	}
}

func TestRewriteErrors(t *testing.T) {
	u4 := ipt.UDP(ap(v4a, 1), ap(v4b, 2), nil)
	p := mustParse(t, u4)
	if err := p.SetSrc(v6a); !errors.Is(err, ippacket.ErrFamily) {
		t.Errorf("v6 into v4: %v", err)
	}
	if err := p.SetDst(netip.Addr{}); !errors.Is(err, ippacket.ErrFamily) {
		t.Errorf("zero addr: %v", err)
	}
	if err := p.SetEchoID(1); !errors.Is(err, ippacket.ErrUnsupported) {
		t.Errorf("echo id of UDP: %v", err)
	}
	e := mustParse(t, ipt.Echo(v4a, v4b, 1, 1, nil))
	if err := e.SetSrcPort(1); !errors.Is(err, ippacket.ErrUnsupported) {
		t.Errorf("port of ICMP: %v", err)
	}
	r := mustParse(t, v6ext(ipt.UDP(ap(v6a, 1), ap(v6b, 2), nil), []uint8{43}, [][]byte{routingHdr(1)}))
	if err := r.SetDst(v6c); !errors.Is(err, ippacket.ErrUnsupported) {
		t.Errorf("dst with routing header: %v", err)
	}
	lf := mustParse(t, with(u4, func(b []byte) []byte { b[7] = 1; return fixSum4(b) }))
	if err := lf.SetDstPort(9); !errors.Is(err, ippacket.ErrFragment) {
		t.Errorf("port of later fragment: %v", err)
	}
	if err := lf.SetDst(v4c); err != nil {
		t.Errorf("addr of later fragment: %v", err)
	}
	if !ipt.IPv4HeaderValid(lf.Bytes()) {
		t.Errorf("later fragment: IPv4 header checksum invalid")
	}
}

func TestRewriteUDPZeroChecksum(t *testing.T) {
	b := ipt.UDPZeroChecksum(ap(v4a, 1), ap(v4b, 2), []byte("x"))
	p := mustParse(t, b)
	if err := p.SetDst(v4c); err != nil {
		t.Fatal(err)
	}
	if err := p.SetSrcPort(7); err != nil {
		t.Fatal(err)
	}
	if ck := binary.BigEndian.Uint16(b[26:28]); ck != 0 {
		t.Fatalf("UDP checksum 0 became %#04x", ck)
	}
	if err := ipt.Verify(b, ipt.AllowZeroUDPChecksum); err != nil {
		t.Fatal(err)
	}
}

// pktGen describes a random packet for the property tests.
type pktGen struct {
	v6       bool
	kind     int // 0 UDP, 1 UDP without checksum (v4), 2 TCP, 3 echo
	src, dst netip.Addr
	sp, dp   uint16
	seq      uint32
	payload  []byte
	quote    bool
	quoteLen int // 0: whole packet
	router   netip.Addr
}

func drawAddr(t *rapid.T, v6 bool, label string) netip.Addr {
	if v6 {
		return netip.AddrFrom16([16]byte(rapid.SliceOfN(rapid.Byte(), 16, 16).Draw(t, label)))
	}
	return netip.AddrFrom4([4]byte(rapid.SliceOfN(rapid.Byte(), 4, 4).Draw(t, label)))
}

func drawPkt(t *rapid.T) pktGen {
	g := pktGen{v6: rapid.Bool().Draw(t, "v6"), kind: rapid.IntRange(0, 3).Draw(t, "kind")}
	if g.v6 && g.kind == 1 {
		g.kind = 0
	}
	g.src, g.dst = drawAddr(t, g.v6, "src"), drawAddr(t, g.v6, "dst")
	g.sp, g.dp = rapid.Uint16().Draw(t, "sp"), rapid.Uint16().Draw(t, "dp")
	g.seq = rapid.Uint32().Draw(t, "seq")
	g.payload = rapid.SliceOfN(rapid.Byte(), 0, 100).Draw(t, "payload")
	g.quote = rapid.Bool().Draw(t, "quote")
	if g.quote {
		g.router = drawAddr(t, g.v6, "router")
		if rapid.Bool().Draw(t, "truncate") {
			g.quoteLen = rapid.IntRange(0, 60).Draw(t, "quoteLen")
		}
	}
	return g
}

func (g pktGen) inner(src, dst netip.Addr, sp, dp uint16) []byte {
	switch g.kind {
	case 0, 1:
		if g.kind == 1 {
			return ipt.UDPZeroChecksum(ap(src, sp), ap(dst, dp), g.payload)
		}
		return ipt.UDP(ap(src, sp), ap(dst, dp), g.payload)
	case 2:
		return ipt.TCP(ap(src, sp), ap(dst, dp), g.seq, 0, ipt.ACK|ipt.PSH, g.payload)
	default:
		return ipt.Echo(src, dst, sp, dp, g.payload)
	}
}

// build returns the packet, and its IP header length, with the given fields.
func (g pktGen) build(src, dst netip.Addr, sp, dp uint16) []byte {
	in := g.inner(src, dst, sp, dp)
	if !g.quote {
		return in
	}
	hl := 20
	if g.v6 {
		hl = 40
	}
	n := len(in)
	if g.quoteLen > 0 {
		n = min(n, hl+g.quoteLen)
	}
	return ipt.Unreachable(g.router, src, in[:n])
}

func (g pktGen) rewrite(t *rapid.T, b []byte, src, dst netip.Addr, sp, dp uint16) {
	p, err := ippacket.Parse(b)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if g.quote {
		// The outer packet goes to the (translated) source of the quoted one.
		if err := p.SetDst(src); err != nil {
			t.Fatal(err)
		}
		if p, err = p.Quoted(); err != nil {
			t.Fatalf("Quoted: %v", err)
		}
	}
	if err := p.SetSrc(src); err != nil {
		t.Fatal(err)
	}
	if err := p.SetDst(dst); err != nil {
		t.Fatal(err)
	}
	if g.kind == 3 {
		if err := p.SetEchoID(sp); err != nil && !(g.quote && errors.Is(err, ippacket.ErrTruncated)) {
			t.Fatal(err)
		}
		return
	}
	if err := p.SetSrcPort(sp); err != nil && !(g.quote && errors.Is(err, ippacket.ErrTruncated)) {
		t.Fatal(err)
	}
	if err := p.SetDstPort(dp); err != nil && !(g.quote && errors.Is(err, ippacket.ErrTruncated)) {
		t.Fatal(err)
	}
}

// TestRewriteProperty: rewriting a random packet's addresses and ports (or
// echo id), directly or inside an ICMP error, gives the same bytes as
// building the packet with the new values, all checksums verify with gVisor,
// and rewriting back restores the original bytes.
func TestRewriteProperty(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		g := drawPkt(t)
		nsrc, ndst := drawAddr(t, g.v6, "nsrc"), drawAddr(t, g.v6, "ndst")
		nsp, ndp := rapid.Uint16().Draw(t, "nsp"), rapid.Uint16().Draw(t, "ndp")
		if g.kind == 3 {
			ndp = g.dp // the echo sequence number is not rewritten
		}
		orig := g.build(g.src, g.dst, g.sp, g.dp)
		b := append([]byte(nil), orig...)
		g.rewrite(t, b, nsrc, ndst, nsp, ndp)
		if err := ipt.Verify(b, ipt.AllowZeroUDPChecksum); err != nil {
			t.Fatalf("after rewrite: %v", err)
		}
		// A truncated quote may lose the ports or checksum; compare with a
		// from-scratch build only when everything rewritten is there.
		want := g.build(nsrc, ndst, nsp, ndp)
		if wantFull := g.quoteLen == 0 || g.quoteLen >= 8; wantFull && !bytes.Equal(b, want) {
			if !(g.quote && g.quoteLen > 0 && g.kind == 2 && g.quoteLen < 18) {
				t.Fatalf("rewritten\n%x\nbuilt\n%x", b, want)
			}
		}
		g.rewrite(t, b, g.src, g.dst, g.sp, g.dp)
		if !bytes.Equal(b, orig) {
			t.Fatalf("rewrite back\n%x\noriginal\n%x", b, orig)
		}
	})
}

// TestRewriteUDPComputedZero: a rewrite whose UDP checksum computes to zero
// writes 0xFFFF (RFC 768), as a from-scratch build does.
func TestRewriteUDPComputedZero(t *testing.T) {
	found := 0
	for _, fam := range [][2]netip.Addr{{v4a, v4b}, {v6a, v6b}} {
		for port := range 0x10000 {
			want := ipt.UDP(ap(fam[0], uint16(port)), ap(fam[1], 53), []byte("q"))
			hl := len(want) - 9
			if binary.BigEndian.Uint16(want[hl+6:]) != 0xFFFF {
				continue
			}
			found++
			b := ipt.UDP(ap(fam[0], 1000), ap(fam[1], 53), []byte("q"))
			if err := mustParse(t, b).SetSrcPort(uint16(port)); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b, want) {
				t.Fatalf("port %d: got\n%x\nwant\n%x", port, b, want)
			}
			break
		}
	}
	if found != 2 {
		t.Fatalf("found %d packets with a computed zero checksum, want 2", found)
	}
}
