package ippacket_test

import (
	"fmt"
	"net/netip"

	"github.com/snowgate/snowgate/internal/ippacket"
)

// The gateway's DNS-resource NAT: a packet from the client to a proxy IP is
// sent on to the resource's real IP, and an ICMP error about it is
// translated back before it goes to the client.
func Example_nat() {
	client := netip.MustParseAddr("100.64.0.1")
	proxy := netip.MustParseAddr("100.96.0.3")
	real := netip.MustParseAddr("198.51.100.7")

	buf := make([]byte, 1280)
	n, _ := ippacket.BuildUDP(buf, netip.AddrPortFrom(client, 5353), netip.AddrPortFrom(proxy, 53), []byte("hello"))
	pkt, _ := ippacket.Parse(buf[:n])
	if pkt.Protocol() == ippacket.ProtoUDP {
		_, dport, _ := pkt.Ports()
		fmt.Println("filter sees UDP port", dport, "to", pkt.Dst())
	}
	_ = pkt.SetDst(real)
	fmt.Println("forwarded to", pkt.Dst())

	// The resource answers "prohibited"; the gateway translates the error.
	reply := make([]byte, 1280)
	m, _ := ippacket.BuildICMPProhibited(reply, pkt)
	icmp, _ := ippacket.Parse(reply[:m])
	quoted, _ := icmp.Quoted()
	_ = icmp.SetSrc(proxy)
	_ = quoted.SetDst(proxy)
	fmt.Println("error", icmp.Src(), "->", icmp.Dst(), "about", quoted.Src(), "->", quoted.Dst())
	// Output:
	// filter sees UDP port 53 to 100.96.0.3
	// forwarded to 198.51.100.7
	// error 100.96.0.3 -> 100.64.0.1 about 100.64.0.1 -> 100.96.0.3
}
