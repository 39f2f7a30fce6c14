package node_test

import (
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pion/ice/v4"

	"github.com/snowgate/snowgate/node"
	"github.com/snowgate/snowgate/node/nodetest"
)

// The tests in this file run real nodes (sockets, pion ICE and TURN,
// wireguard-go) in node/nodetest's simulated World, in a synctest bubble:
// time is simulated, so timeouts of seconds or minutes take milliseconds.
// advance (time.Sleep) lets simulated time pass: it returns as soon as every
// goroutine in the bubble is blocked.

// advance lets d of simulated time pass (in a synctest bubble, it returns as
// soon as every goroutine is blocked and the clock reached now+d).
func advance(d time.Duration) { time.Sleep(d) }

// sim runs f in a synctest bubble with a new World.
func sim(t *testing.T, f func(t *testing.T, w *nodetest.World)) {
	t.Helper()
	synctest.Test(t, func(t *testing.T) { f(t, nodetest.NewWorld(t)) })
}

// eventually checks cond every step of simulated time until it holds, or
// fails the test with why() after timeout.
func eventually(t *testing.T, timeout, step time.Duration, cond func() bool, why func() string) {
	t.Helper()
	for end := time.Now().Add(timeout); !cond(); advance(step) {
		if time.Now().After(end) {
			t.Fatal(why())
		}
	}
}

func relayOnly(c *node.Config) {
	c.TestOnlyCandidateTypes = []ice.CandidateType{ice.CandidateTypeRelay}
}

func stats(t *testing.T, p *nodetest.Peer, id string) node.ConnStats {
	t.Helper()
	s, ok := p.Stats(id)
	if !ok {
		t.Fatalf("%s has no connection %s", p.Name(), id)
	}
	return s
}

func describe(s node.ConnStats) string {
	return fmt.Sprintf("path=%s local=%s remote=%s rtt=%v rx=%d tx=%d established=%v idle=%v relay=%s path_relay=%s",
		s.Path, s.LocalAddr, s.RemoteAddr, s.RTT, s.RxBytes, s.TxBytes, s.Established, s.Idle, s.RelayID, s.PathRelayID)
}

// isDirect: host, or srflx/prflx.
func isDirect(p node.Path) bool { return p == node.PathHost || p == node.PathServerReflexive }

func params(id string, remote node.Key, psk node.Key, local, rem node.Credentials, role node.Role) node.ConnectionParams {
	return node.ConnectionParams{ID: id, RemoteKey: remote, PresharedKey: psk, Local: local, Remote: rem, Role: role}
}

// pair starts a World with relay r1 and two nodes that have it.
func pair(t *testing.T, w *nodetest.World, nat nodetest.NAT, mod func(*node.Config)) (a, b *nodetest.Peer) {
	t.Helper()
	w.AddRelay("r1")
	a = w.AddNode(nodetest.NodeOptions{Name: "a", NAT: nat, Config: mod})
	b = w.AddNode(nodetest.NodeOptions{Name: "b", NAT: nat, Config: mod})
	w.GiveRelays(a, b)
	return a, b
}

func TestNATEndpointIndependentIsDirect(t *testing.T) {
	sim(t, func(t *testing.T, w *nodetest.World) {
		a, b := pair(t, w, nodetest.NATEndpointIndependent, nil)
		w.Connect(a, b, "c1")
		rtt := w.RoundTrip(a, b, 10*time.Second)
		ev, ok := a.WaitEvent(5*time.Second, nodetest.Established("c1"))
		if !ok {
			t.Fatal("not established")
		}
		t.Logf("EI NATs: first round trip %v, path=%s local=%s remote=%s", rtt, ev.Path, ev.LocalAddr, ev.RemoteAddr)
		if ev.Path != node.PathServerReflexive {
			t.Fatalf("path = %s, want srflx (direct through the NATs)", ev.Path)
		}
		w.RoundTrip(b, a, 2*time.Second)
	})
}

func TestNATSymmetricIsRelayed(t *testing.T) {
	sim(t, func(t *testing.T, w *nodetest.World) {
		a, b := pair(t, w, nodetest.NATSymmetric, nil)
		w.Connect(a, b, "c1")
		rtt := w.RoundTrip(a, b, 10*time.Second)
		ev, ok := a.WaitEvent(5*time.Second, nodetest.Established("c1"))
		if !ok {
			t.Fatal("not established")
		}
		t.Logf("symmetric NATs: first round trip %v, path=%s local=%s remote=%s", rtt, ev.Path, ev.LocalAddr, ev.RemoteAddr)
		if ev.Path != node.PathRelay {
			t.Fatalf("path = %s, want relay", ev.Path)
		}
		w.RoundTrip(b, a, 2*time.Second)
	})
}

// TestNATDirectWhenConnectedBeforeRelaysAnswer: a connection upserted right after UpdateRelays, before any
// relay answered (start-up, every Reset), still learns the node's server-reflexive address when the first
// relay keepalive returns it, and goes direct through endpoint-independent NATs.
func TestNATDirectWhenConnectedBeforeRelaysAnswer(t *testing.T) {
	sim(t, func(t *testing.T, w *nodetest.World) {
		r := w.AddRelay("r1")
		a := w.AddNode(nodetest.NodeOptions{Name: "a", NAT: nodetest.NATEndpointIndependent})
		b := w.AddNode(nodetest.NodeOptions{Name: "b", NAT: nodetest.NATEndpointIndependent})
		a.Node().UpdateRelays(nil, []node.Relay{r.For(a)})
		b.Node().UpdateRelays(nil, []node.Relay{r.For(b)})
		w.Connect(a, b, "c1") // no wait for the relays
		w.RoundTrip(a, b, 10*time.Second)
		ev, ok := a.WaitEvent(5*time.Second, nodetest.Established("c1"))
		if !ok {
			t.Fatal("not established")
		}
		if ev.Path != node.PathServerReflexive {
			t.Fatalf("path = %s, want srflx: the srflx address learnt after the agent started was not used", ev.Path)
		}
	})
}

// TestNATPathFailureFallsBackToRelay breaks the direct path between two nodes
// behind endpoint-independent NATs after the connection is up: both sides see
// that nothing comes back, re-run ICE and continue through the relay.
func TestNATPathFailureFallsBackToRelay(t *testing.T) {
	sim(t, func(t *testing.T, w *nodetest.World) {
		short := func(c *node.Config) { c.IdleAfter, c.KeepaliveInterval = 300*time.Millisecond, 500*time.Millisecond }
		a, b := pair(t, w, nodetest.NATEndpointIndependent, short)
		w.Connect(a, b, "c1")
		w.RoundTrip(a, b, 10*time.Second)
		if ev, ok := a.WaitEvent(5*time.Second, nodetest.Established("c1")); !ok || ev.Path != node.PathServerReflexive {
			t.Fatalf("want a direct srflx path first: %+v", ev)
		}

		// The NATs stop passing traffic between each other; the relay still works.
		w.Partition(a, b)
		if !a.WaitCount(20*time.Second, 2, nodetest.Established("c1")) {
			t.Fatalf("no new path after the direct one failed: %s", describe(stats(t, a, "c1")))
		}
		rtt := w.RoundTrip(a, b, 10*time.Second)
		s := stats(t, a, "c1")
		t.Logf("after path failure: round trip %v, %s", rtt, describe(s))
		if s.Path != node.PathRelay {
			t.Fatalf("want the relay after the direct path failed: %s", describe(s))
		}
	})
}

func TestRemoveAllRelaysKeepsDirectConnection(t *testing.T) {
	sim(t, func(t *testing.T, w *nodetest.World) {
		a, b := pair(t, w, nodetest.NATNone, nil)
		w.Connect(a, b, "c1")
		w.RoundTrip(a, b, 5*time.Second)
		if _, ok := a.WaitEvent(5*time.Second, nodetest.Established("c1")); !ok {
			t.Fatal("not established")
		}

		a.Node().UpdateRelays([]string{"r1"}, nil)
		b.Node().UpdateRelays([]string{"r1"}, nil)
		if _, ok := a.WaitEvent(2*time.Second, nodetest.OfKind(node.EventNoRelays)); !ok {
			t.Fatal("no EventNoRelays after removing the last relay")
		}
		if _, ok := a.WaitEvent(2*time.Second, func(e node.Event) bool {
			return e.Kind == node.EventCandidateInvalidated && e.ConnectionID == "c1" && e.RelayID == "r1"
		}); !ok {
			t.Fatal("relay candidate not invalidated")
		}
		for range 3 {
			w.RoundTrip(a, b, 2*time.Second)
			w.RoundTrip(b, a, 2*time.Second)
		}
		if s := stats(t, a, "c1"); !s.Established || !isDirect(s.Path) {
			t.Fatalf("direct connection changed: %s", describe(s))
		}
		err := a.Node().UpsertConnection(params("c2", b.Node().PublicKey(), nodetest.PSK, nodetest.CredsA, nodetest.CredsB, node.RoleControlling))
		if !errors.Is(err, node.ErrNoRelays) {
			t.Fatalf("upsert without relays: err = %v, want ErrNoRelays", err)
		}
	})
}

func TestUpsertIdempotent(t *testing.T) {
	sim(t, func(t *testing.T, w *nodetest.World) {
		a, b := pair(t, w, nodetest.NATNone, nil)
		w.Connect(a, b, "c1")
		w.RoundTrip(a, b, 5*time.Second)
		if _, ok := a.WaitEvent(5*time.Second, nodetest.Established("c1")); !ok {
			t.Fatal("not established")
		}
		hs := stats(t, a, "c1").LastHandshake
		candidatesBefore := a.CountEvents(nodetest.OfKind(node.EventCandidateAdded))

		// Same credentials again on both sides: kept, candidates re-signalled, no new handshake.
		w.Connect(a, b, "c1")
		if !a.WaitCount(2*time.Second, candidatesBefore+1, nodetest.OfKind(node.EventCandidateAdded)) {
			t.Fatal("candidates not re-signalled on idempotent upsert")
		}
		// The re-run ICE nominates and stops.
		eventually(t, 5*time.Second, 10*time.Millisecond, func() bool { return !node.AgentRunning(a.Node(), "c1") },
			func() string { return "the re-run ICE never finished" })
		w.RoundTrip(a, b, 2*time.Second)
		w.RoundTrip(b, a, 2*time.Second)
		s := stats(t, a, "c1")
		if !s.Established {
			t.Fatalf("connection not kept: %s", describe(s))
		}
		if !s.LastHandshake.Equal(hs) {
			t.Fatalf("new handshake after idempotent upsert: %v → %v", hs, s.LastHandshake)
		}
		if k := a.CountEvents(nodetest.Established("c1")); k != 1 {
			t.Fatalf("%d established events, want 1 (connection kept)", k)
		}

		// New credentials replace the connection: a new ICE run and a new handshake.
		credsA2 := node.Credentials{Ufrag: "ufragA2A", Password: "passwordA2AAAAAAAAAAAAAAAAAA"}
		credsB2 := node.Credentials{Ufrag: "ufragB2B", Password: "passwordB2BBBBBBBBBBBBBBBBBB"}
		advance(time.Second) // so that a new handshake has a later time
		w.ConnectWith(a, b, "c1", credsA2, credsB2)
		w.RoundTrip(a, b, 5*time.Second)
		if !a.WaitCount(5*time.Second, 2, nodetest.Established("c1")) {
			t.Fatal("replaced connection not established")
		}
		s2 := stats(t, a, "c1")
		if !s2.LastHandshake.After(hs) {
			t.Fatalf("replaced connection did not handshake again: %v → %v", hs, s2.LastHandshake)
		}
	})
}

func TestResetRotatesKey(t *testing.T) {
	sim(t, func(t *testing.T, w *nodetest.World) {
		a, b := pair(t, w, nodetest.NATNone, nil)
		w.Connect(a, b, "c1")
		w.RoundTrip(a, b, 5*time.Second)

		old, oldPort := a.Node().PublicKey(), a.Node().Port()
		pub, err := a.Node().Reset()
		if err != nil {
			t.Fatal(err)
		}
		if pub == old || pub != a.Node().PublicKey() {
			t.Fatalf("key not rotated: old %s new %s current %s", old, pub, a.Node().PublicKey())
		}
		if len(a.Node().Stats()) != 0 {
			t.Fatal("connections survived Reset")
		}
		if a.Node().Port() == oldPort {
			t.Fatalf("port not rotated: %d", oldPort)
		}
		if err := a.Node().UpsertConnection(params("c1", b.Node().PublicKey(), nodetest.PSK, nodetest.CredsA, nodetest.CredsB, node.RoleControlling)); !errors.Is(err, node.ErrNoRelays) {
			t.Fatalf("allocations survived Reset: upsert err = %v", err)
		}
		// After the portal hands the relays again, the node reconnects with its new key.
		a.Node().UpdateRelays(nil, []node.Relay{w.Relays()[0].For(a)})
		if !a.WaitCount(10*time.Second, 2, nodetest.OfKind(node.EventRelayReady)) {
			t.Fatal("relay not ready again")
		}
		w.ConnectWith(a, b, "c1", node.Credentials{Ufrag: "ufragA3A", Password: "passwordA3AAAAAAAAAAAAAAAAAA"},
			node.Credentials{Ufrag: "ufragB3B", Password: "passwordB3BBBBBBBBBBBBBBBBBB"})
		w.RoundTrip(a, b, 5*time.Second)
	})
}

func TestRelayRemovedMovesConnection(t *testing.T) {
	sim(t, func(t *testing.T, w *nodetest.World) {
		w.AddRelay("r1")
		w.AddRelay("r2")
		a := w.AddNode(nodetest.NodeOptions{Name: "a", Config: relayOnly})
		b := w.AddNode(nodetest.NodeOptions{Name: "b", Config: relayOnly})
		w.GiveRelays(a, b)
		w.Connect(a, b, "c1")
		w.RoundTrip(a, b, 5*time.Second)
		if _, ok := a.WaitEvent(5*time.Second, nodetest.Established("c1")); !ok {
			t.Fatal("not established")
		}
		used := stats(t, a, "c1").RelayID
		if used == "" {
			t.Fatal("connection has no relay")
		}
		a.Node().UpdateRelays([]string{used}, nil)
		b.Node().UpdateRelays([]string{used}, nil)
		if !a.WaitCount(10*time.Second, 2, nodetest.Established("c1")) {
			t.Fatalf("connection not re-established after relay %s was removed: %s", used, describe(stats(t, a, "c1")))
		}
		w.RoundTrip(a, b, 5*time.Second)
		w.RoundTrip(b, a, 2*time.Second)
		s := stats(t, a, "c1")
		if s.Path != node.PathRelay || s.RelayID == used || s.RelayID == "" {
			t.Fatalf("connection did not move off relay %s: %s", used, describe(s))
		}
	})
}

// TestReconnectSameCredentials removes a connection while ICE is still running
// and recreates it at once with the same ufrag: the old agent's clean-up of
// the shared mux must not break the new one.
func TestReconnectSameCredentials(t *testing.T) {
	sim(t, func(t *testing.T, w *nodetest.World) {
		a, b := pair(t, w, nodetest.NATNone, nil)
		for range 3 {
			w.Connect(a, b, "c1")
			if err := a.Node().RemoveConnection("c1"); err != nil {
				t.Fatal(err)
			}
			if err := b.Node().RemoveConnection("c1"); err != nil {
				t.Fatal(err)
			}
		}
		w.Connect(a, b, "c1")
		rtt := w.RoundTrip(a, b, 5*time.Second)
		t.Logf("round trip after re-creating the connection: %v", rtt)
	})
}

func TestConnectionFailures(t *testing.T) {
	sim(t, func(t *testing.T, w *nodetest.World) {
		fast := func(c *node.Config) { c.ICEFailedTimeout, c.HandshakeTimeout = time.Second, time.Second }
		a, b := pair(t, w, nodetest.NATNone, fast)

		// No peer: ICE finds nothing.
		{
			if err := a.Node().UpsertConnection(params("lonely", b.Node().PublicKey(), nodetest.PSK, nodetest.CredsA, nodetest.CredsB, node.RoleControlling)); err != nil {
				t.Fatal(err)
			}
			ev, ok := a.WaitEvent(10*time.Second, func(e node.Event) bool { return e.Kind == node.EventConnectionFailed && e.ConnectionID == "lonely" })
			if !ok || !errors.Is(ev.Err, node.ErrICEFailed) {
				t.Fatalf("no ICE failure event: %+v", ev)
			}
			if err := a.Node().RemoveConnection("lonely"); err != nil {
				t.Fatal(err)
			}
			if err := a.Node().RemoveConnection("lonely"); !errors.Is(err, node.ErrUnknownConnection) {
				t.Fatalf("second remove: %v", err)
			}
		}
		// PSK mismatch: ICE finds a path, WireGuard never answers on it.
		{
			w.Signal(a, b, "psk")
			if err := b.Node().UpsertConnection(params("psk", a.Node().PublicKey(), node.Key{9}, nodetest.CredsB, nodetest.CredsA, node.RoleControlled)); err != nil {
				t.Fatal(err)
			}
			if err := a.Node().UpsertConnection(params("psk", b.Node().PublicKey(), nodetest.PSK, nodetest.CredsA, nodetest.CredsB, node.RoleControlling)); err != nil {
				t.Fatal(err)
			}
			_ = a.Node().SetAllowedIPs("psk", []netip.Prefix{netip.PrefixFrom(b.TunIP(), 32)})
			a.WriteTUN(nodetest.Ping(b.TunIP(), a.TunIP()))
			ev, ok := a.WaitEvent(15*time.Second, func(e node.Event) bool { return e.Kind == node.EventConnectionFailed && e.ConnectionID == "psk" })
			if !ok || !errors.Is(ev.Err, node.ErrHandshakeTimeout) {
				t.Fatalf("no handshake failure event: %+v", ev)
			}
			if node.HasAgent(a.Node(), "psk") {
				t.Fatal("ICE agent outlived the failed connection")
			}
			if err := a.Node().RemoveConnection("psk"); err != nil {
				t.Fatal(err)
			}
		}
		// Bad input.
		{
			if err := a.Node().RemoveRemoteCandidate("nope", "1 1 udp 1 127.0.0.1 1 typ host"); !errors.Is(err, node.ErrUnknownConnection) {
				t.Fatalf("unknown connection: %v", err)
			}
			if err := a.Node().UpsertConnection(params("x", b.Node().PublicKey(), nodetest.PSK, node.Credentials{}, nodetest.CredsB, node.RoleControlling)); err == nil {
				t.Fatal("empty credentials accepted")
			}
			if err := a.Node().UpsertConnection(params("x", b.Node().PublicKey(), nodetest.PSK, nodetest.CredsA, nodetest.CredsB, node.Role(9))); err == nil {
				t.Fatal("bad role accepted")
			}
		}
	})
}

func TestUnresponsiveRelayMovesConnection(t *testing.T) {
	sim(t, func(t *testing.T, w *nodetest.World) {
		cfg := func(c *node.Config) {
			relayOnly(c)
			c.KeepaliveInterval = 500 * time.Millisecond
			c.IdleAfter = 400 * time.Millisecond
			c.RelayRTO = 20 * time.Millisecond
		}
		r1, r2 := w.AddRelay("r1"), w.AddRelay("r2")
		a := w.AddNode(nodetest.NodeOptions{Name: "a", Config: cfg})
		b := w.AddNode(nodetest.NodeOptions{Name: "b", Config: cfg})
		w.GiveRelays(a, b)
		w.Connect(a, b, "c1")
		w.RoundTrip(a, b, 5*time.Second)
		if _, ok := a.WaitEvent(5*time.Second, nodetest.Established("c1")); !ok {
			t.Fatal("not established")
		}
		used := stats(t, a, "c1").RelayID
		dead := r1
		if used == "r2" {
			dead = r2
		}
		dead.Block() // the relay stops answering
		if _, ok := a.WaitEvent(20*time.Second, func(e node.Event) bool {
			return e.Kind == node.EventCandidateInvalidated && e.RelayID == used
		}); !ok {
			t.Fatalf("candidates of unresponsive relay %s not invalidated", used)
		}
		if !a.WaitCount(20*time.Second, 2, nodetest.Established("c1")) {
			t.Fatalf("connection did not move off relay %s: %s", used, describe(stats(t, a, "c1")))
		}
		w.RoundTrip(a, b, 5*time.Second)
		w.RoundTrip(b, a, 2*time.Second)
		if s := stats(t, a, "c1"); s.RelayID == used {
			t.Fatalf("still on relay %s: %s", used, describe(s))
		}
	})
}

// TestRelayRemovedUnderPathKeepsPackets: the relay carrying a connection
// (through our own allocation) is removed, and the application sends at
// once, before ICE found the new path. The allocation is closed, so the
// packet must wait for the new path instead of being written to the closed
// allocation (lost, and logged by wireguard-go as a failed send).
func TestRelayRemovedUnderPathKeepsPackets(t *testing.T) {
	sim(t, func(t *testing.T, w *nodetest.World) {
		w.AddRelay("r1")
		w.AddRelay("r2")
		a := w.AddNode(nodetest.NodeOptions{Name: "a", Config: relayOnly})
		b := w.AddNode(nodetest.NodeOptions{Name: "b", Config: relayOnly})
		w.GiveRelays(a, b)
		w.Connect(a, b, "c1")
		w.RoundTrip(a, b, 5*time.Second)
		if _, ok := a.WaitEvent(5*time.Second, nodetest.Established("c1")); !ok {
			t.Fatal("not established")
		}
		used := stats(t, a, "c1").RelayID
		if s := stats(t, a, "c1"); s.Path != node.PathRelay || used == "" {
			t.Fatalf("want a path through a's relay: %s", describe(s))
		}
		a.Node().UpdateRelays([]string{used}, nil)
		ping := nodetest.Ping(b.TunIP(), a.TunIP())
		a.WriteTUN(ping)
		for end := time.Now().Add(10 * time.Second); ; {
			got, ok := b.ReadTUN(time.Until(end))
			if !ok {
				t.Fatalf("the packet sent right after relay %s went away was lost: %s", used, describe(stats(t, a, "c1")))
			}
			if string(got) == string(ping) {
				break
			}
		}
		if s := stats(t, a, "c1"); s.RelayID == used {
			t.Fatalf("still on relay %s: %s", used, describe(s))
		}
	})
}

// TestHandshakeOutlastsThreeLostInitiations: on a lossy path ICE gets
// through (it retransmits often) but WireGuard's handshake initiations may be
// lost, and wireguard-go sends one every 5 s at most. The nominated path
// waits for four of them (Firezone's 20 s rekey-attempt time), not only the
// two or three that fit in the ICE timeout.
func TestHandshakeOutlastsThreeLostInitiations(t *testing.T) {
	sim(t, func(t *testing.T, w *nodetest.World) {
		a, b := pair(t, w, nodetest.NATNone, nil)
		var lost atomic.Int32
		w.Drop(func(d nodetest.Datagram) bool {
			p := d.Payload
			isInitiation := len(p) >= 4 && p[0] == 1 && p[1] == 0 && p[2] == 0 && p[3] == 0
			return isInitiation && lost.Add(1) <= 3
		})
		w.Connect(a, b, "c1")
		a.WriteTUN(nodetest.Ping(b.TunIP(), a.TunIP()))
		ev, ok := a.WaitEvent(40*time.Second, func(e node.Event) bool {
			return e.ConnectionID == "c1" && (e.Kind == node.EventConnectionEstablished || e.Kind == node.EventConnectionFailed)
		})
		if !ok || ev.Kind != node.EventConnectionEstablished {
			t.Fatalf("after %d lost handshake initiations: %+v, want established", min(lost.Load(), 3), ev)
		}
		if n := lost.Load(); n < 4 {
			t.Fatalf("%d handshake initiations crossed the internet, want the 3 lost ones and one more", n)
		}
		w.RoundTrip(a, b, 5*time.Second)
	})
}
