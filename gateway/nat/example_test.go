package nat_test

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/snowgate/snowgate/gateway/nat"
	ipt "github.com/snowgate/snowgate/internal/ippacket/ippackettest"
)

// The gateway loop registers a client when its connection comes up,
// configures a domain on p2pcontrol.EventSetupNAT once it has resolved it,
// and translates packets in both directions.
func Example() {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tb, _ := nat.New(nat.Config{})
	client := nat.ClientIPs{V4: netip.MustParseAddr("100.64.0.7"), V6: netip.MustParseAddr("fd00:2021:1111::7")}
	_ = tb.AddClient(client)

	proxy := netip.MustParseAddr("100.96.0.1")
	setup, _ := tb.Configure(client.V6, nat.Assignment{
		Resource: "7a1f0b2c-0000-4000-8000-000000000001",
		Domain:   "app.example",
		ProxyIPs: []netip.Addr{proxy, netip.MustParseAddr("fd00:2021:1111:8000::1")},
		RealIPs:  []netip.Addr{netip.MustParseAddr("198.51.100.10")}, // no AAAA
	}, now)
	fmt.Println("unreachable:", setup.Unreachable())

	pkt := ipt.UDP(netip.AddrPortFrom(client.V4, 40000), netip.AddrPortFrom(proxy, 53), []byte("q"))
	v, _ := tb.TranslateOutgoing(pkt, now)
	_, dst, _, _ := flowID(pkt)
	fmt.Println(v, "to", dst)

	reply := ipt.UDP(netip.MustParseAddrPort("198.51.100.10:53"), netip.AddrPortFrom(client.V4, 40000), []byte("a"))
	v, _ = tb.TranslateIncoming(reply, now.Add(time.Millisecond))
	src, _, _, _ := flowID(reply)
	fmt.Println(v, "from", src)

	if at, ok := tb.PollTimeout(); ok {
		tb.HandleTimeout(at) // the loop arms a timer for at
	}
	// Output:
	// unreachable: [fd00:2021:1111:8000::1]
	// translated to 198.51.100.10
	// translated from 100.96.0.1
}
