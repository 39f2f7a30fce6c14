package filter_test

import (
	"fmt"
	"net/netip"

	"github.com/snowgate/snowgate/gateway/filter"
	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/portalapi"
)

func ExampleTable() {
	t, err := filter.NewTable(filter.Options{InternetExcludes: []netip.Prefix{
		netip.MustParsePrefix("100.96.0.0/11"), netip.MustParsePrefix("fd00:2021:1111:8000::/107"),
	}})
	if err != nil {
		panic(err)
	}
	err = t.SetResource(portalapi.Resource{
		Type: portalapi.ResourceCIDR, ID: "lan", Address: "198.51.100.0/24",
		Filters: []portalapi.Filter{{Protocol: portalapi.ProtocolUDP, PortRangeStart: 53, PortRangeEnd: 53}},
	}, nil)
	if err != nil {
		panic(err)
	}
	buf := make([]byte, 1280)
	for _, dst := range []string{"198.51.100.1:53", "198.51.100.1:123", "203.0.113.1:53"} {
		n, _ := ippacket.BuildUDP(buf, netip.MustParseAddrPort("100.64.0.1:40000"), netip.MustParseAddrPort(dst), []byte("x"))
		pkt, _ := ippacket.Parse(buf[:n])
		id, v := t.Check(pkt)
		fmt.Printf("%s: %s %q\n", dst, v, id)
	}
	// Output:
	// 198.51.100.1:53: allow "lan"
	// 198.51.100.1:123: denied "lan"
	// 203.0.113.1:53: no-resource ""
}
