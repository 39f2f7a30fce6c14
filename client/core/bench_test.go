package core

import (
	"fmt"
	"testing"

	mdns "github.com/miekg/dns"

	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/tunnel"
)

// benchClient has n CIDR resources and one DNS resource, with the first CIDR's flow up.
func benchClient(b *testing.B, n int) *harness {
	b.Helper()
	var rs []portalapi.Resource
	for i := range n {
		rs = append(rs, cidrRes(rid(i+10), fmt.Sprintf("198.%d.%d.0/24", 18+i/256%2, i%256)))
	}
	rs = append(rs, cidrRes(rid(1), "198.51.100.0/24"), dnsRes(rid(2), "*.corp.test"))
	h := newHarness(b, Config{})
	h.c.HandlePortalState(tunnel.PortalJoined, h.now)
	h.portal(initMsg(rs...))
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 1))
	h.portal(gw(1).flowCreated(rid(1)))
	h.establish(gw(1).id)
	h.out = nil
	return h
}

// BenchmarkTunInputPass is the data path of a packet to a resource whose flow is up.
func BenchmarkTunInputPass(b *testing.B) {
	for _, n := range []int{10, 200} {
		b.Run(fmt.Sprintf("resources=%d", n), func(b *testing.B) {
			h := benchClient(b, n)
			pkt := packet(clientV4, lan, ippacket.ProtoUDP, 9, 1)
			b.ReportAllocs()
			for b.Loop() {
				if h.c.HandleTunInput(pkt, h.now) != tunnel.Pass {
					b.Fatal("not passed")
				}
				h.c.PollTimeout()
			}
		})
	}
}

// BenchmarkNewName is a DNS query that assigns proxy IPs to a new name; with a flow, the gateway's
// AllowedIPs (all names of the resource) are sent again.
func BenchmarkNewName(b *testing.B) {
	for _, n := range []int{10, 200} {
		for _, flow := range []bool{false, true} {
			b.Run(fmt.Sprintf("resources=%d/flow=%v", n, flow), func(b *testing.B) {
				benchNewName(b, n, flow)
			})
		}
	}
}

func benchNewName(b *testing.B, n int, flow bool) {
	{
		{
			h := benchClient(b, n)
			if flow {
				v4, _ := h.resolve("first.corp.test")
				h.tunIn(packet(clientV4, v4[0], ippacket.ProtoUDP, 9, 1))
				h.portal(gw(1).flowCreated(rid(2)))
			}
			i := 0
			b.ReportAllocs()
			for b.Loop() {
				i++
				h.c.HandleTunInput(udpQueryPacket(b, clientV4, sentV4, fmt.Sprintf("n%d.corp.test", i), mdns.TypeA, 1), h.now)
				for {
					if _, ok := h.c.PollAction(); !ok {
						break
					}
				}
			}
		}
	}
}

// BenchmarkInit is a first init with n CIDR resources.
func BenchmarkInit(b *testing.B) {
	for _, n := range []int{10, 200} {
		b.Run(fmt.Sprintf("resources=%d", n), func(b *testing.B) {
			var rs []portalapi.Resource
			for i := range n {
				rs = append(rs, cidrRes(rid(i+10), fmt.Sprintf("198.%d.%d.0/24", 18+i/256%2, i%256)))
			}
			m := initMsg(rs...)
			for b.Loop() {
				c, _ := New(Config{})
				c.HandlePortalMessage(m, t0)
			}
		})
	}
}
