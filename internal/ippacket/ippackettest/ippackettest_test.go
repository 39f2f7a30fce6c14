package ippackettest

import (
	"net/netip"
	"testing"

	"github.com/snowgate/snowgate/internal/ippacket"
)

var (
	a4 = netip.MustParseAddrPort("192.0.2.1:5353")
	b4 = netip.MustParseAddrPort("198.51.100.7:53")
	a6 = netip.MustParseAddrPort("[2001:db8::1]:5353")
	b6 = netip.MustParseAddrPort("[2001:db8::7]:53")
)

// TestBuildersVerify: every builder's packet verifies, parses with ippacket as what it claims to be, and one
// flipped payload bit makes Verify fail; the zero UDP checksum passes only with AllowZeroUDPChecksum and only
// over IPv4.
func TestBuildersVerify(t *testing.T) {
	for _, fam := range [][2]netip.AddrPort{{a4, b4}, {a6, b6}} {
		src, dst := fam[0], fam[1]
		cases := []struct {
			name  string
			b     []byte
			proto ippacket.Protocol
		}{
			{"udp", UDP(src, dst, []byte("query")), ippacket.ProtoUDP},
			{"tcp", TCP(src, dst, 7, 9, SYN|ACK, []byte("hello")), ippacket.ProtoTCP},
			{"echo", Echo(src.Addr(), dst.Addr(), 1, 2, []byte("ping")), icmpProto(src.Addr())},
			{"echo reply", EchoReply(src.Addr(), dst.Addr(), 1, 2, []byte("pong")), icmpProto(src.Addr())},
			{"unreachable", Unreachable(dst.Addr(), src.Addr(), UDP(src, dst, []byte("q"))), icmpProto(src.Addr())},
		}
		for _, c := range cases {
			name := c.name + " " + src.Addr().String()
			if err := Verify(c.b); err != nil {
				t.Errorf("%s: %v", name, err)
			}
			p, err := ippacket.Parse(c.b)
			if err != nil || p.Protocol() != c.proto || p.Src() == p.Dst() || !SumsValid(p) {
				t.Errorf("%s: parse %v, protocol %v, sums valid %v", name, err, p.Protocol(), SumsValid(p))
			}
			bad := append([]byte(nil), c.b...)
			bad[len(bad)-1] ^= 1
			if Verify(bad) == nil {
				t.Errorf("%s: a flipped bit verifies", name)
			}
		}
		z := UDPZeroChecksum(src, dst, []byte("q"))
		if err := Verify(z, AllowZeroUDPChecksum); (err == nil) != src.Addr().Is4() {
			t.Errorf("zero UDP checksum over %s with AllowZeroUDPChecksum: %v", src.Addr(), err)
		}
		if Verify(z) == nil {
			t.Errorf("zero UDP checksum over %s verifies without AllowZeroUDPChecksum", src.Addr())
		}
	}
	if !IPv4HeaderValid(UDP(a4, b4, nil)) || IPv4HeaderValid(UDP(a4, b4, nil)[:10]) {
		t.Error("IPv4HeaderValid")
	}
	if Verify(nil) == nil || Verify([]byte{0x45}) == nil {
		t.Error("Verify accepts a truncated packet")
	}
}

func icmpProto(a netip.Addr) ippacket.Protocol {
	if a.Is4() {
		return ippacket.ProtoICMP
	}
	return ippacket.ProtoICMPv6
}
