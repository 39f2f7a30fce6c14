package filter_test

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/snowgate/snowgate/gateway/filter"
	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/portalapi"
)

var (
	a = netip.MustParseAddr
	p = netip.MustParsePrefix
)

var proxyRanges = []netip.Prefix{p("100.96.0.0/11"), p("fd00:2021:1111:8000::/107")}

func newTable(t *testing.T) *filter.Table {
	t.Helper()
	tb, err := filter.NewTable(filter.Options{InternetExcludes: proxyRanges})
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

func mustSet(t *testing.T, tb *filter.Table, id string, k filter.Kind, dsts []netip.Prefix, fs []portalapi.Filter) {
	t.Helper()
	if err := tb.Set(id, k, dsts, fs); err != nil {
		t.Fatalf("Set(%s): %v", id, err)
	}
}

type check struct {
	name   string
	pkt    func(t testing.TB) ippacket.Packet
	wantID string
	want   filter.Verdict
}

func runChecks(t *testing.T, tb *filter.Table, checks []check) {
	t.Helper()
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			pkt := c.pkt(t)
			id, v := tb.Check(pkt)
			if id != c.wantID || v != c.want {
				t.Errorf("Check = %q %v, want %q %v", id, v, c.wantID, c.want)
			}
			if v2 := tb.Allow(pkt); v2 != v {
				t.Errorf("Allow = %v, Check = %v", v2, v)
			}
		})
	}
}

func tcpTo(dst string, port uint16) func(testing.TB) ippacket.Packet {
	return func(t testing.TB) ippacket.Packet { return tcpPkt(t, a(dst), port) }
}
func udpTo(dst string, port uint16) func(testing.TB) ippacket.Packet {
	return func(t testing.TB) ippacket.Packet { return udpPkt(t, a(dst), port) }
}
func echoTo(dst string) func(testing.TB) ippacket.Packet {
	return func(t testing.TB) ippacket.Packet { return echoPkt(t, a(dst)) }
}

func TestTableOverlappingCIDR(t *testing.T) {
	tb := newTable(t)
	mustSet(t, tb, "outer", filter.KindCIDR, []netip.Prefix{p("198.51.100.0/24"), p("2001:db8::/32")}, []portalapi.Filter{tcpF(80, 80)})
	mustSet(t, tb, "inner", filter.KindCIDR, []netip.Prefix{p("198.51.100.128/25"), p("2001:db8:1::/48")}, []portalapi.Filter{udpF(53, 53)})
	runChecks(t, tb, []check{
		// The most specific resource is named; the union of the covering filters applies.
		{"inner tcp 80", tcpTo("198.51.100.200", 80), "inner", filter.VerdictAllow},
		{"inner udp 53", udpTo("198.51.100.200", 53), "inner", filter.VerdictAllow},
		{"inner tcp 443", tcpTo("198.51.100.200", 443), "inner", filter.VerdictDenied},
		{"outer tcp 80", tcpTo("198.51.100.5", 80), "outer", filter.VerdictAllow},
		{"outer udp 53", udpTo("198.51.100.5", 53), "outer", filter.VerdictDenied},
		{"outer echo", echoTo("198.51.100.5"), "outer", filter.VerdictDenied},
		{"outside", tcpTo("203.0.113.1", 80), "", filter.VerdictNoResource},
		{"v6 inner udp", udpTo("2001:db8:1::9", 53), "inner", filter.VerdictAllow},
		{"v6 inner tcp", tcpTo("2001:db8:1::9", 80), "inner", filter.VerdictAllow},
		{"v6 outer udp", udpTo("2001:db8:2::9", 53), "outer", filter.VerdictDenied},
		{"v6 outside", udpTo("2001:db9::1", 53), "", filter.VerdictNoResource},
	})

	// Removing the outer resource narrows the inner one to its own filters.
	if !tb.Remove("outer") || tb.Remove("outer") {
		t.Fatal("Remove must report presence once")
	}
	runChecks(t, tb, []check{
		{"inner tcp 80 after remove", tcpTo("198.51.100.200", 80), "inner", filter.VerdictDenied},
		{"outer gone", tcpTo("198.51.100.5", 80), "", filter.VerdictNoResource},
	})
	if tb.Len() != 1 || !tb.Has("inner") || tb.Has("outer") {
		t.Errorf("Len=%d Has(inner)=%v", tb.Len(), tb.Has("inner"))
	}
}

func TestTableSamePrefix(t *testing.T) {
	// Firezone's gateway_filters_expire_individually: two resources on one
	// address, one TCP and one UDP, both allowed while both are authorised.
	tb := newTable(t)
	mustSet(t, tb, "b-udp", filter.KindCIDR, []netip.Prefix{p("192.0.2.0/24")}, []portalapi.Filter{udpF(20, 100)})
	mustSet(t, tb, "a-tcp", filter.KindCIDR, []netip.Prefix{p("192.0.2.0/24")}, []portalapi.Filter{tcpF(20, 100)})
	runChecks(t, tb, []check{
		{"tcp", tcpTo("192.0.2.1", 80), "a-tcp", filter.VerdictAllow},
		{"udp", udpTo("192.0.2.1", 80), "a-tcp", filter.VerdictAllow},
	})
	tb.Remove("a-tcp")
	runChecks(t, tb, []check{
		{"tcp after", tcpTo("192.0.2.1", 80), "b-udp", filter.VerdictDenied},
		{"udp after", udpTo("192.0.2.1", 80), "b-udp", filter.VerdictAllow},
	})
	// An empty filter list on one of them permits all.
	mustSet(t, tb, "c-all", filter.KindCIDR, []netip.Prefix{p("192.0.0.0/16")}, nil)
	runChecks(t, tb, []check{
		{"covered by permit-all", tcpTo("192.0.2.1", 9), "b-udp", filter.VerdictAllow},
	})
}

func TestTableDNSAndCIDR(t *testing.T) {
	// Firezone's dns_and_cidr_filters_dot_mix: a DNS proxy IP is checked with
	// its resource's filters only, whatever CIDR resource contains it.
	tb := newTable(t)
	mustSet(t, tb, "cidr", filter.KindCIDR, []netip.Prefix{p("100.64.0.0/10")}, []portalapi.Filter{udpF(1000, 1000)})
	mustSet(t, tb, "dns", filter.KindDNS, []netip.Prefix{p("100.96.0.1/32"), p("fd00:2021:1111:8000::1/128")}, []portalapi.Filter{udpF(53, 53)})
	runChecks(t, tb, []check{
		{"proxy allowed", udpTo("100.96.0.1", 53), "dns", filter.VerdictAllow},
		{"proxy cidr port", udpTo("100.96.0.1", 1000), "dns", filter.VerdictDenied},
		{"proxy v6 allowed", udpTo("fd00:2021:1111:8000::1", 53), "dns", filter.VerdictAllow},
		{"proxy v6 denied", tcpTo("fd00:2021:1111:8000::1", 53), "dns", filter.VerdictDenied},
		{"other proxy in cidr", udpTo("100.96.0.2", 1000), "cidr", filter.VerdictAllow},
		{"other proxy v6 unknown", udpTo("fd00:2021:1111:8000::2", 53), "", filter.VerdictNoResource},
	})
	// A DNS resource that shares a host address with a /32 CIDR resource wins it.
	mustSet(t, tb, "host", filter.KindCIDR, []netip.Prefix{p("100.96.0.1/32")}, nil)
	runChecks(t, tb, []check{
		{"dns beats host cidr", udpTo("100.96.0.1", 1000), "dns", filter.VerdictDenied},
	})
	// Two DNS resources on the same proxy IP: union, smallest id named.
	mustSet(t, tb, "dns0", filter.KindDNS, []netip.Prefix{p("100.96.0.1/32")}, []portalapi.Filter{tcpF(443, 443)})
	runChecks(t, tb, []check{
		{"dns union tcp", tcpTo("100.96.0.1", 443), "dns", filter.VerdictAllow},
		{"dns union udp", udpTo("100.96.0.1", 53), "dns", filter.VerdictAllow},
	})
}

func TestTableInternet(t *testing.T) {
	// Firezone's internet_resource_doesnt_allow_all_traffic_for_dns_resources.
	tb := newTable(t)
	mustSet(t, tb, "dns", filter.KindDNS, []netip.Prefix{p("100.96.0.1/32")}, []portalapi.Filter{udpF(53, 53)})
	mustSet(t, tb, "internet", filter.KindInternet, nil, []portalapi.Filter{udpF(1, 1)}) // filters ignored
	mustSet(t, tb, "cidr", filter.KindCIDR, []netip.Prefix{p("198.51.100.0/24")}, []portalapi.Filter{tcpF(22, 22)})
	runChecks(t, tb, []check{
		{"proxy allowed", udpTo("100.96.0.1", 53), "dns", filter.VerdictAllow},
		{"proxy denied", udpTo("100.96.0.1", 600), "dns", filter.VerdictDenied},
		{"unknown proxy v4", udpTo("100.96.0.2", 600), "", filter.VerdictNoResource},
		{"unknown proxy v6", udpTo("fd00:2021:1111:8000::5", 600), "", filter.VerdictNoResource},
		{"internet v4", udpTo("198.18.0.1", 600), "internet", filter.VerdictAllow},
		{"internet v6", tcpTo("2001:db8::1", 1), "internet", filter.VerdictAllow},
		{"internet sctp", func(t testing.TB) ippacket.Packet { return protoPkt(t, a("198.18.0.1"), 132) }, "internet", filter.VerdictAllow},
		// A CIDR resource under the Internet resource is named, and permits all.
		{"cidr under internet", udpTo("198.51.100.1", 9), "cidr", filter.VerdictAllow},
	})

	// Inside an exclude the Internet resource covers nothing, so it must not lift the filters of a CIDR
	// resource there (a CIDR resource overlapping an exclude keeps its own filters).
	ex, err := filter.NewTable(filter.Options{InternetExcludes: []netip.Prefix{p("169.254.0.0/16")}})
	if err != nil {
		t.Fatal(err)
	}
	mustSet(t, ex, "internet", filter.KindInternet, nil, nil)
	mustSet(t, ex, "lan", filter.KindCIDR, []netip.Prefix{p("169.254.7.0/24")}, []portalapi.Filter{tcpF(80, 80)})
	mustSet(t, ex, "wide", filter.KindCIDR, []netip.Prefix{p("169.0.0.0/8")}, []portalapi.Filter{tcpF(22, 22)})
	runChecks(t, ex, []check{
		{"excluded cidr allowed", tcpTo("169.254.7.1", 80), "lan", filter.VerdictAllow},
		{"excluded cidr denied", udpTo("169.254.7.1", 53), "lan", filter.VerdictDenied},
		{"cidr partly excluded keeps its filters", udpTo("169.1.0.1", 53), "wide", filter.VerdictDenied},
		{"outside the excludes the internet lifts nothing it does not cover", udpTo("198.18.0.1", 53), "internet", filter.VerdictAllow},
	})

	// Without exclusions, the Internet resource covers the proxy ranges too.
	var zero filter.Table
	mustSet(t, &zero, "internet", filter.KindInternet, nil, nil)
	runChecks(t, &zero, []check{
		{"zero table proxy", udpTo("100.96.0.2", 600), "internet", filter.VerdictAllow},
	})
	if _, err := filter.NewTable(filter.Options{InternetExcludes: []netip.Prefix{{}}}); !errors.Is(err, filter.ErrInvalidResource) {
		t.Errorf("NewTable with an invalid exclude: %v", err)
	}
}

func TestTableReplace(t *testing.T) {
	tb := newTable(t)
	mustSet(t, tb, "r", filter.KindCIDR, []netip.Prefix{p("192.0.2.0/24")}, []portalapi.Filter{tcpF(80, 80)})
	mustSet(t, tb, "r", filter.KindCIDR, []netip.Prefix{p("203.0.113.0/24")}, []portalapi.Filter{icmpF})
	runChecks(t, tb, []check{
		{"old prefix gone", tcpTo("192.0.2.1", 80), "", filter.VerdictNoResource},
		{"new filters", echoTo("203.0.113.1"), "r", filter.VerdictAllow},
		{"new filters deny", tcpTo("203.0.113.1", 80), "r", filter.VerdictDenied},
	})
	// A failed Set leaves the table as it was.
	if err := tb.Set("r", filter.KindCIDR, []netip.Prefix{p("192.0.2.0/24")}, []portalapi.Filter{tcpF(9, 1)}); !errors.Is(err, filter.ErrInvalidResource) || !errors.Is(err, filter.ErrInvalidFilter) {
		t.Fatalf("Set with a bad filter: %v", err)
	}
	runChecks(t, tb, []check{{"unchanged", echoTo("203.0.113.1"), "r", filter.VerdictAllow}})
	// Host bits are masked off.
	mustSet(t, tb, "m", filter.KindCIDR, []netip.Prefix{p("198.51.100.77/24")}, nil)
	runChecks(t, tb, []check{{"masked", tcpTo("198.51.100.1", 1), "m", filter.VerdictAllow}})
}

func TestTableErrors(t *testing.T) {
	tb := newTable(t)
	for _, c := range []struct {
		name string
		id   string
		kind filter.Kind
		dsts []netip.Prefix
		fs   []portalapi.Filter
	}{
		{"empty id", "", filter.KindCIDR, []netip.Prefix{p("192.0.2.0/24")}, nil},
		{"unknown kind", "x", 0, nil, nil},
		{"unknown kind 9", "x", 9, nil, nil},
		{"invalid prefix", "x", filter.KindCIDR, []netip.Prefix{{}}, nil},
		{"dns prefix", "x", filter.KindDNS, []netip.Prefix{p("100.96.0.0/24")}, nil},
		{"bad filter", "x", filter.KindDNS, []netip.Prefix{p("100.96.0.1/32")}, []portalapi.Filter{{Protocol: "gre"}}},
	} {
		if err := tb.Set(c.id, c.kind, c.dsts, c.fs); !errors.Is(err, filter.ErrInvalidResource) {
			t.Errorf("%s: Set = %v, want ErrInvalidResource", c.name, err)
		}
	}
	if tb.Len() != 0 {
		t.Errorf("Len = %d after failed Sets", tb.Len())
	}
	// Lookups on an empty table and of invalid addresses.
	if _, _, ok := tb.Lookup(netip.Addr{}); ok {
		t.Error("Lookup of the zero Addr")
	}
	if v := tb.Allow(ippacket.Packet{}); v != filter.VerdictNoResource {
		t.Errorf("Allow(zero Packet) = %v", v)
	}
}

func TestTableDNSWithoutAddresses(t *testing.T) {
	tb := newTable(t)
	mustSet(t, tb, "dns", filter.KindDNS, nil, nil)
	if !tb.Has("dns") {
		t.Fatal("DNS resource without proxy IPs must be kept")
	}
	if _, _, ok := tb.Lookup(a("100.96.0.1")); ok {
		t.Error("DNS resource without proxy IPs must match nothing")
	}
}

func TestLookupMappedAndZoned(t *testing.T) {
	tb := newTable(t)
	mustSet(t, tb, "v4", filter.KindCIDR, []netip.Prefix{p("192.0.2.0/24")}, nil)
	mustSet(t, tb, "v6", filter.KindCIDR, []netip.Prefix{p("2001:db8::/32")}, nil)
	if _, _, ok := tb.Lookup(a("::ffff:192.0.2.1")); ok {
		t.Error("an IPv4-mapped IPv6 address must not match an IPv4 prefix")
	}
	if id, _, ok := tb.Lookup(a("2001:db8::1%eth0")); !ok || id != "v6" {
		t.Errorf("zoned address: %q %v", id, ok)
	}
}

func TestStrings(t *testing.T) {
	for v, s := range map[filter.Verdict]string{filter.VerdictAllow: "allow", filter.VerdictDenied: "denied", filter.VerdictNoResource: "no-resource", 7: "verdict(7)"} {
		if v.String() != s {
			t.Errorf("%d: %q", v, v.String())
		}
	}
	for k, s := range map[filter.Kind]string{filter.KindCIDR: "cidr", filter.KindDNS: "dns", filter.KindInternet: "internet", 0: "kind(0)"} {
		if k.String() != s {
			t.Errorf("%d: %q", k, k.String())
		}
	}
}

func TestDeniedIsAnswerable(t *testing.T) {
	// A denied TCP packet gets an ICMP prohibited; a denied ICMP error does not.
	tb := newTable(t)
	mustSet(t, tb, "r", filter.KindCIDR, []netip.Prefix{p("198.51.100.0/24")}, []portalapi.Filter{udpF(53, 53)})
	buf := make([]byte, 1500)
	pkt := tcpPkt(t, a("198.51.100.1"), 80)
	if tb.Allow(pkt) != filter.VerdictDenied {
		t.Fatal("want denied")
	}
	if _, err := ippacket.BuildICMPProhibited(buf, pkt); err != nil {
		t.Errorf("BuildICMPProhibited: %v", err)
	}
	e := unreachPkt(t, a("198.51.100.1"))
	if tb.Allow(e) != filter.VerdictDenied {
		t.Fatal("want denied ICMP error")
	}
	if _, err := ippacket.BuildICMPProhibited(buf, e); !errors.Is(err, ippacket.ErrUnsupported) {
		t.Errorf("BuildICMPProhibited(ICMP error) = %v, want ErrUnsupported", err)
	}
}

func TestSetResource(t *testing.T) {
	tb := newTable(t)
	fs := []portalapi.Filter{tcpF(443, 443)}
	for _, r := range []portalapi.Resource{
		{Type: portalapi.ResourceCIDR, ID: "cidr", Address: "198.51.100.0/24", Filters: fs},
		{Type: portalapi.ResourceCIDR, ID: "host", Address: "2001:db8::5"},
		{Type: portalapi.ResourceDNS, ID: "dns", Address: "*.example.com", Filters: fs},
		{Type: portalapi.ResourceInternet, ID: "inet"},
	} {
		if err := tb.SetResource(r, []netip.Addr{a("100.96.0.9"), a("fd00:2021:1111:8000::9")}); err != nil {
			t.Fatalf("SetResource(%s): %v", r.ID, err)
		}
	}
	runChecks(t, tb, []check{
		{"cidr", tcpTo("198.51.100.3", 443), "cidr", filter.VerdictAllow},
		{"host", udpTo("2001:db8::5", 1), "host", filter.VerdictAllow},
		{"dns v4", tcpTo("100.96.0.9", 443), "dns", filter.VerdictAllow},
		{"dns v6 denied", tcpTo("fd00:2021:1111:8000::9", 80), "dns", filter.VerdictDenied},
		{"internet", tcpTo("198.18.1.1", 80), "inet", filter.VerdictAllow},
	})
	for _, bad := range []portalapi.Resource{
		{Type: "device_pool", ID: "x"},
		{Type: portalapi.ResourceCIDR, ID: "x", Address: "not-a-cidr"},
		{Type: portalapi.ResourceCIDR, ID: "x", Address: "192.0.2.0/24", Filters: []portalapi.Filter{tcpF(2, 1)}},
	} {
		if err := tb.SetResource(bad, nil); !errors.Is(err, filter.ErrInvalidResource) {
			t.Errorf("SetResource(%+v) = %v, want ErrInvalidResource", bad, err)
		}
	}
	if err := tb.SetResource(portalapi.Resource{Type: portalapi.ResourceDNS, ID: "d", Address: "x.example.com"}, []netip.Addr{{}}); !errors.Is(err, filter.ErrInvalidResource) {
		t.Errorf("invalid proxy IP: %v", err)
	}
	if k, ok := filter.KindOf("device_pool"); ok || k != 0 {
		t.Errorf("KindOf(device_pool) = %v %v", k, ok)
	}
}
