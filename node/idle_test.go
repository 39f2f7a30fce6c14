package node

import (
	"fmt"
	"testing"
	"time"
)

// TestIdleConnectionsCoalesceAndReactivate runs a hub with several peers on
// short timings: once every connection is idle the hub wakes about once per
// keepalive period (not once per connection), the ICE agents are gone, and a
// packet makes its connection active again at once.
func TestIdleConnectionsCoalesceAndReactivate(t *testing.T) {
	if testing.Short() {
		t.Skip("slow (timeouts of several seconds); skipped with -short")
	}
	const peers = 6
	const idleAfter, keepalive = 400 * time.Millisecond, 800 * time.Millisecond
	short := func(c *Config) { c.IdleAfter, c.KeepaliveInterval = idleAfter, keepalive }
	relay := startRelay(t)
	hub := newTestNode(t, "100.64.0.1", short)
	hub.n.UpdateRelays(nil, []Relay{relay.relay("r1", hub.n)})
	hub.waitRelayReady(t)
	var nodes []*testNode
	for i := 0; i < peers; i++ {
		p := newTestNode(t, fmt.Sprintf("100.64.1.%d", i+1), short)
		p.n.UpdateRelays(nil, []Relay{relay.relay("r1", p.n)})
		p.waitRelayReady(t)
		id := fmt.Sprintf("c%d", i)
		hubSignalsTo(hub, p)
		connectHub(t, hub, p, id, i)
		roundTrip(t, hub, p, 5*time.Second)
		nodes = append(nodes, p)
	}
	// Every connection goes idle.
	deadline := time.Now().Add(5 * time.Second)
	for !allIdle(hub.n) {
		if time.Now().After(deadline) {
			t.Fatalf("connections did not go idle: %+v", hub.n.Stats())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Agents stay up for agentGrace after establishment, then none may be left.
	for deadline := time.Now().Add(agentGrace + 2*time.Second); hub.n.liveAgents.Load() != 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%d ICE agents still alive on idle connections", hub.n.liveAgents.Load())
		}
		time.Sleep(50 * time.Millisecond)
	}

	before := hub.n.Wakeups()
	rxBefore := statsOf(t, nodes[0].n, "c0").RxBytes
	const window = 4 * keepalive
	time.Sleep(window)
	woke := hub.n.Wakeups() - before
	if rx := statsOf(t, nodes[0].n, "c0").RxBytes; rx <= rxBefore {
		t.Errorf("no NAT keepalive reached the peer while idle (rx %d → %d)", rxBefore, rx)
	}
	t.Logf("%d idle connections: %d wake-ups in %v (%d keepalive periods)", peers, woke, window, window/keepalive)
	if woke > uint64(window/keepalive)+2 {
		t.Fatalf("%d wake-ups in %v, want about one per keepalive period (%v)", woke, window, keepalive)
	}
	for _, s := range hub.n.Stats() {
		if !s.Established {
			t.Fatalf("idle connection lost: %s", describe(s))
		}
	}

	// A packet reactivates its connection at once, on both ends: the data
	// path clears the idle state itself, so when the hub has the answer, the
	// peer (which received the ping and sent the answer) and the hub are
	// active, whether or not their timer goroutines have run since.
	roundTrip(t, hub, nodes[2], 2*time.Second)
	if s := statsOf(t, hub.n, "c2"); s.Idle {
		t.Fatalf("connection still idle after traffic: %s", describe(s))
	}
	if s := statsOf(t, nodes[2].n, "c2"); s.Idle {
		t.Fatalf("peer's connection still idle after traffic: %s", describe(s))
	}
	if s := statsOf(t, hub.n, "c3"); !s.Idle {
		t.Fatalf("untouched connection woke up: %s", describe(s))
	}
	// An idempotent upsert wakes a connection from idle too, without a new handshake.
	hs := statsOf(t, hub.n, "c3").LastHandshake
	connectHub(t, hub, nodes[3], "c3", 3)
	if s := statsOf(t, hub.n, "c3"); s.Idle || !s.Established || !s.LastHandshake.Equal(hs) {
		t.Fatalf("upsert did not wake the connection or re-handshook: %s (handshake %v → %v)", describe(s), hs, s.LastHandshake)
	}
}

func allIdle(n *Node) bool {
	for _, s := range n.Stats() {
		if !s.Idle {
			return false
		}
	}
	return true
}

// hubSignalsTo routes the hub's candidate events to p (the hub has one
// connection per peer, so events are dispatched by connection id).
func hubSignalsTo(hub, p *testNode) {
	hub.mu.Lock()
	if hub.routes == nil {
		hub.routes = make(map[string]*testNode)
	}
	hub.mu.Unlock()
	p.mu.Lock()
	p.peer = hub
	p.mu.Unlock()
}

func connectHub(t testing.TB, hub, p *testNode, id string, i int) {
	t.Helper()
	hub.mu.Lock()
	hub.routes[id] = p
	hub.mu.Unlock()
	ch := Credentials{Ufrag: fmt.Sprintf("hub%05d", i), Password: fmt.Sprintf("hubpassword%017d", i)}
	cp := Credentials{Ufrag: fmt.Sprintf("per%05d", i), Password: fmt.Sprintf("peerpassword%016d", i)}
	if err := p.n.UpsertConnection(ConnectionParams{ID: id, RemoteKey: hub.n.PublicKey(), PresharedKey: psk, Local: cp, Remote: ch, Role: RoleControlled}); err != nil {
		t.Fatal(err)
	}
	if err := hub.n.UpsertConnection(ConnectionParams{ID: id, RemoteKey: p.n.PublicKey(), PresharedKey: psk, Local: ch, Remote: cp, Role: RoleControlling}); err != nil {
		t.Fatal(err)
	}
	if err := hub.n.SetAllowedIPs(id, []netipPrefix{prefix32(p.ip)}); err != nil {
		t.Fatal(err)
	}
	if err := p.n.SetAllowedIPs(id, []netipPrefix{prefix32(hub.ip)}); err != nil {
		t.Fatal(err)
	}
}
