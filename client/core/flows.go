package core

import (
	"net/netip"
	"slices"
	"time"

	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/tunnel"
	"github.com/snowgate/snowgate/node"
)

// packetQueue is a bounded FIFO of packets owned by the core; beyond its limit the oldest is dropped.
type packetQueue struct {
	pkts [][]byte
}

// push appends pkt and reports whether the oldest packet had to be dropped to stay within max.
func (q *packetQueue) push(pkt []byte, max int) (dropped bool) {
	if len(q.pkts) >= max {
		copy(q.pkts, q.pkts[1:])
		q.pkts[len(q.pkts)-1] = pkt
		return true
	}
	q.pkts = append(q.pkts, pkt)
	return false
}

func (q *packetQueue) len() int { return len(q.pkts) }

// take empties the queue and returns its packets in order.
func (q *packetQueue) take() [][]byte {
	p := q.pkts
	q.pkts = nil
	return p
}

// flow is the client's access to one resource: requested from the portal (not authorized yet: create_flow
// sent and resent, packets buffered), or authorized through a gateway (packets buffered while that
// gateway's connection comes up).
type flow struct {
	rid        string
	authorized bool
	gw         string

	// While not authorized.
	started     time.Time // first packet; the flow fails at started+FlowTimeout
	sent        bool      // a create_flow was pushed in portal session sentSession
	sentSession uint64
	lastSent    time.Time
	requests    int

	buf packetQueue // packets waiting for the flow or the connection
}

type gwState uint8

const (
	gwConnecting gwState = iota
	gwEstablished
)

func (s gwState) String() string {
	if s == gwEstablished {
		return "established"
	}
	return "connecting"
}

// gateway is a gateway the client has (or is setting up) a connection to.
type gateway struct {
	id         string
	params     node.ConnectionParams
	ipv4, ipv6 netip.Addr
	siteID     string
	state      gwState
	since      time.Time

	resources    map[string]struct{} // resources authorized through it
	nat          map[string]*natEntry
	allowed      []netip.Prefix // last AllowedIPs sent
	allowedDirty bool
}

// natState is the state of a DNS-resource NAT for one name on one gateway.
type natState uint8

const (
	natPending natState = iota
	natConfirmed
	natFailed
)

func (s natState) String() string {
	switch s {
	case natConfirmed:
		return "confirmed"
	case natFailed:
		return "failed"
	}
	return "pending"
}

type natEntry struct {
	rid      string
	state    natState
	failedAt time.Time
	held     packetQueue
}

// bufferForFlow keeps a packet for a resource without authorization, creating the flow (and asking the
// portal for it) on the first one.
func (c *Client) bufferForFlow(rid string, pkt []byte, now time.Time) {
	f := c.flows[rid]
	if f == nil {
		f = &flow{rid: rid, started: now}
		c.flows[rid] = f
		c.touch()
		c.log.Debug("first packet for a resource: requesting a flow", "resource", rid)
	}
	c.bufferIn(f, pkt)
	c.requestFlow(f, now)
}

// bufferIn appends pkt to a flow's buffer.
func (c *Client) bufferIn(f *flow, pkt []byte) {
	c.touch()
	c.ctr.buffered[bufFlow].Add(1)
	if f.buf.push(pkt, c.cfg.MaxFlowPackets) {
		c.ctr.dropped[dropBufferFull].Add(1)
	}
}

// requestFlow pushes create_flow for a pending flow when the portal is there and the last request is
// FlowRetryInterval old, or was pushed in an earlier portal session.
func (c *Client) requestFlow(f *flow, now time.Time) {
	if f.authorized || c.portal != tunnel.PortalJoined || f.buf.len() == 0 {
		return
	}
	if f.sent && f.sentSession == c.session && now.Sub(f.lastSent) < c.cfg.FlowRetryInterval {
		return
	}
	f.sent, f.sentSession, f.lastSent = true, c.session, now
	f.requests++
	c.ctr.flows[flowRequested].Add(1)
	c.touch()
	c.push(portalapi.CreateFlow{ResourceID: f.rid, ConnectedGatewayIDs: c.connectedGatewayIDs()})
}

// connectedGatewayIDs lists the gateways with an established connection, sorted.
func (c *Client) connectedGatewayIDs() []string {
	ids := []string{}
	for _, id := range sortedKeys(c.gateways) {
		if c.gateways[id].state == gwEstablished {
			ids = append(ids, id)
		}
	}
	return ids
}

// handleFlowCreated authorizes a pending flow through the portal's gateway: the connection is upserted
// (idempotent for a gateway already connected with the same parameters) with everything routed to the
// gateway as AllowedIPs, and the buffered packets go once the connection is up.
func (c *Client) handleFlowCreated(m portalapi.FlowCreated, now time.Time) {
	f := c.flows[m.ResourceID]
	res := c.resources[m.ResourceID]
	if f == nil || res == nil || f.authorized || !f.sent || f.sentSession != c.session {
		c.ctr.flows[flowStale].Add(1)
		c.log.Debug("flow_created nobody waits for ignored", "resource", m.ResourceID, "gateway", m.GatewayID)
		return
	}
	remoteKey, err1 := node.ParseKey(m.GatewayPublicKey)
	psk, err2 := node.ParseKey(m.PresharedKey)
	if err1 != nil || err2 != nil || m.GatewayID == "" || m.ClientIceCredentials.Username == "" ||
		m.ClientIceCredentials.Password == "" || m.GatewayIceCredentials.Username == "" || m.GatewayIceCredentials.Password == "" {
		c.log.Warn("malformed flow_created: the flow fails", "resource", m.ResourceID, "gateway", m.GatewayID)
		delete(c.flows, m.ResourceID)
		c.ctr.flows[flowFailed].Add(1)
		c.answerAll(f.buf.take(), icmpUnreachable)
		return
	}
	params := node.ConnectionParams{
		ID:           m.GatewayID,
		RemoteKey:    remoteKey,
		PresharedKey: psk,
		Local:        node.Credentials{Ufrag: m.ClientIceCredentials.Username, Password: m.ClientIceCredentials.Password},
		Remote:       node.Credentials{Ufrag: m.GatewayIceCredentials.Username, Password: m.GatewayIceCredentials.Password},
		Role:         node.RoleControlling,
	}
	g := c.gateways[m.GatewayID]
	if g == nil {
		g = &gateway{id: m.GatewayID, state: gwConnecting, since: now, resources: make(map[string]struct{}),
			nat: make(map[string]*natEntry)}
		c.gateways[g.id] = g
		c.log.Info("connecting to gateway", "gateway", g.id, "resource", m.ResourceID)
	} else if g.params != params {
		// The gateway restarted (new key) or the portal re-derived the credentials: the node replaces the
		// connection, so everything through it waits for the new one.
		c.log.Info("gateway connection replaced: parameters changed", "gateway", g.id)
		g.state, g.since = gwConnecting, now
		c.resetNAT(g)
	}
	g.params, g.siteID = params, m.SiteID
	c.setGatewayIPs(g, unmap(m.GatewayIPv4), unmap(m.GatewayIPv6))
	f.authorized, f.gw = true, g.id
	g.resources[m.ResourceID] = struct{}{}
	c.ctr.flows[flowCreated].Add(1)
	c.touch()
	g.allowed = c.allowedFor(g)
	g.allowedDirty = false
	c.emit(tunnel.NodeUpsert{Params: params, AllowedIPs: slices.Clone(g.allowed)})
	if g.state == gwEstablished {
		c.flushFlow(f, now)
	}
}

func unmap(a netip.Addr) netip.Addr {
	if a.IsValid() {
		return a.Unmap()
	}
	return a
}

// setGatewayIPs records a gateway's tunnel addresses (indexed to route packets to them directly).
func (c *Client) setGatewayIPs(g *gateway, v4, v6 netip.Addr) {
	if g.ipv4 == v4 && g.ipv6 == v6 {
		return
	}
	for _, a := range []netip.Addr{g.ipv4, g.ipv6} {
		if a.IsValid() && c.gatewayByIP[a] == g {
			delete(c.gatewayByIP, a)
		}
	}
	if g.ipv6 != v6 {
		c.resetNAT(g)
	}
	g.ipv4, g.ipv6 = v4, v6
	for _, a := range []netip.Addr{v4, v6} {
		if a.IsValid() {
			c.gatewayByIP[a] = g
		}
	}
	g.allowedDirty = true
}

// handleFlowCreationFailed ends a pending flow: its packets are answered with ICMP unreachable
// (administratively prohibited when the portal says forbidden).
func (c *Client) handleFlowCreationFailed(m portalapi.FlowCreationFailed, now time.Time) {
	f := c.flows[m.ResourceID]
	if f == nil || f.authorized {
		c.ctr.flows[flowStale].Add(1)
		c.log.Debug("flow_creation_failed nobody waits for ignored", "resource", m.ResourceID, "reason", string(m.Reason))
		return
	}
	c.log.Info("flow refused by the portal", "resource", m.ResourceID, "reason", string(m.Reason))
	delete(c.flows, m.ResourceID)
	c.ctr.flows[flowFailed].Add(1)
	c.touch()
	kind := icmpUnreachable
	if m.Reason == portalapi.FailForbidden {
		kind = icmpProhibited
	}
	c.answerAll(f.buf.take(), kind)
}

// flushGateway sends what waited for a gateway's connection, resource by resource in order.
func (c *Client) flushGateway(g *gateway, now time.Time) {
	for _, rid := range sortedKeys(g.resources) {
		if f := c.flows[rid]; f != nil && f.authorized && f.gw == g.id {
			c.flushFlow(f, now)
		}
	}
}

// flushFlow routes a flow's buffered packets again (they go to the tunnel, or wait for a NAT).
func (c *Client) flushFlow(f *flow, now time.Time) {
	pkts := f.buf.take()
	if len(pkts) > 0 {
		c.log.Debug("sending buffered packets", "resource", f.rid, "gateway", f.gw, "packets", len(pkts))
	}
	for _, pkt := range pkts {
		c.reroute(pkt, now)
	}
}

// dropMode says what happens to the packets waiting on a dropped gateway.
type dropMode uint8

const (
	dropUnreachable dropMode = iota // answered with ICMP unreachable
	dropReroute                     // routed again: new flows are requested at once
	dropRequeue                     // kept in their flows, which wait for a new create_flow answer
)

// maxFailedGateways bounds the dropped gateways Status remembers.
const maxFailedGateways = 16

// dropGateway forgets a gateway whose connection failed or went away, removes the connection from the
// node, and disposes of the packets that waited on it (see dropMode).
func (c *Client) dropGateway(g *gateway, mode dropMode, reason string, now time.Time) {
	c.emit(tunnel.NodeRemove{ID: g.id})
	c.failed = append(c.failed, FailedGatewayStatus{ID: g.id, Reason: reason, At: now})
	if len(c.failed) > maxFailedGateways {
		c.failed = slices.Delete(c.failed, 0, len(c.failed)-maxFailedGateways)
	}
	outcome := flowConnectionFailed
	switch {
	case mode == dropRequeue:
		outcome = flowNoRelays
	case reason == "goodbye":
		outcome = flowGoodbye
	}
	if mode == dropRequeue {
		// The flows stay, unauthorized, with their packets; they are requested again.
		var held [][]byte
		for rid := range g.resources {
			if f := c.flows[rid]; f != nil && f.authorized && f.gw == g.id {
				// f.sent and f.lastSent stay: within this portal session the flow is requested again
				// only after FlowRetryInterval (a new session, after the reconnect, asks at once), so
				// relays that keep failing cannot turn create_flow → ErrNoRelays into a busy loop.
				f.authorized, f.gw = false, ""
				c.ctr.flows[outcome].Add(1)
			}
		}
		g.resources = nil
		for _, e := range g.nat {
			held = append(held, e.held.take()...)
		}
		pkts, _ := c.forgetGateway(g)
		held = append(held, pkts...)
		for _, pkt := range held {
			c.reroute(pkt, now)
		}
		return
	}
	pkts, n := c.forgetGateway(g)
	c.ctr.flows[outcome].Add(uint64(n))
	if mode == dropReroute {
		for _, pkt := range pkts {
			c.reroute(pkt, now)
		}
		return
	}
	c.answerAll(pkts, icmpUnreachable)
}

// forgetGateway removes a gateway and its flows from the core's state and returns, in order, the
// packets that waited on it (flow buffers, then NAT holds) and how many flows ended.
func (c *Client) forgetGateway(g *gateway) ([][]byte, int) {
	delete(c.gateways, g.id)
	for _, a := range []netip.Addr{g.ipv4, g.ipv6} {
		if a.IsValid() && c.gatewayByIP[a] == g {
			delete(c.gatewayByIP, a)
		}
	}
	delete(c.heldAdded, g.id)
	delete(c.heldRemoved, g.id)
	var pkts [][]byte
	n := 0
	for _, rid := range sortedKeys(g.resources) {
		f := c.flows[rid]
		if f == nil || !f.authorized || f.gw != g.id {
			continue
		}
		delete(c.flows, rid)
		n++
		pkts = append(pkts, f.buf.take()...)
	}
	for _, name := range sortedKeys(g.nat) {
		pkts = append(pkts, g.nat[name].held.take()...)
	}
	g.nat = nil
	if c.p2p != nil && g.ipv6.IsValid() {
		c.p2p.RemovePeer(g.ipv6)
	}
	c.touch()
	return pkts, n
}
