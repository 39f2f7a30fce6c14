//go:build !relay_portable

package relay

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/snowgate/snowgate/internal/netlab"
)

// TestRelayInNamespace starts the relay in-process from inside a network
// namespace (netlab's Namespace.Do, as an end-to-end test bed does) and
// relays between a client and a peer in two other namespaces: the
// allocation's relay socket, which pion asks for from its own goroutine,
// must be bound in the relay's namespace (without the socket opener it
// would be bound in the test process's, and Allocate would fail with 508).
// Needs root (skipped otherwise).
func TestRelayInNamespace(t *testing.T) {
	lab := netlab.New(t)
	inet := lab.Internet()
	relayHost := lab.Host("relay", inet, "198.18.0.101")
	clientHost := lab.Host("client", inet, "198.18.0.102")
	peerHost := lab.Host("peer", inet, "198.18.0.103")

	var s *Server
	if err := relayHost.Do(func() error {
		cfg := Config{
			PublicIP4: relayHost.Addr4(), ListenAddr4: relayHost.Addr4(),
			ListenPort: DefaultListenPort, DrainTimeout: -1, Sockets: 2,
			AllowPeers: []netip.Prefix{netip.PrefixFrom(peerHost.Addr4(), 32)},
			Logger:     testLogger(),
		}
		var err error
		if s, err = New(cfg); err != nil {
			return err
		}
		return s.Start(t.Context())
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })

	clientConn, err := clientHost.ListenUDP("udp4", netip.AddrPortFrom(clientHost.Addr4(), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer clientConn.Close()
	peer, err := peerHost.ListenUDP("udp4", netip.AddrPortFrom(peerHost.Addr4(), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	relayed := pionAllocationOn(t, s, "salt-netns", clientConn, s.Addr())
	if ra := relayed.LocalAddr().(*net.UDPAddr); !ra.IP.Equal(relayHost.Addr4().AsSlice()) {
		t.Fatalf("relayed address %v, want on %v", ra, relayHost.Addr4())
	}
	// Both ways, until the channel is bound and the fast path carries it.
	for i := 0; ; i++ {
		if _, err := relayed.WriteTo([]byte("to peer"), peer.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		if err := expectData(peer, []byte("to peer")); err != nil {
			t.Fatalf("peer: %v", err)
		}
		if s.stats.channels.Load() == 1 {
			break
		}
		if i > 100 {
			t.Fatal("channel never bound")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := peer.WriteTo([]byte("to client"), relayed.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	if err := expectData(relayed, []byte("to client")); err != nil {
		t.Fatalf("client: %v", err)
	}
}

// TestRelayBindsLocalPublicAddress: on a host with two addresses whose
// public one is the secondary, a relay without a configured listen address
// binds the public one, so its replies and relayed datagrams leave from the
// address clients and peers know (bound to all, the kernel would answer from
// the primary address and pion's client would ignore the replies). Needs
// root (skipped otherwise).
func TestRelayBindsLocalPublicAddress(t *testing.T) {
	lab := netlab.New(t)
	inet := lab.Internet()
	relayHost := lab.Host("relay", inet, "198.18.0.101")
	clientHost := lab.Host("client", inet, "198.18.0.102")
	peerHost := lab.Host("peer", inet, "198.18.0.103")
	public := netip.MustParseAddr("198.18.0.111")
	if out, err := relayHost.Exec(t.Context(), "ip", "addr", "add", public.String()+"/15", "dev", relayHost.Iface(inet).Name); err != nil {
		t.Fatalf("add address: %v: %s", err, out)
	}
	var s *Server
	if err := relayHost.Do(func() error {
		var err error
		s, err = New(Config{
			PublicIP4: public, ListenPort: DefaultListenPort, DrainTimeout: -1, Sockets: 1,
			AllowPeers: []netip.Prefix{netip.PrefixFrom(peerHost.Addr4(), 32)},
			Logger:     testLogger(),
		})
		if err != nil {
			return err
		}
		return s.Start(t.Context())
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if s.Addr().Addr() != public {
		t.Fatalf("listening on %v, want the public address %v", s.Addr(), public)
	}
	clientConn, err := clientHost.ListenUDP("udp4", netip.AddrPortFrom(clientHost.Addr4(), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer clientConn.Close()
	peer, err := peerHost.ListenUDP("udp4", netip.AddrPortFrom(peerHost.Addr4(), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	relayed := pionAllocationOn(t, s, "salt-bind", clientConn, netip.AddrPortFrom(public, DefaultListenPort))
	if _, err := relayed.WriteTo([]byte("hello"), peer.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	got, from, err := readFrom(peer, 3*time.Second)
	if err != nil || string(got) != "hello" {
		t.Fatalf("peer read %q: %v", got, err)
	}
	if src := from.(*net.UDPAddr).AddrPort().Addr(); src != public {
		t.Fatalf("peer got the datagram from %v, want the public address %v", src, public)
	}
}
