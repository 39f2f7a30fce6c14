package node

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/transport/v5"
	"github.com/pion/transport/v5/stdnet"

	"github.com/snowgate/snowgate/internal/netlab"
	"github.com/snowgate/snowgate/relay"
)

// End-to-end NAT tests in network namespaces (internal/netlab, root only):
// our relay on an "internet" host, two nodes behind NAT routers, WireGuard
// traffic through in-memory TUNs (no kernel TUN).
//
//	internet 198.18.0.0/15: relay1 198.18.0.101:3478
//	  rc (NAT) WAN 198.18.0.1 ─ LAN 192.0.2.0/24: client 192.0.2.2
//	  rg (NAT) WAN 198.18.0.2 ─ LAN 198.51.100.0/24: gateway 198.51.100.2
//
// The relay runs in-process, started from inside relay1's namespace (the
// relay opens its allocations' sockets in the namespace it was started in).
// The nodes run in-process with a transport.Net whose sockets are created
// inside their namespace.

// nsNet is the host network as seen from a namespace: interfaces were listed
// inside it (stdnet caches them at creation) and every socket is created
// inside it (netlab's Do), so it stays there whatever goroutine uses it.
type nsNet struct {
	*stdnet.Net
	ns *netlab.Namespace
}

func newNSNet(t testing.TB, ns *netlab.Namespace) *nsNet {
	t.Helper()
	var sn *stdnet.Net
	if err := ns.Do(func() (err error) { sn, err = stdnet.NewNet(); return err }); err != nil {
		t.Fatalf("stdnet in %s: %v", ns.Node(), err)
	}
	return &nsNet{Net: sn, ns: ns}
}

func (n *nsNet) ListenUDP(network string, laddr *net.UDPAddr) (c transport.UDPConn, err error) {
	err = n.ns.Do(func() error { c, err = n.Net.ListenUDP(network, laddr); return err })
	return c, err
}

func (n *nsNet) ListenPacket(network, address string) (c net.PacketConn, err error) {
	err = n.ns.Do(func() error { c, err = n.Net.ListenPacket(network, address); return err })
	return c, err
}

// UpdateInterfaces would list the interfaces of the calling thread's
// namespace: keep the list taken inside the node's namespace.
func (n *nsNet) UpdateInterfaces() error { return nil }

// e2eLab is the lab of one scenario.
type e2eLab struct {
	lab             *netlab.Lab
	rc, rg          *netlab.Router
	client, gateway *netlab.Host
	relayAddr       netip.AddrPort
	stampSecret     string
}

func buildE2ELab(t *testing.T, nat netlab.NATType) *e2eLab {
	t.Helper()
	lab := netlab.New(t) // skips unless root
	inet := lab.Internet("198.18.0.0/15")
	clientLAN := lab.NATRouter("rc", inet, nat, "192.0.2.0/24")
	gatewayLAN := lab.NATRouter("rg", inet, nat, "198.51.100.0/24")
	relayHost := lab.Host("relay1", inet, "198.18.0.101")
	l := &e2eLab{
		lab: lab, rc: clientLAN.Router(), rg: gatewayLAN.Router(),
		client:    lab.Host("client", clientLAN),
		gateway:   lab.Host("gateway", gatewayLAN),
		relayAddr: netip.AddrPortFrom(relayHost.Addr4(), relay.DefaultListenPort),
	}

	var srv *relay.Server
	if err := relayHost.Do(func() error {
		var err error
		srv, err = relay.New(relay.Config{
			PublicIP4: relayHost.Addr4(), ListenAddr4: relayHost.Addr4(), ListenPort: relay.DefaultListenPort,
			Sockets: 1, DrainTimeout: -1, Logger: testLogger(t).With("component", "relay"),
		})
		if err != nil {
			return err
		}
		return srv.Start(t.Context())
	}); err != nil {
		t.Fatalf("relay in relay1's namespace: %v", err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	l.stampSecret = srv.StampSecret()
	return l
}

// node starts a node whose sockets live in h's namespace and gives it the
// relay as the portal would (credentials derived from its public key).
func (l *e2eLab) node(t *testing.T, h *netlab.Host, tunIP string) *testNode {
	t.Helper()
	nw := newNSNet(t, h.Namespace)
	tn := newTestNode(t, tunIP, func(c *Config) { c.Net, c.IncludeLoopback, c.DisableIPv6 = nw, false, true })
	tn.n.UpdateRelays(nil, []Relay{portalRelay("relay1", l.stampSecret, l.relayAddr, tn.n)})
	return tn
}

func runE2E(t *testing.T, nat netlab.NATType, want Path) {
	l := buildE2ELab(t, nat)
	client := l.node(t, l.client, "100.64.0.1")
	gateway := l.node(t, l.gateway, "100.64.0.2")
	client.waitRelayReady(t)
	gateway.waitRelayReady(t)
	start := time.Now()
	connect(t, client, gateway, "c1", credsA, credsB)
	rtt := roundTrip(t, client, gateway, 10*time.Second)
	ev, ok := client.waitEvent(5*time.Second, established("c1"))
	if !ok {
		t.Fatal("client: no established event")
	}
	if _, ok := gateway.waitEvent(5*time.Second, established("c1")); !ok {
		t.Fatal("gateway: no established event")
	}
	for i := 0; i < 3; i++ {
		roundTrip(t, client, gateway, 2*time.Second)
		roundTrip(t, gateway, client, 2*time.Second)
	}
	s := statsOf(t, client.n, "c1")
	t.Logf("%s NATs: first round trip %v (since upsert %v), handshake %v; client %s",
		nat, rtt, time.Since(start), ev.HandshakeTime, describe(s))
	if ev.Path != want || s.Path != want {
		t.Fatalf("path = %s (stats %s), want %s", ev.Path, s.Path, want)
	}
	switch want {
	case PathServerReflexive:
		// Direct between the routers' public addresses.
		pub := map[netip.Addr]bool{l.rc.PublicAddr4(): true, l.rg.PublicAddr4(): true}
		if !pub[s.RemoteAddr.Addr()] {
			t.Fatalf("remote %s is not a router's public address", s.RemoteAddr)
		}
	case PathRelay:
		if s.RelayID != "relay1" || (s.RemoteAddr.Addr() != l.relayAddr.Addr() && s.LocalAddr.Addr() != l.relayAddr.Addr()) {
			t.Fatalf("relayed path does not go through relay1 %s: %s", l.relayAddr.Addr(), describe(s))
		}
	}
	if s.RxBytes == 0 || s.TxBytes == 0 {
		t.Fatalf("no traffic accounted: %s", describe(s))
	}
}

// TestE2EEndpointIndependentNATIsDirect: both nodes behind endpoint-independent
// NATs (nftables masquerade) connect directly through their server-reflexive
// addresses.
func TestE2EEndpointIndependentNATIsDirect(t *testing.T) {
	runE2E(t, netlab.NATEndpointIndependent, PathServerReflexive)
}

// TestE2ESymmetricNATIsRelayed: both nodes behind symmetric NATs (masquerade
// random) can only meet through our relay.
func TestE2ESymmetricNATIsRelayed(t *testing.T) {
	runE2E(t, netlab.NATSymmetric, PathRelay)
}
