package core

import (
	"net/netip"
	"strings"
	"time"

	"github.com/snowgate/snowgate/internal/p2pcontrol"
	"github.com/snowgate/snowgate/internal/telemetry"
)

// newP2P replaces the control-protocol client (for a new tunnel IPv6 address, or after roaming): every
// gateway's NAT state starts over, and packets held for a NAT go back to their flows' buffers.
func (c *Client) newP2P() {
	for _, id := range sortedKeys(c.gateways) {
		c.resetNAT(c.gateways[id])
	}
	c.p2p = nil
	if !c.ipv6.IsValid() || !c.ipv6.Is6() {
		c.log.Warn("no tunnel IPv6 address: DNS resources cannot be reached")
		return
	}
	p, err := p2pcontrol.NewClient(p2pcontrol.ClientConfig{Local: c.ipv6, Logger: c.log})
	if err != nil {
		c.log.Warn("control protocol unavailable: DNS resources cannot be reached", telemetry.Err(err))
		return
	}
	c.p2p = p
	c.touch()
}

// resetNAT forgets a gateway's NAT state: the gateway (restarted, or reached through a new connection)
// sets it up again on the next packet. Held packets go back to their flow's buffer (sent when the
// connection is up), or are answered unreachable when the flow is gone.
func (c *Client) resetNAT(g *gateway) {
	for name, e := range g.nat {
		pkts := e.held.take()
		if f := c.flows[e.rid]; f != nil && f.authorized && f.gw == g.id {
			for _, pkt := range pkts {
				c.bufferIn(f, pkt)
			}
		} else {
			c.answerAll(pkts, icmpUnreachable)
		}
		delete(g.nat, name)
	}
	if c.p2p != nil && g.ipv6.IsValid() {
		c.p2p.RemovePeer(g.ipv6)
	}
}

// natReady reports whether a packet to proxy IP dst of DNS resource rid can go to gateway g now: the
// gateway confirmed the NAT for the name. Otherwise the packet is held (the first one sends AssignedIPs,
// which the control-protocol client retransmits until the gateway answers), or answered unreachable
// while the gateway's last refusal is younger than FlowRetryInterval.
func (c *Client) natReady(g *gateway, rid string, dst netip.Addr, pkt []byte, owned bool, now time.Time) bool {
	ne := c.nameByIP[dst]
	if ne == nil || ne.rid != rid {
		c.ctr.dropped[dropNoResource].Add(1)
		return false
	}
	e := g.nat[ne.name]
	var prior [][]byte // packets held for the name's previous resource, older than pkt
	if e != nil && e.rid != rid {
		// The name moved to another resource of the same gateway: set the NAT up for that one.
		prior = e.held.take()
		delete(g.nat, ne.name)
		if c.p2p != nil {
			c.p2p.Forget(g.ipv6, ne.name)
		}
		e = nil
	}
	switch {
	case e != nil && e.state == natConfirmed:
		return true
	case e != nil && e.state == natPending:
		c.hold(e, own(pkt, owned))
		return false
	case e != nil && e.state == natFailed && now.Sub(e.failedAt) < c.cfg.FlowRetryInterval:
		c.answerRaw(pkt, icmpUnreachable)
		return false
	}
	if c.p2p == nil || !g.ipv6.IsValid() {
		c.answerAll(prior, icmpUnreachable)
		c.answerRaw(pkt, icmpUnreachable)
		return false
	}
	if _, err := c.p2p.Assign(g.ipv6, rid, ne.name, c.routedIPs(ne), now); err != nil {
		c.log.Warn("DNS-resource NAT cannot be set up", "name", ne.name, "resource", rid, "gateway", g.id, telemetry.Err(err))
		c.answerAll(prior, icmpUnreachable)
		c.answerRaw(pkt, icmpUnreachable)
		return false
	}
	if e == nil {
		e = &natEntry{rid: rid}
		g.nat[ne.name] = e
	}
	e.state = natPending
	c.touch()
	if st, _ := c.p2p.State(g.ipv6, ne.name); st == p2pcontrol.StateConfirmed {
		e.state = natConfirmed
		for _, p := range prior {
			c.deliver(p, true)
		}
		return true
	}
	for _, p := range prior {
		if e.held.push(p, c.cfg.MaxNATPackets) {
			c.ctr.dropped[dropNATBufferFull].Add(1)
		}
	}
	c.hold(e, own(pkt, owned))
	c.drainP2P(now)
	return false
}

// hold keeps a packet until the gateway answers for its name.
func (c *Client) hold(e *natEntry, pkt []byte) {
	c.ctr.buffered[bufNAT].Add(1)
	if e.held.push(pkt, c.cfg.MaxNATPackets) {
		c.ctr.dropped[dropNATBufferFull].Add(1)
	}
}

// answerRaw answers a packet given as bytes.
func (c *Client) answerRaw(pkt []byte, kind icmpKind) {
	c.answerAll([][]byte{pkt}, kind)
}

// drainP2P sends the control client's packets and handles its events, until neither is left.
func (c *Client) drainP2P(now time.Time) {
	for c.p2p != nil {
		progress := false
		for {
			t, ok := c.p2p.PollTransmit()
			if !ok {
				break
			}
			progress = true
			if g := c.gatewayByIP[t.Peer]; g != nil && g.state == gwEstablished {
				c.toTunnel(t.Packet)
			} else {
				c.ctr.dropped[dropNoGateway].Add(1)
			}
		}
		ev, ok := c.p2p.PollEvent()
		if !ok && !progress {
			return
		}
		if ok {
			c.handleP2PEvent(ev, now)
		}
	}
}

// handleP2PEvent handles the end of an assignment, or a gateway's Goodbye.
func (c *Client) handleP2PEvent(ev p2pcontrol.ClientEvent, now time.Time) {
	g := c.gatewayByIP[ev.Peer]
	if g == nil {
		return
	}
	if ev.Kind == p2pcontrol.EventPeerGoodbye {
		c.log.Info("gateway said goodbye: its flows are created again on demand", "gateway", g.id)
		c.dropGateway(g, dropReroute, "goodbye", now)
		return
	}
	e := g.nat[ev.Domain]
	if e == nil || !strings.EqualFold(e.rid, ev.Resource) || e.state != natPending {
		return
	}
	c.touch()
	switch ev.Kind {
	case p2pcontrol.EventConfirmed:
		e.state = natConfirmed
		for _, pkt := range e.held.take() {
			c.reroute(pkt, now)
		}
	case p2pcontrol.EventRejected, p2pcontrol.EventGaveUp:
		c.log.Info("gateway did not set up the DNS-resource NAT", "gateway", g.id, "name", ev.Domain, "outcome", ev.Kind.String())
		e.state, e.failedAt = natFailed, now
		c.answerAll(e.held.take(), icmpUnreachable)
	case p2pcontrol.EventAborted:
		// Only the gateway's Goodbye aborts an assignment the core still tracks (the core takes the held
		// packets itself before it forgets a peer or a name); the Goodbye that follows reroutes them.
	}
}
