package node_test

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/ice/v4"

	"github.com/snowgate/snowgate/node"
	"github.com/snowgate/snowgate/node/nodetest"
)

// wgType returns the WireGuard message type of a datagram on the internet
// (unwrapping TURN ChannelData), or 0.
func wgType(b []byte) byte {
	if len(b) >= 4 && b[0]&0xC0 == 0x40 { // ChannelData
		l := int(binary.BigEndian.Uint16(b[2:4]))
		if 4+l > len(b) {
			return 0
		}
		b = b[4 : 4+l]
	}
	if len(b) >= 32 && b[0] >= 1 && b[0] <= 4 && b[1] == 0 && b[2] == 0 && b[3] == 0 {
		return b[0]
	}
	return 0
}

// TestOnlyControllingSideForcesHandshake: a connection nobody sends data on
// is established by the controlling side (the client) forcing a WireGuard
// handshake on nomination; the controlled side (the gateway) never
// initiates one, neither at nomination nor afterwards.
func TestOnlyControllingSideForcesHandshake(t *testing.T) {
	sim(t, func(t *testing.T, w *nodetest.World) {
		a, b := pair(t, w, nodetest.NATNone, nil)
		var mu sync.Mutex
		inits := map[netip.Addr]int{}
		w.Observe(func(d nodetest.Datagram) {
			if wgType(d.Payload) == 1 {
				mu.Lock()
				inits[d.Src.Addr()]++
				mu.Unlock()
			}
		})
		w.Connect(a, b, "c1") // no packet is ever written to either tunnel
		for _, p := range []*nodetest.Peer{a, b} {
			if _, ok := p.WaitEvent(10*time.Second, nodetest.Established("c1")); !ok {
				t.Fatalf("%s: not established without traffic", p.Name())
			}
		}
		advance(30 * time.Second) // simulated: more nominations could come (agents' grace), none may initiate
		mu.Lock()
		defer mu.Unlock()
		t.Logf("handshake initiations by source: %v", inits)
		if inits[a.PublicAddr()] == 0 {
			t.Fatal("the controlling side sent no handshake initiation, yet the connection is established")
		}
		if inits[b.PublicAddr()] != 0 {
			t.Fatalf("the controlled side sent %d handshake initiations", inits[b.PublicAddr()])
		}
	})
}

// relayCandidateIPs returns the addresses of the relay candidates p
// signalled for connection id.
func relayCandidateIPs(p *nodetest.Peer, id string) map[netip.Addr]int {
	out := map[netip.Addr]int{}
	for _, e := range p.Events() {
		if e.Kind != node.EventCandidateAdded || e.ConnectionID != id || !strings.Contains(e.Candidate, "typ relay") {
			continue
		}
		c, err := ice.UnmarshalCandidate(e.Candidate)
		if err != nil {
			continue
		}
		ip, err := netip.ParseAddr(c.Address())
		if err == nil {
			out[ip]++
		}
	}
	return out
}

// TestConnectionGetsOnlyItsSampledRelaysCandidates: with two relays (and a
// third one added later), each connection gets the relay candidates of the
// one relay sampled for it, however long it runs and whichever relay's
// allocation becomes ready.
func TestConnectionGetsOnlyItsSampledRelaysCandidates(t *testing.T) {
	sim(t, func(t *testing.T, w *nodetest.World) {
		r1, r2 := w.AddRelay("r1"), w.AddRelay("r2")
		a := w.AddNode(nodetest.NodeOptions{Name: "a"})
		b := w.AddNode(nodetest.NodeOptions{Name: "b"})
		w.GiveRelays(a, b)
		w.Connect(a, b, "c1")
		w.RoundTrip(a, b, 5*time.Second)
		// A third relay arrives while the connection's ICE is still in its
		// grace period, and time passes (relay keepalives, refreshes).
		r3 := w.AddRelay("r3")
		for _, p := range []*nodetest.Peer{a, b} {
			p.Node().UpdateRelays(nil, []node.Relay{r3.For(p)})
		}
		advance(3 * time.Minute)
		w.RoundTrip(a, b, 5*time.Second)
		byIP := map[netip.Addr]string{r1.Addr().Addr(): "r1", r2.Addr().Addr(): "r2", r3.Addr().Addr(): "r3"}
		for _, p := range []*nodetest.Peer{a, b} {
			ips := relayCandidateIPs(p, "c1")
			sampled := stats(t, p, "c1").RelayID
			if len(ips) != 1 {
				t.Fatalf("%s signalled relay candidates of %d relays, want 1 (its sampled relay %s): %v", p.Name(), len(ips), sampled, ips)
			}
			for ip := range ips {
				if byIP[ip] != sampled {
					t.Fatalf("%s's relay candidate is on %s (%s), its sampled relay is %s", p.Name(), byIP[ip], ip, sampled)
				}
			}
			_, _, relayGiven := node.Given(p.Node())
			agents, _, _ := node.Given(p.Node())
			if relayGiven > agents {
				t.Fatalf("%s gave %d relay candidates to %d agents: more than one relay's (one IPv4 allocation each)", p.Name(), relayGiven, agents)
			}
		}
	})
}

// TestInvalidatedRemoteCandidateInUseStartsPathSearchAtOnce: when the peer
// invalidates the candidate the path uses, ICE starts over at once (as the
// seed runs its timeout handling right after removing a candidate), not at
// the next path check, and not after the previous agent's grace period.
func TestInvalidatedRemoteCandidateInUseStartsPathSearchAtOnce(t *testing.T) {
	sim(t, func(t *testing.T, w *nodetest.World) {
		a, b := pair(t, w, nodetest.NATNone, nil)
		w.Connect(a, b, "c1")
		w.RoundTrip(a, b, 5*time.Second)
		if _, ok := a.WaitEvent(5*time.Second, nodetest.Established("c1")); !ok {
			t.Fatal("not established")
		}
		remote := stats(t, a, "c1").RemoteAddr
		var inUse string
		for _, e := range b.Events() {
			if e.Kind == node.EventCandidateAdded && e.ConnectionID == "c1" {
				if c, err := ice.UnmarshalCandidate(e.Candidate); err == nil && c.Address() == remote.Addr().String() && c.Port() == int(remote.Port()) {
					inUse = e.Candidate
				}
			}
		}
		if inUse == "" {
			t.Fatalf("b never signalled the candidate a's path uses (%s)", remote)
		}
		if node.AgentRunning(a.Node(), "c1") {
			t.Fatal("ICE still running before the invalidation")
		}
		agentsBefore, _, _ := node.Given(a.Node())
		if err := a.Node().RemoveRemoteCandidate("c1", inUse); err != nil {
			t.Fatal(err)
		}
		// No simulated time has passed since the call.
		if !node.AgentRunning(a.Node(), "c1") {
			t.Fatal("no new path search right after the candidate in use was invalidated")
		}
		// The new agent is up as soon as the previous one closed (well within
		// its 2 s grace period and the next path check).
		eventually(t, 100*time.Millisecond, time.Millisecond, func() bool { return node.AgentStarted(a.Node(), "c1") },
			func() string { return "the new ICE agent did not start within 100 ms" })
		if agents, _, _ := node.Given(a.Node()); agents != agentsBefore+1 {
			t.Fatalf("%d agents created by the invalidation, want 1", agents-agentsBefore)
		}
		if !a.WaitCount(10*time.Second, 2, nodetest.Established("c1")) {
			t.Fatalf("no new path: %s", describe(stats(t, a, "c1")))
		}
		w.RoundTrip(a, b, 5*time.Second)
	})
}

// TestHostAndSrflxCandidatesAreNotAddedAgain (seed #7163: host candidates
// were added far more often than necessary): over fifteen minutes of relay
// keepalives (every 2 s here), allocation refreshes, idle periods, traffic
// and an ICE re-run (the direct path fails), every host and server-reflexive
// candidate is signalled once, and each agent is given each
// server-reflexive address once.
func TestHostAndSrflxCandidatesAreNotAddedAgain(t *testing.T) {
	sim(t, func(t *testing.T, w *nodetest.World) {
		// Short keepalives: both sides see the path fail within one ICE
		// timeout of each other. (With the default 25 s they may not: each
		// side re-runs ICE on its own keepalive tick, up to 25 s apart, and
		// an agent alone gives up after 15 s + 5 s; the connection then
		// fails, on both sides, as in the seed.)
		short := func(c *node.Config) { c.IdleAfter, c.KeepaliveInterval = time.Second, 2*time.Second }
		a, b := pair(t, w, nodetest.NATEndpointIndependent, short)
		w.Connect(a, b, "c1")
		traffic := func() {
			for range 15 {
				w.RoundTrip(a, b, 10*time.Second)
				advance(20 * time.Second)
			}
		}
		traffic()
		w.Partition(a, b) // the direct path fails: ICE re-runs and finds the relay
		a.WriteTUN(nodetest.Ping(b.TunIP(), a.TunIP()))
		if !a.WaitCount(2*time.Minute, 2, nodetest.Established("c1")) {
			t.Fatalf("no new path after the direct one failed: %s", describe(stats(t, a, "c1")))
		}
		traffic()
		w.Heal(a, b)
		traffic()
		if agents, _, _ := node.Given(a.Node()); agents < 2 {
			t.Fatalf("a ran %d ICE agents, want a re-run", agents)
		}
		for _, p := range []*nodetest.Peer{a, b} {
			signalled := map[string]int{}
			for _, e := range p.Events() {
				if e.Kind == node.EventCandidateAdded && !strings.Contains(e.Candidate, "typ relay") {
					signalled[e.Candidate]++
				}
			}
			if len(signalled) == 0 {
				t.Fatalf("%s signalled no host or srflx candidate", p.Name())
			}
			for c, k := range signalled {
				if k != 1 {
					t.Errorf("%s signalled %q %d times", p.Name(), c, k)
				}
			}
			agents, srflx, _ := node.Given(p.Node())
			t.Logf("%s: %d agents, %d srflx candidates given, candidates signalled %v", p.Name(), agents, srflx, signalled)
			if srflx > agents { // one srflx address per node (IPv4 only)
				t.Errorf("%s gave %d srflx candidates to %d agents", p.Name(), srflx, agents)
			}
		}
	})
}

// TestStatsRTTIsCurrent: Stats().RTT follows the path's round-trip time
// after the connection was established: the peer's latency grows by 200 ms,
// and within the next WireGuard rekey (two minutes of traffic) the RTT
// shows it.
func TestStatsRTTIsCurrent(t *testing.T) {
	sim(t, func(t *testing.T, w *nodetest.World) {
		a, b := pair(t, w, nodetest.NATNone, nil)
		w.Connect(a, b, "c1")
		w.RoundTrip(a, b, 5*time.Second)
		if _, ok := a.WaitEvent(5*time.Second, nodetest.Established("c1")); !ok {
			t.Fatal("not established")
		}
		before := stats(t, a, "c1").RTT
		const extra = 200 * time.Millisecond
		b.SetLatency(extra)
		for range 16 {
			w.RoundTrip(a, b, 5*time.Second)
			advance(10 * time.Second)
		}
		for _, p := range []*nodetest.Peer{a, b} {
			s := stats(t, p, "c1")
			t.Logf("%s: rtt %v at first, now %s", p.Name(), before, describe(s))
			if s.RTT < extra || s.RTT > extra+100*time.Millisecond {
				t.Fatalf("%s: RTT %v after the path's latency grew by %v (was %v): not the current RTT", p.Name(), s.RTT, extra, before)
			}
		}
	})
}

// TestStatsNameTheRelayCarryingThePath: a path through the peer's relay
// (our end is a host candidate) is carried by the peer's relay, not by the
// one sampled for the connection on our side: Stats names the relay of the
// path (PathRelayID), found by the address of the peer's relayed candidate.
func TestStatsNameTheRelayCarryingThePath(t *testing.T) {
	sim(t, func(t *testing.T, w *nodetest.World) {
		r1, r2 := w.AddRelay("r1"), w.AddRelay("r2")
		a := w.AddNode(nodetest.NodeOptions{Name: "a"})                    // on the internet: host candidates
		b := w.AddNode(nodetest.NodeOptions{Name: "b", Config: relayOnly}) // only its relay candidate
		// a knows both relays and samples r1 (equal simulated RTTs: the lower id); b only has r2.
		a.Node().UpdateRelays(nil, []node.Relay{r1.For(a), r2.For(a)})
		b.Node().UpdateRelays(nil, []node.Relay{r2.For(b)})
		if !a.WaitCount(5*time.Second, 2, nodetest.OfKind(node.EventRelayReady)) {
			t.Fatal("a: relay allocations not ready")
		}
		if _, ok := b.WaitEvent(5*time.Second, nodetest.OfKind(node.EventRelayReady)); !ok {
			t.Fatal("b: no relay allocation")
		}
		w.Connect(a, b, "c1")
		w.RoundTrip(a, b, 5*time.Second)
		if _, ok := a.WaitEvent(5*time.Second, nodetest.Established("c1")); !ok {
			t.Fatal("not established")
		}
		s := stats(t, a, "c1")
		if s.Path != node.PathRelay || s.RemoteAddr.Addr() != r2.Addr().Addr() {
			t.Fatalf("want a path from a's host to b's relay r2: %s", describe(s))
		}
		if s.RelayID != "r1" || s.PathRelayID != "r2" {
			t.Fatalf("sampled relay %q, path relay %q; want r1 (a's own) and r2 (carrying the path): %s",
				s.RelayID, s.PathRelayID, describe(s))
		}
		if s := stats(t, b, "c1"); s.PathRelayID != "r2" {
			t.Fatalf("b's path relay %q, want its own r2: %s", s.PathRelayID, describe(s))
		}
	})
}
