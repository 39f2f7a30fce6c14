package filter_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/snowgate/snowgate/gateway/filter"
	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/portalapi"
)

// benchTable holds 100 CIDR resources of varied prefix lengths (v4 and v6),
// 100 DNS resources with 8 proxy IPs each, and the Internet resource.
func benchTable(tb testing.TB) *filter.Table {
	t, err := filter.NewTable(filter.Options{InternetExcludes: proxyRanges})
	if err != nil {
		tb.Fatal(err)
	}
	fs := []portalapi.Filter{tcpF(22, 22), tcpF(80, 80), tcpF(443, 443), udpF(53, 53), udpF(5000, 6000), icmpF}
	for i := range 100 {
		bits := 16 + i%17
		v4 := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i), 0}), bits)
		b6 := netip.MustParseAddr("2001:db8::").As16()
		b6[5] = byte(i)
		v6 := netip.PrefixFrom(netip.AddrFrom16(b6), 48+i%80)
		if err := t.Set(fmt.Sprintf("cidr-%03d", i), filter.KindCIDR, []netip.Prefix{v4, v6}, fs); err != nil {
			tb.Fatal(err)
		}
		var dsts []netip.Prefix
		for j := range 4 {
			a4 := netip.AddrFrom4([4]byte{100, 96, byte(i), byte(j)})
			b := netip.MustParseAddr("fd00:2021:1111:8000::").As16()
			b[13], b[15] = byte(i), byte(j)
			dsts = append(dsts, netip.PrefixFrom(a4, 32), netip.PrefixFrom(netip.AddrFrom16(b), 128))
		}
		if err := t.Set(fmt.Sprintf("dns-%03d", i), filter.KindDNS, dsts, fs); err != nil {
			tb.Fatal(err)
		}
	}
	if err := t.Set("internet", filter.KindInternet, nil, nil); err != nil {
		tb.Fatal(err)
	}
	return t
}

type benchCase struct {
	name string
	pkt  ippacket.Packet
	want filter.Verdict
}

func benchCases(tb testing.TB) []benchCase {
	return []benchCase{
		{"cidr-v4-tcp-allow", tcpPkt(tb, netip.MustParseAddr("198.18.50.1"), 443), filter.VerdictAllow},
		{"cidr-v6-udp-allow", udpPkt(tb, netip.MustParseAddr("2001:db8:0:32::1"), 5500), filter.VerdictAllow},
		{"dns-v4-udp-denied", udpPkt(tb, netip.MustParseAddr("100.96.7.3"), 54), filter.VerdictDenied},
		{"dns-v6-icmp-allow", echoPkt(tb, netip.MustParseAddr("fd00:2021:1111:8000::7:3")), filter.VerdictAllow},
		{"internet-v4", tcpPkt(tb, netip.MustParseAddr("203.0.113.9"), 8080), filter.VerdictAllow},
		{"proxy-miss-v4", udpPkt(tb, netip.MustParseAddr("100.127.0.1"), 53), filter.VerdictNoResource},
	}
}

func TestAllowDoesNotAllocate(t *testing.T) {
	tbl := benchTable(t)
	for _, c := range benchCases(t) {
		if v := tbl.Allow(c.pkt); v != c.want {
			t.Errorf("%s: Allow = %v, want %v", c.name, v, c.want)
		}
		if n := testing.AllocsPerRun(100, func() { tbl.Allow(c.pkt) }); n != 0 {
			t.Errorf("%s: Allow allocates %v times", c.name, n)
		}
	}
}

func BenchmarkTableAllow(b *testing.B) {
	tbl := benchTable(b)
	for _, c := range benchCases(b) {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if tbl.Allow(c.pkt) != c.want {
					b.Fatal("wrong verdict")
				}
			}
		})
	}
}

func BenchmarkSetAllowsPacket(b *testing.B) {
	var fs []portalapi.Filter
	for i := range 64 {
		fs = append(fs, tcpF(uint16(i*100), uint16(i*100+10)))
	}
	s := filter.MustCompile(fs)
	pkt := tcpPkt(b, netip.MustParseAddr("198.51.100.1"), 3205)
	b.ReportAllocs()
	for b.Loop() {
		if !s.AllowsPacket(pkt) {
			b.Fatal("denied")
		}
	}
}

func BenchmarkTableSet(b *testing.B) {
	tbl := benchTable(b)
	fs := []portalapi.Filter{tcpF(80, 80)}
	dsts := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	b.ReportAllocs()
	for b.Loop() {
		if err := tbl.Set("extra", filter.KindCIDR, dsts, fs); err != nil {
			b.Fatal(err)
		}
	}
}
