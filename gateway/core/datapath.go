package core

import (
	"time"

	"github.com/snowgate/snowgate/gateway/filter"
	"github.com/snowgate/snowgate/gateway/nat"
	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/p2pcontrol"
	"github.com/snowgate/snowgate/internal/tunnel"
)

// replyBufSize holds any ICMP error ippacket builds (at most 1280 bytes, for IPv6).
const replyBufSize = 1280

func (g *Gateway) drop(r dropReason) { g.m.dropped[r].Add(1) }

// HandleNetworkInput handles a packet a client sent (decrypted by wireguard-go, which checked its source
// against the client's AllowedIPs) on its way to a resource:
//   - a control-protocol packet goes to the control protocol (Stop);
//   - the source must be a known client's tunnel address, and an ICMP error from a client is dropped;
//   - a destination in the tunnel ranges (another client) is never forwarded;
//   - the client's filter table decides on the destination before NAT (a DNS resource's proxy IP is
//     checked with that resource's filters, seed #6806): allowed → the DNS-resource NAT rewrites it in
//     place → Pass; denied by a filter → ICMP administratively prohibited back to the client; no resource
//     → dropped (answered ICMP network unreachable when only the Internet resource was in question, which
//     excludes the address, as Firezone does);
//   - a proxy IP without a real IP of its family answers ICMP network unreachable.
//
// Every drop is counted by reason.
func (g *Gateway) HandleNetworkInput(pkt []byte, now time.Time) tunnel.Verdict {
	g.expireDue(now)
	if p2pcontrol.IsControl(pkt) {
		g.handleControl(pkt, now)
		return tunnel.Stop
	}
	p, err := ippacket.Parse(pkt)
	if err != nil {
		g.drop(reasonMalformed)
		return tunnel.Stop
	}
	c := g.byIP[p.Src()]
	if c == nil {
		g.drop(reasonSpoofedSource)
		return tunnel.Stop
	}
	if p.IsICMPError() {
		g.drop(reasonICMPError)
		return tunnel.Stop
	}
	dst := p.Dst()
	if containedIn(g.cfg.TunnelPrefixes, dst) {
		g.drop(reasonPeerDestination)
		return tunnel.Stop
	}
	switch _, v := c.filters.Check(p); v {
	case filter.VerdictDenied:
		g.m.filtered.Add(1)
		g.reply(ippacket.BuildICMPProhibited, p)
		return tunnel.Stop
	case filter.VerdictNoResource:
		if c.internet > 0 && !containedIn(g.cfg.ProxyPrefixes, dst) && containedIn(g.cfg.InternetExcludes, dst) {
			g.drop(reasonInternetExcluded)
			g.reply(buildUnreachable, p)
			return tunnel.Stop
		}
		g.drop(reasonUnauthorized)
		return tunnel.Stop
	}
	switch v, _ := g.nat.TranslateOutgoing(pkt, now); v {
	case nat.Translated:
		g.natTouched(now)
	case nat.NotNAT:
	case nat.Unreachable:
		g.drop(reasonNATUnreachable)
		g.reply(buildUnreachable, p)
		return tunnel.Stop
	default:
		g.drop(reasonNATDrop)
		return tunnel.Stop
	}
	g.m.toResource.Add(1)
	return tunnel.Pass
}

// buildUnreachable is nat.BuildUnreachable in the shape of ippacket.BuildICMPProhibited.
func buildUnreachable(buf []byte, p ippacket.Packet) (int, error) {
	return nat.BuildUnreachable(buf, p.Bytes())
}

// reply builds an ICMP error for p into a new buffer and sends it to the client through the tunnel.
// Packets that must not be answered (non-first fragments) are not.
func (g *Gateway) reply(build func([]byte, ippacket.Packet) (int, error), p ippacket.Packet) {
	// The reply is an IP header, 8 bytes of ICMP and as much of the packet as fits in 576 (IPv4) or 1280
	// (IPv6) bytes.
	size := min(40+8+len(p.Bytes()), replyBufSize)
	if p.Version() == 4 {
		size = min(20+8+len(p.Bytes()), 576)
	}
	buf := make([]byte, size)
	n, err := build(buf, p)
	if err != nil {
		return
	}
	g.sendToTunnel(buf[:n:n])
}

// HandleTunInput handles a packet from a resource (read from the TUN device) on its way to a client:
//   - its destination must be a known client's tunnel address, and a control-protocol packet from the TUN
//     device is dropped (only the gateway itself speaks it, through SendToTunnel);
//   - the DNS-resource NAT translates replies of its sessions (the proxy IP becomes the source again) and
//     drops replies of expired sessions;
//   - ICMP errors for the client pass; anything else must come from a resource the client is authorised
//     for, whose filters allow its source port (Firezone checks replies the same way), else it is dropped.
func (g *Gateway) HandleTunInput(pkt []byte, now time.Time) tunnel.Verdict {
	g.expireDue(now)
	if p2pcontrol.IsControl(pkt) {
		g.drop(reasonControlFromTUN)
		return tunnel.Stop
	}
	p, err := ippacket.Parse(pkt)
	if err != nil {
		g.drop(reasonMalformed)
		return tunnel.Stop
	}
	c := g.byIP[p.Dst()]
	if c == nil {
		g.drop(reasonUnknownClient)
		return tunnel.Stop
	}
	switch v, _ := g.nat.TranslateIncoming(pkt, now); v {
	case nat.Translated:
		g.natTouched(now)
	case nat.NotNAT:
	default:
		g.drop(reasonNATExpired)
		return tunnel.Stop
	}
	if !p.IsICMPError() && !allowsFrom(c.filters, p) {
		g.drop(reasonUnauthorizedSource)
		return tunnel.Stop
	}
	g.m.toClient.Add(1)
	return tunnel.Pass
}

// allowsFrom reports whether a resource in t covers p's source and its filters allow p's protocol and
// source port: the mirror of filter.Table.Check for packets towards the client.
func allowsFrom(t *filter.Table, p ippacket.Packet) bool {
	_, set, ok := t.Lookup(p.Src())
	if !ok {
		return false
	}
	if set.PermitsAll() {
		return true
	}
	switch proto := p.Protocol(); proto {
	case ippacket.ProtoTCP, ippacket.ProtoUDP:
		sp, _, err := p.Ports()
		return err == nil && set.Allows(proto, sp)
	case ippacket.ProtoICMP:
		return p.Version() == 4 && set.ICMP()
	case ippacket.ProtoICMPv6:
		return p.Version() == 6 && set.ICMP()
	}
	return false
}
