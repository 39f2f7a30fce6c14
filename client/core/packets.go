package core

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"time"

	"github.com/snowgate/snowgate/client/dns"
	"github.com/snowgate/snowgate/gateway/filter"
	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/p2pcontrol"
	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/internal/tunnel"
)

// HandleTunInput handles an IP packet an application sent into the TUN device. DNS to the sentinels is
// answered locally or handed on (Stop); a packet to a resource whose flow is up passes (Pass: wireguard-go
// sends it to the gateway its AllowedIPs name); a packet to a resource without a flow is copied into the
// flow's buffer and create_flow sent (Stop); a packet a filter denies is answered with ICMP
// administratively prohibited (Stop); anything else is dropped and counted (Stop).
func (c *Client) HandleTunInput(pkt []byte, now time.Time) tunnel.Verdict {
	p, err := ippacket.Parse(pkt)
	if err != nil {
		c.ctr.dropped[dropMalformed].Add(1)
		return tunnel.Stop
	}
	if !c.configured {
		c.ctr.dropped[dropNotConfigured].Add(1)
		return tunnel.Stop
	}
	dst := p.Dst()
	if dns.SentinelRangeV4.Contains(dst) || dns.SentinelRangeV6.Contains(dst) {
		c.handleSentinel(p, now)
		return tunnel.Stop
	}
	if src := p.Src(); src != c.ipv4 && src != c.ipv6 || !src.IsValid() {
		c.ctr.dropped[dropSource].Add(1)
		return tunnel.Stop
	}
	return c.route(p, p.Bytes(), false, now)
}

// reroute routes a packet the core owns (from a buffer) again: it goes out with SendToTunnel, waits
// again, or is answered or dropped.
func (c *Client) reroute(pkt []byte, now time.Time) {
	p, err := ippacket.Parse(pkt)
	if err != nil {
		c.ctr.dropped[dropMalformed].Add(1)
		return
	}
	c.route(p, p.Bytes(), true, now)
}

// route decides where a packet goes. owned says whether the core owns pkt (a buffered packet: delivered
// with SendToTunnel) or not (a packet of the TUN batch: delivered with Pass, copied if kept).
func (c *Client) route(p ippacket.Packet, pkt []byte, owned bool, now time.Time) tunnel.Verdict {
	dst := p.Dst()
	if dns.TunnelRangeV4.Contains(dst) || dns.TunnelRangeV6.Contains(dst) {
		// A peer's own address: straight to that gateway, if connected.
		if g := c.gatewayByIP[dst]; g != nil && g.state == gwEstablished {
			return c.deliver(pkt, owned)
		}
		c.ctr.dropped[dropNoResource].Add(1)
		return tunnel.Stop
	}
	rid, v := c.classify(p)
	switch v {
	case filter.VerdictNoResource:
		c.ctr.dropped[dropNoResource].Add(1)
		return tunnel.Stop
	case filter.VerdictDenied:
		c.answer(p, icmpProhibited)
		return tunnel.Stop
	}
	f := c.flows[rid]
	if f == nil || !f.authorized {
		c.bufferForFlow(rid, own(pkt, owned), now)
		return tunnel.Stop
	}
	g := c.gateways[f.gw]
	if g == nil {
		// Cannot happen: a gateway takes its flows along when it goes. Start over.
		delete(c.flows, rid)
		c.bufferForFlow(rid, own(pkt, owned), now)
		return tunnel.Stop
	}
	if g.state != gwEstablished {
		c.bufferIn(f, own(pkt, owned))
		return tunnel.Stop
	}
	if res := c.resources[rid]; res != nil && res.kind == filter.KindDNS {
		if !c.natReady(g, rid, dst, pkt, owned, now) {
			return tunnel.Stop
		}
	}
	return c.deliver(pkt, owned)
}

// classify returns the resource a packet belongs to and what its filters say: a proxy IP of a name that
// routes to a DNS resource (that resource's own filters), else the routing table (CIDR resources by
// longest prefix, the Internet resource; proxy, sentinel and tunnel ranges are never the Internet's).
func (c *Client) classify(p ippacket.Packet) (string, filter.Verdict) {
	dst := p.Dst()
	if ne := c.nameByIP[dst]; ne != nil && ne.rid != "" {
		if res := c.resources[ne.rid]; res != nil && stackAllows(res.stack, dst) {
			if res.set.AllowsPacket(p) {
				return ne.rid, filter.VerdictAllow
			}
			return ne.rid, filter.VerdictDenied
		}
	}
	return c.table.Check(p)
}

// stackAllows reports whether a DNS resource's ip_stack lets its names route addresses of a's family.
func stackAllows(st dns.IPStack, a netip.Addr) bool {
	if a.Is4() {
		return st != dns.IPv6Only
	}
	return st != dns.IPv4Only
}

// deliver hands a packet to the tunnel.
func (c *Client) deliver(pkt []byte, owned bool) tunnel.Verdict {
	c.ctr.sent.Add(1)
	if owned {
		c.toTunnel(pkt)
		return tunnel.Stop
	}
	return tunnel.Pass
}

// own returns pkt if the core owns it, else a copy.
func own(pkt []byte, owned bool) []byte {
	if owned {
		return pkt
	}
	return slices.Clone(pkt)
}

// answerAll answers buffered packets with an ICMP error of kind.
func (c *Client) answerAll(pkts [][]byte, kind icmpKind) {
	for _, pkt := range pkts {
		p, err := ippacket.Parse(pkt)
		if err != nil {
			c.ctr.dropped[dropMalformed].Add(1)
			continue
		}
		c.answer(p, kind)
	}
}

// answer writes an ICMP error for p to the TUN device: destination unreachable, administratively
// prohibited (IPv4 type 3 code 13, IPv6 type 1 code 1) or host/address unreachable (IPv4 type 3 code 1,
// IPv6 type 1 code 3). ICMP errors and non-first fragments get no answer (RFC 1812, RFC 4443): dropped.
func (c *Client) answer(p ippacket.Packet, kind icmpKind) {
	buf, err := buildICMPError(p, kind)
	if err != nil {
		c.ctr.dropped[dropUnanswerable].Add(1)
		c.log.Debug("packet not answered", "dst", p.Dst(), telemetry.Err(err))
		return
	}
	c.ctr.icmp[kind].Add(1)
	c.toTUN(buf)
}

// buildICMPError builds the ICMP error answering p.
func buildICMPError(p ippacket.Packet, kind icmpKind) ([]byte, error) {
	buf := make([]byte, min(len(p.Bytes())+ippacket.IPv6HeaderLen+ippacket.ICMPHeaderLen, 1280))
	n, err := ippacket.BuildICMPProhibited(buf, p)
	if err != nil {
		return nil, err
	}
	buf = buf[:n]
	if kind == icmpUnreachable {
		if p.Version() == 4 {
			patchICMPCode(buf, ippacket.IPv4MinHeaderLen, 1) // host unreachable
		} else {
			patchICMPCode(buf, ippacket.IPv6HeaderLen, 3) // address unreachable
		}
	}
	return buf, nil
}

// patchICMPCode sets the code of the ICMP message at hl and updates its checksum incrementally (RFC 1624,
// eqn. 3): the code shares a 16-bit word with the type.
func patchICMPCode(b []byte, hl int, code byte) {
	old := uint32(binary.BigEndian.Uint16(b[hl:]))
	b[hl+1] = code
	nw := uint32(binary.BigEndian.Uint16(b[hl:]))
	hc := uint32(binary.BigEndian.Uint16(b[hl+2:]))
	sum := (^hc & 0xFFFF) + (^old & 0xFFFF) + nw
	for sum>>16 != 0 {
		sum = sum&0xFFFF + sum>>16
	}
	binary.BigEndian.PutUint16(b[hl+2:], ^uint16(sum))
}

// HandleNetworkInput handles a packet a gateway sent (decrypted and source-checked by wireguard-go):
// control-protocol packets are the core's (Stop); everything else, answers of upstream resolvers inside
// resources included, goes to the TUN device (Pass).
func (c *Client) HandleNetworkInput(pkt []byte, now time.Time) tunnel.Verdict {
	if !p2pcontrol.IsControl(pkt) {
		return tunnel.Pass
	}
	c.touch()
	if c.p2p == nil {
		c.ctr.dropped[dropNoGateway].Add(1)
		return tunnel.Stop
	}
	if err := c.p2p.HandlePacket(pkt, now); err != nil {
		c.log.Debug("control packet dropped", telemetry.Err(err))
	}
	c.drainP2P(now)
	return tunnel.Stop
}

// handleSentinel handles a packet to the sentinel range: UDP DNS to the stub resolver, TCP DNS to the
// driver's TCP stack, anything else dropped.
func (c *Client) handleSentinel(p ippacket.Packet, now time.Time) {
	dst := p.Dst()
	if _, ok := c.sentinels[dst]; !ok {
		c.ctr.dropped[dropSentinel].Add(1)
		return
	}
	switch p.Protocol() {
	case ippacket.ProtoUDP:
		sport, dport, err := p.Ports()
		if err != nil || dport != 53 {
			c.ctr.dropped[dropSentinel].Add(1)
			return
		}
		payload, err := p.UDPPayload()
		if err != nil {
			c.ctr.dropped[dropMalformed].Add(1)
			return
		}
		c.handleUDPQuery(netip.AddrPortFrom(p.Src(), sport), netip.AddrPortFrom(dst, 53), payload, now)
	case ippacket.ProtoTCP:
		if _, dport, err := p.Ports(); err != nil || dport != 53 {
			c.ctr.dropped[dropSentinel].Add(1)
			return
		}
		if c.resolver == nil {
			c.ctr.dropped[dropDNSUnavailable].Add(1)
			return
		}
		c.emit(DNSTCPPacket{Packet: slices.Clone(p.Bytes())})
	default:
		c.ctr.dropped[dropSentinel].Add(1)
	}
}
