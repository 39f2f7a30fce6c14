package filter_test

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/snowgate/snowgate/gateway/filter"
	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/portalapi"
)

func tcpF(a, b uint16) portalapi.Filter {
	return portalapi.Filter{Protocol: portalapi.ProtocolTCP, PortRangeStart: a, PortRangeEnd: b}
}
func udpF(a, b uint16) portalapi.Filter {
	return portalapi.Filter{Protocol: portalapi.ProtocolUDP, PortRangeStart: a, PortRangeEnd: b}
}

var icmpF = portalapi.Filter{Protocol: portalapi.ProtocolICMP}

func TestCompileNormalises(t *testing.T) {
	tests := []struct {
		name    string
		filters []portalapi.Filter
		tcp     []filter.PortRange
		udp     []filter.PortRange
		icmp    bool
		all     bool
		str     string
	}{
		{name: "nil", filters: nil, all: true, icmp: true, str: "all"},
		{name: "empty", filters: []portalapi.Filter{}, all: true, icmp: true, str: "all"},
		{name: "icmp only", filters: []portalapi.Filter{icmpF, icmpF}, icmp: true, str: "icmp"},
		{name: "overlap", filters: []portalapi.Filter{tcpF(80, 90), tcpF(85, 100), tcpF(10, 20)},
			tcp: []filter.PortRange{{10, 20}, {80, 100}}, str: "tcp:10-20,80-100"},
		{name: "adjacent merge", filters: []portalapi.Filter{tcpF(1, 9), tcpF(10, 10), tcpF(12, 12)},
			tcp: []filter.PortRange{{1, 10}, {12, 12}}, str: "tcp:1-10,12"},
		{name: "contained", filters: []portalapi.Filter{udpF(0, 65535), udpF(53, 53)},
			udp: []filter.PortRange{{0, 65535}}, str: "udp:0-65535"},
		{name: "per protocol", filters: []portalapi.Filter{tcpF(53, 53), udpF(53, 53), icmpF},
			tcp: []filter.PortRange{{53, 53}}, udp: []filter.PortRange{{53, 53}}, icmp: true, str: "icmp tcp:53 udp:53"},
		{name: "max edge", filters: []portalapi.Filter{tcpF(65535, 65535), tcpF(65534, 65534)},
			tcp: []filter.PortRange{{65534, 65535}}, str: "tcp:65534-65535"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := filter.Compile(tc.filters)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.tcp, s.TCP()); diff != "" {
				t.Errorf("tcp (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.udp, s.UDP()); diff != "" {
				t.Errorf("udp (-want +got):\n%s", diff)
			}
			if s.ICMP() != tc.icmp || s.PermitsAll() != tc.all {
				t.Errorf("icmp=%v all=%v, want %v %v", s.ICMP(), s.PermitsAll(), tc.icmp, tc.all)
			}
			if got := s.String(); got != tc.str {
				t.Errorf("String() = %q, want %q", got, tc.str)
			}
			// Filters round-trips.
			s2 := filter.MustCompile(s.Filters())
			if s2.String() != s.String() {
				t.Errorf("round trip %q != %q", s2, s)
			}
		})
	}
}

func TestCompileErrors(t *testing.T) {
	for _, fs := range [][]portalapi.Filter{
		{tcpF(10, 5)},
		{icmpF, udpF(2, 1)},
		{{Protocol: "sctp"}},
		{{Protocol: ""}},
	} {
		s, err := filter.Compile(fs)
		if !errors.Is(err, filter.ErrInvalidFilter) || s != nil {
			t.Errorf("Compile(%v) = %v, %v; want ErrInvalidFilter", fs, s, err)
		}
	}
}

func TestNilAndUnion(t *testing.T) {
	var s *filter.Set
	if s.Allows(ippacket.ProtoTCP, 80) || s.ICMP() || s.PermitsAll() || s.String() != "none" || s.Filters() != nil {
		t.Error("nil Set must allow nothing")
	}
	if filter.Union().Allows(ippacket.ProtoICMP, 0) || filter.Union().String() != "none" {
		t.Error("empty union must allow nothing")
	}
	u := filter.Union(filter.MustCompile([]portalapi.Filter{tcpF(1, 5)}), nil, filter.MustCompile([]portalapi.Filter{tcpF(6, 7), icmpF}))
	if u.String() != "icmp tcp:1-7" {
		t.Errorf("union = %q", u)
	}
	if !filter.Union(u, filter.PermitAll()).PermitsAll() {
		t.Error("union with PermitAll must permit all")
	}
	if len(filter.PermitAll().Filters()) != 0 || filter.PermitAll().Filters() == nil {
		t.Error("PermitAll().Filters() must be an empty non-nil list")
	}
}

func TestAllowsPacket(t *testing.T) {
	v4 := netip.MustParseAddr("198.51.100.7")
	v6 := netip.MustParseAddr("2001:db8::7")
	web := []portalapi.Filter{tcpF(80, 80), tcpF(443, 443), tcpF(8000, 8100)}
	dns := []portalapi.Filter{udpF(53, 53)}
	mixed := []portalapi.Filter{tcpF(22, 22), udpF(1000, 2000), udpF(1500, 3000), icmpF}
	type pk struct {
		name string
		mk   func(t testing.TB, dst netip.Addr) ippacket.Packet
	}
	tcp := func(port uint16) func(testing.TB, netip.Addr) ippacket.Packet {
		return func(t testing.TB, d netip.Addr) ippacket.Packet { return tcpPkt(t, d, port) }
	}
	udp := func(port uint16) func(testing.TB, netip.Addr) ippacket.Packet {
		return func(t testing.TB, d netip.Addr) ippacket.Packet { return udpPkt(t, d, port) }
	}
	proto := func(p ippacket.Protocol) func(testing.TB, netip.Addr) ippacket.Packet {
		return func(t testing.TB, d netip.Addr) ippacket.Packet { return protoPkt(t, d, p) }
	}
	frag := func(p ippacket.Protocol) func(testing.TB, netip.Addr) ippacket.Packet {
		return func(t testing.TB, d netip.Addr) ippacket.Packet { return fragPkt(t, d, p) }
	}
	tests := []struct {
		filters []portalapi.Filter
		pkt     pk
		want    bool
	}{
		// Empty list: everything, any protocol.
		{nil, pk{"tcp 1", tcp(1)}, true},
		{nil, pk{"udp 65535", udp(65535)}, true},
		{nil, pk{"echo", echoPkt}, true},
		{nil, pk{"icmp error", unreachPkt}, true},
		{nil, pk{"sctp", proto(132)}, true},
		{nil, pk{"gre", proto(47)}, true},
		{nil, pk{"tcp fragment", frag(ippacket.ProtoTCP)}, true},
		// TCP ranges.
		{web, pk{"tcp 80", tcp(80)}, true},
		{web, pk{"tcp 81", tcp(81)}, false},
		{web, pk{"tcp 443", tcp(443)}, true},
		{web, pk{"tcp 7999", tcp(7999)}, false},
		{web, pk{"tcp 8000", tcp(8000)}, true},
		{web, pk{"tcp 8100", tcp(8100)}, true},
		{web, pk{"tcp 8101", tcp(8101)}, false},
		{web, pk{"udp 80", udp(80)}, false},
		{web, pk{"echo", echoPkt}, false},
		{web, pk{"icmp error", unreachPkt}, false},
		{web, pk{"sctp", proto(132)}, false},
		{web, pk{"tcp fragment", frag(ippacket.ProtoTCP)}, false},
		// UDP.
		{dns, pk{"udp 53", udp(53)}, true},
		{dns, pk{"udp 54", udp(54)}, false},
		{dns, pk{"tcp 53", tcp(53)}, false},
		{dns, pk{"udp fragment", frag(ippacket.ProtoUDP)}, false},
		// Overlapping UDP ranges and ICMP.
		{mixed, pk{"udp 999", udp(999)}, false},
		{mixed, pk{"udp 1000", udp(1000)}, true},
		{mixed, pk{"udp 2500", udp(2500)}, true},
		{mixed, pk{"udp 3000", udp(3000)}, true},
		{mixed, pk{"udp 3001", udp(3001)}, false},
		{mixed, pk{"tcp 22", tcp(22)}, true},
		{mixed, pk{"echo", echoPkt}, true},
		{mixed, pk{"icmp error", unreachPkt}, true},
		{mixed, pk{"icmp fragment", func(t testing.TB, d netip.Addr) ippacket.Packet {
			if d.Is4() {
				return fragPkt(t, d, ippacket.ProtoICMP)
			}
			return fragPkt(t, d, ippacket.ProtoICMPv6)
		}}, true},
		{mixed, pk{"gre", proto(47)}, false},
		{mixed, pk{"wrong-family icmp", func(t testing.TB, d netip.Addr) ippacket.Packet {
			if d.Is4() {
				return protoPkt(t, d, ippacket.ProtoICMPv6)
			}
			return protoPkt(t, d, ippacket.ProtoICMP)
		}}, false},
		{[]portalapi.Filter{icmpF}, pk{"tcp 80", tcp(80)}, false},
		{[]portalapi.Filter{icmpF}, pk{"udp 53", udp(53)}, false},
	}
	for _, tc := range tests {
		s := filter.MustCompile(tc.filters)
		for _, dst := range []netip.Addr{v4, v6} {
			t.Run(s.String()+"/"+tc.pkt.name+"/"+dst.String(), func(t *testing.T) {
				pkt := tc.pkt.mk(t, dst)
				if got := s.AllowsPacket(pkt); got != tc.want {
					t.Errorf("AllowsPacket = %v, want %v", got, tc.want)
				}
			})
		}
	}
}

func TestAllowsProtocols(t *testing.T) {
	s := filter.MustCompile([]portalapi.Filter{icmpF, tcpF(1, 1)})
	for _, c := range []struct {
		p    ippacket.Protocol
		port uint16
		want bool
	}{
		{ippacket.ProtoICMP, 0, true},
		{ippacket.ProtoICMPv6, 9, true},
		{ippacket.ProtoTCP, 1, true},
		{ippacket.ProtoTCP, 0, false},
		{ippacket.ProtoUDP, 1, false},
		{132, 1, false},
		{ippacket.ProtoP2PControl, 0, false},
	} {
		if got := s.Allows(c.p, c.port); got != c.want {
			t.Errorf("Allows(%d, %d) = %v, want %v", c.p, c.port, got, c.want)
		}
	}
}
