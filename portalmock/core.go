package portalmock

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/portalapi"
)

// EventKind names something that happened in the portal, for tests and the dev stack to wait on.
type EventKind string

// Event kinds.
const (
	EventClientJoined   EventKind = "client_joined"
	EventClientLeft     EventKind = "client_left"
	EventGatewayJoined  EventKind = "gateway_joined"
	EventGatewayLeft    EventKind = "gateway_left"
	EventRelayJoined    EventKind = "relay_joined"
	EventRelayLeft      EventKind = "relay_left"
	EventFlowRequested  EventKind = "flow_requested"  // authorize_flow sent; ID client, Peer gateway
	EventFlowAuthorized EventKind = "flow_authorized" // flow_created sent; ID client, Peer gateway
	EventFlowFailed     EventKind = "flow_failed"     // flow_creation_failed sent; Detail = reason
	EventAccessRejected EventKind = "access_rejected" // reject_access sent for a flow the portal knows; ID client, Peer gateway
	EventBadInput       EventKind = "bad_input"       // an error reply was sent; Detail = reason
	// EventConnectionsReported: a client or gateway sent report_connections; ID is the reporter, Detail the
	// number of connections.
	EventConnectionsReported EventKind = "connections_reported"
)

// Event is one thing that happened in the portal.
type Event struct {
	Kind EventKind
	// ID is the client, gateway or relay id the event is about.
	ID string
	// Peer is the other side (a flow's gateway), if any.
	Peer string
	// Resource is the resource id, if any.
	Resource string
	// Detail is a reason or other detail.
	Detail string
}

// Reasons of error replies.
const (
	reasonUnmatchedTopic = "unmatched topic"
	reasonMalformed      = "malformed payload"
	reasonMalformedFrame = "malformed frame"
	reasonNotFound       = "not_found"
	reasonStampSecret    = "invalid stamp_secret"
)

type session struct {
	id        uint64
	kind      tokenKind
	peerID    string // client or gateway id; the relay's token name until it joins
	name      string // from the URL
	publicKey string
	version   phoenix.Version
	joined    bool
	joinRef   phoenix.Ref
	relays    []string // relay ids the peer currently has (client/gateway)
	// relays only
	addr4, addr6 netip.AddrPort
	stampSecret  string
	relayID      string
	relaySeq     uint64
}

type outMsg struct {
	sess  uint64
	data  []byte
	close bool // close the session's socket after this (data may be nil)
}

type flowKey struct{ client, gateway string }

// pendingAuth is a flow waiting for the gateway's answer: flow_authorized to authorize_flow, or (legacy)
// connection_ready to request_connection.
type pendingAuth struct {
	seq        uint64
	clientSess uint64
	key        flowKey
	resourceID string
	created    portalapi.FlowCreated
	legacy     bool   // sent as request_connection; answered by connection_ready
	clientKey  string // the client's public key when it was sent (legacy)
}

// legacyConn is a connection a gateway accepted with connection_ready (old protocol): later flows of the
// same pair, while neither key changed, are sent as allow_access and reuse its ICE credentials.
type legacyConn struct {
	clientKey, gatewayKey string
	gatewayCreds          portalapi.IceCredentials
}

// peerKey names a client or gateway (their ids are disjoint, but the kind makes it explicit).
type peerKey struct {
	kind tokenKind
	id   string
}

// core is the portal's state machine: every input (a connection, a frame, a disconnection, an admin change)
// appends the frames to send to c.out and what happened to c.events. It does no I/O and starts no
// goroutines; the Server serializes calls with a mutex.
type core struct {
	m        *model
	now      func() time.Time
	log      *slog.Logger
	sessions map[uint64]*session
	clients  map[string]uint64 // active session per client id
	gateways map[string]uint64
	relays   map[string]uint64 // joined relays by relay id
	relaySeq uint64
	flows    map[flowKey]map[string]bool // authorized resource ids per client/gateway pair
	pending  map[string]*pendingAuth     // authorize_flow / request_connection refs awaiting the answer
	legacy   map[flowKey]legacyConn      // old-protocol connections accepted by gateways
	reports  map[peerKey][]portalapi.ConnectionReport
	refSeq   uint64
	rr       map[string]uint64 // round-robin counter per site
	out      []outMsg
	events   []Event
	// frameHook, when set, sees every decoded frame before it is handled: tests inject failures through it.
	// Production builds leave it nil (see testhooks_off.go).
	frameHook func(*session, phoenix.Message)
}

func newCore(m *model, now func() time.Time, log *slog.Logger) *core {
	return &core{
		m: m, now: now, log: log,
		sessions: map[uint64]*session{}, clients: map[string]uint64{}, gateways: map[string]uint64{},
		relays: map[string]uint64{}, flows: map[flowKey]map[string]bool{}, pending: map[string]*pendingAuth{},
		legacy: map[flowKey]legacyConn{}, reports: map[peerKey][]portalapi.ConnectionReport{},
		rr: map[string]uint64{}, frameHook: testFrameHook(),
	}
}

func (c *core) emit(e Event) { c.events = append(c.events, e) }

func (c *core) send(s *session, m phoenix.Message) {
	b, err := phoenix.Encode(s.version, m)
	if err != nil { // only our own payloads are encoded; this cannot happen with valid JSON
		c.log.Error("encode frame", "topic", m.Topic, "event", m.Event, "error", err)
		return
	}
	c.out = append(c.out, outMsg{sess: s.id, data: b})
}

func (c *core) push(s *session, event string, payload any) {
	b, err := json.Marshal(payload)
	if err != nil {
		c.log.Error("marshal push", "event", event, "error", err)
		return
	}
	c.send(s, phoenix.Message{JoinRef: s.joinRef, Topic: s.kind.String(), Event: event, Payload: b})
}

func (c *core) reply(s *session, req phoenix.Message, status string, resp any) {
	m, err := phoenix.NewReply(req, status, resp)
	if err != nil {
		c.log.Error("build reply", "error", err)
		return
	}
	c.send(s, m)
}

func (c *core) replyError(s *session, req phoenix.Message, reason string) {
	c.log.Debug("error reply", "session", s.id, "topic", req.Topic, "event", req.Event, "reason", reason)
	c.emit(Event{Kind: EventBadInput, ID: s.peerID, Detail: reason})
	c.reply(s, req, phoenix.StatusError, map[string]string{"reason": reason})
}

// connect registers a new socket.
func (c *core) connect(s *session) { c.sessions[s.id] = s }

// disconnect forgets a socket: it leaves its channel (if still joined) and is gone.
func (c *core) disconnect(id uint64) {
	s := c.sessions[id]
	if s == nil {
		return
	}
	c.leave(s)
	delete(c.sessions, id)
}

// leave ends s's membership of its channel: on phx_leave, when its socket closes, and when a newer session
// of the same device replaces it. A client or gateway stops being its device's active session (its pending
// authorizations are dropped or failed); a relay is removed from presence and every client and gateway
// that knew it is told. s.joined guards it, so a leave followed by a close (or a close whose leave frame
// arrives late) counts once.
func (c *core) leave(s *session) {
	if !s.joined {
		return
	}
	s.joined = false
	switch s.kind {
	case kindClient:
		if c.clients[s.peerID] != s.id {
			return
		}
		delete(c.clients, s.peerID)
		delete(c.reports, peerKey{kindClient, s.peerID})
		for ref, p := range c.pending {
			if p.clientSess == s.id {
				delete(c.pending, ref)
			}
		}
		c.emit(Event{Kind: EventClientLeft, ID: s.peerID})
	case kindGateway:
		if c.gateways[s.peerID] != s.id {
			return
		}
		delete(c.gateways, s.peerID)
		delete(c.reports, peerKey{kindGateway, s.peerID})
		for _, ref := range sortedKeys(c.pending) {
			if p := c.pending[ref]; p.key.gateway == s.peerID {
				delete(c.pending, ref)
				c.failFlow(c.activeClient(p.clientSess), p.key.client, p.resourceID, portalapi.FailOffline)
			}
		}
		c.emit(Event{Kind: EventGatewayLeft, ID: s.peerID})
	case kindRelay:
		if c.unregisterRelay(s) {
			c.updatePresence()
		}
	}
}

// unregisterRelay removes s's relay from the online relays if s is the session that holds it, and reports
// whether it did; the caller pushes presence.
func (c *core) unregisterRelay(s *session) bool {
	if c.relays[s.relayID] != s.id {
		return false
	}
	delete(c.relays, s.relayID)
	c.emit(Event{Kind: EventRelayLeft, ID: s.relayID})
	return true
}

// activeClient returns the client session id if it is still its device's joined session, else nil.
func (c *core) activeClient(id uint64) *session {
	s := c.sessions[id]
	if s == nil || !s.joined || c.clients[s.peerID] != id {
		return nil
	}
	return s
}

// frame handles one inbound WebSocket text frame.
func (c *core) frame(id uint64, data []byte) {
	s := c.sessions[id]
	if s == nil {
		return
	}
	msg, err := phoenix.Decode(s.version, data)
	if err != nil {
		req := salvage(s.version, data)
		c.log.Warn("malformed frame", "session", s.id, "kind", s.kind, "error", err)
		c.replyError(s, req, reasonMalformedFrame)
		return
	}
	if c.frameHook != nil {
		c.frameHook(s, msg)
	}
	switch {
	case msg.Topic == phoenix.TopicPhoenix && msg.Event == phoenix.EventHeartbeat:
		c.reply(s, msg, phoenix.StatusOK, nil)
		return
	case msg.Topic != s.kind.String():
		c.replyError(s, msg, reasonUnmatchedTopic)
		return
	case msg.Event == phoenix.EventJoin:
		c.join(s, msg)
		return
	case msg.Event == phoenix.EventLeave: // answered ok even when not joined: leaving is idempotent
		c.leave(s)
		c.reply(s, msg, phoenix.StatusOK, nil)
		return
	case !s.joined:
		c.replyError(s, msg, reasonUnmatchedTopic)
		return
	}
	switch s.kind {
	case kindClient:
		c.clientMessage(s, msg)
	case kindGateway:
		c.gatewayMessage(s, msg)
	default:
		c.log.Debug("ignoring relay message", "event", msg.Event)
	}
}

// salvage extracts topic and refs from a frame that failed to decode, so the error reply reaches the right
// channel; without a topic the reply goes to "phoenix".
func salvage(v phoenix.Version, data []byte) phoenix.Message {
	m := phoenix.Message{Topic: phoenix.TopicPhoenix}
	if v == phoenix.V2 {
		var arr []json.RawMessage
		if json.Unmarshal(data, &arr) == nil && len(arr) >= 4 {
			_ = json.Unmarshal(arr[0], &m.JoinRef)
			_ = json.Unmarshal(arr[1], &m.Ref)
			var t string
			if json.Unmarshal(arr[2], &t) == nil && t != "" {
				m.Topic = t
			}
		}
		return m
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(data, &obj) == nil {
		_ = json.Unmarshal(obj["ref"], &m.Ref)
		_ = json.Unmarshal(obj["join_ref"], &m.JoinRef)
		var t string
		if json.Unmarshal(obj["topic"], &t) == nil && t != "" {
			m.Topic = t
		}
	}
	return m
}

// join handles phx_join on the session's own topic. A second join on a joined socket replaces the first
// (as Phoenix does), so a relay that joins again with another stamp secret leaves its first relay id.
func (c *core) join(s *session, msg phoenix.Message) {
	switch s.kind {
	case kindRelay:
		var j portalapi.RelayJoin
		if err := json.Unmarshal(nonNull(msg.Payload), &j); err != nil || j.StampSecret == "" {
			c.replyError(s, msg, reasonStampSecret)
			return
		}
		if s.joined {
			c.unregisterRelay(s)
		}
		s.joined, s.joinRef, s.stampSecret = true, joinRefOf(msg), j.StampSecret
		s.relayID = portalapi.RelayID(j.StampSecret)
		if old, ok := c.relays[s.relayID]; ok && old != s.id {
			// The same relay on a new socket (it restarted or reconnected): the old socket is stale. The
			// relay id stays online, so this is no relay_left.
			if os := c.sessions[old]; os != nil {
				os.joined = false
			}
			c.closeSession(old)
		}
		c.relaySeq++
		s.relaySeq = c.relaySeq
		c.relays[s.relayID] = s.id
		c.reply(s, msg, phoenix.StatusOK, nil)
		c.push(s, portalapi.EventInit, portalapi.RelayInit{})
		c.emit(Event{Kind: EventRelayJoined, ID: s.relayID, Detail: s.name})
		c.updatePresence()
	case kindClient:
		c.replaceActive(c.clients, s)
		s.joined, s.joinRef = true, joinRefOf(msg)
		c.reply(s, msg, phoenix.StatusOK, nil)
		c.push(s, portalapi.EventInit, c.clientInit(s))
		c.emit(Event{Kind: EventClientJoined, ID: s.peerID})
	case kindGateway:
		c.replaceActive(c.gateways, s)
		s.joined, s.joinRef = true, joinRefOf(msg)
		c.reply(s, msg, phoenix.StatusOK, nil)
		c.push(s, portalapi.EventInit, c.gatewayInit(s))
		c.emit(Event{Kind: EventGatewayJoined, ID: s.peerID})
	}
}

// joinRefOf is the join_ref pushes on the channel carry: the join's join_ref (V2) or its ref.
func joinRefOf(msg phoenix.Message) phoenix.Ref {
	if !msg.JoinRef.IsZero() {
		return msg.JoinRef
	}
	return msg.Ref
}

func nonNull(b json.RawMessage) json.RawMessage {
	if len(b) == 0 || string(b) == "null" {
		return json.RawMessage("{}")
	}
	return b
}

// replaceActive makes s the active session of its device, closing an older socket of the same device.
func (c *core) replaceActive(active map[string]uint64, s *session) {
	if old, ok := active[s.peerID]; ok && old != s.id {
		c.closeSession(old)
		c.disconnect(old)
	}
	active[s.peerID] = s.id
}

func (c *core) closeSession(id uint64) { c.out = append(c.out, outMsg{sess: id, close: true}) }

// --- relays -------------------------------------------------------------------------------------------

// maxRelaysPerPeer is how many relays each client and gateway gets.
const maxRelaysPerPeer = 2

// onlineRelays returns the first maxRelaysPerPeer joined relays in join order.
func (c *core) onlineRelays() []*session {
	rs := c.onlineRelaysAll()
	if len(rs) > maxRelaysPerPeer {
		rs = rs[:maxRelaysPerPeer]
	}
	return rs
}

// onlineRelaysAll returns every joined relay in join order.
func (c *core) onlineRelaysAll() []*session {
	var rs []*session
	for rid, id := range c.relays {
		s := c.sessions[id]
		if s == nil || !s.joined || s.relayID != rid { // leave keeps this from happening (issue 16)
			c.log.Error("portal bug: online relay without its joined session; ignoring it", "relay", rid, "session", id)
			continue
		}
		rs = append(rs, s)
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].relaySeq < rs[j].relaySeq })
	return rs
}

func (c *core) expiryOf(s *session) time.Time {
	if s.kind == kindClient {
		return c.m.clients[s.peerID].expiresAt
	}
	return portalapi.GatewayRelayExpiry
}

// relayViews renders relays for one peer: one object per address family, credentials derived from the
// peer's public key.
func (c *core) relayViews(peer *session, rs []*session) []portalapi.Relay {
	out := []portalapi.Relay{}
	exp := c.expiryOf(peer)
	for _, r := range rs {
		user, pass := portalapi.RelayCredentials(r.stampSecret, peer.publicKey, exp)
		for _, a := range []netip.AddrPort{r.addr4, r.addr6} {
			if a.IsValid() {
				out = append(out, portalapi.Relay{ID: r.relayID, Type: portalapi.RelayTypeTURN, Addr: a,
					Username: user, Password: pass, ExpiresAt: exp.Unix()})
			}
		}
	}
	return out
}

// relaysByID returns every online relay's session, sorted by relay id.
func (c *core) relaysByID() []*session {
	rs := c.onlineRelaysAll()
	sort.Slice(rs, func(i, j int) bool { return rs[i].relayID < rs[j].relayID })
	return rs
}

func relayIDs(rs []*session) []string {
	ids := make([]string, 0, len(rs))
	for _, r := range rs {
		ids = append(ids, r.relayID)
	}
	return ids
}

// updatePresence pushes relays_presence to every joined client and gateway whose relay set changed:
// disconnected_ids are the relays it lost, connected its whole current set (receivers upsert).
func (c *core) updatePresence() {
	rs := c.onlineRelays()
	ids := relayIDs(rs)
	for _, sid := range sortedKeys(c.sessions) {
		s := c.sessions[sid]
		if !s.joined || s.kind == kindRelay || slices.Equal(s.relays, ids) {
			continue
		}
		gone := []string{}
		for _, old := range s.relays {
			if !slices.Contains(ids, old) {
				gone = append(gone, old)
			}
		}
		s.relays = ids
		c.push(s, portalapi.EventRelaysPresence, portalapi.RelaysPresence{DisconnectedIDs: gone, Connected: c.relayViews(s, rs)})
	}
}

// --- inits ------------------------------------------------------------------------------------------

func (c *core) clientInit(s *session) portalapi.ClientInit {
	d := c.m.clients[s.peerID]
	acc := c.m.accounts[d.account]
	iface := portalapi.Interface{IPv4: d.ipv4, IPv6: d.ipv6, SearchDomain: acc.searchDomain}
	for _, u := range acc.upstream {
		iface.UpstreamDNS = append(iface.UpstreamDNS, portalapi.DNSServer{Protocol: portalapi.DNSProtocolIPPort, Address: u})
		if u.Port() == 53 {
			iface.UpstreamDo53 = append(iface.UpstreamDo53, portalapi.Do53{IP: u.Addr()})
		}
	}
	vis := c.visibleTo(s.peerID)
	res := make([]portalapi.Resource, 0, len(vis))
	for _, id := range sortedKeys(vis) {
		res = append(res, vis[id])
	}
	rs := c.onlineRelays()
	s.relays = relayIDs(rs)
	return portalapi.ClientInit{Interface: iface, Resources: res, Relays: c.relayViews(s, rs)}
}

func (c *core) gatewayInit(s *session) portalapi.GatewayInit {
	d := c.m.gateways[s.peerID]
	rs := c.onlineRelays()
	s.relays = relayIDs(rs)
	return portalapi.GatewayInit{
		Interface:   portalapi.Interface{IPv4: d.ipv4, IPv6: d.ipv6},
		Config:      portalapi.GatewayConfig{IPv4MasqueradeEnabled: true, IPv6MasqueradeEnabled: true},
		Relays:      c.relayViews(s, rs),
		AccountSlug: c.m.accounts[d.account].slug,
	}
}

// --- access -----------------------------------------------------------------------------------------

// visibleTo returns the resources a client may reach (client view), by id.
func (c *core) visibleTo(clientID string) map[string]portalapi.Resource {
	d := c.m.clients[clientID]
	out := map[string]portalapi.Resource{}
	if d == nil {
		return out
	}
	for _, p := range c.m.policies {
		if p.Account != d.account || (p.Client != "*" && p.Client != clientID) {
			continue
		}
		if r, ok := c.m.resources[p.Resource]; ok {
			out[r.ID] = c.m.accounts[r.Account].resource(r)
		}
	}
	return out
}

func (c *core) visibility() map[string]map[string]portalapi.Resource {
	all := map[string]map[string]portalapi.Resource{}
	for id := range c.m.clients {
		all[id] = c.visibleTo(id)
	}
	return all
}

// mutate applies an admin change and pushes its consequences: resource_created_or_updated /
// resource_deleted to affected clients, reject_access (lost access or site: to the gateways with flows, and
// to every online gateway of the lost sites, see rejectLost) and resource_updated (changed resource: to
// the gateways with flows and every online gateway of its sites, see updateSites).
func (c *core) mutate(change func() error) error {
	before := c.visibility()
	if err := change(); err != nil {
		return err
	}
	after := c.visibility()
	for _, cid := range sortedKeys(after) {
		s := c.onlineSession(c.clients, cid)
		if s == nil {
			continue
		}
		for _, rid := range sortedKeys(before[cid]) {
			if _, ok := after[cid][rid]; !ok {
				c.push(s, portalapi.EventResourceDeleted, rid)
			}
		}
		for _, rid := range sortedKeys(after[cid]) {
			if old, ok := before[cid][rid]; !ok || !reflect.DeepEqual(old, after[cid][rid]) {
				c.push(s, portalapi.EventResourceCreatedOrUpdated, after[cid][rid])
			}
		}
	}
	updated := map[[2]string]bool{}  // (gateway, resource) pairs already sent resource_updated
	rejected := map[[3]string]bool{} // (gateway, client, resource) triples already sent reject_access
	for _, key := range sortedFlowKeys(c.flows) {
		set := c.flows[key]
		gw := c.m.gateways[key.gateway]
		gs := c.onlineSession(c.gateways, key.gateway)
		for _, rid := range sortedKeys(set) {
			r, ok := after[key.client][rid]
			if !ok || !slices.ContainsFunc(r.Sites, func(s portalapi.Site) bool { return s.ID == gw.site }) {
				delete(set, rid)
				if gs != nil {
					rejected[[3]string{key.gateway, key.client, rid}] = true
					c.push(gs, portalapi.EventRejectAccess, portalapi.RejectAccess{ClientID: key.client, ResourceID: rid})
				}
				c.emit(Event{Kind: EventAccessRejected, ID: key.client, Peer: key.gateway, Resource: rid})
				continue
			}
			gk := [2]string{key.gateway, rid}
			if !reflect.DeepEqual(before[key.client][rid], r) && gs != nil && !updated[gk] {
				updated[gk] = true
				c.push(gs, portalapi.EventResourceUpdated, portalapi.ResourceUpdated{Resource: r.GatewayView()})
			}
		}
		if len(set) == 0 {
			delete(c.flows, key)
		}
	}
	c.rejectLost(before, after, rejected)
	c.updateSites(before, after, updated)
	return nil
}

// updateSites sends resource_updated for every changed resource to every online gateway of its sites,
// beyond the flows the portal knows of (already sent: updated). Like rejectLost, it reaches authorisations
// granted before the portal restarted, which gateways keep across the outage: without it such a gateway
// went on enforcing the resource's old filters. A gateway without an authorisation for the resource
// ignores the message.
func (c *core) updateSites(before, after map[string]map[string]portalapi.Resource, updated map[[2]string]bool) {
	for _, cid := range sortedKeys(after) {
		for _, rid := range sortedKeys(after[cid]) {
			old, ok := before[cid][rid]
			r := after[cid][rid]
			if !ok || reflect.DeepEqual(old, r) {
				continue
			}
			sites := map[string]bool{}
			for _, st := range r.Sites {
				sites[st.ID] = true
			}
			for _, g := range c.onlineGatewaysIn(sites) {
				if updated[[2]string{g.id, rid}] {
					continue
				}
				updated[[2]string{g.id, rid}] = true
				c.push(g.s, portalapi.EventResourceUpdated, portalapi.ResourceUpdated{Resource: r.GatewayView()})
			}
		}
	}
}

// rejectLost sends reject_access for every resource a client lost (or that lost some of its sites) to
// every online gateway of the sites that no longer serve it to that client, beyond the flows the portal
// knows of (already sent: rejected). A gateway may hold an authorisation the portal does not remember: one
// granted before the portal restarted, kept across the outage as gateways keep their flows. A gateway
// without the authorisation ignores the message.
func (c *core) rejectLost(before, after map[string]map[string]portalapi.Resource, rejected map[[3]string]bool) {
	for _, cid := range sortedKeys(before) {
		for _, rid := range sortedKeys(before[cid]) {
			newSites := map[string]bool{}
			if r, ok := after[cid][rid]; ok {
				for _, st := range r.Sites {
					newSites[st.ID] = true
				}
			}
			lost := map[string]bool{}
			for _, st := range before[cid][rid].Sites {
				if !newSites[st.ID] {
					lost[st.ID] = true
				}
			}
			if len(lost) == 0 {
				continue
			}
			for _, g := range c.onlineGatewaysIn(lost) {
				if rejected[[3]string{g.id, cid, rid}] {
					continue
				}
				rejected[[3]string{g.id, cid, rid}] = true
				c.push(g.s, portalapi.EventRejectAccess, portalapi.RejectAccess{ClientID: cid, ResourceID: rid})
			}
		}
	}
}

// gatewaySession is an online gateway and its session.
type gatewaySession struct {
	id string
	s  *session
}

// onlineGatewaysIn returns the online gateways whose site is in sites, in id order.
func (c *core) onlineGatewaysIn(sites map[string]bool) []gatewaySession {
	var out []gatewaySession
	for _, gid := range sortedKeys(c.gateways) {
		if gs := c.onlineSession(c.gateways, gid); gs != nil && sites[c.m.gateways[gid].site] {
			out = append(out, gatewaySession{id: gid, s: gs})
		}
	}
	return out
}

func (c *core) onlineSession(active map[string]uint64, id string) *session {
	sid, ok := active[id]
	if !ok {
		return nil
	}
	if s := c.sessions[sid]; s != nil && s.joined {
		return s
	}
	return nil
}

func (c *core) putResource(r ResourceConfig) error {
	if r.Account == "" {
		r.Account = c.m.firstAccount
	}
	if err := c.m.checkResource(r); err != nil {
		return err
	}
	return c.mutate(func() error { c.m.resources[r.ID] = r; return nil })
}

func (c *core) deleteResource(id string) error {
	if _, ok := c.m.resources[id]; !ok {
		return ErrNotFound
	}
	return c.mutate(func() error {
		delete(c.m.resources, id)
		for pid, p := range c.m.policies {
			if p.Resource == id {
				delete(c.m.policies, pid)
			}
		}
		return nil
	})
}

func (c *core) putPolicy(p PolicyConfig) error {
	if p.Account == "" {
		p.Account = c.m.firstAccount
	}
	if err := c.m.checkPolicy(p); err != nil {
		return err
	}
	return c.mutate(func() error { c.m.policies[p.ID] = p; return nil })
}

func (c *core) deletePolicy(id string) error {
	if _, ok := c.m.policies[id]; !ok {
		return ErrNotFound
	}
	return c.mutate(func() error { delete(c.m.policies, id); return nil })
}

// --- flows and signalling -----------------------------------------------------------------------------

func (c *core) failFlow(s *session, clientID, resourceID string, reason portalapi.FailReason) {
	c.emit(Event{Kind: EventFlowFailed, ID: clientID, Resource: resourceID, Detail: string(reason)})
	if s != nil {
		c.push(s, portalapi.EventFlowCreationFailed, portalapi.FlowCreationFailed{ResourceID: resourceID, Reason: reason})
	}
}

func (c *core) clientMessage(s *session, msg phoenix.Message) {
	m, err := portalapi.DecodeClientEgress(msg.Event, msg.Payload)
	if err != nil {
		c.log.Warn("malformed client message", "client", s.peerID, "event", msg.Event, "error", err)
		c.replyError(s, msg, reasonMalformed)
		return
	}
	switch m := m.(type) {
	case portalapi.CreateFlow:
		c.createFlow(s, m)
	case portalapi.BroadcastGatewayIceCandidates:
		if !c.checkPeers(s, msg, m.GatewayIDs) {
			return
		}
		for _, gid := range m.GatewayIDs {
			if gs := c.onlineSession(c.gateways, gid); gs != nil {
				c.push(gs, portalapi.EventIceCandidates, portalapi.ClientIceCandidates{ClientID: s.peerID, Candidates: orEmpty(m.Candidates)})
			}
		}
	case portalapi.BroadcastInvalidatedGatewayIceCandidates:
		if !c.checkPeers(s, msg, m.GatewayIDs) {
			return
		}
		for _, gid := range m.GatewayIDs {
			if gs := c.onlineSession(c.gateways, gid); gs != nil {
				c.push(gs, portalapi.EventInvalidateIceCandidates, portalapi.InvalidatedClientIceCandidates{ClientID: s.peerID, Candidates: orEmpty(m.Candidates)})
			}
		}
	case portalapi.ReportConnections:
		c.reportConnections(s, msg, m)
	case portalapi.Unknown:
		c.log.Debug("ignoring client message", "client", s.peerID, "event", m.Name, "reason", m.Reason)
	}
}

func (c *core) gatewayMessage(s *session, msg phoenix.Message) {
	m, err := portalapi.DecodeGatewayEgress(msg.Event, msg.Payload)
	if err != nil {
		c.log.Warn("malformed gateway message", "gateway", s.peerID, "event", msg.Event, "error", err)
		c.replyError(s, msg, reasonMalformed)
		return
	}
	switch m := m.(type) {
	case portalapi.FlowAuthorized:
		p := c.pending[m.Ref]
		if p == nil || p.key.gateway != s.peerID || p.legacy {
			c.replyError(s, msg, reasonNotFound)
			return
		}
		delete(c.pending, m.Ref)
		c.completeFlow(p)
	case portalapi.BroadcastClientIceCandidates:
		if !c.checkPeers(s, msg, m.ClientIDs) {
			return
		}
		for _, cid := range m.ClientIDs {
			if cs := c.onlineSession(c.clients, cid); cs != nil {
				c.push(cs, portalapi.EventIceCandidates, portalapi.GatewayIceCandidates{GatewayID: s.peerID, Candidates: orEmpty(m.Candidates)})
			}
		}
	case portalapi.BroadcastInvalidatedClientIceCandidates:
		if !c.checkPeers(s, msg, m.ClientIDs) {
			return
		}
		for _, cid := range m.ClientIDs {
			if cs := c.onlineSession(c.clients, cid); cs != nil {
				c.push(cs, portalapi.EventInvalidateIceCandidates, portalapi.InvalidatedGatewayIceCandidates{GatewayID: s.peerID, Candidates: orEmpty(m.Candidates)})
			}
		}
	case portalapi.ConnectionReady:
		c.connectionReady(s, msg, m)
	case portalapi.ReportConnections:
		c.reportConnections(s, msg, m)
	case portalapi.Unknown:
		c.log.Debug("ignoring gateway message", "gateway", s.peerID, "event", m.Name, "reason", m.Reason)
	}
}

// completeFlow records an answered authorization and sends the client flow_created.
func (c *core) completeFlow(p *pendingAuth) {
	if c.flows[p.key] == nil {
		c.flows[p.key] = map[string]bool{}
	}
	c.flows[p.key][p.resourceID] = true
	if cs := c.activeClient(p.clientSess); cs != nil {
		c.push(cs, portalapi.EventFlowCreated, p.created)
	}
	c.emit(Event{Kind: EventFlowAuthorized, ID: p.key.client, Peer: p.key.gateway, Resource: p.resourceID})
}

// connectionReady handles the old protocol's answer to request_connection: the gateway accepted the
// connection with its own ICE credentials, which the client gets in flow_created and later flows of the
// pair reuse (allow_access).
func (c *core) connectionReady(s *session, msg phoenix.Message, m portalapi.ConnectionReady) {
	p := c.pending[m.Ref]
	if p == nil || p.key.gateway != s.peerID || !p.legacy {
		c.replyError(s, msg, reasonNotFound)
		return
	}
	acc := m.GatewayPayload.ConnectionAccepted
	if acc == nil || acc.IceParameters.Username == "" || acc.IceParameters.Password == "" {
		c.log.Warn("malformed connection_ready", "gateway", s.peerID, "ref", m.Ref)
		c.replyError(s, msg, reasonMalformed)
		return
	}
	delete(c.pending, m.Ref)
	c.legacy[p.key] = legacyConn{clientKey: p.clientKey, gatewayKey: s.publicKey, gatewayCreds: acc.IceParameters}
	p.created.GatewayIceCredentials = acc.IceParameters
	c.completeFlow(p)
}

// reportConnections stores a client's or gateway's latest connection report. Every peer_id must be a
// device of the other kind in the reporter's account, else nothing is stored and the reply says not_found.
func (c *core) reportConnections(s *session, msg phoenix.Message, m portalapi.ReportConnections) {
	others, self := c.m.gateways, c.m.clients
	if s.kind == kindGateway {
		others, self = c.m.clients, c.m.gateways
	}
	for _, conn := range m.Connections {
		if d := others[conn.PeerID]; d == nil || d.account != self[s.peerID].account {
			c.replyError(s, msg, reasonNotFound)
			return
		}
	}
	c.reports[peerKey{s.kind, s.peerID}] = slices.Clone(orEmptyReports(m.Connections))
	c.emit(Event{Kind: EventConnectionsReported, ID: s.peerID, Detail: strconv.Itoa(len(m.Connections))})
}

func orEmptyReports(rs []portalapi.ConnectionReport) []portalapi.ConnectionReport {
	if rs == nil {
		return []portalapi.ConnectionReport{}
	}
	return rs
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// inFlow reports whether a client and a gateway share a flow (authorized or being authorized).
func (c *core) inFlow(k flowKey) bool {
	if len(c.flows[k]) > 0 {
		return true
	}
	for _, p := range c.pending {
		if p.key == k {
			return true
		}
	}
	return false
}

// checkPeers verifies that the sender shares a flow with every peer it signals to; otherwise it answers an
// error and nothing is forwarded.
func (c *core) checkPeers(s *session, msg phoenix.Message, peers []string) bool {
	for _, p := range peers {
		k := flowKey{client: s.peerID, gateway: p}
		if s.kind == kindGateway {
			k = flowKey{client: p, gateway: s.peerID}
		}
		if !c.inFlow(k) {
			c.replyError(s, msg, reasonNotFound)
			return false
		}
	}
	return true
}

func (c *core) createFlow(s *session, cf portalapi.CreateFlow) {
	d := c.m.clients[s.peerID]
	r, ok := c.m.resources[cf.ResourceID]
	if !ok || r.Account != d.account {
		c.failFlow(s, s.peerID, cf.ResourceID, portalapi.FailNotFound)
		return
	}
	if _, ok := c.visibleTo(s.peerID)[r.ID]; !ok {
		c.failFlow(s, s.peerID, cf.ResourceID, portalapi.FailForbidden)
		return
	}
	gs := c.pickGateway(r, cf.ConnectedGatewayIDs)
	if gs == nil {
		c.failFlow(s, s.peerID, cf.ResourceID, portalapi.FailOffline)
		return
	}
	gw := c.m.gateways[gs.peerID]
	cp := portalapi.FlowPeer{ID: s.peerID, PublicKey: s.publicKey}
	gp := portalapi.FlowPeer{ID: gs.peerID, PublicKey: gs.publicKey}
	cCreds, gCreds := portalapi.IceCredentialsFor(cp, gp)
	psk, err := portalapi.PresharedKey(cp, d.pskBase, gp, gw.pskBase)
	if err != nil {
		c.log.Error("derive psk", "error", err)
		c.failFlow(s, s.peerID, cf.ResourceID, portalapi.FailOffline)
		return
	}
	c.refSeq++
	ref := "flow-" + strconv.FormatUint(c.refSeq, 10)
	c.evictPending(s.peerID)
	acc := c.m.accounts[r.Account]
	res := acc.resource(r)
	p := &pendingAuth{
		seq: c.refSeq, clientSess: s.id, key: flowKey{client: s.peerID, gateway: gs.peerID}, resourceID: r.ID,
		clientKey: s.publicKey,
		created: portalapi.FlowCreated{
			ResourceID: r.ID, GatewayID: gs.peerID, SiteID: gw.site, GatewayPublicKey: gs.publicKey,
			GatewayIPv4: gw.ipv4, GatewayIPv6: gw.ipv6, PresharedKey: psk,
			ClientIceCredentials: cCreds, GatewayIceCredentials: gCreds,
		},
	}
	if d.legacyGateway {
		c.legacyFlow(s, gs, ref, p, res.GatewayView())
		return
	}
	c.pending[ref] = p
	c.push(gs, portalapi.EventAuthorizeFlow, portalapi.AuthorizeFlow{
		Ref: ref, Resource: res.GatewayView(),
		Client:               portalapi.FlowClient{ID: s.peerID, PublicKey: s.publicKey, PresharedKey: psk, IPv4: d.ipv4, IPv6: d.ipv6},
		ClientIceCredentials: cCreds, GatewayIceCredentials: gCreds, ExpiresAt: d.expiresAt.Unix(),
	})
	c.emit(Event{Kind: EventFlowRequested, ID: s.peerID, Peer: gs.peerID, Resource: r.ID})
}

// legacyFlow speaks the old, non-idempotent exchange to the gateway for a client configured with
// legacy_gateway_protocol; the client still gets flow_created. Without a connection of the pair (under
// both current keys) the gateway gets request_connection and the flow waits for connection_ready; with
// one, the gateway gets allow_access (no answer expected) and the client flow_created at once, with the
// gateway ICE credentials of that connection.
func (c *core) legacyFlow(s, gs *session, ref string, p *pendingAuth, res portalapi.Resource) {
	d := c.m.clients[s.peerID]
	if lc, ok := c.legacy[p.key]; ok && lc.clientKey == s.publicKey && lc.gatewayKey == gs.publicKey {
		c.push(gs, portalapi.EventAllowAccess, portalapi.AllowAccess{
			ClientID: s.peerID, Resource: res, ExpiresAt: d.expiresAt.Unix(), Ref: ref, ClientIPv4: d.ipv4, ClientIPv6: d.ipv6,
		})
		c.emit(Event{Kind: EventFlowRequested, ID: s.peerID, Peer: gs.peerID, Resource: p.resourceID, Detail: portalapi.EventAllowAccess})
		p.created.GatewayIceCredentials = lc.gatewayCreds
		c.completeFlow(p)
		return
	}
	p.legacy = true
	c.pending[ref] = p
	c.push(gs, portalapi.EventRequestConnection, portalapi.RequestConnection{
		Resource: res, Ref: ref, ExpiresAt: d.expiresAt.Unix(),
		Client: portalapi.RequestClient{
			ID:      s.peerID,
			Payload: portalapi.ClientPayload{IceParameters: p.created.ClientIceCredentials},
			Peer:    portalapi.Peer{PublicKey: s.publicKey, PresharedKey: p.created.PresharedKey, IPv4: d.ipv4, IPv6: d.ipv6},
		},
	})
	c.emit(Event{Kind: EventFlowRequested, ID: s.peerID, Peer: gs.peerID, Resource: p.resourceID, Detail: portalapi.EventRequestConnection})
}

// maxPendingPerClient bounds the authorize_flow requests a client may have unanswered (clients re-send
// create_flow while they wait, and a gateway may never answer).
const maxPendingPerClient = 64

// evictPending drops the client's oldest unanswered authorizations beyond maxPendingPerClient-1; a late
// flow_authorized for them gets a not_found error reply.
func (c *core) evictPending(clientID string) {
	for {
		n, oldest := 0, ""
		for ref, p := range c.pending {
			if p.key.client != clientID {
				continue
			}
			n++
			if oldest == "" || p.seq < c.pending[oldest].seq {
				oldest = ref
			}
		}
		if n < maxPendingPerClient {
			return
		}
		delete(c.pending, oldest)
	}
}

// pickGateway chooses an online gateway serving r: one the client is already connected to if possible,
// otherwise round-robin over the online gateways of r's first site that has any (sites in configured order,
// gateways by id).
func (c *core) pickGateway(r ResourceConfig, connected []string) *session {
	serves := func(gid string) bool {
		g := c.m.gateways[gid]
		return g != nil && slices.Contains(r.Sites, g.site)
	}
	for _, gid := range slices.Sorted(slices.Values(connected)) {
		if gs := c.onlineSession(c.gateways, gid); gs != nil && serves(gid) {
			return gs
		}
	}
	for _, site := range r.Sites {
		if online := c.onlineGatewaysIn(map[string]bool{site: true}); len(online) > 0 {
			n := c.rr[site]
			c.rr[site] = n + 1
			return online[n%uint64(len(online))].s
		}
	}
	return nil
}

// --- snapshot -----------------------------------------------------------------------------------------

// PeerState is a client or gateway in a [State].
type PeerState struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	Online    bool   `json:"online"`
	PublicKey string `json:"public_key,omitempty"`
	IPv4      string `json:"ipv4"`
	IPv6      string `json:"ipv6"`
	// Site is a gateway's site id (empty for clients).
	Site string `json:"site,omitempty"`
	// Connections is the peer's latest report_connections while it is online (empty otherwise).
	Connections []portalapi.ConnectionReport `json:"connections"`
}

// RelayState is an online relay in a [State].
type RelayState struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Addr4 string `json:"addr4,omitempty"`
	Addr6 string `json:"addr6,omitempty"`
}

// FlowState is an authorized client/gateway pair in a [State].
type FlowState struct {
	ClientID    string   `json:"client_id"`
	GatewayID   string   `json:"gateway_id"`
	ResourceIDs []string `json:"resource_ids"`
}

// State is a snapshot of who is online and which flows exist (admin GET /v1/state).
type State struct {
	Clients  []PeerState  `json:"clients"`
	Gateways []PeerState  `json:"gateways"`
	Relays   []RelayState `json:"relays"`
	Flows    []FlowState  `json:"flows"`
}

func (c *core) state() State {
	st := State{Clients: []PeerState{}, Gateways: []PeerState{}, Relays: []RelayState{}, Flows: []FlowState{}}
	peer := func(kind tokenKind, d *device, active map[string]uint64) PeerState {
		ps := PeerState{ID: d.id, Name: d.name, IPv4: d.ipv4.String(), IPv6: d.ipv6.String(), Site: d.site, Connections: []portalapi.ConnectionReport{}}
		if s := c.onlineSession(active, d.id); s != nil {
			ps.Online, ps.PublicKey = true, s.publicKey
		}
		if r, ok := c.reports[peerKey{kind, d.id}]; ok {
			ps.Connections = slices.Clone(r)
		}
		return ps
	}
	for _, id := range sortedKeys(c.m.clients) {
		st.Clients = append(st.Clients, peer(kindClient, c.m.clients[id], c.clients))
	}
	for _, id := range sortedKeys(c.m.gateways) {
		st.Gateways = append(st.Gateways, peer(kindGateway, c.m.gateways[id], c.gateways))
	}
	for _, s := range c.relaysByID() {
		rs := RelayState{ID: s.relayID, Name: s.name}
		if s.addr4.IsValid() {
			rs.Addr4 = s.addr4.String()
		}
		if s.addr6.IsValid() {
			rs.Addr6 = s.addr6.String()
		}
		st.Relays = append(st.Relays, rs)
	}
	for _, k := range sortedFlowKeys(c.flows) {
		st.Flows = append(st.Flows, FlowState{ClientID: k.client, GatewayID: k.gateway, ResourceIDs: sortedKeys(c.flows[k])})
	}
	return st
}

func sortedKeys[K interface{ ~string | ~uint64 }, V any](m map[K]V) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func sortedFlowKeys(m map[flowKey]map[string]bool) []flowKey {
	keys := make([]flowKey, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].client != keys[j].client {
			return keys[i].client < keys[j].client
		}
		return keys[i].gateway < keys[j].gateway
	})
	return keys
}

// ErrNotFound is returned by admin deletions of unknown ids.
var ErrNotFound = fmt.Errorf("portalmock: not found")
