package p2pcontrol_test

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/snowgate/snowgate/internal/p2pcontrol"
)

// A client assigns proxy IPs to a domain; the gateway loop sets up the NAT and completes; the client sees
// the confirmation. In real use the transmits go through the WireGuard tunnel, which may lose or reorder
// them; the client retransmits at PollTimeout.
func Example() {
	clientIP := netip.MustParseAddr("fd00:2021:1111::a")
	gatewayIP := netip.MustParseAddr("fd00:2021:1111::1")
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

	client, _ := p2pcontrol.NewClient(p2pcontrol.ClientConfig{Local: clientIP})
	gateway, _ := p2pcontrol.NewGateway(p2pcontrol.GatewayConfig{Local: gatewayIP})

	proxyIPs := []netip.Addr{
		netip.MustParseAddr("100.96.0.1"), netip.MustParseAddr("100.96.0.2"),
		netip.MustParseAddr("100.96.0.3"), netip.MustParseAddr("100.96.0.4"),
	}
	id, _ := client.Assign(gatewayIP, "7d1e5c1a-4f7b-4c0e-9d6a-2b1f0e3c4a5b", "app.example.com", proxyIPs, now)

	// Client → tunnel → gateway.
	for tr, ok := client.PollTransmit(); ok; tr, ok = client.PollTransmit() {
		_ = gateway.HandlePacket(tr.Packet, now)
	}
	// The gateway loop authorises, resolves, installs the NAT, then completes.
	for ev, ok := gateway.PollEvent(); ok; ev, ok = gateway.PollEvent() {
		fmt.Println(ev.Kind, ev.Assignment.Domain, ev.Assignment.Seq)
		_ = gateway.Complete(ev.Peer, ev.Assignment, p2pcontrol.NatActive, now)
	}
	// Gateway → tunnel → client.
	for tr, ok := gateway.PollTransmit(); ok; tr, ok = gateway.PollTransmit() {
		_ = client.HandlePacket(tr.Packet, now)
	}
	ev, _ := client.PollEvent()
	fmt.Println(ev.Kind, ev.ID == id, ev.Domain)
	_, pending := client.PollTimeout()
	fmt.Println("pending:", pending)
	// Output:
	// setup-nat app.example.com 1
	// confirmed true app.example.com
	// pending: false
}
