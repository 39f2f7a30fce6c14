package portalmock

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/portalapi"
)

// coreMachine drives the portal core with random connects, disconnects, relay churn, flows, signalling
// and admin changes, and checks what it sends against a model built from the outputs alone:
//   - frames go only to live sockets and are well-formed; error replies only to the sender;
//   - every joined client and gateway knows exactly the first two online relays (init + relays_presence),
//     with credentials derived from its current key;
//   - authorize_flow / flow_created carry the credentials and PSK derived from both current keys;
//   - a client on the old gateway protocol gets request_connection sent exactly when its pair has no
//     accepted connection under the current keys, allow_access otherwise, and flow_created carries the
//     gateway's credentials from connection_ready; only a well-formed connection_ready for a pending ref of
//     that gateway is accepted;
//   - ICE candidates reach a peer only from a peer it was authorized with;
//   - joins, leaves (phx_leave), closes and replacements, in any order, leave exactly the sessions the model
//     says joined, with one *_left event per session that stopped being joined, and the core's registries
//     point only at live joined sessions (issue 16).
type coreMachine struct {
	c        *core
	nextID   uint64
	live     map[uint64]*session
	keys     map[string]string // device id → current public key
	keySeq   int
	relays   []string          // online relay ids in join order
	secrets  map[string]string // relay id → stamp secret
	relaySes map[string]uint64
	views    map[uint64][]portalapi.Relay // what each session was told about relays
	authz    map[string]map[string]bool   // gateway id → client ids it was asked to authorize
	refs     []string
	sender   uint64            // the session whose frame is being handled (0: none)
	joined   map[uint64]bool   // sessions the model says are joined
	wantLeft map[EventKind]int // *_left events the model expects so far
	gotLeft  map[EventKind]int // *_left events the core emitted so far
	// the old gateway protocol (clients with legacy_gateway_protocol)
	legacyClients map[string]bool
	legacyReqs    map[string]legacyReq   // request_connection refs seen
	legacyRefs    []string               // the same, in order, for drawing
	legacyConns   map[flowKey]legacyConn // connections the model saw accepted
	errReplies    int                    // error replies to the sender so far
	refTo         map[string]uint64      // gateway session each authorize_flow / request_connection went to
}

// answerer draws the gateway session that answers ref: mostly the one that got it (if still joined), else
// any joined gateway.
func (m *coreMachine) answerer(t *rapid.T, ref string) *session {
	if s := m.live[m.refTo[ref]]; s != nil && s.joined && rapid.IntRange(0, 3).Draw(t, "wrong gateway") > 0 {
		return s
	}
	return m.pick(t, kindGateway)
}

// legacyReq is a request_connection as the gateway saw it.
type legacyReq struct {
	key                   flowKey
	clientKey, gatewayKey string
}

var leftKind = map[tokenKind]EventKind{kindClient: EventClientLeft, kindGateway: EventGatewayLeft, kindRelay: EventRelayLeft}

// unjoin records that a session stopped being joined; a relay counts a relay_left only if it held its id.
func (m *coreMachine) unjoin(s *session) {
	if !m.joined[s.id] {
		return
	}
	delete(m.joined, s.id)
	if s.kind == kindRelay {
		if m.relaySes[s.relayID] != s.id {
			return
		}
		m.relays = slices.DeleteFunc(m.relays, func(r string) bool { return r == s.relayID })
		delete(m.relaySes, s.relayID)
	}
	m.wantLeft[leftKind[s.kind]]++
}

// joinPeer records a client or gateway session joining: another joined session of the same device is
// replaced.
func (m *coreMachine) joinPeer(s *session) {
	for id := range m.joined {
		if o := m.live[id]; id != s.id && o.kind == s.kind && o.peerID == s.peerID {
			m.unjoin(o)
		}
	}
	m.joined[s.id] = true
}

// joinRelay records a relay session joining with a secret: its own earlier registration ends, another
// session holding the same relay id is replaced (unjoined, without relay_left).
func (m *coreMachine) joinRelay(s *session, secret string) {
	m.unjoin(s)
	rid := portalapi.RelayID(secret)
	if old, ok := m.relaySes[rid]; ok {
		delete(m.joined, old)
	}
	m.relays = append(slices.DeleteFunc(m.relays, func(r string) bool { return r == rid }), rid)
	m.secrets[rid] = secret
	m.relaySes[rid] = s.id
	m.joined[s.id] = true
}

var (
	machineClients  = []string{client1, client2}
	machineGateways = []string{gateway1, gateway2}
	machineSecrets  = []string{"s1", "s2", "s3", "s4"}
	machineRes      = []string{resCIDR, resDNS, resInet, "00000000-0000-4000-8000-00000000dead"}
)

func (m *coreMachine) key(id string, fresh bool) string {
	if k, ok := m.keys[id]; ok && !fresh {
		return k
	}
	m.keySeq++
	b := make([]byte, 32)
	copy(b, strconv.Itoa(m.keySeq))
	m.keys[id] = base64.StdEncoding.EncodeToString(b)
	return m.keys[id]
}

func (m *coreMachine) frame(t *rapid.T, s *session, topic, event string, payload any) {
	b, err := json.Marshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	data, err := phoenix.Encode(phoenix.V1, phoenix.Message{Ref: phoenix.IntRef(1), Topic: topic, Event: event, Payload: b})
	if err != nil {
		t.Fatal(err)
	}
	m.sender = s.id
	m.c.frame(s.id, data)
	m.drain(t)
	m.sender = 0
}

func (m *coreMachine) connect(t *rapid.T, kind tokenKind, id string, fresh bool) {
	m.nextID++
	s := &session{id: m.nextID, kind: kind, peerID: id, publicKey: m.key(id, fresh), version: phoenix.V1}
	m.live[s.id] = s
	m.c.connect(s)
	m.joinPeer(s)
	m.frame(t, s, kind.String(), phoenix.EventJoin, nil)
}

func (m *coreMachine) pick(t *rapid.T, kind tokenKind) *session {
	var ss []*session
	for _, id := range sortedKeys(m.live) {
		if s := m.live[id]; s.kind == kind && s.joined {
			ss = append(ss, s)
		}
	}
	if len(ss) == 0 {
		t.Skip("no session")
	}
	return rapid.SampledFrom(ss).Draw(t, "session")
}

// pickLive returns any live session of kind, joined or not.
func (m *coreMachine) pickLive(t *rapid.T, kind tokenKind) *session {
	var ss []*session
	for _, id := range sortedKeys(m.live) {
		if s := m.live[id]; s.kind == kind {
			ss = append(ss, s)
		}
	}
	if len(ss) == 0 {
		t.Skip("no session")
	}
	return rapid.SampledFrom(ss).Draw(t, "session")
}

func (m *coreMachine) disconnect(t *rapid.T, id uint64) {
	s := m.live[id]
	m.unjoin(s)
	delete(m.live, id)
	delete(m.views, id)
	m.c.disconnect(id)
	m.drain(t)
}

// drain checks and consumes the core's output.
func (m *coreMachine) drain(t *rapid.T) {
	for _, e := range m.c.events {
		switch e.Kind {
		case EventClientLeft, EventGatewayLeft, EventRelayLeft:
			m.gotLeft[e.Kind]++
		}
	}
	m.c.events = m.c.events[:0]
	for len(m.c.out) > 0 {
		out := m.c.out
		m.c.out = nil
		for _, o := range out {
			s := m.live[o.sess]
			if s == nil {
				t.Fatalf("frame for dead session %d", o.sess)
			}
			if o.data != nil {
				m.check(t, s, o.data)
			}
			if o.close { // the driver cancels the socket, which then disconnects
				m.disconnect(t, o.sess)
			}
		}
	}
}

func (m *coreMachine) check(t *rapid.T, s *session, data []byte) {
	msg, err := phoenix.Decode(phoenix.V1, data)
	if err != nil {
		t.Fatalf("malformed frame %q", data)
	}
	if msg.Event == phoenix.EventReply {
		var rp phoenix.ReplyPayload
		if err := json.Unmarshal(msg.Payload, &rp); err != nil || (rp.Status == phoenix.StatusError && s.id != m.sender) {
			t.Fatalf("reply %s to session %d while handling %d", msg.Payload, s.id, m.sender)
		}
		if rp.Status == phoenix.StatusError {
			m.errReplies++
		}
		return
	}
	var dec portalapi.Message
	switch s.kind {
	case kindClient:
		dec, err = portalapi.DecodeClientIngress(msg.Event, msg.Payload)
	case kindGateway:
		dec, err = portalapi.DecodeGatewayIngress(msg.Event, msg.Payload)
	default:
		dec, err = portalapi.DecodeRelayIngress(msg.Event, msg.Payload)
	}
	if err != nil {
		t.Fatalf("undecodable %s: %v", msg.Event, err)
	}
	switch v := dec.(type) {
	case portalapi.ClientInit:
		m.views[s.id] = v.Relays
	case portalapi.GatewayInit:
		m.views[s.id] = v.Relays
	case portalapi.RelaysPresence:
		for _, id := range v.DisconnectedIDs {
			if !slices.ContainsFunc(m.views[s.id], func(r portalapi.Relay) bool { return r.ID == id }) {
				t.Fatalf("relay %s disconnected but never announced to session %d", id, s.id)
			}
		}
		m.views[s.id] = v.Connected
	case portalapi.RequestConnection:
		k := flowKey{client: v.Client.ID, gateway: s.peerID}
		cp := portalapi.FlowPeer{ID: v.Client.ID, PublicKey: m.keys[v.Client.ID]}
		gp := portalapi.FlowPeer{ID: s.peerID, PublicKey: s.publicKey}
		cc, _ := portalapi.IceCredentialsFor(cp, gp)
		psk, _ := portalapi.PresharedKey(cp, pskBaseOf(cp.ID), gp, pskBaseOf(gp.ID))
		if !m.legacyClients[cp.ID] || v.Client.Payload.IceParameters != cc || v.Client.Peer.PresharedKey != psk || v.Client.Peer.PublicKey != cp.PublicKey {
			t.Fatalf("request_connection for a client not on the old protocol, or credentials not from the current keys: %+v", v)
		}
		if lc, ok := m.legacyConns[k]; ok && lc.clientKey == cp.PublicKey && lc.gatewayKey == gp.PublicKey {
			t.Fatalf("request_connection for a pair that has a connection: %+v", v)
		}
		if m.authz[s.peerID] == nil {
			m.authz[s.peerID] = map[string]bool{}
		}
		m.authz[s.peerID][cp.ID] = true
		m.legacyReqs[v.Ref] = legacyReq{key: k, clientKey: cp.PublicKey, gatewayKey: gp.PublicKey}
		m.legacyRefs = append(m.legacyRefs, v.Ref)
		m.refTo[v.Ref] = s.id
	case portalapi.AllowAccess:
		k := flowKey{client: v.ClientID, gateway: s.peerID}
		if lc, ok := m.legacyConns[k]; !m.legacyClients[v.ClientID] || !ok || lc.clientKey != m.keys[v.ClientID] || lc.gatewayKey != s.publicKey {
			t.Fatalf("allow_access without a connection under the current keys: %+v", v)
		}
		m.authz[s.peerID][v.ClientID] = true
	case portalapi.AuthorizeFlow:
		if m.legacyClients[v.Client.ID] {
			t.Fatalf("authorize_flow for a client on the old protocol: %+v", v)
		}
		cp := portalapi.FlowPeer{ID: v.Client.ID, PublicKey: m.keys[v.Client.ID]}
		gp := portalapi.FlowPeer{ID: s.peerID, PublicKey: s.publicKey}
		cc, gc := portalapi.IceCredentialsFor(cp, gp)
		psk, _ := portalapi.PresharedKey(cp, pskBaseOf(cp.ID), gp, pskBaseOf(gp.ID))
		if v.ClientIceCredentials != cc || v.GatewayIceCredentials != gc || v.Client.PresharedKey != psk || v.Client.PublicKey != cp.PublicKey {
			t.Fatalf("authorize_flow credentials do not match the current keys: %+v", v)
		}
		if m.authz[s.peerID] == nil {
			m.authz[s.peerID] = map[string]bool{}
		}
		m.authz[s.peerID][v.Client.ID] = true
		m.refs = append(m.refs, v.Ref)
		m.refTo[v.Ref] = s.id
	case portalapi.FlowCreated:
		cp := portalapi.FlowPeer{ID: s.peerID, PublicKey: s.publicKey}
		gp := portalapi.FlowPeer{ID: v.GatewayID, PublicKey: v.GatewayPublicKey}
		cc, gc := portalapi.IceCredentialsFor(cp, gp)
		psk, _ := portalapi.PresharedKey(cp, pskBaseOf(cp.ID), gp, pskBaseOf(gp.ID))
		if m.legacyClients[cp.ID] { // the gateway's own credentials, from its connection_ready
			lc, ok := m.legacyConns[flowKey{client: cp.ID, gateway: gp.ID}]
			if !ok || lc.clientKey != cp.PublicKey || lc.gatewayKey != gp.PublicKey {
				t.Fatalf("flow_created for an old-protocol client without an accepted connection: %+v", v)
			}
			gc = lc.gatewayCreds
		}
		if v.ClientIceCredentials != cc || v.GatewayIceCredentials != gc || v.PresharedKey != psk {
			t.Fatalf("flow_created credentials do not match the keys: %+v", v)
		}
	case portalapi.ClientIceCandidates:
		if !m.authz[s.peerID][v.ClientID] {
			t.Fatalf("gateway %s got candidates from client %s it was never asked to authorize", s.peerID, v.ClientID)
		}
	case portalapi.GatewayIceCandidates:
		if !m.authz[v.GatewayID][s.peerID] {
			t.Fatalf("client %s got candidates from gateway %s never asked to authorize it", s.peerID, v.GatewayID)
		}
	}
}

// Check is the invariant: the core's joined sessions and registries are the model's, each session that
// stopped being joined was announced once, and every joined client and gateway knows the first two online
// relays.
func (m *coreMachine) Check(t *rapid.T) {
	for _, id := range sortedKeys(m.live) {
		if s := m.live[id]; s.joined != m.joined[id] {
			t.Fatalf("session %d (%s %s) joined=%v, model says %v", id, s.kind, s.peerID, s.joined, m.joined[id])
		}
	}
	for k, n := range m.wantLeft {
		if m.gotLeft[k] != n {
			t.Fatalf("%d %s events, want %d", m.gotLeft[k], k, n)
		}
	}
	for k, n := range m.gotLeft {
		if m.wantLeft[k] != n {
			t.Fatalf("%d %s events, want %d", n, k, m.wantLeft[k])
		}
	}
	for _, reg := range []struct {
		kind   tokenKind
		active map[string]uint64
	}{{kindClient, m.c.clients}, {kindGateway, m.c.gateways}, {kindRelay, m.c.relays}} {
		for key, sid := range reg.active {
			s := m.c.sessions[sid]
			if s == nil || !s.joined || s.kind != reg.kind || (s.kind == kindRelay && s.relayID != key) || (s.kind != kindRelay && s.peerID != key) {
				t.Fatalf("%s registry: %s → session %d (%+v), not a joined session of that id", reg.kind, key, sid, s)
			}
		}
	}
	if got := sortedKeys(m.c.relays); !slices.Equal(got, slices.Sorted(slices.Values(m.relays))) {
		t.Fatalf("online relays %v, model %v", got, m.relays)
	}
	want := m.relays
	if len(want) > maxRelaysPerPeer {
		want = want[:maxRelaysPerPeer]
	}
	for _, id := range sortedKeys(m.live) {
		s := m.live[id]
		if !s.joined || s.kind == kindRelay {
			continue
		}
		var got []string
		for _, r := range m.views[id] {
			if !slices.Contains(got, r.ID) {
				got = append(got, r.ID)
			}
			exp := portalapi.GatewayRelayExpiry
			if s.kind == kindClient {
				exp = m.c.m.clients[s.peerID].expiresAt
			}
			u, p := portalapi.RelayCredentials(m.secrets[r.ID], s.publicKey, exp)
			if r.Username != u || r.Password != p {
				t.Fatalf("session %d: relay %s credentials not derived from its key", id, r.ID)
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("session %d (%s) knows relays %v, want %v", id, s.kind, got, want)
		}
	}
}

func legacyKeySet(m map[flowKey]legacyConn) map[flowKey]map[string]bool {
	out := map[flowKey]map[string]bool{}
	for k := range m {
		out[k] = nil
	}
	return out
}

func TestCoreStateMachine(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	rapid.Check(t, func(t *rapid.T) {
		f := DefaultFile()
		legacy := map[string]bool{}
		for i := range f.Accounts[0].Clients {
			c := &f.Accounts[0].Clients[i]
			c.LegacyGatewayProtocol = rapid.Bool().Draw(t, "legacy "+c.Name)
			legacy[c.ID] = c.LegacyGatewayProtocol
		}
		mdl, err := buildModel(f)
		if err != nil {
			t.Fatal(err)
		}
		m := &coreMachine{
			c:    newCore(mdl, func() time.Time { return time.Unix(1700000000, 0) }, log),
			live: map[uint64]*session{}, keys: map[string]string{}, secrets: map[string]string{},
			relaySes: map[string]uint64{}, views: map[uint64][]portalapi.Relay{}, authz: map[string]map[string]bool{},
			joined: map[uint64]bool{}, wantLeft: map[EventKind]int{}, gotLeft: map[EventKind]int{},
			legacyClients: legacy, legacyReqs: map[string]legacyReq{}, legacyConns: map[flowKey]legacyConn{},
			refTo: map[string]uint64{},
		}
		t.Repeat(map[string]func(*rapid.T){
			"connect client": func(t *rapid.T) {
				m.connect(t, kindClient, rapid.SampledFrom(machineClients).Draw(t, "client"), rapid.Bool().Draw(t, "new key"))
			},
			"connect gateway": func(t *rapid.T) {
				m.connect(t, kindGateway, rapid.SampledFrom(machineGateways).Draw(t, "gateway"), rapid.Bool().Draw(t, "new key"))
			},
			"disconnect": func(t *rapid.T) {
				ids := sortedKeys(m.live)
				if len(ids) == 0 {
					t.Skip("nobody online")
				}
				m.disconnect(t, rapid.SampledFrom(ids).Draw(t, "session"))
			},
			"relay join": func(t *rapid.T) {
				secret := rapid.SampledFrom(machineSecrets).Draw(t, "secret")
				m.nextID++
				s := &session{id: m.nextID, kind: kindRelay, peerID: "dev-relays", version: phoenix.V1,
					addr4: netip.MustParseAddrPort("198.18.0.1:3478")}
				if rapid.Bool().Draw(t, "dual stack") {
					s.addr6 = netip.MustParseAddrPort("[2001:db8::1]:3478")
				}
				m.live[s.id] = s
				m.c.connect(s)
				m.joinRelay(s, secret)
				m.frame(t, s, portalapi.TopicRelay, phoenix.EventJoin, portalapi.RelayJoin{StampSecret: secret})
			},
			"relay rejoin": func(t *rapid.T) { // phx_join again on a live relay socket, joined or not
				s := m.pickLive(t, kindRelay)
				secret := rapid.SampledFrom(machineSecrets).Draw(t, "secret")
				m.joinRelay(s, secret)
				m.frame(t, s, portalapi.TopicRelay, phoenix.EventJoin, portalapi.RelayJoin{StampSecret: secret})
			},
			"rejoin": func(t *rapid.T) { // phx_join again on a live client or gateway socket, joined or not
				s := m.pickLive(t, rapid.SampledFrom([]tokenKind{kindClient, kindGateway}).Draw(t, "kind"))
				if !m.joined[s.id] {
					m.joinPeer(s)
				}
				m.keys[s.peerID] = s.publicKey // the device's current key is its joined session's
				m.frame(t, s, s.kind.String(), phoenix.EventJoin, nil)
			},
			"leave": func(t *rapid.T) { // phx_leave from any live socket, joined or not
				s := m.pickLive(t, rapid.SampledFrom([]tokenKind{kindClient, kindGateway, kindRelay}).Draw(t, "kind"))
				m.unjoin(s)
				delete(m.views, s.id)
				m.frame(t, s, s.kind.String(), phoenix.EventLeave, nil)
			},
			"create flow": func(t *rapid.T) {
				s := m.pick(t, kindClient)
				var connected []string
				if rapid.Bool().Draw(t, "connected") {
					connected = []string{rapid.SampledFrom(machineGateways).Draw(t, "connected gateway")}
				}
				m.frame(t, s, portalapi.TopicClient, portalapi.EventCreateFlow, portalapi.CreateFlow{
					ResourceID: rapid.SampledFrom(machineRes).Draw(t, "resource"), ConnectedGatewayIDs: connected})
			},
			"flow authorized": func(t *rapid.T) {
				if len(m.refs) == 0 {
					t.Skip("no refs")
				}
				ref := rapid.SampledFrom(m.refs).Draw(t, "ref")
				m.frame(t, m.answerer(t, ref), portalapi.TopicGateway, portalapi.EventFlowAuthorized, portalapi.FlowAuthorized{Ref: ref})
			},
			"connection ready": func(t *rapid.T) {
				if len(m.legacyRefs) == 0 {
					t.Skip("no request_connection")
				}
				ref := rapid.SampledFrom(append(slices.Clone(m.legacyRefs), "flow-0")).Draw(t, "ref")
				s := m.answerer(t, ref)
				creds := portalapi.IceCredentials{Username: "g" + ref, Password: "gateway-password-" + ref + s.publicKey[:4]}
				malformed := rapid.IntRange(0, 4).Draw(t, "malformed") == 0
				ready := portalapi.ConnectionReady{Ref: ref, GatewayPayload: portalapi.GatewayResponse{ConnectionAccepted: &portalapi.ConnectionAccepted{IceParameters: creds}}}
				if malformed {
					ready.GatewayPayload.ConnectionAccepted = nil
				}
				// Acceptable: a request this gateway (under this key) got, answered well-formed. Whether it is
				// still pending (not answered, evicted or dropped with its client) the error reply tells; the
				// connection is recorded before the frame, since flow_created comes out while it is handled.
				req, ok := m.legacyReqs[ref]
				acceptable := ok && !malformed && req.key.gateway == s.peerID && req.gatewayKey == s.publicKey
				old, had := m.legacyConns[req.key]
				if acceptable {
					m.legacyConns[req.key] = legacyConn{clientKey: req.clientKey, gatewayKey: req.gatewayKey, gatewayCreds: creds}
				}
				errs := m.errReplies
				m.frame(t, s, portalapi.TopicGateway, portalapi.EventConnectionReady, ready)
				switch {
				case m.errReplies > errs && acceptable && had:
					m.legacyConns[req.key] = old
				case m.errReplies > errs && acceptable:
					delete(m.legacyConns, req.key)
				case m.errReplies == errs && !acceptable:
					t.Fatalf("connection_ready %+v from %s accepted (request %+v)", ready, s.peerID, req)
				}
			},
			"flow on a legacy connection": func(t *rapid.T) { // create_flow from a client whose pair has a connection
				var keys []flowKey
				for _, k := range sortedFlowKeys(legacyKeySet(m.legacyConns)) {
					if m.c.onlineSession(m.c.clients, k.client) != nil && m.c.onlineSession(m.c.gateways, k.gateway) != nil {
						keys = append(keys, k)
					}
				}
				if len(keys) == 0 {
					t.Skip("no legacy connection online")
				}
				k := rapid.SampledFrom(keys).Draw(t, "pair")
				m.frame(t, m.c.onlineSession(m.c.clients, k.client), portalapi.TopicClient, portalapi.EventCreateFlow, portalapi.CreateFlow{
					ResourceID: rapid.SampledFrom(machineRes).Draw(t, "resource"), ConnectedGatewayIDs: []string{k.gateway}})
			},
			"client candidates": func(t *rapid.T) {
				s := m.pick(t, kindClient)
				m.frame(t, s, portalapi.TopicClient, portalapi.EventBroadcastIceCandidates, portalapi.BroadcastGatewayIceCandidates{
					GatewayIDs: rapid.SliceOfNDistinct(rapid.SampledFrom(machineGateways), 1, 2, rapid.ID[string]).Draw(t, "to"), Candidates: []string{"c"}})
			},
			"gateway candidates": func(t *rapid.T) {
				s := m.pick(t, kindGateway)
				m.frame(t, s, portalapi.TopicGateway, portalapi.EventBroadcastIceCandidates, portalapi.BroadcastClientIceCandidates{
					ClientIDs: rapid.SliceOfNDistinct(rapid.SampledFrom(machineClients), 1, 2, rapid.ID[string]).Draw(t, "to"), Candidates: []string{"c"}})
			},
			"toggle policy": func(t *rapid.T) {
				res := rapid.SampledFrom(machineRes[:3]).Draw(t, "resource")
				pid := "rapid-" + res
				if _, ok := m.c.m.policies[pid]; ok {
					_ = m.c.deletePolicy(pid)
				} else if err := m.c.putPolicy(PolicyConfig{ID: pid, Client: rapid.SampledFrom(machineClients).Draw(t, "client"), Resource: res}); err != nil {
					t.Fatal(err)
				}
				m.drain(t)
			},
			"delete default policies": func(t *rapid.T) {
				for _, id := range sortedKeys(m.c.m.policies) {
					_ = m.c.deletePolicy(id)
				}
				m.drain(t)
			},
			"": m.Check,
		})
	})
}
