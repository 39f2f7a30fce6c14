package node

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/transport/v5/vnet"
	"github.com/pion/turn/v5"
	"github.com/snowgate/snowgate/internal/telemetry"
)

const (
	testRealm   = "snowgate" // realm of the vnet's pion/turn server
	vnetRelayIP = "198.18.0.10"
	vnetPubA    = "198.18.1.1"
	vnetPubB    = "198.18.2.1"
	vnetLANA    = "192.0.2.10"
	vnetLANB    = "198.51.100.10"
)

// natWorld is a pion vnet: a WAN with a TURN relay and two LANs, each behind its own NAT.
//
// The relay here is pion/turn's server, not ours: our relay binds kernel
// sockets (SO_REUSEPORT listeners, relay sockets with forced buffer sizes)
// and takes no transport.Net, so it cannot live on a vnet. The same two
// scenarios run against our relay in network namespaces (e2e_test.go, root).
type natWorld struct {
	wan        *vnet.Router
	netA, netB *vnet.Net
	relay      Relay
}

func buildNATWorld(t *testing.T, nat *vnet.NATType) *natWorld {
	t.Helper()
	lf := telemetry.PionLoggerFactory(testLogger(t))
	wan, err := vnet.NewRouter(&vnet.RouterConfig{CIDR: "0.0.0.0/0", LoggerFactory: lf})
	if err != nil {
		t.Fatal(err)
	}
	wanNet, err := vnet.NewNet(&vnet.NetConfig{StaticIPs: []string{vnetRelayIP}})
	if err != nil {
		t.Fatal(err)
	}
	if err := wan.AddNet(wanNet); err != nil {
		t.Fatal(err)
	}
	lan := func(pub, local string) *vnet.Net {
		r, err := vnet.NewRouter(&vnet.RouterConfig{StaticIPs: []string{pub}, CIDR: local + "/24", NATType: nat, LoggerFactory: lf})
		if err != nil {
			t.Fatal(err)
		}
		n, err := vnet.NewNet(&vnet.NetConfig{StaticIPs: []string{local}})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.AddNet(n); err != nil {
			t.Fatal(err)
		}
		if err := wan.AddRouter(r); err != nil {
			t.Fatal(err)
		}
		return n
	}
	w := &natWorld{wan: wan, netA: lan(vnetPubA, vnetLANA), netB: lan(vnetPubB, vnetLANB)}
	if err := wan.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = wan.Stop() })

	pc, err := wanNet.ListenPacket("udp4", fmt.Sprintf("%s:3478", vnetRelayIP))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := turn.NewServer(turn.ServerConfig{
		Realm:         testRealm,
		LoggerFactory: lf,
		AuthHandler: func(ra *turn.RequestAttributes) (string, []byte, bool) {
			return ra.Username, turn.GenerateAuthKey(ra.Username, testRealm, "pw"), true
		},
		PacketConnConfigs: []turn.PacketConnConfig{{
			PacketConn: pc,
			RelayAddressGenerator: &turn.RelayAddressGeneratorStatic{
				RelayAddress: net.ParseIP(vnetRelayIP), Address: "0.0.0.0", Net: wanNet,
			},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	w.relay = Relay{ID: "vr", Addr4: netip.MustParseAddrPort(vnetRelayIP + ":3478"), Username: "u", Password: "pw", Realm: testRealm}
	return w
}

func natPair(t *testing.T, nat *vnet.NATType) (*testNode, *testNode) {
	w := buildNATWorld(t, nat)
	a := newTestNode(t, "100.64.0.1", func(c *Config) { c.Net = w.netA; c.IncludeLoopback = false })
	b := newTestNode(t, "100.64.0.2", func(c *Config) { c.Net = w.netB; c.IncludeLoopback = false })
	a.n.UpdateRelays(nil, []Relay{w.relay})
	b.n.UpdateRelays(nil, []Relay{w.relay})
	a.waitRelayReady(t)
	b.waitRelayReady(t)
	connect(t, a, b, "c1", credsA, credsB)
	return a, b
}

// TestNATDirectWhenConnectedBeforeRelaysAnswer: a connection upserted right after UpdateRelays, before any
// relay answered (start-up, every Reset), still learns the node's server-reflexive address when the first
// relay keepalive returns it, and goes direct through endpoint-independent NATs.
func TestNATDirectWhenConnectedBeforeRelaysAnswer(t *testing.T) {
	w := buildNATWorld(t, &vnet.NATType{MappingBehavior: vnet.EndpointIndependent, FilteringBehavior: vnet.EndpointIndependent})
	a := newTestNode(t, "100.64.0.1", func(c *Config) { c.Net = w.netA; c.IncludeLoopback = false })
	b := newTestNode(t, "100.64.0.2", func(c *Config) { c.Net = w.netB; c.IncludeLoopback = false })
	a.n.UpdateRelays(nil, []Relay{w.relay})
	b.n.UpdateRelays(nil, []Relay{w.relay})
	connect(t, a, b, "c1", credsA, credsB) // no waitRelayReady
	roundTrip(t, a, b, 10*time.Second)
	ev, ok := a.waitEvent(5*time.Second, established("c1"))
	if !ok {
		t.Fatal("not established")
	}
	if ev.Path != PathServerReflexive {
		t.Fatalf("path = %s, want srflx: the srflx address learnt after the agent started was not used", ev.Path)
	}
}

func TestNATEndpointIndependentIsDirect(t *testing.T) {
	a, b := natPair(t, &vnet.NATType{MappingBehavior: vnet.EndpointIndependent, FilteringBehavior: vnet.EndpointIndependent})
	rtt := roundTrip(t, a, b, 10*time.Second)
	ev, ok := a.waitEvent(5*time.Second, established("c1"))
	if !ok {
		t.Fatal("not established")
	}
	t.Logf("EI NATs: first round trip %v, path=%s local=%s remote=%s", rtt, ev.Path, ev.LocalAddr, ev.RemoteAddr)
	if ev.Path != PathServerReflexive {
		t.Fatalf("path = %s, want srflx (direct through the NATs)", ev.Path)
	}
	roundTrip(t, b, a, 2*time.Second)
}

func TestNATSymmetricIsRelayed(t *testing.T) {
	a, b := natPair(t, &vnet.NATType{MappingBehavior: vnet.EndpointAddrPortDependent, FilteringBehavior: vnet.EndpointAddrPortDependent})
	rtt := roundTrip(t, a, b, 10*time.Second)
	ev, ok := a.waitEvent(5*time.Second, established("c1"))
	if !ok {
		t.Fatal("not established")
	}
	t.Logf("symmetric NATs: first round trip %v, path=%s local=%s remote=%s", rtt, ev.Path, ev.LocalAddr, ev.RemoteAddr)
	if ev.Path != PathRelay {
		t.Fatalf("path = %s, want relay", ev.Path)
	}
	roundTrip(t, b, a, 2*time.Second)
}

// TestNATPathFailureFallsBackToRelay breaks the direct path between two nodes
// behind endpoint-independent NATs after the connection is up: both sides see
// that nothing comes back, re-run ICE and continue through the relay.
func TestNATPathFailureFallsBackToRelay(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for path failure detection; skipped with -short")
	}
	w := buildNATWorld(t, &vnet.NATType{MappingBehavior: vnet.EndpointIndependent, FilteringBehavior: vnet.EndpointIndependent})
	short := func(net *vnet.Net) func(*Config) {
		return func(c *Config) {
			c.Net, c.IncludeLoopback = net, false
			c.IdleAfter, c.KeepaliveInterval = 300*time.Millisecond, 500*time.Millisecond
		}
	}
	a := newTestNode(t, "100.64.0.1", short(w.netA))
	b := newTestNode(t, "100.64.0.2", short(w.netB))
	a.n.UpdateRelays(nil, []Relay{w.relay})
	b.n.UpdateRelays(nil, []Relay{w.relay})
	a.waitRelayReady(t)
	b.waitRelayReady(t)
	connect(t, a, b, "c1", credsA, credsB)
	roundTrip(t, a, b, 10*time.Second)
	if ev, ok := a.waitEvent(5*time.Second, established("c1")); !ok || ev.Path != PathServerReflexive {
		t.Fatalf("want a direct srflx path first: %+v", ev)
	}

	// The NATs stop passing traffic between each other; the relay still works.
	pubA, pubB := netip.MustParseAddr(vnetPubA), netip.MustParseAddr(vnetPubB)
	w.wan.AddChunkFilter(func(c vnet.Chunk) bool {
		src, dst := addrPortOf(c.SourceAddr()).Addr(), addrPortOf(c.DestinationAddr()).Addr()
		return !((src == pubA && dst == pubB) || (src == pubB && dst == pubA))
	})
	if !a.waitCount(20*time.Second, 2, established("c1")) {
		t.Fatalf("no new path after the direct one failed: %s", describe(statsOf(t, a.n, "c1")))
	}
	rtt := roundTrip(t, a, b, 10*time.Second)
	s := statsOf(t, a.n, "c1")
	t.Logf("after path failure: round trip %v, %s", rtt, describe(s))
	if s.Path != PathRelay {
		t.Fatalf("want the relay after the direct path failed: %s", describe(s))
	}
}
