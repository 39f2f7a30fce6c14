package portalmock

import (
	"context"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/telemetry/teltest"
)

// Issue 16: a peer that leaves its topic (phx_leave) and then closes its socket, as a relay stopping cleanly
// does, must be removed from presence exactly once, and the portal must keep serving.

// leave sends phx_leave on the peer's topic and expects the ok reply.
func (p *peer) leave() {
	p.t.Helper()
	ref := p.send(p.topic, phoenix.EventLeave, struct{}{})
	p.expectReply(ref, phoenix.StatusOK)
}

// rejoin sends phx_join on the peer's topic over the same socket and expects the ok reply.
func (p *peer) rejoin(payload any) {
	p.t.Helper()
	ref := p.send(p.topic, phoenix.EventJoin, payload)
	p.expectReply(ref, phoenix.StatusOK)
}

// eventCount counts the events of kind about id ("" any id) numbered from `from` on (see EventCount).
func eventCount(s *Server, from int, kind EventKind, id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for i := max(from, s.histBase); i < s.histBase+len(s.history); i++ {
		if Is(kind, id)(s.history[i-s.histBase]) {
			n++
		}
	}
	return n
}

func waitEvent(t *testing.T, s *Server, from int, kind EventKind, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTime)
	defer cancel()
	if _, err := s.WaitFrom(ctx, from, Is(kind, id)); err != nil {
		t.Fatalf("no %s %s: %v", kind, id, err)
	}
}

// waitSockets waits until the server holds n sockets (a closed socket is forgotten once its handler ran its
// disconnect).
func waitSockets(t *testing.T, s *Server, n int) {
	t.Helper()
	deadline := time.Now().Add(waitTime)
	for {
		s.mu.Lock()
		got := len(s.conns)
		s.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("server holds %d sockets, want %d", got, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// expectPresence reads the next message, a relays_presence, and checks the relay ids it disconnects and the
// distinct ids it lists as connected.
func expectPresence(p *peer, gone, connected []string) portalapi.RelaysPresence {
	p.t.Helper()
	rp := expectAs[portalapi.RelaysPresence](p, portalapi.EventRelaysPresence)
	if !slices.Equal(orEmpty(rp.DisconnectedIDs), orEmpty(gone)) || !slices.Equal(distinct(relayIDsOf(rp.Connected)), orEmpty(connected)) {
		p.t.Fatalf("relays_presence disconnected %v connected %v, want %v and %v", rp.DisconnectedIDs, relayIDsOf(rp.Connected), gone, connected)
	}
	return rp
}

func distinct(ids []string) []string {
	out := []string{}
	for _, id := range ids {
		if !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}

// joinExpectRelays joins a client or gateway with a fresh key and checks the relays its init lists.
func joinExpectRelays(t *testing.T, s *Server, kind, token string, relays []string) *peer {
	t.Helper()
	p := connectPeer(t, s, kind, token, newKey(t))
	var got []portalapi.Relay
	if kind == "client" {
		got = expectAs[portalapi.ClientInit](p, portalapi.EventInit).Relays
	} else {
		got = expectAs[portalapi.GatewayInit](p, portalapi.EventInit).Relays
	}
	if ids := distinct(relayIDsOf(got)); !slices.Equal(ids, orEmpty(relays)) {
		t.Fatalf("%s init lists relays %v, want %v", kind, ids, relays)
	}
	return p
}

func TestRelayLeaveThenClose(t *testing.T) {
	s := startServer(t, nil)
	c := joinExpectRelays(t, s, "client", DefaultClientToken1, nil)
	g := joinExpectRelays(t, s, "gateway", DefaultGatewayToken1, nil)
	id := portalapi.RelayID("secret-1")
	r := connectRelay(t, s, "secret-1", "198.18.0.1", "2001:db8::1")
	expectPresence(c, nil, []string{id})
	expectPresence(g, nil, []string{id})

	n := s.EventCount()
	r.leave()
	expectPresence(c, []string{id}, nil)
	expectPresence(g, []string{id}, nil)
	if st := s.State(); len(st.Relays) != 0 {
		t.Errorf("state after leave lists relays %+v", st.Relays)
	}
	r.close()
	waitSockets(t, s, 2)
	c.sync()
	g.sync()
	if got := eventCount(s, n, EventRelayLeft, id); got != 1 {
		t.Errorf("%d relay_left events, want 1", got)
	}
	// Further joins are answered, without the relay.
	joinExpectRelays(t, s, "client", DefaultClientToken2, nil)
	joinExpectRelays(t, s, "gateway", DefaultGatewayToken2, nil)
}

// A leave sent and the socket closed at once, without waiting for the reply, while other peers join.
func TestRelayLeaveCloseInterleavedWithJoins(t *testing.T) {
	s := startServer(t, nil)
	c := joinExpectRelays(t, s, "client", DefaultClientToken1, nil)
	id1, id2 := portalapi.RelayID("secret-1"), portalapi.RelayID("secret-2")
	r1 := connectRelay(t, s, "secret-1", "198.18.0.1", "")
	expectPresence(c, nil, []string{id1})
	r2 := connectRelay(t, s, "secret-2", "198.18.0.2", "")
	expectPresence(c, nil, []string{id1, id2})

	n := s.EventCount()
	r1.send(r1.topic, phoenix.EventLeave, struct{}{})
	g := connectPeer(t, s, "gateway", DefaultGatewayToken1, newKey(t))
	r1.close()
	ginit := expectAs[portalapi.GatewayInit](g, portalapi.EventInit)
	expectPresence(c, []string{id1}, []string{id2})
	// The gateway joined either before or after the leave was handled: its view ends at relay 2 alone.
	if ids := distinct(relayIDsOf(ginit.Relays)); !slices.Equal(ids, []string{id2}) {
		expectPresence(g, []string{id1}, []string{id2})
	}
	waitSockets(t, s, 3)
	c2 := joinExpectRelays(t, s, "client", DefaultClientToken2, []string{id2})
	c.sync()
	g.sync()
	if got := eventCount(s, n, EventRelayLeft, ""); got != 1 {
		t.Errorf("%d relay_left events, want 1", got)
	}
	r2.leave()
	for _, p := range []*peer{c, g, c2} {
		expectPresence(p, []string{id2}, nil)
	}
}

// The relay's join is answered, the relay leaves, then a client joins (this panicked the portal), then the
// relay's socket closes and a gateway joins.
func TestRelayLeaveThenClientJoins(t *testing.T) {
	s := startServer(t, nil)
	id := portalapi.RelayID("secret-1")
	r := connectRelay(t, s, "secret-1", "198.18.0.1", "")
	r.leave()
	c := joinExpectRelays(t, s, "client", DefaultClientToken1, nil)
	r.close()
	waitSockets(t, s, 1)
	g := joinExpectRelays(t, s, "gateway", DefaultGatewayToken1, nil)
	// A relay that joins later reaches both.
	connectRelay(t, s, "secret-2", "198.18.0.2", "")
	id2 := portalapi.RelayID("secret-2")
	expectPresence(c, nil, []string{id2})
	expectPresence(g, nil, []string{id2})
	if got := eventCount(s, 0, EventRelayLeft, id); got != 1 {
		t.Errorf("%d relay_left events, want 1", got)
	}
}

// A relay restarts: leave, close, and a new socket joins with the same stamp secret (the same relay id and
// credentials), then with a new secret (a reboot: a new relay).
func TestRelayRestart(t *testing.T) {
	s := startServer(t, nil)
	c := joinExpectRelays(t, s, "client", DefaultClientToken1, nil)
	g := joinExpectRelays(t, s, "gateway", DefaultGatewayToken1, nil)
	id := portalapi.RelayID("secret-1")
	r := connectRelay(t, s, "secret-1", "198.18.0.1", "2001:db8::1")
	first := expectPresence(c, nil, []string{id})
	expectPresence(g, nil, []string{id})

	r.leave()
	expectPresence(c, []string{id}, nil)
	expectPresence(g, []string{id}, nil)
	r.close()
	waitSockets(t, s, 2)
	r = connectRelay(t, s, "secret-1", "198.18.0.1", "2001:db8::1")
	again := expectPresence(c, nil, []string{id})
	expectPresence(g, nil, []string{id})
	if !slices.Equal(first.Connected, again.Connected) {
		t.Errorf("the re-joined relay differs:\n%+v\nwas\n%+v", again.Connected, first.Connected)
	}
	joinExpectRelays(t, s, "client", DefaultClientToken2, []string{id})

	// A reboot: leave, close, join with a new secret.
	r.leave()
	expectPresence(c, []string{id}, nil)
	expectPresence(g, []string{id}, nil)
	r.close()
	waitSockets(t, s, 3)
	id2 := portalapi.RelayID("secret-2")
	connectRelay(t, s, "secret-2", "198.18.0.1", "2001:db8::1")
	expectPresence(c, nil, []string{id2})
	expectPresence(g, nil, []string{id2})
	joinExpectRelays(t, s, "gateway", DefaultGatewayToken2, []string{id2})
	if st := s.State(); len(st.Relays) != 1 || st.Relays[0].ID != id2 {
		t.Errorf("state relays %+v, want only %s", st.Relays, id2)
	}
}

// A relay that joins again on the same socket with another secret replaces its first registration.
func TestRelayRejoinSameSocket(t *testing.T) {
	s := startServer(t, nil)
	c := joinExpectRelays(t, s, "client", DefaultClientToken1, nil)
	id1, id2 := portalapi.RelayID("secret-1"), portalapi.RelayID("secret-2")
	r := connectRelay(t, s, "secret-1", "198.18.0.1", "")
	expectPresence(c, nil, []string{id1})
	r.leave()
	expectPresence(c, []string{id1}, nil)
	r.rejoin(portalapi.RelayJoin{StampSecret: "secret-1"})
	r.expect(portalapi.EventInit)
	expectPresence(c, nil, []string{id1})
	r.rejoin(portalapi.RelayJoin{StampSecret: "secret-2"}) // joined twice: the second join replaces the first
	r.expect(portalapi.EventInit)
	expectPresence(c, []string{id1}, []string{id2})
	joinExpectRelays(t, s, "client", DefaultClientToken2, []string{id2})
	r.close()
	expectPresence(c, []string{id2}, nil)
}

// A relay's stale socket (replaced by a new socket of the same relay) leaves and closes after the
// replacement joined: the relay stays online.
func TestReplacedRelayLeaves(t *testing.T) {
	s := startServer(t, nil)
	c := joinExpectRelays(t, s, "client", DefaultClientToken1, nil)
	id := portalapi.RelayID("secret-1")
	old := connectRelay(t, s, "secret-1", "198.18.0.1", "")
	expectPresence(c, nil, []string{id})
	n := s.EventCount()
	connectRelay(t, s, "secret-1", "198.18.0.1", "")
	// The replacement's join is pushed (same id, re-announced or not); the old socket may get the leave in
	// before the portal closes it.
	b, err := phoenix.Encode(phoenix.V1, phoenix.Message{Ref: phoenix.IntRef(9), Topic: old.topic, Event: phoenix.EventLeave, Payload: []byte(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), waitTime)
	defer cancel()
	_ = old.ws.Write(ctx, websocket.MessageText, b) // the portal may have closed the socket already
	old.close()
	waitSockets(t, s, 2)
	c.sync()
	if got := eventCount(s, n, EventRelayLeft, id); got != 0 {
		t.Errorf("%d relay_left events for a relay that stayed online", got)
	}
	joinExpectRelays(t, s, "client", DefaultClientToken2, []string{id})
	if st := s.State(); len(st.Relays) != 1 {
		t.Errorf("state relays %+v", st.Relays)
	}
}

// A client leaves `client` and joins it again on the same socket; another leaves and closes.
func TestClientLeaveRejoin(t *testing.T) {
	fs := newFlowSetup(t)
	flow(t, fs.c, fs.g1, resCIDR, nil)
	n := fs.s.EventCount()
	fs.c.leave()
	waitEvent(t, fs.s, n, EventClientLeft, client1)
	if st := fs.s.State(); st.Clients[0].Online {
		t.Errorf("client online after leave: %+v", st.Clients[0])
	}
	// While it is away: a relay joins (no presence for it), the gateway's candidates are not forwarded.
	id := portalapi.RelayID("secret-1")
	connectRelay(t, fs.s, "secret-1", "198.18.0.1", "")
	expectPresence(fs.g1, nil, []string{id})
	expectPresence(fs.g2, nil, []string{id})
	fs.g1.send(portalapi.TopicGateway, portalapi.EventBroadcastIceCandidates, portalapi.BroadcastClientIceCandidates{ClientIDs: []string{client1}, Candidates: []string{"c"}})
	fs.g1.sync()
	ref := fs.c.send(portalapi.TopicClient, portalapi.EventCreateFlow, portalapi.CreateFlow{ResourceID: resCIDR})
	fs.c.expectErrorReason(ref, reasonUnmatchedTopic)

	fs.c.rejoin(nil)
	init := expectAs[portalapi.ClientInit](fs.c, portalapi.EventInit)
	if ids := distinct(relayIDsOf(init.Relays)); !slices.Equal(ids, []string{id}) {
		t.Errorf("init after rejoin lists relays %v", ids)
	}
	waitEvent(t, fs.s, n, EventClientJoined, client1)
	if st := fs.s.State(); !st.Clients[0].Online {
		t.Errorf("client offline after rejoin: %+v", st.Clients[0])
	}
	flow(t, fs.c, fs.g1, resDNS, []string{gateway1})
	connectRelay(t, fs.s, "secret-2", "198.18.0.2", "")
	expectPresence(fs.c, nil, []string{id, portalapi.RelayID("secret-2")})
	if got := eventCount(fs.s, n, EventClientLeft, client1); got != 1 {
		t.Errorf("%d client_left events, want 1", got)
	}

	// Leave then close: one client_left.
	c2 := joinExpectRelays(t, fs.s, "client", DefaultClientToken2, []string{id, portalapi.RelayID("secret-2")})
	n = fs.s.EventCount()
	c2.leave()
	c2.close()
	waitSockets(t, fs.s, 5)
	fs.c.sync()
	if got := eventCount(fs.s, n, EventClientLeft, client2); got != 1 {
		t.Errorf("%d client_left events for leave+close, want 1", got)
	}
	joinExpectRelays(t, fs.s, "client", DefaultClientToken2, []string{id, portalapi.RelayID("secret-2")})
}

// A gateway leaves with an authorization pending: the client hears at once that the flow failed; the
// close that follows changes nothing; a gateway that rejoins on its socket serves flows again.
func TestGatewayLeaveRejoin(t *testing.T) {
	fs := newFlowSetup(t)
	fs.c.send(portalapi.TopicClient, portalapi.EventCreateFlow, portalapi.CreateFlow{ResourceID: resCIDR, ConnectedGatewayIDs: []string{gateway1}})
	expectAs[portalapi.AuthorizeFlow](fs.g1, portalapi.EventAuthorizeFlow)
	n := fs.s.EventCount()
	fs.g1.leave()
	if f := expectAs[portalapi.FlowCreationFailed](fs.c, portalapi.EventFlowCreationFailed); f.Reason != portalapi.FailOffline {
		t.Errorf("flow failure %+v", f)
	}
	waitEvent(t, fs.s, n, EventGatewayLeft, gateway1)
	// New flows go to the other gateway.
	if _, fc := flow(t, fs.c, fs.g2, resCIDR, []string{gateway1}); fc.GatewayID != gateway2 {
		t.Errorf("flow went to %s", fc.GatewayID)
	}
	fs.g1.close()
	waitSockets(t, fs.s, 2)
	fs.c.sync()
	if got := eventCount(fs.s, n, EventGatewayLeft, gateway1); got != 1 {
		t.Errorf("%d gateway_left events, want 1", got)
	}

	// Leave and rejoin on the same socket.
	fs.g2.leave()
	fs.g2.rejoin(nil)
	expectAs[portalapi.GatewayInit](fs.g2, portalapi.EventInit)
	connectRelay(t, fs.s, "secret-1", "198.18.0.1", "")
	expectPresence(fs.g2, nil, []string{portalapi.RelayID("secret-1")})
	expectPresence(fs.c, nil, []string{portalapi.RelayID("secret-1")})
	flow(t, fs.c, fs.g2, resDNS, []string{gateway2})
	joinExpectRelays(t, fs.s, "gateway", DefaultGatewayToken1, []string{portalapi.RelayID("secret-1")})
}

// A panic while the core handles one socket's frame (injected through the frame hook) closes that socket
// with an ERROR log; the lock is released, other sockets, new joins, the admin API and Close go on working.
func TestPanicClosesOnlyThatConnection(t *testing.T) {
	log, out := teltest.NewLogger(t)
	s, err := New(Config{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	s.core.frameHook = func(_ *session, msg phoenix.Message) {
		if msg.Event == "boom" {
			panic("injected")
		}
	}
	closed := make(chan error, 1)
	defer func() {
		go func() { closed <- s.Close() }()
		select {
		case err := <-closed:
			if err != nil {
				t.Error(err)
			}
		case <-time.After(waitTime):
			t.Error("Close hangs after a panic")
		}
	}()
	for _, start := range []func(net.Listener) error{s.Start, s.StartAdmin} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if err := start(ln); err != nil {
			t.Fatal(err)
		}
	}
	c1 := joinExpectRelays(t, s, "client", DefaultClientToken1, nil)
	g := joinExpectRelays(t, s, "gateway", DefaultGatewayToken1, nil)
	c2 := joinExpectRelays(t, s, "client", DefaultClientToken2, nil)
	n := s.EventCount()
	c2.send(portalapi.TopicClient, "boom", struct{}{})
	c2.expectClosed()
	waitEvent(t, s, n, EventClientLeft, client2) // the disconnect ran after the panic
	if logs := out.String(); !strings.Contains(logs, "ERROR") || !strings.Contains(logs, "panicked") || !strings.Contains(logs, "injected") {
		t.Errorf("no ERROR log for the panic:\n%s", logs)
	}

	c1.sync()
	flow(t, c1, g, resCIDR, nil)
	connectRelay(t, s, "secret-1", "198.18.0.1", "")
	expectPresence(c1, nil, []string{portalapi.RelayID("secret-1")})
	expectPresence(g, nil, []string{portalapi.RelayID("secret-1")})
	joinExpectRelays(t, s, "client", DefaultClientToken2, []string{portalapi.RelayID("secret-1")})
	resp := adminDo(t, s, "GET", "/v1/state", DefaultAdminToken, nil)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("admin state: %d", resp.StatusCode)
	}
	http.DefaultClient.CloseIdleConnections()
}
