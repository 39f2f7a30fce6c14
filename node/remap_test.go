package node

import (
	"net/netip"
	"testing"
	"time"
)

// TestRemoteRemapKeepsConnection moves the remote's source address in the
// middle of an established direct connection, as a NAT that remaps its
// mapping does: b's socket is re-bound to a new port, so a sees b's
// WireGuard packets arrive from an address that is not the nominated pair.
// Traffic must keep flowing both ways, and a's connection must keep its
// accounting: rx/tx counters grow, it stays active while traffic flows (and
// goes idle when it stops), and its path names the remote's new address.
//
// The keepalive interval stays at its default, so no path check (and no ICE
// re-run) happens during the test: what is tested is the data path alone.
func TestRemoteRemapKeepsConnection(t *testing.T) {
	const idleAfter = 600 * time.Millisecond
	short := func(c *Config) { c.IdleAfter = idleAfter }
	relay := startRelay(t)
	a := newTestNode(t, "100.64.0.1", short)
	b := newTestNode(t, "100.64.0.2", short)
	giveRelays(t, a, b, relay)
	connect(t, a, b, "c1", credsA, credsB)
	roundTrip(t, a, b, 5*time.Second)
	for _, tn := range []*testNode{a, b} {
		if _, ok := tn.waitEvent(5*time.Second, established("c1")); !ok {
			t.Fatal("connection not established")
		}
	}
	before := statsOf(t, a.n, "c1")
	if !isDirect(before.Path) {
		t.Fatalf("path before the remap = %s, want direct", describe(before))
	}

	// The remote's NAT remaps: b's packets now come from another port.
	oldPort := b.n.Port()
	b.n.mu.Lock()
	err := b.n.rotateIOLocked()
	b.n.mu.Unlock()
	if err != nil {
		t.Fatalf("re-bind b's sockets: %v", err)
	}
	newPort := b.n.Port()
	if newPort == oldPort {
		t.Fatalf("b's port did not change (%d)", newPort)
	}
	t.Logf("b re-bound: port %d → %d; a before: %s", oldPort, newPort, describe(before))

	// b speaks first (a's packets to the old mapping are lost, as behind a
	// real NAT); then traffic both ways for several idle periods.
	roundTrip(t, b, a, 2*time.Second)
	roundTrip(t, a, b, 2*time.Second)
	// The node ties the new address to the connection asynchronously (within
	// a few packets): give it until a's counters move, or fail.
	mid := statsOf(t, a.n, "c1")
	for deadline := time.Now().Add(3 * time.Second); ; {
		roundTrip(t, a, b, 2*time.Second)
		roundTrip(t, b, a, 2*time.Second)
		s := statsOf(t, a.n, "c1")
		if s.RxBytes > mid.RxBytes && s.TxBytes > mid.TxBytes {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a's counters froze after the remote's remap although traffic flows: %s (was %s)", describe(s), describe(mid))
		}
		time.Sleep(20 * time.Millisecond)
	}
	for end := time.Now().Add(3 * idleAfter); time.Now().Before(end); {
		prev := statsOf(t, a.n, "c1")
		roundTrip(t, a, b, 2*time.Second)
		roundTrip(t, b, a, 2*time.Second)
		s := statsOf(t, a.n, "c1")
		if s.RxBytes <= prev.RxBytes || s.TxBytes <= prev.TxBytes {
			t.Fatalf("traffic not accounted to the connection: %s (was %s)", describe(s), describe(prev))
		}
		if s.Idle {
			t.Fatalf("connection idle while traffic flows: %s", describe(s))
		}
		if !s.Established {
			t.Fatalf("connection no longer established: %s", describe(s))
		}
		time.Sleep(idleAfter / 6)
	}
	after := statsOf(t, a.n, "c1")
	t.Logf("a after: %s", describe(after))
	if after.RemoteAddr.Port() != newPort || !isDirect(after.Path) {
		t.Fatalf("path after the remap = %s, want direct to port %d", describe(after), newPort)
	}

	// Without traffic the connection still goes idle, and a packet wakes it.
	for deadline := time.Now().Add(5 * time.Second); !statsOf(t, a.n, "c1").Idle; {
		if time.Now().After(deadline) {
			t.Fatalf("connection did not go idle after traffic stopped: %s", describe(statsOf(t, a.n, "c1")))
		}
		time.Sleep(50 * time.Millisecond)
	}
	roundTrip(t, b, a, 2*time.Second)
	if s := statsOf(t, a.n, "c1"); s.Idle {
		t.Fatalf("packet from the remapped remote did not wake the connection: %s", describe(s))
	}
}

// TestEndpointStrings: the endpoint strings wireguard-go logs name the path
// (they are only logged: the node never parses them back).
func TestEndpointStrings(t *testing.T) {
	a4 := &allocation{relayID: "r1", relayedAddr: netip.MustParseAddrPort("198.51.100.7:40000")}
	for _, tc := range []struct {
		ep   *endpoint
		want string
	}{
		{&endpoint{dst: netip.MustParseAddrPort("192.0.2.1:52625")}, "192.0.2.1:52625"},
		{&endpoint{dst: netip.MustParseAddrPort("[2001:db8::1]:52625")}, "[2001:db8::1]:52625"},
		{&endpoint{alloc: a4, dst: netip.MustParseAddrPort("203.0.113.9:3000")}, "relay(r1)/203.0.113.9:3000"},
		{&endpoint{pending: true}, "pending"},
	} {
		if got := tc.ep.DstToString(); got != tc.want {
			t.Errorf("DstToString = %q, want %q", got, tc.want)
		}
	}
}
