package node

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/relay"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// testLogger logs to the test at the level of SNOWGATE_TEST_LOG (default: warn).
func testLogger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("SNOWGATE_TEST_LOG") == "debug" {
		level = slog.LevelDebug
	}
	w := &testWriter{t: t}
	// Registered before the node's Close, so it runs after it: wireguard-go
	// may still log from goroutines winding down, after the test is over.
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

type testWriter struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(string(bytes.TrimRight(p, "\n")))
	}
	return len(p), nil
}

// testRelay is our relay (relay.New) on loopback, admitting loopback peers.
type testRelay struct {
	srv  *relay.Server
	addr netip.AddrPort
}

func startRelay(t testing.TB) *testRelay { return startRelayOn(t, "127.0.0.1") }

// startRelayOn starts our relay listening and relaying on ip (a loopback
// address): ephemeral listener port, one socket, no drain, loopback peers
// allowed (the relay refuses them by default).
func startRelayOn(t testing.TB, ip string) *testRelay {
	t.Helper()
	a := netip.MustParseAddr(ip)
	cfg := relay.Config{
		ListenPort:   -1,
		Sockets:      1,
		DrainTimeout: -1,
		AllowPeers:   []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")},
		Logger:       testLogger(t).With("component", "relay"),
	}
	if a.Is4() {
		cfg.PublicIP4, cfg.ListenAddr4 = a, a
	} else {
		cfg.PublicIP6, cfg.ListenAddr6 = a, a
	}
	srv, err := relay.New(cfg)
	if err != nil {
		t.Fatalf("relay: %v", err)
	}
	if err := srv.Start(t.Context()); err != nil {
		t.Fatalf("relay start: %v", err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return &testRelay{srv: srv, addr: srv.Addr()}
}

// relay describes the relay to node n as the portal does: the relay's
// address and credentials derived from its stamp secret and n's public key
// (portalapi.RelayCredentials) in realm "firezone". Call it again after
// n.Reset (new key, new credentials).
func (r *testRelay) relay(id string, n *Node) Relay {
	return portalRelay(id, r.srv.StampSecret(), r.addr, n)
}

// portalRelay is the node's view of a relay as the portal hands it out.
func portalRelay(id, stampSecret string, addr netip.AddrPort, n *Node) Relay {
	user, pass := portalapi.RelayCredentials(stampSecret, n.PublicKey().String(), time.Now().Add(24*time.Hour))
	rel := Relay{ID: id, Username: user, Password: pass, Realm: relay.DefaultRealm}
	if addr.Addr().Is4() {
		rel.Addr4 = addr
	} else {
		rel.Addr6 = addr
	}
	return rel
}

// testNode is a node with an in-memory TUN and an event recorder.
type testNode struct {
	t   testing.TB
	n   *Node
	tun *tuntest.ChannelTUN
	ip  netip.Addr

	mu      sync.Mutex
	events  []Event
	changed chan struct{}
	peer    *testNode            // signalling target
	routes  map[string]*testNode // per-connection signalling targets (hub)
	pumped  chan struct{}
}

func newTestNode(t testing.TB, ip string, mod func(*Config)) *testNode {
	t.Helper()
	tn := &testNode{t: t, tun: tuntest.NewChannelTUN(), ip: netip.MustParseAddr(ip), changed: make(chan struct{}, 1), pumped: make(chan struct{})}
	cfg := Config{TUN: tn.tun.TUN(), IncludeLoopback: true, DisableIPv6: true, Logger: testLogger(t)}
	if mod != nil {
		mod(&cfg)
	}
	n, err := New(cfg)
	if err != nil {
		t.Fatalf("new node: %v", err)
	}
	tn.n = n
	go tn.pump()
	t.Cleanup(func() {
		_ = n.Close()
		<-tn.pumped
	})
	return tn
}

// pump signals candidates to the peer like the portal would, then records
// the event: once an event is recorded, its candidate reached the peer.
func (tn *testNode) pump() {
	defer close(tn.pumped)
	for e := range tn.n.Events() {
		tn.mu.Lock()
		peer := tn.peer
		if r := tn.routes[e.ConnectionID]; r != nil {
			peer = r
		}
		tn.mu.Unlock()
		// Like the portal, forward at once: the peer queues candidates of a
		// connection it does not have yet (and drops an invalidation of a
		// candidate it never had).
		if peer != nil {
			switch e.Kind {
			case EventCandidateAdded:
				_ = peer.n.AddRemoteCandidate(e.ConnectionID, e.Candidate)
			case EventCandidateInvalidated:
				_ = peer.n.RemoveRemoteCandidate(e.ConnectionID, e.Candidate)
			}
		}
		tn.mu.Lock()
		tn.events = append(tn.events, e)
		tn.mu.Unlock()
		select {
		case tn.changed <- struct{}{}:
		default:
		}
	}
}

// waitEvent waits for an event matching f and returns it.
func (tn *testNode) waitEvent(timeout time.Duration, f func(Event) bool) (Event, bool) {
	deadline := time.After(timeout)
	seen := 0
	for {
		tn.mu.Lock()
		for ; seen < len(tn.events); seen++ {
			if f(tn.events[seen]) {
				e := tn.events[seen]
				tn.mu.Unlock()
				return e, true
			}
		}
		tn.mu.Unlock()
		select {
		case <-tn.changed:
		case <-deadline:
			return Event{}, false
		}
	}
}

// waitCount waits until at least k events match f.
func (tn *testNode) waitCount(timeout time.Duration, k int, f func(Event) bool) bool {
	deadline := time.After(timeout)
	for tn.countEvents(f) < k {
		select {
		case <-tn.changed:
		case <-deadline:
			return false
		}
	}
	return true
}

func (tn *testNode) countEvents(f func(Event) bool) int {
	tn.mu.Lock()
	defer tn.mu.Unlock()
	k := 0
	for _, e := range tn.events {
		if f(e) {
			k++
		}
	}
	return k
}

func (tn *testNode) waitRelayReady(t testing.TB) {
	t.Helper()
	if _, ok := tn.waitEvent(10*time.Second, func(e Event) bool { return e.Kind == EventRelayReady }); !ok {
		t.Fatalf("relay allocation not ready")
	}
}

// giveRelays hands both nodes every relay (ids "r1", "r2", … in order, credentials derived per node as the
// portal does) and waits until each node has all their allocations ready.
func giveRelays(t testing.TB, a, b *testNode, relays ...*testRelay) {
	t.Helper()
	for _, tn := range []*testNode{a, b} {
		var rs []Relay
		for i, r := range relays {
			rs = append(rs, r.relay(fmt.Sprintf("r%d", i+1), tn.n))
		}
		tn.n.UpdateRelays(nil, rs)
	}
	for _, tn := range []*testNode{a, b} {
		if !tn.waitCount(10*time.Second, len(relays), func(e Event) bool { return e.Kind == EventRelayReady }) {
			t.Fatalf("relay allocations not ready")
		}
	}
}

var (
	credsA = Credentials{Ufrag: "ufragAAA", Password: "passwordAAAAAAAAAAAAAAAAAAAA"}
	credsB = Credentials{Ufrag: "ufragBBB", Password: "passwordBBBBBBBBBBBBBBBBBBBB"}
	psk    = Key{1, 2, 3}
)

// connect upserts the connection id on both nodes (a controlling) and routes
// each node's tunnel IP to the other.
func connect(t testing.TB, a, b *testNode, id string, ca, cb Credentials) {
	t.Helper()
	a.mu.Lock()
	a.peer = b
	a.mu.Unlock()
	b.mu.Lock()
	b.peer = a
	b.mu.Unlock()
	if err := b.n.UpsertConnection(ConnectionParams{ID: id, RemoteKey: a.n.PublicKey(), PresharedKey: psk, Local: cb, Remote: ca, Role: RoleControlled}); err != nil {
		t.Fatalf("upsert on b: %v", err)
	}
	if err := a.n.UpsertConnection(ConnectionParams{ID: id, RemoteKey: b.n.PublicKey(), PresharedKey: psk, Local: ca, Remote: cb, Role: RoleControlling}); err != nil {
		t.Fatalf("upsert on a: %v", err)
	}
	if err := a.n.SetAllowedIPs(id, []netip.Prefix{netip.PrefixFrom(b.ip, 32)}); err != nil {
		t.Fatal(err)
	}
	if err := b.n.SetAllowedIPs(id, []netip.Prefix{netip.PrefixFrom(a.ip, 32)}); err != nil {
		t.Fatal(err)
	}
}

// roundTrip sends a ping from a to b, answers it from b and waits for the
// answer at a. It returns the round-trip time.
func roundTrip(t testing.TB, a, b *testNode, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := time.After(timeout)
	ping := tuntest.Ping(b.ip, a.ip)
	select {
	case a.tun.Outbound <- ping:
	case <-deadline:
		t.Fatalf("a's tunnel did not take the packet")
	}
	for {
		select {
		case got := <-b.tun.Inbound:
			if !bytes.Equal(got, ping) {
				continue
			}
		case <-deadline:
			t.Fatalf("packet a→b not delivered within %v", timeout)
		}
		break
	}
	pong := tuntest.Ping(a.ip, b.ip)
	select {
	case b.tun.Outbound <- pong:
	case <-deadline:
		t.Fatalf("b's tunnel did not take the packet")
	}
	for {
		select {
		case got := <-a.tun.Inbound:
			if !bytes.Equal(got, pong) {
				continue
			}
			return time.Since(start)
		case <-deadline:
			t.Fatalf("packet b→a not delivered within %v", timeout)
		}
	}
}

func established(id string) func(Event) bool {
	return func(e Event) bool { return e.Kind == EventConnectionEstablished && e.ConnectionID == id }
}

func statsOf(t testing.TB, n *Node, id string) ConnStats {
	t.Helper()
	for _, s := range n.Stats() {
		if s.ID == id {
			return s
		}
	}
	t.Fatalf("no stats for %s", id)
	return ConnStats{}
}

func describe(s ConnStats) string {
	return fmt.Sprintf("path=%s local=%s remote=%s rtt=%v rx=%d tx=%d established=%v idle=%v",
		s.Path, s.LocalAddr, s.RemoteAddr, s.RTT, s.RxBytes, s.TxBytes, s.Established, s.Idle)
}

type netipPrefix = netip.Prefix

func prefix32(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, 32) }
