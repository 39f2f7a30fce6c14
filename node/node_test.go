package node

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/pion/ice/v4"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestDirectConnection(t *testing.T) {
	relay := startRelay(t)
	a := newTestNode(t, "100.64.0.1", nil)
	b := newTestNode(t, "100.64.0.2", nil)
	giveRelays(t, a, b, relay)

	connect(t, a, b, "c1", credsA, credsB)
	rtt := roundTrip(t, a, b, 5*time.Second)
	t.Logf("first packet round trip (ICE + handshake + ping): %v", rtt)
	if rtt > 2*time.Second {
		t.Fatalf("first round trip took %v, want < 2s (no wait for wireguard-go's 5 s retransmit)", rtt)
	}
	ev, ok := a.waitEvent(5*time.Second, established("c1"))
	if !ok {
		t.Fatal("no established event on a")
	}
	if !isDirect(ev.Path) {
		t.Fatalf("path = %v, want a direct path", ev.Path)
	}
	t.Logf("established: path=%s local=%s remote=%s handshake=%v", ev.Path, ev.LocalAddr, ev.RemoteAddr, ev.HandshakeTime)
	if _, ok := b.waitEvent(5*time.Second, established("c1")); !ok {
		t.Fatal("no established event on b")
	}
	// Traffic both ways, again.
	for i := 0; i < 3; i++ {
		roundTrip(t, a, b, 2*time.Second)
		roundTrip(t, b, a, 2*time.Second)
	}
	sa := statsOf(t, a.n, "c1")
	t.Logf("a stats: %s", describe(sa))
	if !sa.Established || !isDirect(sa.Path) || sa.RxBytes == 0 || sa.TxBytes == 0 || sa.LastHandshake.IsZero() {
		t.Fatalf("unexpected stats: %s", describe(sa))
	}
}

func TestRelayedConnection(t *testing.T) {
	relay := startRelay(t)
	relayOnly := func(c *Config) { c.TestOnlyCandidateTypes = []ice.CandidateType{ice.CandidateTypeRelay} }
	a := newTestNode(t, "100.64.0.1", relayOnly)
	b := newTestNode(t, "100.64.0.2", relayOnly)
	giveRelays(t, a, b, relay)

	connect(t, a, b, "c1", credsA, credsB)
	rtt := roundTrip(t, a, b, 5*time.Second)
	t.Logf("first packet round trip through the relay: %v", rtt)
	ev, ok := a.waitEvent(5*time.Second, established("c1"))
	if !ok {
		t.Fatal("no established event on a")
	}
	if ev.Path != PathRelay {
		t.Fatalf("path = %v, want relay", ev.Path)
	}
	for i := 0; i < 3; i++ {
		roundTrip(t, a, b, 2*time.Second)
		roundTrip(t, b, a, 2*time.Second)
	}
	sa := statsOf(t, a.n, "c1")
	t.Logf("a stats: %s", describe(sa))
	if sa.Path != PathRelay || sa.RelayID != "r1" {
		t.Fatalf("unexpected stats: %s", describe(sa))
	}
}

func TestRemoveAllRelaysKeepsDirectConnection(t *testing.T) {
	relay := startRelay(t)
	a := newTestNode(t, "100.64.0.1", nil)
	b := newTestNode(t, "100.64.0.2", nil)
	giveRelays(t, a, b, relay)
	connect(t, a, b, "c1", credsA, credsB)
	roundTrip(t, a, b, 5*time.Second)
	if _, ok := a.waitEvent(5*time.Second, established("c1")); !ok {
		t.Fatal("not established")
	}

	a.n.UpdateRelays([]string{"r1"}, nil)
	b.n.UpdateRelays([]string{"r1"}, nil)
	if _, ok := a.waitEvent(2*time.Second, func(e Event) bool { return e.Kind == EventNoRelays }); !ok {
		t.Fatal("no EventNoRelays after removing the last relay")
	}
	if _, ok := a.waitEvent(2*time.Second, func(e Event) bool {
		return e.Kind == EventCandidateInvalidated && e.ConnectionID == "c1" && e.RelayID == "r1"
	}); !ok {
		t.Fatal("relay candidate not invalidated")
	}
	for i := 0; i < 3; i++ {
		roundTrip(t, a, b, 2*time.Second)
		roundTrip(t, b, a, 2*time.Second)
	}
	if s := statsOf(t, a.n, "c1"); !s.Established || !isDirect(s.Path) {
		t.Fatalf("direct connection changed: %s", describe(s))
	}
	err := a.n.UpsertConnection(ConnectionParams{ID: "c2", RemoteKey: b.n.PublicKey(), PresharedKey: psk, Local: credsA, Remote: credsB, Role: RoleControlling})
	if !errors.Is(err, ErrNoRelays) {
		t.Fatalf("upsert without relays: err = %v, want ErrNoRelays", err)
	}
}

func TestUpsertIdempotent(t *testing.T) {
	relay := startRelay(t)
	a := newTestNode(t, "100.64.0.1", nil)
	b := newTestNode(t, "100.64.0.2", nil)
	giveRelays(t, a, b, relay)
	connect(t, a, b, "c1", credsA, credsB)
	roundTrip(t, a, b, 5*time.Second)
	if _, ok := a.waitEvent(5*time.Second, established("c1")); !ok {
		t.Fatal("not established")
	}
	hs := statsOf(t, a.n, "c1").LastHandshake
	candidatesBefore := a.countEvents(func(e Event) bool { return e.Kind == EventCandidateAdded })

	// Same credentials again on both sides: kept, candidates re-signalled, no new handshake.
	connect(t, a, b, "c1", credsA, credsB)
	if !a.waitCount(2*time.Second, candidatesBefore+1, func(e Event) bool { return e.Kind == EventCandidateAdded }) {
		t.Fatal("candidates not re-signalled on idempotent upsert")
	}
	time.Sleep(500 * time.Millisecond) // let the re-run ICE nominate and close
	roundTrip(t, a, b, 2*time.Second)
	roundTrip(t, b, a, 2*time.Second)
	s := statsOf(t, a.n, "c1")
	if !s.Established {
		t.Fatalf("connection not kept: %s", describe(s))
	}
	if !s.LastHandshake.Equal(hs) {
		t.Fatalf("new handshake after idempotent upsert: %v → %v", hs, s.LastHandshake)
	}
	if k := a.countEvents(established("c1")); k != 1 {
		t.Fatalf("%d established events, want 1 (connection kept)", k)
	}

	// New credentials replace the connection: a new ICE run and a new handshake.
	credsA2 := Credentials{Ufrag: "ufragA2A", Password: "passwordA2AAAAAAAAAAAAAAAAAA"}
	credsB2 := Credentials{Ufrag: "ufragB2B", Password: "passwordB2BBBBBBBBBBBBBBBBBB"}
	connect(t, a, b, "c1", credsA2, credsB2)
	roundTrip(t, a, b, 5*time.Second)
	if !a.waitCount(5*time.Second, 2, established("c1")) {
		t.Fatal("replaced connection not established")
	}
	s2 := statsOf(t, a.n, "c1")
	if !s2.LastHandshake.After(hs) {
		t.Fatalf("replaced connection did not handshake again: %v → %v", hs, s2.LastHandshake)
	}
}

func TestResetRotatesKey(t *testing.T) {
	relay := startRelay(t)
	a := newTestNode(t, "100.64.0.1", nil)
	b := newTestNode(t, "100.64.0.2", nil)
	giveRelays(t, a, b, relay)
	connect(t, a, b, "c1", credsA, credsB)
	roundTrip(t, a, b, 5*time.Second)

	old, oldPort := a.n.PublicKey(), a.n.Port()
	pub, err := a.n.Reset()
	if err != nil {
		t.Fatal(err)
	}
	if pub == old || pub != a.n.PublicKey() {
		t.Fatalf("key not rotated: old %s new %s current %s", old, pub, a.n.PublicKey())
	}
	if len(a.n.Stats()) != 0 {
		t.Fatal("connections survived Reset")
	}
	if a.n.Port() == oldPort {
		t.Fatalf("port not rotated: %d", oldPort)
	}
	if err := a.n.UpsertConnection(ConnectionParams{ID: "c1", RemoteKey: b.n.PublicKey(), PresharedKey: psk, Local: credsA, Remote: credsB, Role: RoleControlling}); !errors.Is(err, ErrNoRelays) {
		t.Fatalf("allocations survived Reset: upsert err = %v", err)
	}
	// After the portal hands the relays again, the node reconnects with its new key.
	a.n.UpdateRelays(nil, []Relay{relay.relay("r1", a.n)})
	if !a.waitCount(10*time.Second, 2, func(e Event) bool { return e.Kind == EventRelayReady }) {
		t.Fatal("relay not ready again")
	}
	connect(t, a, b, "c1", Credentials{Ufrag: "ufragA3A", Password: "passwordA3AAAAAAAAAAAAAAAAAA"}, Credentials{Ufrag: "ufragB3B", Password: "passwordB3BBBBBBBBBBBBBBBBBB"})
	roundTrip(t, a, b, 5*time.Second)
}

func TestRelayRemovedMovesConnection(t *testing.T) {
	r1, r2 := startRelay(t), startRelay(t)
	relayOnly := func(c *Config) { c.TestOnlyCandidateTypes = []ice.CandidateType{ice.CandidateTypeRelay} }
	a := newTestNode(t, "100.64.0.1", relayOnly)
	b := newTestNode(t, "100.64.0.2", relayOnly)
	giveRelays(t, a, b, r1, r2)
	connect(t, a, b, "c1", credsA, credsB)
	roundTrip(t, a, b, 5*time.Second)
	if _, ok := a.waitEvent(5*time.Second, established("c1")); !ok {
		t.Fatal("not established")
	}
	used := statsOf(t, a.n, "c1").RelayID
	if used == "" {
		t.Fatal("connection has no relay")
	}
	a.n.UpdateRelays([]string{used}, nil)
	b.n.UpdateRelays([]string{used}, nil)
	if !a.waitCount(10*time.Second, 2, established("c1")) {
		t.Fatalf("connection not re-established after relay %s was removed: %s", used, describe(statsOf(t, a.n, "c1")))
	}
	roundTrip(t, a, b, 5*time.Second)
	roundTrip(t, b, a, 2*time.Second)
	s := statsOf(t, a.n, "c1")
	if s.Path != PathRelay || s.RelayID == used || s.RelayID == "" {
		t.Fatalf("connection did not move off relay %s: %s relay=%s", used, describe(s), s.RelayID)
	}
}

// isDirect: host, or srflx/prflx (on loopback the first check often creates a
// peer-reflexive candidate before the host candidate is signalled).
func isDirect(p Path) bool { return p == PathHost || p == PathServerReflexive }

func TestConnectionFailures(t *testing.T) {
	if testing.Short() {
		t.Skip("slow (timeouts of several seconds); skipped with -short")
	}
	relay := startRelay(t)
	fast := func(c *Config) { c.ICEFailedTimeout = time.Second }
	a := newTestNode(t, "100.64.0.1", fast)
	b := newTestNode(t, "100.64.0.2", fast)
	giveRelays(t, a, b, relay)

	t.Run("no peer", func(t *testing.T) {
		if err := a.n.UpsertConnection(ConnectionParams{ID: "lonely", RemoteKey: b.n.PublicKey(), PresharedKey: psk, Local: credsA, Remote: credsB, Role: RoleControlling}); err != nil {
			t.Fatal(err)
		}
		ev, ok := a.waitEvent(10*time.Second, func(e Event) bool { return e.Kind == EventConnectionFailed && e.ConnectionID == "lonely" })
		if !ok || !errors.Is(ev.Err, ErrICEFailed) {
			t.Fatalf("no ICE failure event: %+v", ev)
		}
		if err := a.n.RemoveConnection("lonely"); err != nil {
			t.Fatal(err)
		}
		if err := a.n.RemoveConnection("lonely"); !errors.Is(err, ErrUnknownConnection) {
			t.Fatalf("second remove: %v", err)
		}
	})
	t.Run("psk mismatch", func(t *testing.T) {
		a.mu.Lock()
		a.peer = b
		a.mu.Unlock()
		b.mu.Lock()
		b.peer = a
		b.mu.Unlock()
		if err := b.n.UpsertConnection(ConnectionParams{ID: "psk", RemoteKey: a.n.PublicKey(), PresharedKey: Key{9}, Local: credsB, Remote: credsA, Role: RoleControlled}); err != nil {
			t.Fatal(err)
		}
		if err := a.n.UpsertConnection(ConnectionParams{ID: "psk", RemoteKey: b.n.PublicKey(), PresharedKey: psk, Local: credsA, Remote: credsB, Role: RoleControlling}); err != nil {
			t.Fatal(err)
		}
		_ = a.n.SetAllowedIPs("psk", []netip.Prefix{prefix32(b.ip)})
		a.tun.Outbound <- tuntest.Ping(b.ip, a.ip)
		ev, ok := a.waitEvent(15*time.Second, func(e Event) bool { return e.Kind == EventConnectionFailed && e.ConnectionID == "psk" })
		if !ok || !errors.Is(ev.Err, ErrHandshakeTimeout) {
			t.Fatalf("no handshake failure event: %+v", ev)
		}
		a.n.mu.Lock()
		alive := a.n.conns["psk"].agent != nil
		a.n.mu.Unlock()
		if alive {
			t.Fatal("ICE agent outlived the failed connection")
		}
		if err := a.n.RemoveConnection("psk"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("bad input", func(t *testing.T) {
		if err := a.n.RemoveRemoteCandidate("nope", "1 1 udp 1 127.0.0.1 1 typ host"); !errors.Is(err, ErrUnknownConnection) {
			t.Fatalf("unknown connection: %v", err)
		}
		if err := a.n.UpsertConnection(ConnectionParams{ID: "x", RemoteKey: b.n.PublicKey(), PresharedKey: psk, Local: Credentials{}, Remote: credsB, Role: RoleControlling}); err == nil {
			t.Fatal("empty credentials accepted")
		}
		if err := a.n.UpsertConnection(ConnectionParams{ID: "x", RemoteKey: b.n.PublicKey(), PresharedKey: psk, Local: credsA, Remote: credsB, Role: Role(9)}); err == nil {
			t.Fatal("bad role accepted")
		}
	})
}

func TestParseRemoteCandidate(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host", true},
		{"1 1 udp 2130706431 192.0.2.1 5000 typ host ufrag abcd generation 0", true},
		{"1 1 udp 1 198.51.100.1 6000 typ relay raddr 0.0.0.0 rport 0", true},
		{"", false},
		{"garbage", false},
		{"1 1 udp 1 not-an-ip 5000 typ host", false},
		{"1 1 udp 1 192.0.2.1 99999 typ host", false},
	} {
		_, err := parseRemoteCandidate(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("parseRemoteCandidate(%q) err = %v, want ok=%v", tc.in, err, tc.ok)
		}
	}
}

func FuzzParseRemoteCandidate(f *testing.F) {
	f.Add("candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host")
	f.Add("1 1 udp 1 198.51.100.1 6000 typ relay raddr 0.0.0.0 rport 0")
	f.Add("1 1 tcp 1 192.0.2.1 9 typ host tcptype active")
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = parseRemoteCandidate(s)
	})
}

func TestDualStackDirectConnection(t *testing.T) {
	if l, err := net.ListenPacket("udp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	} else {
		_ = l.Close()
	}
	relay := startRelay(t)
	dual := func(c *Config) { c.DisableIPv6 = false }
	a := newTestNode(t, "100.64.0.1", dual)
	b := newTestNode(t, "100.64.0.2", dual)
	if set := a.n.io.Load(); set.v6 == nil || set.v6.port != set.v4.port {
		t.Fatalf("want v4 and v6 sockets on one port")
	}
	giveRelays(t, a, b, relay)
	connect(t, a, b, "c1", credsA, credsB)
	roundTrip(t, a, b, 5*time.Second)
	roundTrip(t, b, a, 2*time.Second)
	t.Logf("dual stack: %s", describe(statsOf(t, a.n, "c1")))

	t.Run("relayed over an IPv6 allocation", func(t *testing.T) {
		r6 := startRelayOn(t, "::1")
		relayOnly := func(c *Config) {
			c.DisableIPv6 = false
			c.TestOnlyCandidateTypes = []ice.CandidateType{ice.CandidateTypeRelay}
		}
		a := newTestNode(t, "100.64.0.1", relayOnly)
		b := newTestNode(t, "100.64.0.2", relayOnly)
		a.n.UpdateRelays(nil, []Relay{r6.relay("r6", a.n)})
		b.n.UpdateRelays(nil, []Relay{r6.relay("r6", b.n)})
		ev, ok := a.waitEvent(10*time.Second, func(e Event) bool { return e.Kind == EventRelayReady })
		if !ok || !ev.RelayedAddr.Addr().Is6() {
			t.Fatalf("no IPv6 allocation: %+v", ev)
		}
		b.waitRelayReady(t)
		connect(t, a, b, "c1", credsA, credsB)
		roundTrip(t, a, b, 5*time.Second)
		roundTrip(t, b, a, 2*time.Second)
		s := statsOf(t, a.n, "c1")
		if s.Path != PathRelay || !s.RemoteAddr.Addr().Is6() {
			t.Fatalf("want a relayed IPv6 path: %s", describe(s))
		}
	})
}

// TestReconnectSameCredentials removes a connection while ICE is still running
// and recreates it at once with the same ufrag: the old agent's clean-up of
// the shared mux must not break the new one.
func TestReconnectSameCredentials(t *testing.T) {
	relay := startRelay(t)
	a := newTestNode(t, "100.64.0.1", nil)
	b := newTestNode(t, "100.64.0.2", nil)
	giveRelays(t, a, b, relay)
	for i := 0; i < 3; i++ {
		connect(t, a, b, "c1", credsA, credsB)
		if err := a.n.RemoveConnection("c1"); err != nil {
			t.Fatal(err)
		}
		if err := b.n.RemoveConnection("c1"); err != nil {
			t.Fatal(err)
		}
	}
	connect(t, a, b, "c1", credsA, credsB)
	rtt := roundTrip(t, a, b, 5*time.Second)
	t.Logf("round trip after re-creating the connection: %v", rtt)
}

func TestUnresponsiveRelayMovesConnection(t *testing.T) {
	if testing.Short() {
		t.Skip("slow (timeouts of several seconds); skipped with -short")
	}
	r1, r2 := startRelay(t), startRelay(t)
	cfg := func(c *Config) {
		c.TestOnlyCandidateTypes = []ice.CandidateType{ice.CandidateTypeRelay}
		c.KeepaliveInterval = 500 * time.Millisecond
		c.IdleAfter = 400 * time.Millisecond
		c.RelayRTO = 20 * time.Millisecond
	}
	a := newTestNode(t, "100.64.0.1", cfg)
	b := newTestNode(t, "100.64.0.2", cfg)
	giveRelays(t, a, b, r1, r2)
	connect(t, a, b, "c1", credsA, credsB)
	roundTrip(t, a, b, 5*time.Second)
	if _, ok := a.waitEvent(5*time.Second, established("c1")); !ok {
		t.Fatal("not established")
	}
	used := statsOf(t, a.n, "c1").RelayID
	dead := r1
	if used == "r2" {
		dead = r2
	}
	_ = dead.srv.Close() // the relay stops answering
	if _, ok := a.waitEvent(20*time.Second, func(e Event) bool {
		return e.Kind == EventCandidateInvalidated && e.RelayID == used
	}); !ok {
		t.Fatalf("candidates of unresponsive relay %s not invalidated", used)
	}
	if !a.waitCount(20*time.Second, 2, established("c1")) {
		t.Fatalf("connection did not move off relay %s: %s", used, describe(statsOf(t, a.n, "c1")))
	}
	roundTrip(t, a, b, 5*time.Second)
	roundTrip(t, b, a, 2*time.Second)
	if s := statsOf(t, a.n, "c1"); s.RelayID == used {
		t.Fatalf("still on relay %s: %s", used, describe(s))
	}
}
