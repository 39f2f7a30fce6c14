package core

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/snowgate/snowgate/client/dns"
	"github.com/snowgate/snowgate/gateway/filter"
	"github.com/snowgate/snowgate/internal/p2pcontrol"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/internal/tunnel"
	"github.com/snowgate/snowgate/node"
)

// Client is the client's sans-IO core: it implements tunnel.Core (see the package doc). It is not safe for
// concurrent use; the tunnel.Driver serialises every call.
type Client struct {
	cfg Config
	log *slog.Logger
	ctr *counters

	portal tunnel.PortalState
	// session grows with every portal session (joined) and every roam: a create_flow pushed in an older
	// session is no longer in flight (its answer cannot come, or carries the key of before the roam), so
	// it is sent again at once and a flow_created is only accepted for the current session's request.
	session       uint64
	lastReconnect time.Time

	// Interface and DNS configuration.
	configured       bool
	ipv4, ipv6       netip.Addr
	searchDomain     string
	portalUpstreams  []netip.AddrPort
	upstreams        []netip.AddrPort // effective: the portal's, else Config.SystemResolvers
	upstreamsApplied bool
	resolver         *dns.Resolver // nil: no usable upstream
	resolverGen      uint64        // grows with every rebuild (see encodeFwd)
	ifaceSet         bool
	sentinels        map[netip.Addr]struct{}
	dnsScratch       []byte

	// Resources and routing.
	resources map[string]*resource
	table     *filter.Table
	dnsExact  map[string]*resource // exact DNS patterns → resource (lowest id)
	dnsWild   []*resource          // wildcard DNS resources, by id
	cidrOwner map[netip.Prefix]string
	internet  string // id of the Internet resource whose 0.0.0.0/0 is routed ("" none)
	names     map[string]*nameEntry
	nameByIP  map[netip.Addr]*nameEntry
	nameSeq   int
	relays    map[string]node.Relay

	// Flows and gateways.
	flows       map[string]*flow // by resource id
	gateways    map[string]*gateway
	gatewayByIP map[netip.Addr]*gateway
	failed      []FailedGatewayStatus // the last few gateways dropped, for Status
	p2p         *p2pcontrol.Client

	// ICE candidates held while the portal is away, by gateway id.
	heldAdded   map[string][]string
	heldRemoved map[string][]string

	// Outputs.
	actions   []tunnel.Action
	head      int
	lastDNS   *SetDNS
	lastRoute *SetRoutes

	// Cached PollTimeout; dirty forces a recomputation.
	dirty    bool
	deadline time.Time
	hasDL    bool
}

// New returns a Client waiting for the portal's init.
func New(cfg Config) (*Client, error) {
	cfg.SystemResolvers = slices.Clone(cfg.SystemResolvers)
	if err := cfg.check(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg.Logger = log
	table, err := filter.NewTable(filter.Options{InternetExcludes: internetExcludes})
	if err != nil {
		return nil, fmt.Errorf("client core: routing table: %w", err)
	}
	c := &Client{
		cfg:         cfg,
		log:         log,
		ctr:         &counters{},
		portal:      tunnel.PortalConnecting,
		resources:   make(map[string]*resource),
		table:       table,
		dnsExact:    make(map[string]*resource),
		cidrOwner:   make(map[netip.Prefix]string),
		names:       make(map[string]*nameEntry),
		nameByIP:    make(map[netip.Addr]*nameEntry),
		relays:      make(map[string]node.Relay),
		flows:       make(map[string]*flow),
		gateways:    make(map[string]*gateway),
		gatewayByIP: make(map[netip.Addr]*gateway),
		heldAdded:   make(map[string][]string),
		heldRemoved: make(map[string][]string),
		sentinels:   make(map[netip.Addr]struct{}),
		dnsScratch:  make([]byte, 0, 1500),
	}
	if cfg.MeterProvider != nil {
		if err := c.ctr.register(cfg.MeterProvider); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// internetExcludes are the prefixes the Internet resource never covers: the DNS proxy and sentinel
// ranges (a proxy IP no name holds is no resource, as in Firezone) and the tunnel ranges (the peers'
// own addresses are routed to their peers, never to the Internet gateway).
var internetExcludes = []netip.Prefix{
	dns.ProxyRangeV4, dns.ProxyRangeV6, dns.SentinelRangeV4, dns.SentinelRangeV6, dns.TunnelRangeV4, dns.TunnelRangeV6,
}

// --- outputs ---

func (c *Client) emit(a tunnel.Action) { c.actions = append(c.actions, a) }

// toTunnel queues a packet for wireguard-go (SendToTunnel), merged with an immediately preceding one.
func (c *Client) toTunnel(pkt []byte) {
	if n := len(c.actions); n > c.head {
		if s, ok := c.actions[n-1].(tunnel.SendToTunnel); ok {
			c.actions[n-1] = tunnel.SendToTunnel{Packets: append(s.Packets, pkt)}
			return
		}
	}
	c.emit(tunnel.SendToTunnel{Packets: [][]byte{pkt}})
}

// toTUN queues a packet for the OS TUN device (WriteToTUN), merged with an immediately preceding one.
func (c *Client) toTUN(pkt []byte) {
	if n := len(c.actions); n > c.head {
		if s, ok := c.actions[n-1].(tunnel.WriteToTUN); ok {
			c.actions[n-1] = tunnel.WriteToTUN{Packets: append(s.Packets, pkt)}
			return
		}
	}
	c.emit(tunnel.WriteToTUN{Packets: [][]byte{pkt}})
}

// push queues a portal push.
func (c *Client) push(msg portalapi.Message) {
	c.emit(tunnel.PortalPush{Event: msg.Event(), Payload: msg})
}

// PollAction returns the next action to carry out.
func (c *Client) PollAction() (tunnel.Action, bool) {
	if c.head >= len(c.actions) {
		c.actions, c.head = c.actions[:0], 0
		return nil, false
	}
	a := c.actions[c.head]
	c.actions[c.head] = nil
	c.head++
	return a, true
}

// --- timers ---

// touch marks the cached deadline stale.
func (c *Client) touch() { c.dirty = true }

// PollTimeout returns when HandleTimeout must next be called. It is cached: recomputed only after a
// change that can move a deadline, so the driver may call it after every batch.
func (c *Client) PollTimeout() (time.Time, bool) {
	if !c.dirty {
		return c.deadline, c.hasDL
	}
	c.dirty = false
	var dl time.Time
	has := false
	consider := func(t time.Time, ok bool) {
		if ok && (!has || t.Before(dl)) {
			dl, has = t, true
		}
	}
	for _, f := range c.flows {
		if f.authorized {
			continue
		}
		consider(f.started.Add(c.cfg.FlowTimeout), true)
		if c.portal == tunnel.PortalJoined && f.buf.len() > 0 {
			if f.sent {
				consider(f.lastSent.Add(c.cfg.FlowRetryInterval), true)
			} else {
				consider(f.started, true)
			}
		}
	}
	for _, g := range c.gateways {
		if g.state == gwConnecting {
			consider(g.since.Add(c.cfg.ConnectTimeout), true)
		}
	}
	if c.p2p != nil {
		consider(c.p2p.PollTimeout())
	}
	if c.resolver != nil {
		consider(c.resolver.PollTimeout())
	}
	c.deadline, c.hasDL = dl, has
	return dl, has
}

// HandleTimeout advances the core's timers to now: resolver deadlines, control-protocol retransmits,
// create_flow resends and the flow and connection bounds.
func (c *Client) HandleTimeout(now time.Time) {
	c.touch()
	if c.resolver != nil {
		if res := c.resolver.HandleTimeout(now); len(res.Expired) > 0 {
			ids := make([]dns.ForwardID, len(res.Expired))
			for i, id := range res.Expired {
				ids[i] = c.encodeFwd(id)
			}
			c.emit(DNSCancel{IDs: ids}) // their upstream exchanges are abandoned
		}
		c.drainResolver(now)
	}
	if c.p2p != nil {
		c.p2p.HandleTimeout(now)
		c.drainP2P(now)
	}
	for _, rid := range sortedKeys(c.flows) {
		f := c.flows[rid]
		if f == nil || f.authorized {
			continue
		}
		if !now.Before(f.started.Add(c.cfg.FlowTimeout)) {
			c.log.Debug("no answer to create_flow in time: buffered packets answered unreachable",
				"resource", rid, "requests", f.requests, "buffered", f.buf.len())
			c.ctr.flows[flowTimedOut].Add(1)
			delete(c.flows, rid)
			c.answerAll(f.buf.take(), icmpUnreachable)
			continue
		}
		c.requestFlow(f, now)
	}
	for _, id := range sortedKeys(c.gateways) {
		g := c.gateways[id]
		if g != nil && g.state == gwConnecting && !now.Before(g.since.Add(c.cfg.ConnectTimeout)) {
			c.log.Warn("gateway connection did not come up in time", "gateway", id, "waited", c.cfg.ConnectTimeout)
			c.dropGateway(g, dropUnreachable, "connect timeout", now)
		}
	}
}

// --- portal ---

// HandlePortalState reports a change of the portal session. While it is away, existing connections and
// DNS for known names keep working; create_flow and ICE candidates wait for it to come back.
func (c *Client) HandlePortalState(s tunnel.PortalState, now time.Time) {
	prev := c.portal
	c.portal = s
	c.touch()
	if s == tunnel.PortalJoined && prev != tunnel.PortalJoined {
		c.session++
		c.portalJoined(now)
	}
}

// portalJoined flushes what waited for the portal: held ICE candidates, create_flow of pending flows.
func (c *Client) portalJoined(now time.Time) {
	for _, id := range sortedKeys(c.heldAdded) {
		if cands := c.heldAdded[id]; len(cands) > 0 {
			c.push(portalapi.BroadcastGatewayIceCandidates{GatewayIDs: []string{id}, Candidates: cands})
		}
	}
	for _, id := range sortedKeys(c.heldRemoved) {
		if cands := c.heldRemoved[id]; len(cands) > 0 {
			c.push(portalapi.BroadcastInvalidatedGatewayIceCandidates{GatewayIDs: []string{id}, Candidates: cands})
		}
	}
	clear(c.heldAdded)
	clear(c.heldRemoved)
	for _, rid := range sortedKeys(c.flows) {
		c.requestFlow(c.flows[rid], now)
	}
}

// HandlePortalMessage handles a decoded message of the client channel.
func (c *Client) HandlePortalMessage(msg portalapi.Message, now time.Time) {
	c.touch()
	switch m := msg.(type) {
	case portalapi.ClientInit:
		c.handleInit(m, now)
	case portalapi.ConfigChanged:
		if !c.configured {
			c.log.Debug("config_changed before init ignored")
			return
		}
		c.applyInterface(m.Interface, now)
	case portalapi.ResourceCreatedOrUpdated:
		if !c.configured {
			c.log.Debug("resource update before init ignored", "resource", m.ID)
			return
		}
		c.upsertResources([]portalapi.Resource{m.Resource}, false, now)
	case portalapi.ResourceDeleted:
		c.removeResources([]string{string(m)}, now)
		c.resourcesChanged(now)
	case portalapi.RelaysPresence:
		c.handleRelaysPresence(m)
	case portalapi.FlowCreated:
		c.handleFlowCreated(m, now)
	case portalapi.FlowCreationFailed:
		c.handleFlowCreationFailed(m, now)
	case portalapi.GatewayIceCandidates:
		if c.gateways[m.GatewayID] == nil {
			c.log.Debug("candidates of an unknown gateway ignored", "gateway", m.GatewayID)
			return
		}
		for _, cand := range m.Candidates {
			c.emit(tunnel.NodeAddCandidate{ID: m.GatewayID, Candidate: cand})
		}
	case portalapi.InvalidatedGatewayIceCandidates:
		if c.gateways[m.GatewayID] == nil {
			return
		}
		for _, cand := range m.Candidates {
			c.emit(tunnel.NodeRemoveCandidate{ID: m.GatewayID, Candidate: cand})
		}
	case portalapi.Unknown:
		c.log.Debug("unknown portal message ignored", "event", m.Name, "reason", m.Reason)
	default:
		c.log.Debug("portal message not for the client ignored", "event", msg.Event())
	}
}

// handleInit applies an init: the first one, or a repeated one after a portal reconnect (connections,
// flows and proxy IPs of resources still present are kept).
func (c *Client) handleInit(m portalapi.ClientInit, now time.Time) {
	first := !c.configured
	c.configured = true
	if c.portal != tunnel.PortalJoined {
		// A message on the channel means it is joined, whatever order the session's events came in.
		c.HandlePortalState(tunnel.PortalJoined, now)
	}
	c.log.Info("portal init", "first", first, "resources", len(m.Resources), "relays", len(m.Relays),
		"ipv4", m.Interface.IPv4, "ipv6", m.Interface.IPv6)
	if len(m.IgnoredResources) > 0 {
		c.log.Debug("resources of unknown types ignored", "types", m.IgnoredResources)
	}
	c.applyInterface(m.Interface, now)
	// Relays: all of the new set is (re)added and none is removed, as in Firezone's connlib. A restarted portal
	// knows no relay until the relays register again, so an init may name fewer relays than are up; removing
	// the others would tear down working allocations and the relayed connections on them. Relays that are
	// really gone leave through relays_presence or the node's liveness checks.
	merged := tunnel.MergeRelays(m.Relays)
	for _, r := range merged {
		c.relays[r.ID] = r
	}
	c.emit(tunnel.NodeRelays{Add: merged})
	// Resources: replace the set.
	present := make(map[string]bool, len(m.Resources))
	for _, r := range m.Resources {
		present[r.ID] = true
	}
	var gone []string
	for _, id := range sortedKeys(c.resources) {
		if !present[id] {
			gone = append(gone, id)
		}
	}
	c.removeResources(gone, now)
	c.upsertResources(m.Resources, true, now)
}

// handleRelaysPresence applies relays_presence: the disconnected ones go, the connected ones are upserted.
func (c *Client) handleRelaysPresence(m portalapi.RelaysPresence) {
	merged := tunnel.MergeRelays(m.Connected)
	remove := slices.Clone(m.DisconnectedIDs)
	for _, id := range remove {
		delete(c.relays, id)
	}
	for _, r := range merged {
		c.relays[r.ID] = r
	}
	c.emit(tunnel.NodeRelays{Remove: remove, Add: merged})
	c.updateRoutes()
}

// --- node ---

// HandleNodeEvent handles an event of the node.
func (c *Client) HandleNodeEvent(ev node.Event, now time.Time) {
	c.touch()
	switch ev.Kind {
	case node.EventCandidateAdded, node.EventCandidateInvalidated:
		c.handleCandidate(ev)
	case node.EventConnectionEstablished:
		g := c.gateways[ev.ConnectionID]
		if g == nil {
			c.log.Debug("established connection of an unknown gateway ignored", "gateway", ev.ConnectionID)
			return
		}
		if g.state != gwEstablished {
			c.log.Info("connected to gateway", "gateway", g.id, "path", ev.Path.String(), "remote", ev.RemoteAddr,
				"handshake", ev.HandshakeTime)
		}
		g.state = gwEstablished
		g.since = now
		c.flushGateway(g, now)
	case node.EventConnectionFailed:
		g := c.gateways[ev.ConnectionID]
		if g == nil {
			return
		}
		c.log.Info("gateway connection failed", "gateway", g.id, telemetry.Err(ev.Err))
		c.dropGateway(g, dropUnreachable, "connection failed", now)
	case node.EventNoRelays:
		c.reconnectPortal("the node lost its last relay", now)
	default:
		c.log.Debug("node event", "kind", ev.Kind.String(), "relay", ev.RelayID)
	}
}

// handleCandidate signals a local candidate (or its invalidation) to the gateway through the portal, or
// holds it while the portal is away.
func (c *Client) handleCandidate(ev node.Event) {
	id := ev.ConnectionID
	if c.gateways[id] == nil {
		c.log.Debug("candidate of an unknown connection ignored", "connection", id)
		return
	}
	added := ev.Kind == node.EventCandidateAdded
	if c.portal != tunnel.PortalJoined {
		if added {
			c.heldRemoved[id] = slices.DeleteFunc(c.heldRemoved[id], func(s string) bool { return s == ev.Candidate })
			if !slices.Contains(c.heldAdded[id], ev.Candidate) {
				c.heldAdded[id] = append(c.heldAdded[id], ev.Candidate)
			}
		} else {
			before := len(c.heldAdded[id])
			c.heldAdded[id] = slices.DeleteFunc(c.heldAdded[id], func(s string) bool { return s == ev.Candidate })
			if len(c.heldAdded[id]) == before && !slices.Contains(c.heldRemoved[id], ev.Candidate) {
				c.heldRemoved[id] = append(c.heldRemoved[id], ev.Candidate)
			}
		}
		return
	}
	if added {
		c.push(portalapi.BroadcastGatewayIceCandidates{GatewayIDs: []string{id}, Candidates: []string{ev.Candidate}})
	} else {
		c.push(portalapi.BroadcastInvalidatedGatewayIceCandidates{GatewayIDs: []string{id}, Candidates: []string{ev.Candidate}})
	}
}

// reconnectPortal asks the driver to reconnect the portal (whose next init carries fresh relays), at most
// once per ReconnectInterval.
func (c *Client) reconnectPortal(reason string, now time.Time) bool {
	if !c.lastReconnect.IsZero() && now.Sub(c.lastReconnect) < c.cfg.ReconnectInterval {
		c.log.Debug("portal reconnect already asked for", "reason", reason)
		return false
	}
	c.lastReconnect = now
	c.log.Warn("no relays: reconnecting to the portal for fresh ones", "reason", reason)
	c.emit(tunnel.PortalReconnect{Reason: reason})
	return true
}

// HandleActionFailed reports that an action failed. NodeUpsert with node.ErrNoRelays: the portal is
// reconnected for fresh relays, and the gateway's flows go back to waiting for a create_flow answer with
// their buffered packets kept (they are sent again once the portal is back, within FlowTimeout of their
// first packet). Any other NodeUpsert failure fails the gateway's flows (ICMP unreachable).
func (c *Client) HandleActionFailed(a tunnel.Action, err error, now time.Time) {
	c.touch()
	switch a := a.(type) {
	case tunnel.NodeUpsert:
		g := c.gateways[a.Params.ID]
		if g == nil || g.params != a.Params {
			c.log.Debug("failure of an outdated connection upsert ignored", "gateway", a.Params.ID, telemetry.Err(err))
			return
		}
		if errors.Is(err, node.ErrNoRelays) {
			if c.reconnectPortal("no relay for a new gateway connection", now) {
				// The flows are requested again once the portal is back (with fresh relays).
				c.portal = tunnel.PortalConnecting
			}
			c.dropGateway(g, dropRequeue, "no relays", now)
			return
		}
		c.log.Warn("gateway connection could not be created", "gateway", g.id, telemetry.Err(err))
		c.dropGateway(g, dropUnreachable, "upsert failed", now)
	case tunnel.NodeReset:
		c.log.Warn("node reset failed", telemetry.Err(err))
	default:
		c.log.Debug("action failed", "kind", a.Kind(), telemetry.Err(err))
	}
}

// --- roaming and shutdown ---

// HandleRoam handles a network change: the node is reset (new key; the driver reconnects the portal with
// it), upstream DNS exchanges are abandoned (DNSCancel, DNSRoam), every gateway connection and all
// control-protocol state are forgotten, and flows are created again on demand with the new key. Packets
// still waiting for a flow, a connection or a NAT wait on for the new flow (within FlowTimeout of their
// first packet).
func (c *Client) HandleRoam(now time.Time) {
	c.touch()
	c.log.Info("network changed: resetting connections", "gateways", len(c.gateways), "flows", len(c.flows))
	c.session++
	c.emit(tunnel.NodeReset{})
	c.portal = tunnel.PortalConnecting
	clear(c.heldAdded)
	clear(c.heldRemoved)
	if c.resolver != nil {
		res := c.resolver.Roam(now)
		if len(res.Cancelled) > 0 {
			ids := make([]dns.ForwardID, len(res.Cancelled))
			for i, id := range res.Cancelled {
				ids[i] = c.encodeFwd(id)
			}
			c.emit(DNSCancel{IDs: ids})
		}
		c.emit(DNSRoam{})
		c.drainResolver(now)
	}
	// Gateways are forgotten (the node dropped their connections) with their flows; what waited on them
	// is routed again below, into new pending flows.
	var waiting [][]byte
	for _, id := range sortedKeys(c.gateways) {
		pkts, n := c.forgetGateway(c.gateways[id])
		waiting = append(waiting, pkts...)
		c.ctr.flows[flowRoamed].Add(uint64(n))
	}
	for _, f := range c.flows {
		f.sent, f.requests = false, 0
	}
	if c.configured {
		c.newP2P()
	}
	for _, pkt := range waiting {
		c.reroute(pkt, now)
	}
	c.lastRoute = nil // sent again even if unchanged: the driver re-applies them on the new network
	c.updateRoutes()
}

// HandleShutdown says Goodbye to every connected gateway (the daemon runs it through Driver.Finish before
// leaving the portal).
func (c *Client) HandleShutdown(now time.Time) {
	if c.p2p == nil {
		return
	}
	for _, id := range sortedKeys(c.gateways) {
		g := c.gateways[id]
		if g.state != gwEstablished || !g.ipv6.IsValid() {
			continue
		}
		if err := c.p2p.SayGoodbye(g.ipv6); err != nil {
			c.log.Debug("goodbye not sent", "gateway", id, telemetry.Err(err))
		}
	}
	c.drainP2P(now)
}

// sortedKeys returns m's keys in order (deterministic iteration).
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
