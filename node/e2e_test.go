package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
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
// The relay runs as a child process (this test binary re-executed inside
// relay1's namespace, see runE2ERelay): pion/turn opens an allocation's
// socket on whatever goroutine handles the Allocate request, so an in-process
// relay would bind it in the test's own namespace. The nodes run in-process
// with a transport.Net whose sockets are created inside their namespace.

// e2eRelayEnv, when set ("<public IPv4>,<secret file>"), makes the test
// binary run our relay instead of the tests (see TestMain).
const e2eRelayEnv = "SNOWGATE_NODE_E2E_RELAY"

// runE2ERelay is the child process: our relay on ip:3478 with the portal's
// credential scheme; it writes its stamp secret to a file (what it would send
// the portal) and serves until killed.
func runE2ERelay(spec string) int {
	ipText, secretFile, ok := strings.Cut(spec, ",")
	ip, err := netip.ParseAddr(ipText)
	if !ok || err != nil {
		fmt.Fprintf(os.Stderr, "bad %s=%q\n", e2eRelayEnv, spec)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	srv, err := relay.New(relay.Config{
		PublicIP4: ip, ListenAddr4: ip, ListenPort: relay.DefaultListenPort,
		Sockets: 1, DrainTimeout: -1, Logger: log,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := srv.Start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer srv.Close()
	tmp := secretFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(srv.StampSecret()), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := os.Rename(tmp, secretFile); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	<-ctx.Done()
	return 0
}

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

	secretFile := filepath.Join(t.TempDir(), "stamp-secret")
	relayHost.Run(t, t.Context(), "env", e2eRelayEnv+"="+relayHost.Addr4().String()+","+secretFile, os.Args[0], "-test.run=^$")
	deadline := time.Now().Add(15 * time.Second)
	for {
		b, err := os.ReadFile(secretFile)
		if err == nil && len(b) > 0 {
			l.stampSecret = string(b)
			break
		}
		if !errors.Is(err, os.ErrNotExist) && err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("relay in relay1's namespace did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
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
