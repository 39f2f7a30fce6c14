package core_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/snowgate/snowgate/gateway/core"
	"github.com/snowgate/snowgate/internal/p2pcontrol"
	"github.com/snowgate/snowgate/internal/tunnel"
)

// benchGateway returns a core with clients each authorised for 20 CIDR resources and one DNS resource
// with a domain set up; client 1's packets are benchmarked.
func benchGateway(b *testing.B, clients int) *harness {
	h := newHarness(b, core.Config{})
	h.initGateway(relayA)
	for i := 1; i <= clients; i++ {
		c := mkClient(i % 250)
		c.id = fmt.Sprintf("client-%d", i)
		c.v4 = netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)})
		c.v6 = netip.AddrFrom16([16]byte{0xfd, 0, 0x20, 0x21, 0x11, 0x11, 14: byte(i >> 8), 15: byte(i)})
		for r := 1; r <= 20; r++ {
			h.msg(c.authorize("r", cidrRes(r, fmt.Sprintf("198.51.%d.0/24", r), tcpF(1, 1024), udpF(53, 53)), time.Time{}))
		}
		h.msg(c.authorize("r", dnsRes(100, "*.a.example"), time.Time{}))
		_, as := h.net(control(b, c.v6, p2pcontrol.AssignedIPs{Resource: rid(100), Domain: "x.a.example", ProxyIPs: proxies8(1), Seq: 1}))
		for _, rn := range ofKind[core.ResolveName](as) {
			h.g.HandleResolved(rn.ClientID, rn.Assignment, []netip.Addr{netip.MustParseAddr("198.18.0.1")}, nil, h.now)
		}
		h.settle()
	}
	return h
}

func benchPacket(b *testing.B, h *harness, dir string, pkt []byte, want tunnel.Verdict) {
	buf := make([]byte, len(pkt))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		copy(buf, pkt)
		var v tunnel.Verdict
		if dir == "net" {
			v = h.g.HandleNetworkInput(buf, h.now)
		} else {
			v = h.g.HandleTunInput(buf, h.now)
		}
		if v != want {
			b.Fatalf("verdict %v", v)
		}
		for _, ok := h.g.PollAction(); ok; _, ok = h.g.PollAction() { // the driver drains after each batch
		}
	}
}

func BenchmarkNetworkInput(b *testing.B) {
	for _, clients := range []int{1, 1000} {
		h := benchGateway(b, clients)
		c := mkClient(1)
		c.v4 = netip.AddrFrom4([4]byte{100, 64, 0, 1})
		src := netip.AddrPortFrom(c.v4, 40000)
		b.Run(fmt.Sprintf("cidr/clients=%d", clients), func(b *testing.B) {
			benchPacket(b, h, "net", udpPkt(src, netip.MustParseAddrPort("198.51.7.9:53"), make([]byte, 1200)), tunnel.Pass)
		})
		b.Run(fmt.Sprintf("nat/clients=%d", clients), func(b *testing.B) {
			pkt := udpPkt(src, netip.AddrPortFrom(proxies4(1)[0], 53), make([]byte, 1200))
			h.g.HandleNetworkInput(append([]byte(nil), pkt...), h.now) // opens the session
			benchPacket(b, h, "net", pkt, tunnel.Pass)
		})
		b.Run(fmt.Sprintf("nat-reply/clients=%d", clients), func(b *testing.B) {
			benchPacket(b, h, "tun", udpPkt(netip.MustParseAddrPort("198.18.0.1:53"), src, make([]byte, 1200)), tunnel.Pass)
		})
		b.Run(fmt.Sprintf("denied/clients=%d", clients), func(b *testing.B) {
			pkt := udpPkt(src, netip.MustParseAddrPort("198.51.7.9:5000"), make([]byte, 1200))
			benchPacket(b, h, "net", pkt, tunnel.Stop)
		})
		b.Run(fmt.Sprintf("PollTimeout/clients=%d", clients), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				h.g.PollTimeout()
			}
		})
	}
}
