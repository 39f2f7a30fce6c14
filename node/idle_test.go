package node

import (
	"fmt"
	"testing"
)

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
