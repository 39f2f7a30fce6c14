package node_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/snowgate/snowgate/node"
	"github.com/snowgate/snowgate/node/nodetest"
)

// TestIdleConnectionsCoalesceAndReactivate runs a hub with several peers on
// short timings: once every connection is idle the hub wakes about once per
// keepalive period (not once per connection), the ICE agents are gone, and a
// packet makes its connection active again at once.
func TestIdleConnectionsCoalesceAndReactivate(t *testing.T) {
	sim(t, func(t *testing.T, w *nodetest.World) {
		const peers = 6
		const idleAfter, keepalive = 400 * time.Millisecond, 800 * time.Millisecond
		short := func(c *node.Config) { c.IdleAfter, c.KeepaliveInterval = idleAfter, keepalive }
		w.AddRelay("r1")
		hub := w.AddNode(nodetest.NodeOptions{Name: "hub", Config: short})
		w.GiveRelays(hub)
		var nodes []*nodetest.Peer
		for i := range peers {
			p := w.AddNode(nodetest.NodeOptions{Name: fmt.Sprintf("p%d", i), Config: short})
			w.GiveRelays(p)
			connectHub(w, hub, p, fmt.Sprintf("c%d", i), i)
			w.RoundTrip(hub, p, 5*time.Second)
			nodes = append(nodes, p)
		}
		// Every connection goes idle.
		eventually(t, 5*time.Second, 50*time.Millisecond, func() bool { return allIdle(hub.Node()) },
			func() string { return fmt.Sprintf("connections did not go idle: %+v", hub.Node().Stats()) })
		// Agents stay up for their grace after establishment, then none may be left.
		eventually(t, 4*time.Second, 50*time.Millisecond, func() bool { return node.LiveAgents(hub.Node()) == 0 },
			func() string {
				return fmt.Sprintf("%d ICE agents still alive on idle connections", node.LiveAgents(hub.Node()))
			})

		before := hub.Node().Wakeups()
		rxBefore := stats(t, nodes[0], "c0").RxBytes
		const window = 4 * keepalive
		advance(window) // simulated: four keepalive periods pass
		woke := hub.Node().Wakeups() - before
		if rx := stats(t, nodes[0], "c0").RxBytes; rx <= rxBefore {
			t.Errorf("no NAT keepalive reached the peer while idle (rx %d → %d)", rxBefore, rx)
		}
		t.Logf("%d idle connections: %d wake-ups in %v (%d keepalive periods)", peers, woke, window, window/keepalive)
		if woke > uint64(window/keepalive)+2 {
			t.Fatalf("%d wake-ups in %v, want about one per keepalive period (%v)", woke, window, keepalive)
		}
		for _, s := range hub.Node().Stats() {
			if !s.Established {
				t.Fatalf("idle connection lost: %s", describe(s))
			}
		}

		// A packet reactivates its connection at once, on both ends: the data
		// path clears the idle state itself, so when the hub has the answer, the
		// peer (which received the ping and sent the answer) and the hub are
		// active, whether or not their timer goroutines have run since.
		w.RoundTrip(hub, nodes[2], 2*time.Second)
		if s := stats(t, hub, "c2"); s.Idle {
			t.Fatalf("connection still idle after traffic: %s", describe(s))
		}
		if s := stats(t, nodes[2], "c2"); s.Idle {
			t.Fatalf("peer's connection still idle after traffic: %s", describe(s))
		}
		if s := stats(t, hub, "c3"); !s.Idle {
			t.Fatalf("untouched connection woke up: %s", describe(s))
		}
		// An idempotent upsert wakes a connection from idle too, without a new handshake.
		hs := stats(t, hub, "c3").LastHandshake
		connectHub(w, hub, nodes[3], "c3", 3)
		if s := stats(t, hub, "c3"); s.Idle || !s.Established || !s.LastHandshake.Equal(hs) {
			t.Fatalf("upsert did not wake the connection or re-handshook: %s (handshake %v → %v)", describe(s), hs, s.LastHandshake)
		}
	})
}

func allIdle(n *node.Node) bool {
	for _, s := range n.Stats() {
		if !s.Idle {
			return false
		}
	}
	return true
}

// connectHub connects the hub (controlling) to p with credentials of its own.
func connectHub(w *nodetest.World, hub, p *nodetest.Peer, id string, i int) {
	ch := node.Credentials{Ufrag: fmt.Sprintf("hub%05d", i), Password: fmt.Sprintf("hubpassword%017d", i)}
	cp := node.Credentials{Ufrag: fmt.Sprintf("per%05d", i), Password: fmt.Sprintf("peerpassword%016d", i)}
	w.ConnectWith(hub, p, id, ch, cp)
}

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
	sim(t, func(t *testing.T, w *nodetest.World) {
		const idleAfter = 600 * time.Millisecond
		short := func(c *node.Config) { c.IdleAfter = idleAfter }
		a, b := pair(t, w, nodetest.NATNone, short)
		w.Connect(a, b, "c1")
		w.RoundTrip(a, b, 5*time.Second)
		for _, p := range []*nodetest.Peer{a, b} {
			if _, ok := p.WaitEvent(5*time.Second, nodetest.Established("c1")); !ok {
				t.Fatal("connection not established")
			}
		}
		before := stats(t, a, "c1")
		if !isDirect(before.Path) {
			t.Fatalf("path before the remap = %s, want direct", describe(before))
		}

		// The remote's NAT remaps: b's packets now come from another port.
		oldPort := b.Node().Port()
		if err := node.RotateSockets(b.Node()); err != nil {
			t.Fatalf("re-bind b's sockets: %v", err)
		}
		newPort := b.Node().Port()
		if newPort == oldPort {
			t.Fatalf("b's port did not change (%d)", newPort)
		}
		t.Logf("b re-bound: port %d → %d; a before: %s", oldPort, newPort, describe(before))

		// b speaks first (a's packets to the old mapping are lost, as behind a
		// real NAT); then traffic both ways for several idle periods.
		w.RoundTrip(b, a, 2*time.Second)
		w.RoundTrip(a, b, 2*time.Second)
		// The node ties the new address to the connection asynchronously (within
		// a few packets): give it until a's counters move, or fail.
		mid := stats(t, a, "c1")
		for deadline := time.Now().Add(3 * time.Second); ; {
			w.RoundTrip(a, b, 2*time.Second)
			w.RoundTrip(b, a, 2*time.Second)
			s := stats(t, a, "c1")
			if s.RxBytes > mid.RxBytes && s.TxBytes > mid.TxBytes {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("a's counters froze after the remote's remap although traffic flows: %s (was %s)", describe(s), describe(mid))
			}
			advance(20 * time.Millisecond)
		}
		for end := time.Now().Add(3 * idleAfter); time.Now().Before(end); {
			prev := stats(t, a, "c1")
			w.RoundTrip(a, b, 2*time.Second)
			w.RoundTrip(b, a, 2*time.Second)
			s := stats(t, a, "c1")
			if s.RxBytes <= prev.RxBytes || s.TxBytes <= prev.TxBytes {
				t.Fatalf("traffic not accounted to the connection: %s (was %s)", describe(s), describe(prev))
			}
			if s.Idle {
				t.Fatalf("connection idle while traffic flows: %s", describe(s))
			}
			if !s.Established {
				t.Fatalf("connection no longer established: %s", describe(s))
			}
			advance(idleAfter / 6)
		}
		after := stats(t, a, "c1")
		t.Logf("a after: %s", describe(after))
		if after.RemoteAddr.Port() != newPort || !isDirect(after.Path) {
			t.Fatalf("path after the remap = %s, want direct to port %d", describe(after), newPort)
		}

		// Without traffic the connection still goes idle, and a packet wakes it.
		eventually(t, 5*time.Second, 50*time.Millisecond, func() bool { return stats(t, a, "c1").Idle },
			func() string {
				return "connection did not go idle after traffic stopped: " + describe(stats(t, a, "c1"))
			})
		w.RoundTrip(b, a, 2*time.Second)
		if s := stats(t, a, "c1"); s.Idle {
			t.Fatalf("packet from the remapped remote did not wake the connection: %s", describe(s))
		}
	})
}

// TestMetrics: an established connection shows up in the node's instruments: established and setup
// time by path, the connection gauge by path and state, no live ICE agent once WireGuard is up, and the
// scheduler's wake-up counter.
func TestMetrics(t *testing.T) {
	sim(t, func(t *testing.T, w *nodetest.World) {
		reader := sdkmetric.NewManualReader()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
		w.AddRelay("r1")
		a := w.AddNode(nodetest.NodeOptions{Name: "a", Config: func(c *node.Config) { c.MeterProvider = mp }})
		b := w.AddNode(nodetest.NodeOptions{Name: "b"})
		w.GiveRelays(a, b)
		w.Connect(a, b, "c1")
		w.RoundTrip(a, b, 5*time.Second)
		ev, ok := a.WaitEvent(5*time.Second, nodetest.Established("c1"))
		if !ok {
			t.Fatal("no established event")
		}
		path := ev.Path.String()

		// The agent closes after a short grace once WireGuard is up.
		var last string
		eventually(t, 10*time.Second, 100*time.Millisecond, func() bool {
			var rm metricdata.ResourceMetrics
			if err := reader.Collect(t.Context(), &rm); err != nil {
				t.Fatal(err)
			}
			got := map[string]metricdata.Aggregation{}
			for _, sm := range rm.ScopeMetrics {
				for _, m := range sm.Metrics {
					got[m.Name] = m.Data
				}
			}
			est, _ := got["node.connections.established"].(metricdata.Sum[int64])
			setup, _ := got["node.connection.setup.duration"].(metricdata.Histogram[float64])
			conns, _ := got["node.connections"].(metricdata.Gauge[int64])
			agents, _ := got["node.ice.agents"].(metricdata.Gauge[int64])
			last = fmt.Sprintf("established %+v\nsetup %+v\nconnections %+v\nagents %+v", est.DataPoints, setup.DataPoints, conns.DataPoints, agents.DataPoints)
			_, hasWakeups := got["snowgate.node.wakeups"]
			return len(est.DataPoints) == 1 && est.DataPoints[0].Value == 1 && attr(est.DataPoints[0].Attributes, "path") == path &&
				len(setup.DataPoints) == 1 && setup.DataPoints[0].Count == 1 &&
				len(conns.DataPoints) == 1 && conns.DataPoints[0].Value == 1 &&
				attr(conns.DataPoints[0].Attributes, "path") == path && attr(conns.DataPoints[0].Attributes, "state") == "active" &&
				len(agents.DataPoints) == 1 && agents.DataPoints[0].Value == 0 && hasWakeups
		}, func() string { return fmt.Sprintf("metrics never matched (path %s):\n%s", path, last) })
	})
}

func attr(set attribute.Set, key attribute.Key) string {
	v, _ := set.Value(key)
	return v.AsString()
}
