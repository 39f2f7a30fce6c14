package node

import (
	"testing"
	"time"

	"github.com/pion/ice/v4"
)

// TestSendOnClosedAllocationWaitsForNextPath: wireguard-go may still send
// along a path whose relay allocation was just closed (a send in flight when
// the relay was dropped, or a packet received along it before the drop moving
// the peer back there). Those packets wait for the next path, like packets
// before a first nomination, instead of failing on the closed allocation
// (which wireguard-go logs as a failed send).
func TestSendOnClosedAllocationWaitsForNextPath(t *testing.T) {
	relay := startRelay(t)
	relayOnly := func(c *Config) { c.TestOnlyCandidateTypes = []ice.CandidateType{ice.CandidateTypeRelay} }
	a := newTestNode(t, "100.64.0.1", relayOnly)
	b := newTestNode(t, "100.64.0.2", relayOnly)
	giveRelays(t, a, b, relay)
	connect(t, a, b, "c1", credsA, credsB)
	roundTrip(t, a, b, 5*time.Second)
	if _, ok := a.waitEvent(5*time.Second, established("c1")); !ok {
		t.Fatal("not established")
	}
	a.n.mu.Lock()
	c := a.n.conns["c1"]
	a.n.mu.Unlock()
	c.pendMu.Lock()
	stale := c.nominated
	c.pendMu.Unlock()
	if stale == nil || stale.alloc == nil {
		t.Fatalf("want a path through a's allocation, got %+v", stale)
	}
	a.n.UpdateRelays([]string{"r1"}, nil) // the relay goes: its allocation is closed

	msg := make([]byte, 48)
	msg[0] = 4 // a WireGuard transport message
	if err := a.n.bind.Send([][]byte{msg}, stale); err != nil {
		t.Fatalf("send along the closed allocation: %v", err)
	}
	c.pendMu.Lock()
	held := len(c.pending)
	c.pendMu.Unlock()
	if held != 1 {
		t.Fatalf("%d packets wait for the next path, want 1", held)
	}
	// A send that passed the bind's check just before the allocation closed meets the closed socket: the
	// packet is lost with the path, not an error.
	if err := a.n.sendTo([][]byte{msg}, stale); err != nil {
		t.Fatalf("write racing the allocation's close: %v", err)
	}
}
