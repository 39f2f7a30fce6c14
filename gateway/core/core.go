package core

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/snowgate/snowgate/gateway/nat"
	"github.com/snowgate/snowgate/internal/p2pcontrol"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/internal/tunnel"
	"github.com/snowgate/snowgate/node"
)

// natRecheck is how long after a translation the core re-reads the NAT table's deadline: new sessions may
// expire earlier than the deadline it cached. Expiry only frees memory (lookups treat an expired session as
// gone at once), so it may run a little late; re-reading the deadline costs a pass over the clients.
const natRecheck = 5 * time.Second

// Gateway is the gateway's sans-IO core: it implements tunnel.Core (see the package doc). Create it with
// New. It is not safe for concurrent use: the tunnel.Driver serialises every call.
type Gateway struct {
	cfg  Config
	log  *slog.Logger
	rand io.Reader
	m    *counters

	// From the portal's init.
	v4, v6 netip.Addr
	p2p    *p2pcontrol.Gateway // nil until an init gave the tunnel IPv6
	relays map[string]struct{}

	joined         bool // the portal session is joined (or sent init)
	reconnectAsked bool // a PortalReconnect is out and no init has come since

	nat     *nat.Table
	clients map[string]*client
	byIP    map[netip.Addr]*client // by each tunnel address
	nAuths  int

	actions []tunnel.Action // not polled yet

	expiries expiryHeap

	// departing are the connections of clients told Goodbye, removed from the node at the time given:
	// removing a WireGuard peer at once would drop the Goodbye before wireguard-go has sent it.
	departing map[string]time.Time

	nTranslations int // proxy IP translations over all clients (the clients' proxies maps)

	natNext    time.Time // the NAT table's deadline as last read (zero: none)
	natDirty   bool      // translations happened since natNext was read
	natDirtyAt time.Time

	held map[string]*heldCandidates // ICE candidates held while the portal is away, by client
}

// heldCandidates are a client's candidate changes that could not be signalled while the portal was away.
type heldCandidates struct {
	added, removed []string
}

var _ tunnel.Core = (*Gateway)(nil)

// New returns a Gateway with no clients; the portal's init gives it its tunnel addresses and relays.
func New(cfg Config) (*Gateway, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	g := &Gateway{
		cfg:       cfg,
		log:       cfg.Logger,
		rand:      cfg.Rand,
		m:         &counters{},
		relays:    make(map[string]struct{}),
		clients:   make(map[string]*client),
		byIP:      make(map[netip.Addr]*client),
		departing: make(map[string]time.Time),
		held:      make(map[string]*heldCandidates),
	}
	g.nat, err = nat.New(nat.Config{
		ProxyPrefixes:        cfg.ProxyPrefixes,
		MaxSessionsPerClient: cfg.MaxSessionsPerClient,
		MaxProxyIPsPerClient: cfg.MaxProxyIPsPerClient,
		Logger:               cfg.Logger,
		MeterProvider:        cfg.MeterProvider,
	})
	if err != nil {
		return nil, fmt.Errorf("gateway core: %w", err)
	}
	if err := registerMetrics(cfg.MeterProvider, g.m); err != nil {
		return nil, fmt.Errorf("gateway core: %w", err)
	}
	return g, nil
}

// emit queues an action. Consecutive SendToTunnel actions are merged into one.
func (g *Gateway) emit(a tunnel.Action) {
	if s, ok := a.(tunnel.SendToTunnel); ok && len(g.actions) > 0 {
		if last, ok := g.actions[len(g.actions)-1].(tunnel.SendToTunnel); ok {
			last.Packets = append(last.Packets, s.Packets...)
			g.actions[len(g.actions)-1] = last
			return
		}
	}
	g.actions = append(g.actions, a)
}

// PollAction returns the next action for the driver to carry out.
func (g *Gateway) PollAction() (tunnel.Action, bool) {
	if len(g.actions) == 0 {
		return nil, false
	}
	a := g.actions[0]
	g.actions[0] = nil
	g.actions = g.actions[1:]
	if len(g.actions) == 0 {
		g.actions = nil
	}
	return a, true
}

// sendToTunnel queues packets for the clients.
func (g *Gateway) sendToTunnel(pkts ...[]byte) {
	if len(pkts) > 0 {
		g.emit(tunnel.SendToTunnel{Packets: pkts})
	}
}

// drainTransmits turns the control protocol's transmits into a SendToTunnel.
func (g *Gateway) drainTransmits() {
	if g.p2p == nil {
		return
	}
	var pkts [][]byte
	for t, ok := g.p2p.PollTransmit(); ok; t, ok = g.p2p.PollTransmit() {
		pkts = append(pkts, t.Packet)
	}
	g.sendToTunnel(pkts...)
}

// askReconnect asks for a portal reconnect (the seed's relay-loss recovery), once until the next init.
func (g *Gateway) askReconnect(reason string) {
	if g.reconnectAsked {
		return
	}
	g.reconnectAsked = true
	g.log.Info("reconnecting to the portal for fresh relays", "reason", reason)
	g.emit(tunnel.PortalReconnect{Reason: reason})
}

// HandlePortalState reports a change of the portal session. Once joined, the ICE candidates held while
// the portal was away are signalled.
func (g *Gateway) HandlePortalState(s tunnel.PortalState, _ time.Time) {
	if s != tunnel.PortalJoined {
		g.joined = false
		return
	}
	g.reconnectAsked = false
	g.portalUp()
}

// portalUp marks the portal joined and signals the held candidates.
func (g *Gateway) portalUp() {
	g.joined = true
	ids := make([]string, 0, len(g.held))
	for id := range g.held {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		h := g.held[id]
		if len(h.added) > 0 {
			g.emit(tunnel.PortalPush{Event: portalapi.EventBroadcastIceCandidates, Payload: portalapi.BroadcastClientIceCandidates{
				ClientIDs: []string{id}, Candidates: h.added,
			}})
		}
		if len(h.removed) > 0 {
			g.emit(tunnel.PortalPush{Event: portalapi.EventBroadcastInvalidatedIceCandidates, Payload: portalapi.BroadcastInvalidatedClientIceCandidates{
				ClientIDs: []string{id}, Candidates: h.removed,
			}})
		}
	}
	clear(g.held)
}

// HandleNodeEvent handles an event of the node: candidates are signalled to their client through the
// portal (held while it is away), and the loss of the last relay asks for a portal reconnect.
func (g *Gateway) HandleNodeEvent(ev node.Event, _ time.Time) {
	switch ev.Kind {
	case node.EventCandidateAdded, node.EventCandidateInvalidated:
		added := ev.Kind == node.EventCandidateAdded
		if !g.joined {
			g.hold(ev.ConnectionID, ev.Candidate, added)
			return
		}
		if added {
			g.emit(tunnel.PortalPush{Event: portalapi.EventBroadcastIceCandidates, Payload: portalapi.BroadcastClientIceCandidates{
				ClientIDs: []string{ev.ConnectionID}, Candidates: []string{ev.Candidate},
			}})
		} else {
			g.emit(tunnel.PortalPush{Event: portalapi.EventBroadcastInvalidatedIceCandidates, Payload: portalapi.BroadcastInvalidatedClientIceCandidates{
				ClientIDs: []string{ev.ConnectionID}, Candidates: []string{ev.Candidate},
			}})
		}
	case node.EventNoRelays:
		g.askReconnect("node lost its last relay")
	case node.EventConnectionEstablished:
		g.log.Debug("connection to client established", "client", ev.ConnectionID, "path", ev.Path.String(),
			"handshake", ev.HandshakeTime)
	case node.EventConnectionFailed:
		// The client's state is kept: it may come back (Firezone does the same).
		g.log.Debug("connection to client failed", "client", ev.ConnectionID, telemetry.Err(ev.Err))
	}
}

// hold keeps a candidate change for a client until the portal is back.
func (g *Gateway) hold(id, cand string, added bool) {
	h := g.held[id]
	if h == nil {
		h = &heldCandidates{}
		g.held[id] = h
	}
	if added {
		h.removed = slices.DeleteFunc(h.removed, func(s string) bool { return s == cand })
		if !slices.Contains(h.added, cand) {
			h.added = appendBounded(h.added, cand)
		}
		return
	}
	h.added = slices.DeleteFunc(h.added, func(s string) bool { return s == cand })
	if !slices.Contains(h.removed, cand) {
		h.removed = appendBounded(h.removed, cand)
	}
}

func appendBounded(s []string, v string) []string {
	if len(s) >= maxHeldCandidates {
		s = slices.Delete(s, 0, 1)
	}
	return append(s, v)
}

// HandleActionFailed handles the failure of an action the core emitted. A NodeUpsert that failed drops
// the client's state (fail closed; the flow's answer, in the upsert's Then, was skipped); with node.ErrNoRelays it also asks
// for a portal reconnect. A ResolveName the driver could not carry out counts as a failed resolution.
func (g *Gateway) HandleActionFailed(a tunnel.Action, err error, now time.Time) {
	g.expireDue(now)
	switch a := a.(type) {
	case tunnel.NodeUpsert:
		g.upsertFailed(a, err)
	case ResolveName:
		g.HandleResolved(a.ClientID, a.Assignment, nil, err, now)
	case *ResolveName:
		g.HandleResolved(a.ClientID, a.Assignment, nil, err, now)
	default:
		g.log.Debug("action failed", "kind", a.Kind(), telemetry.Err(err))
	}
}

func (g *Gateway) upsertFailed(a tunnel.NodeUpsert, err error) {
	id := a.Params.ID
	if c := g.clients[id]; c != nil && c.params == a.Params {
		g.log.Warn("connection to client could not be created; its authorisations are dropped",
			"client", id, telemetry.Err(err))
		g.removeClient(c, false, true)
	} else {
		g.log.Debug("stale connection upsert failed", "client", id, telemetry.Err(err))
	}
	if errors.Is(err, node.ErrNoRelays) {
		g.askReconnect("no relays to create a connection")
	}
}

// PollTimeout returns when HandleTimeout must next be called: the
// earliest authorisation expiry, the NAT table's deadline. It is O(1).
func (g *Gateway) PollTimeout() (time.Time, bool) {
	var next time.Time
	consider := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	if len(g.expiries) > 0 {
		consider(g.expiries[0].at)
	}
	for _, at := range g.departing {
		consider(at)
	}
	consider(g.natNext)
	if g.natDirty {
		consider(g.natDirtyAt.Add(natRecheck))
	}
	return next, !next.IsZero()
}

// HandleTimeout advances the core to now: it ends the authorisations that expired, removes the
// connections of departed clients whose Goodbye had its time, and expires NAT sessions.
func (g *Gateway) HandleTimeout(now time.Time) {
	g.expireDue(now)
	for _, id := range slices.Sorted(maps.Keys(g.departing)) {
		if !now.Before(g.departing[id]) {
			delete(g.departing, id)
			g.emit(tunnel.NodeRemove{ID: id})
		}
	}
	if (!g.natNext.IsZero() && !now.Before(g.natNext)) || (g.natDirty && !now.Before(g.natDirtyAt.Add(natRecheck))) {
		g.nat.HandleTimeout(now)
		g.natNext, _ = g.nat.PollTimeout()
		g.natDirty = false
	}
}

// natTouched notes that a packet was translated: the NAT table's deadline may have moved.
func (g *Gateway) natTouched(now time.Time) {
	if !g.natDirty {
		g.natDirty, g.natDirtyAt = true, now
	}
}

// addTranslations counts proxy IP translations added (or, negative, removed). Removing translations or
// sessions never brings the NAT table's deadline forward, so the cached one stays valid (at worst early).
func (g *Gateway) addTranslations(n int) {
	g.nTranslations += n
	g.m.translations.Store(int64(g.nTranslations))
}

// Shutdown queues a Goodbye to every client, so that they fail over at once, and forgets them. The daemon
// calls it (tunnel.Driver.Finish) before it leaves the portal and exits.
func (g *Gateway) Shutdown(now time.Time) {
	ids := make([]string, 0, len(g.clients))
	for id := range g.clients {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	g.log.Info("shutting down: saying goodbye to clients", "clients", len(ids))
	for _, id := range ids {
		g.removeClient(g.clients[id], true, false)
	}
}

// normID is the key form of a resource id (UUIDs are compared case-insensitively, as p2pcontrol does).
func normID(id string) string { return strings.ToLower(id) }

// normDomain is the key form of a domain name: lower case, without trailing dot.
func normDomain(s string) string { return strings.ToLower(strings.TrimSuffix(s, ".")) }
