package nodetest_test

import (
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/snowgate/snowgate/node"
	"github.com/snowgate/snowgate/node/nodetest"
)

func TestWorldDirectThroughNATs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := nodetest.NewWorld(t)
		w.AddRelay("r1")
		a := w.AddNode(nodetest.NodeOptions{Name: "a", NAT: nodetest.NATEndpointIndependent})
		b := w.AddNode(nodetest.NodeOptions{Name: "b", NAT: nodetest.NATEndpointIndependent})
		w.GiveRelays(a, b)
		w.Connect(a, b, "c1")
		rtt := w.RoundTrip(a, b, 10*time.Second)
		ev, ok := a.WaitEvent(5*time.Second, nodetest.Established("c1"))
		if !ok || ev.Path != node.PathServerReflexive {
			t.Fatalf("established %v: %+v", ok, ev)
		}
		t.Logf("first round trip %v, path %s %s→%s", rtt, ev.Path, ev.LocalAddr, ev.RemoteAddr)
	})
}

// TestWorldOwnEvents: a test (a daemon's event loop) that reads the nodes'
// events itself does the signalling; packets pass the TUNs both ways.
func TestWorldOwnEvents(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := nodetest.NewWorld(t)
		r := w.AddRelay("r1")
		a := w.AddNode(nodetest.NodeOptions{Name: "client", OwnEvents: true})
		b := w.AddNode(nodetest.NodeOptions{Name: "gateway", NAT: nodetest.NATSymmetric, OwnEvents: true})
		established, ready := make(chan string, 2), make(chan string, 2)
		loop := func(self, other *nodetest.Peer) {
			for e := range self.Node().Events() {
				switch e.Kind {
				case node.EventCandidateAdded:
					_ = other.Node().AddRemoteCandidate(e.ConnectionID, e.Candidate)
				case node.EventConnectionEstablished:
					established <- self.Name()
				case node.EventRelayReady:
					ready <- self.Name()
				}
			}
		}
		go loop(a, b)
		go loop(b, a)
		a.Node().UpdateRelays(nil, []node.Relay{r.For(a)})
		b.Node().UpdateRelays(nil, []node.Relay{r.For(b)})
		for range 2 {
			<-ready
		}
		if err := b.Node().UpsertConnection(node.ConnectionParams{ID: "c", RemoteKey: a.Node().PublicKey(), PresharedKey: nodetest.PSK,
			Local: nodetest.CredsB, Remote: nodetest.CredsA, Role: node.RoleControlled}); err != nil {
			t.Fatal(err)
		}
		if err := a.Node().UpsertConnection(node.ConnectionParams{ID: "c", RemoteKey: b.Node().PublicKey(), PresharedKey: nodetest.PSK,
			Local: nodetest.CredsA, Remote: nodetest.CredsB, Role: node.RoleControlling}); err != nil {
			t.Fatal(err)
		}
		_ = a.Node().SetAllowedIPs("c", []netip.Prefix{netip.PrefixFrom(b.TunIP(), 32)})
		_ = b.Node().SetAllowedIPs("c", []netip.Prefix{netip.PrefixFrom(a.TunIP(), 32)})
		for range 2 {
			select {
			case <-established:
			case <-time.After(10 * time.Second):
				t.Fatal("not established")
			}
		}
		ping := nodetest.Ping(b.TunIP(), a.TunIP())
		a.WriteTUN(ping)
		got, ok := b.ReadTUN(5 * time.Second)
		if !ok || string(got) != string(ping) {
			t.Fatalf("packet not delivered: %v", ok)
		}
	})
}

// TestWorldRelayKillRevive: a relay killed stops answering (allocations gone), a revived one serves new
// allocations on the same address; the relayed connection goes through it again.
func TestWorldRelayKillRevive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := nodetest.NewWorld(t)
		r := w.AddRelay("r1")
		a := w.AddNode(nodetest.NodeOptions{Name: "a", NAT: nodetest.NATSymmetric})
		b := w.AddNode(nodetest.NodeOptions{Name: "b", NAT: nodetest.NATSymmetric})
		w.GiveRelays(a, b)
		w.Connect(a, b, "c1")
		w.RoundTrip(a, b, 10*time.Second)
		r.Kill()
		if r.Alive() {
			t.Fatal("killed relay alive")
		}
		a.Node().UpdateRelays([]string{"r1"}, nil)
		b.Node().UpdateRelays([]string{"r1"}, nil)
		r.Revive()
		if !r.Alive() {
			t.Fatal("revived relay not alive")
		}
		before := a.CountEvents(nodetest.OfKind(node.EventRelayReady))
		a.Node().UpdateRelays(nil, []node.Relay{r.For(a)})
		b.Node().UpdateRelays(nil, []node.Relay{r.For(b)})
		if !a.WaitCount(30*time.Second, before+1, nodetest.OfKind(node.EventRelayReady)) {
			t.Fatal("no allocation on the revived relay")
		}
		// The connection's relayed path died with the relay; ICE finds the new allocations.
		if !a.WaitCount(30*time.Second, 2, nodetest.Established("c1")) {
			t.Fatal("connection not re-established through the revived relay")
		}
		w.RoundTrip(a, b, 10*time.Second)
	})
}

// TestWorldHost: a host without a node has the addresses AddNode would give it and a network to hand a
// node; PartitionHosts blocks the direct path between two hosts.
func TestWorldHost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := nodetest.NewWorld(t)
		h := w.AddHost(nodetest.HostOptions{Name: "h", NAT: nodetest.NATEndpointIndependent})
		if h.Name() != "h" || !h.PublicAddr().IsValid() || h.LANAddr() == h.PublicAddr() || h.Net() == nil {
			t.Fatalf("host %s %v %v", h.Name(), h.PublicAddr(), h.LANAddr())
		}
		n, err := node.New(node.Config{TUN: tuntest.NewChannelTUN().TUN(), Net: h.Net(), DisableIPv6: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
		o := w.AddHost(nodetest.HostOptions{})
		w.PartitionHosts(h, o)
		w.HealHosts(h, o)
	})
}
