package connsm

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"pgregory.net/rapid"
)

var t0 = time.Unix(1_700_000_000, 0)

func cand(typ CandidateType, addr string) Candidate {
	a := netip.MustParseAddrPort(addr)
	return Candidate{SDP: fmt.Sprintf("1 1 udp 1 %s %d typ %s", a.Addr(), a.Port(), typ), Addr: a, Type: typ}
}

func newConn(controlling bool, relay string) *Conn {
	return New(Config{
		ID: "c", Controlling: controlling, RelayID: relay,
		HandshakeTimeout: 15 * time.Second, PathFailAfter: 37 * time.Second, AgentGrace: 2 * time.Second,
	}, t0)
}

func drainActions(c *Conn) []Action {
	var out []Action
	for {
		a, ok := c.PollAction()
		if !ok {
			return out
		}
		out = append(out, a)
	}
}

func drainEvents(c *Conn) []Event {
	var out []Event
	for {
		e, ok := c.PollEvent()
		if !ok {
			return out
		}
		out = append(out, e)
	}
}

func only[T Action](as []Action) []T {
	var out []T
	for _, a := range as {
		if v, ok := a.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

var (
	localHost  = cand(CandidateHost, "192.0.2.1:5000")
	remoteHost = cand(CandidateHost, "198.51.100.1:6000")
	localRelay = cand(CandidateRelay, "203.0.113.1:40000")
)

// establish takes a new connection through nomination and handshake.
func establish(t *testing.T, c *Conn, now time.Time) {
	t.Helper()
	gen, _ := c.Agent()
	c.HandleNominated(gen, Pair{Local: localHost, Remote: remoteHost}, 5*time.Millisecond, now)
	c.HandleHandshake(now, 4*time.Millisecond, now)
	if c.State() != Established {
		t.Fatalf("state %v, want established", c.State())
	}
}

func TestNewStartsAgentWithWhatItKnows(t *testing.T) {
	srflx := netip.MustParseAddrPort("198.18.1.1:49152")
	c := New(Config{ID: "c", RelayID: "r1", Srflx: []netip.AddrPort{srflx}, Remote: []Candidate{remoteHost}}, t0)
	as := drainActions(c)
	if len(as) != 1 {
		t.Fatalf("actions %+v, want one StartAgent", as)
	}
	s := as[0].(StartAgent)
	if s.Gen != 1 || s.Reason != RunInitial || s.RelayID != "r1" || len(s.Srflx) != 1 || s.Srflx[0] != srflx || len(s.Remote) != 1 {
		t.Fatalf("StartAgent %+v", s)
	}
}

// Only the controlling side forces a handshake, and only on a first
// nomination (a re-run keeps the WireGuard session and sends a keepalive).
func TestOnlyControllingForcesHandshake(t *testing.T) {
	for _, controlling := range []bool{true, false} {
		c := newConn(controlling, "r1")
		drainActions(c)
		c.HandleNominated(1, Pair{Local: localHost, Remote: remoteHost}, 0, t0)
		use := only[UsePath](drainActions(c))
		if len(use) != 1 || use[0].ForceHandshake != controlling || use[0].Rerun {
			t.Fatalf("controlling=%v: UsePath %+v", controlling, use)
		}
		c.HandleHandshake(t0, 0, t0)
		// A re-run (path failed) nominates again: no forced handshake.
		c.HandleActiveCheck(t0.Add(time.Minute), t0, t0.Add(time.Minute))
		gen, running := c.Agent()
		if !running || gen != 2 {
			t.Fatalf("no re-run after the path failed: gen %d running %v", gen, running)
		}
		drainActions(c)
		c.HandleNominated(gen, Pair{Local: localRelay, Remote: remoteHost, RelayID: "r1"}, 0, t0.Add(time.Minute))
		use = only[UsePath](drainActions(c))
		if len(use) != 1 || use[0].ForceHandshake || !use[0].Rerun {
			t.Fatalf("controlling=%v: re-run UsePath %+v", controlling, use)
		}
		if c.State() != Established {
			t.Fatalf("re-run not established at once: %v", c.State())
		}
	}
}

// A connection asks for the candidates of its sampled relay only.
func TestSampledRelayOnly(t *testing.T) {
	c := newConn(true, "r1")
	drainActions(c)
	c.HandleRelayReady("r2", t0)
	c.HandleRelayReady("r1", t0)
	adds := only[AddRelayCandidates](drainActions(c))
	if len(adds) != 1 || adds[0].RelayID != "r1" {
		t.Fatalf("relay candidate actions %+v, want r1's only", adds)
	}
	// Without a relay, the first ready one is adopted, and only that one.
	c = newConn(true, "")
	drainActions(c)
	c.HandleRelayReady("r2", t0)
	c.HandleRelayReady("r1", t0)
	adds = only[AddRelayCandidates](drainActions(c))
	if len(adds) != 1 || adds[0].RelayID != "r2" || c.RelayID() != "r2" {
		t.Fatalf("relay candidate actions %+v (relay %q), want r2's only", adds, c.RelayID())
	}
	// A dropped relay moves the connection to the replacement.
	c.HandleRelayDropped("r2", "r3", t0)
	adds = only[AddRelayCandidates](drainActions(c))
	if len(adds) != 1 || adds[0].RelayID != "r3" || c.RelayID() != "r3" {
		t.Fatalf("after the drop: %+v (relay %q), want r3's", adds, c.RelayID())
	}
}

// Dropping the relay of the path (our allocation) suspends the path before
// the new ICE run: the allocation is closed, nothing can be sent along it.
// Dropping another relay suspends nothing.
func TestRelayDroppedUnderPathSuspendsIt(t *testing.T) {
	for _, running := range []bool{false, true} {
		c := newConn(true, "r1")
		drainActions(c)
		gen, _ := c.Agent()
		c.HandleNominated(gen, Pair{Local: localRelay, Remote: remoteHost, RelayID: "r1"}, 0, t0)
		c.HandleHandshake(t0, 0, t0)
		if running {
			c.HandleUpsert(t0.Add(time.Second)) // an agent runs (a re-run confirming the path)
		}
		drainActions(c)
		c.HandleRelayDropped("r9", "r1", t0.Add(time.Second))
		if s := only[SuspendPath](drainActions(c)); len(s) != 0 {
			t.Fatalf("running=%v: another relay dropped: %+v", running, s)
		}
		c.HandleRelayDropped("r1", "r2", t0.Add(time.Second))
		as := drainActions(c)
		if len(as) == 0 {
			t.Fatalf("running=%v: no action", running)
		}
		if _, ok := as[0].(SuspendPath); !ok {
			t.Fatalf("running=%v: actions %+v, want SuspendPath first", running, as)
		}
		if _, ok := c.Agent(); !ok {
			t.Fatalf("running=%v: no agent looks for the new path", running)
		}
	}
}

// Invalidating the remote candidate in use restarts ICE right away.
func TestRemovingRemoteInUseRestartsAtOnce(t *testing.T) {
	c := newConn(true, "r1")
	drainActions(c)
	c.HandleRemoteCandidate(remoteHost, t0)
	establish(t, c, t0)
	drainActions(c)
	other := cand(CandidateHost, "198.51.100.2:6000")
	c.HandleRemoteCandidateRemoved(other, t0.Add(time.Second))
	if as := drainActions(c); len(as) != 0 {
		t.Fatalf("removing another candidate: %+v", as)
	}
	c.HandleRemoteCandidateRemoved(remoteHost, t0.Add(time.Second))
	as := drainActions(c)
	closes, starts := only[CloseAgent](as), only[StartAgent](as)
	if len(closes) != 1 || closes[0].Gen != 1 || len(starts) != 1 || starts[0].Gen != 2 || starts[0].Reason != RunPathLost {
		t.Fatalf("actions %+v, want the grace agent closed and a new run", as)
	}
	for _, r := range starts[0].Remote {
		if r.Addr == remoteHost.Addr {
			t.Fatal("the new run got the invalidated candidate")
		}
	}
	// The old agent's late nomination of the removed candidate is ignored;
	// the new agent nominating it starts over.
	c.HandleNominated(1, Pair{Local: localHost, Remote: remoteHost}, 0, t0.Add(time.Second))
	if as := drainActions(c); len(as) != 0 {
		t.Fatalf("stale agent's nomination acted on: %+v", as)
	}
	c.HandleNominated(2, Pair{Local: localHost, Remote: remoteHost}, 0, t0.Add(time.Second))
	if s := only[StartAgent](drainActions(c)); len(s) != 1 || s[0].Gen != 3 {
		t.Fatalf("nomination of an invalidated candidate: %+v", s)
	}
}

// Server-reflexive addresses are given to each agent once.
func TestSrflxGivenOncePerAgent(t *testing.T) {
	a1 := netip.MustParseAddrPort("198.18.1.1:49152")
	a2 := netip.MustParseAddrPort("198.18.1.1:49153")
	c := New(Config{ID: "c", Srflx: []netip.AddrPort{a1}, PathFailAfter: time.Second}, t0)
	drainActions(c)
	for range 10 {
		c.HandleSrflx([]netip.AddrPort{a1}, t0)
	}
	if as := drainActions(c); len(as) != 0 {
		t.Fatalf("known address given again: %+v", as)
	}
	for range 10 {
		c.HandleSrflx([]netip.AddrPort{a1, a2}, t0)
	}
	if as := only[AddSrflxCandidate](drainActions(c)); len(as) != 1 || as[0].Addr != a2 {
		t.Fatalf("new address: %+v, want it once", as)
	}
}

// An established connection closes its agent after the grace period; a
// nominated one fails when WireGuard never answers.
func TestTimeouts(t *testing.T) {
	c := newConn(true, "r1")
	drainActions(c)
	establish(t, c, t0)
	drainActions(c)
	if ev := drainEvents(c); len(ev) != 1 || ev[0].Kind != EventEstablished || ev[0].Path.Kind != PathHost {
		t.Fatalf("events %+v", ev)
	}
	at, ok := c.PollTimeout()
	if !ok || !at.Equal(t0.Add(2*time.Second)) {
		t.Fatalf("PollTimeout %v %v, want the end of the grace", at, ok)
	}
	c.HandleTimeout(at)
	if cl := only[CloseAgent](drainActions(c)); len(cl) != 1 {
		t.Fatalf("agent not closed after the grace: %+v", cl)
	}
	if _, ok := c.PollTimeout(); ok {
		t.Fatal("timeout left with nothing to do")
	}

	c = newConn(true, "r1")
	drainActions(c)
	c.HandleNominated(1, Pair{Local: localHost, Remote: remoteHost}, 0, t0)
	drainActions(c)
	at, _ = c.PollTimeout()
	if !at.Equal(t0.Add(15 * time.Second)) {
		t.Fatalf("handshake deadline %v", at)
	}
	c.HandleTimeout(at.Add(-time.Millisecond))
	if c.State() != Nominated {
		t.Fatal("failed before the deadline")
	}
	c.HandleTimeout(at)
	ev := drainEvents(c)
	if c.State() != Failed || len(ev) != 1 || !errors.Is(ev[0].Err, ErrHandshakeTimeout) {
		t.Fatalf("state %v events %+v", c.State(), ev)
	}
	if cl := only[CloseAgent](drainActions(c)); len(cl) != 1 {
		t.Fatalf("agent outlived the failed connection: %+v", cl)
	}
}

// An upsert's re-run that finds nothing leaves an established connection as
// it was; a path failure's does not.
func TestICEFailedAfterRerun(t *testing.T) {
	c := newConn(true, "r1")
	drainActions(c)
	establish(t, c, t0)
	c.HandleTimeout(t0.Add(2 * time.Second))
	drainActions(c)
	drainEvents(c)
	c.HandleUpsert(t0.Add(time.Minute))
	gen, running := c.Agent()
	if !running {
		t.Fatal("upsert did not re-run ICE")
	}
	drainActions(c)
	c.HandleICEFailed(gen, t0.Add(2*time.Minute))
	if c.State() != Established {
		t.Fatalf("upsert re-run failing broke the connection: %v", c.State())
	}
	for _, e := range drainEvents(c) {
		if e.Kind == EventFailed {
			t.Fatal("failure reported for an upsert's re-run")
		}
	}
	c.HandleActiveCheck(t0.Add(3*time.Minute), t0, t0.Add(3*time.Minute))
	gen, _ = c.Agent()
	drainActions(c)
	c.HandleICEFailed(gen, t0.Add(4*time.Minute))
	if ev := drainEvents(c); c.State() != Failed || len(ev) != 1 || !errors.Is(ev[0].Err, ErrICEFailed) {
		t.Fatalf("state %v events %+v", c.State(), ev)
	}
}

// RTT is the newest measure: ICE's at nomination, then every handshake's.
func TestRTTNewestMeasure(t *testing.T) {
	c := newConn(true, "r1")
	drainActions(c)
	c.HandleNominated(1, Pair{Local: localHost, Remote: remoteHost}, 5*time.Millisecond, t0)
	if c.RTT() != 5*time.Millisecond {
		t.Fatalf("rtt %v", c.RTT())
	}
	c.HandleHandshake(t0.Add(time.Millisecond), 7*time.Millisecond, t0.Add(time.Millisecond))
	c.HandleHandshake(t0.Add(2*time.Minute), 200*time.Millisecond, t0.Add(2*time.Minute))
	if c.RTT() != 200*time.Millisecond {
		t.Fatalf("rtt %v after a handshake measured 200ms", c.RTT())
	}
	// An older measure handed in late does not replace a newer one.
	c.HandleHandshake(t0.Add(time.Minute), 9*time.Millisecond, t0.Add(2*time.Minute))
	if c.RTT() != 200*time.Millisecond {
		t.Fatalf("rtt %v: an older measure won", c.RTT())
	}
}

// TestRoam: the path follows the peer, and its kind follows the candidate
// the peer signalled for the new address.
func TestRoam(t *testing.T) {
	c := newConn(true, "r1")
	drainActions(c)
	peerRelay := cand(CandidateRelay, "203.0.113.9:3000")
	c.HandleRemoteCandidate(remoteHost, t0)
	c.HandleRemoteCandidate(peerRelay, t0)
	establish(t, c, t0)
	sock := netip.MustParseAddrPort("0.0.0.0:5000")
	for _, tc := range []struct {
		remote  string
		relayID string
		want    PathKind
		local   string
	}{
		{"198.51.100.1:7000", "", PathServerReflexive, localHost.Addr.String()},
		{peerRelay.Addr.String(), "", PathRelay, localHost.Addr.String()},
		{"198.51.100.5:1", "r1", PathRelay, localRelay.Addr.String()},
		{"198.51.100.6:1", "", PathServerReflexive, sock.String()},
	} {
		c.HandleRoamed(netip.MustParseAddrPort(tc.remote), tc.relayID, localRelay.Addr, sock, t0)
		p := c.Path()
		if p.Remote.String() != tc.remote || p.Kind != tc.want || p.Local.String() != tc.local || p.RelayID != tc.relayID {
			t.Fatalf("roam to %s (relay %q): path %+v, want %s from %s", tc.remote, tc.relayID, p, tc.want, tc.local)
		}
	}
}

// TestConnModel drives a core with random inputs and checks what holds
// whatever happens:
//   - agent generations start in order; an agent is closed at most once and
//     only after it started; actions for an agent come between its start and
//     its close;
//   - at most one agent is wanted at a time (a new start follows the
//     previous agent's close);
//   - UsePath forces a handshake only on the controlling side;
//   - EventEstablished only follows a UsePath, a failure carries a known
//     error, and PollTimeout never lies in the past after HandleTimeout;
//   - local candidates are signalled once unless re-signalled by an upsert
//     or invalidated.
func TestConnModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		controlling := rapid.Bool().Draw(t, "controlling")
		c := New(Config{
			ID: "m", Controlling: controlling, RelayID: rapid.SampledFrom([]string{"", "r1"}).Draw(t, "relay"),
			HandshakeTimeout: 15 * time.Second, PathFailAfter: 37 * time.Second, AgentGrace: 2 * time.Second,
		}, t0)
		now := t0
		started := map[uint64]bool{}
		closed := map[uint64]bool{}
		var lastGen uint64
		open := 0
		usedPath := false
		signalled := map[string]int{}
		addrs := []string{"198.51.100.1:1", "198.51.100.2:2", "203.0.113.3:3"}
		types := []CandidateType{CandidateHost, CandidateServerReflexive, CandidateRelay}
		pick := func(label string) Candidate {
			return cand(rapid.SampledFrom(types).Draw(t, label+"type"), rapid.SampledFrom(addrs).Draw(t, label+"addr"))
		}
		check := func() {
			for {
				a, ok := c.PollAction()
				if !ok {
					break
				}
				switch a := a.(type) {
				case StartAgent:
					if a.Gen <= lastGen {
						t.Fatalf("agent %d started after %d", a.Gen, lastGen)
					}
					if open != 0 {
						t.Fatalf("agent %d started while %d still open", a.Gen, open)
					}
					lastGen = a.Gen
					started[a.Gen] = true
					open++
				case CloseAgent:
					if !started[a.Gen] || closed[a.Gen] {
						t.Fatalf("close of agent %d (started %v, closed %v)", a.Gen, started[a.Gen], closed[a.Gen])
					}
					closed[a.Gen] = true
					open--
				case AddRemoteCandidate:
					if !started[a.Gen] || closed[a.Gen] {
						t.Fatalf("candidate for agent %d not running", a.Gen)
					}
				case AddSrflxCandidate:
					if !started[a.Gen] || closed[a.Gen] {
						t.Fatalf("srflx for agent %d not running", a.Gen)
					}
				case AddRelayCandidates:
					if !started[a.Gen] || closed[a.Gen] {
						t.Fatalf("relay candidates for agent %d not running", a.Gen)
					}
				case UsePath:
					if a.ForceHandshake && !controlling {
						t.Fatal("the controlled side forces a handshake")
					}
					usedPath = true
				}
			}
			for {
				e, ok := c.PollEvent()
				if !ok {
					break
				}
				switch e.Kind {
				case EventEstablished:
					if !usedPath {
						t.Fatal("established without a path")
					}
				case EventFailed:
					if !errors.Is(e.Err, ErrICEFailed) && !errors.Is(e.Err, ErrHandshakeTimeout) {
						t.Fatalf("failure %v", e.Err)
					}
				case EventCandidateAdded:
					signalled[e.Candidate]++
					if signalled[e.Candidate] > 1 {
						t.Fatalf("candidate %q signalled twice", e.Candidate)
					}
				case EventCandidateInvalidated:
					delete(signalled, e.Candidate)
				}
			}
		}
		check()
		for range rapid.IntRange(1, 60).Draw(t, "steps") {
			now = now.Add(time.Duration(rapid.Int64Range(0, int64(40*time.Second)).Draw(t, "advance")))
			gen := lastGen
			if rapid.IntRange(0, 4).Draw(t, "stale") == 0 && gen > 1 {
				gen--
			}
			switch rapid.IntRange(0, 13).Draw(t, "op") {
			case 0:
				signalled = map[string]int{} // re-signalled on purpose
				c.HandleUpsert(now)
			case 1:
				c.HandleRemoteCandidate(pick("r"), now)
			case 2:
				c.HandleRemoteCandidateRemoved(pick("r"), now)
			case 3:
				relay := ""
				l := pick("l")
				if l.Type == CandidateRelay {
					relay = "r1"
				}
				c.HandleLocalCandidate(gen, l, relay, now)
			case 4:
				p := Pair{Local: pick("l"), Remote: pick("r")}
				if p.Local.Type == CandidateRelay {
					p.RelayID = "r1"
					p.RelayGone = rapid.Bool().Draw(t, "gone")
				}
				c.HandleNominated(gen, p, 0, now)
			case 5:
				c.HandleICEFailed(gen, now)
			case 6:
				c.HandleHandshake(now, time.Millisecond, now)
			case 7:
				c.HandleRelayReady(rapid.SampledFrom([]string{"r1", "r2"}).Draw(t, "ready"), now)
			case 8:
				c.HandleRelayDropped(rapid.SampledFrom([]string{"r1", "r2"}).Draw(t, "dropped"), rapid.SampledFrom([]string{"", "r2"}).Draw(t, "repl"), now)
			case 9:
				c.HandleSrflx([]netip.AddrPort{netip.MustParseAddrPort(rapid.SampledFrom(addrs).Draw(t, "srflx"))}, now)
			case 10:
				c.HandleWentIdle(now)
			case 11:
				c.HandleKeepaliveTick(now.Add(-time.Minute), now.Add(-time.Duration(rapid.IntRange(0, 120).Draw(t, "rxago"))*time.Second), now)
			case 12:
				c.HandleActiveCheck(now, now.Add(-time.Duration(rapid.IntRange(0, 120).Draw(t, "rxago2"))*time.Second), now)
			case 13:
				if at, ok := c.PollTimeout(); ok && !now.Before(at) {
					c.HandleTimeout(now)
					if next, ok := c.PollTimeout(); ok && !next.After(now) {
						t.Fatalf("timeout %v still due after HandleTimeout(%v)", next, now)
					}
				}
			}
			check()
		}
	})
}
