package node

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"pgregory.net/rapid"
)

func hostCand(i int) string {
	return fmt.Sprintf("candidate:%d 1 udp 2130706431 192.0.2.1 %d typ host", i, 5000+i)
}

// TestCandidateQueueBounds: candidates for unknown connections are queued up
// to the bounds, deduplicated, removable, and expire lazily after 60 s on the
// node's clock.
func TestCandidateQueueBounds(t *testing.T) {
	tn := newTestNode(t, "100.64.0.1", nil)
	n := tn.n
	var mu sync.Mutex
	now := time.Unix(1_000_000, 0)
	n.mu.Lock()
	n.clock = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	n.mu.Unlock()
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	queuedLen := func(id string) int { n.mu.Lock(); defer n.mu.Unlock(); return len(n.queued[id]) }
	queuedIDs := func() int { n.mu.Lock(); defer n.mu.Unlock(); return len(n.queued) }

	for i := 0; i < maxQueuedPerConn; i++ {
		if err := n.AddRemoteCandidate("early", hostCand(i)); err != nil {
			t.Fatalf("candidate %d: %v", i, err)
		}
	}
	if err := n.AddRemoteCandidate("early", hostCand(0)); err != nil {
		t.Fatalf("duplicate of a queued candidate: %v", err)
	}
	if err := n.AddRemoteCandidate("early", hostCand(maxQueuedPerConn)); !errors.Is(err, ErrCandidateQueueFull) {
		t.Fatalf("candidate beyond the per-connection bound: %v, want ErrCandidateQueueFull", err)
	}
	if got := queuedLen("early"); got != maxQueuedPerConn {
		t.Fatalf("%d queued, want %d", got, maxQueuedPerConn)
	}
	if err := n.AddRemoteCandidate("early", "garbage"); err == nil || errors.Is(err, ErrCandidateQueueFull) {
		t.Fatalf("unparsable candidate: %v, want a parse error", err)
	}

	// Removal from the queue; a candidate that was never queued is unknown.
	if err := n.RemoveRemoteCandidate("early", hostCand(3)); err != nil {
		t.Fatalf("remove queued: %v", err)
	}
	if err := n.RemoveRemoteCandidate("early", hostCand(3)); !errors.Is(err, ErrUnknownConnection) {
		t.Fatalf("remove twice: %v, want ErrUnknownConnection", err)
	}

	advance(30 * time.Second)
	for i := 1; i < maxQueuedConns; i++ {
		if err := n.AddRemoteCandidate(fmt.Sprintf("id%02d", i), hostCand(i)); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	if err := n.AddRemoteCandidate("one-too-many", hostCand(1)); !errors.Is(err, ErrCandidateQueueFull) {
		t.Fatalf("connection beyond the bound: %v, want ErrCandidateQueueFull", err)
	}
	// 31 s later the first connection's candidates (queued 61 s ago) are gone,
	// which makes room; the others (31 s old) stay.
	advance(31 * time.Second)
	if err := n.AddRemoteCandidate("one-too-many", hostCand(1)); err != nil {
		t.Fatalf("after expiry: %v", err)
	}
	if got := queuedLen("early"); got != 0 {
		t.Fatalf("%d expired candidates still queued", got)
	}
	if got := queuedIDs(); got != maxQueuedConns {
		t.Fatalf("%d connections queued, want %d", got, maxQueuedConns)
	}
	advance(60 * time.Second)
	if err := n.RemoveRemoteCandidate("id01", hostCand(1)); !errors.Is(err, ErrUnknownConnection) {
		t.Fatalf("remove expired: %v, want ErrUnknownConnection", err)
	}
	if got := queuedIDs(); got != 0 {
		t.Fatalf("%d connections still queued after 60 s", got)
	}
}

// TestCandidatesBeforeConnection: the controlled side's candidates reach the
// controlling side before it has the connection (as with the portal, which
// forwards a gateway's candidates at once); they are queued and used when
// the connection is created. Relay-only, so the path needs the queued relay
// candidate: without it our relay would have no permission for the peer.
func TestCandidatesBeforeConnection(t *testing.T) {
	relay := startRelay(t)
	relayOnly := func(c *Config) { c.TestOnlyCandidateTypes = []ice.CandidateType{ice.CandidateTypeRelay} }
	a := newTestNode(t, "100.64.0.1", relayOnly)
	b := newTestNode(t, "100.64.0.2", relayOnly)
	giveRelays(t, a, b, relay)

	b.mu.Lock()
	b.peer = a
	b.mu.Unlock()
	if err := b.n.UpsertConnection(ConnectionParams{ID: "c1", RemoteKey: a.n.PublicKey(), PresharedKey: psk, Local: credsB, Remote: credsA, Role: RoleControlled}); err != nil {
		t.Fatal(err)
	}
	if err := b.n.SetAllowedIPs("c1", []netip.Prefix{prefix32(a.ip)}); err != nil {
		t.Fatal(err)
	}
	// b's pump forwards a candidate before it records the event.
	if _, ok := b.waitEvent(5*time.Second, func(e Event) bool {
		return e.Kind == EventCandidateAdded && strings.Contains(e.Candidate, "typ relay")
	}); !ok {
		t.Fatal("b signalled no relay candidate")
	}
	a.n.mu.Lock()
	var queued []string
	for _, q := range a.n.queued["c1"] {
		queued = append(queued, q.sdp)
	}
	a.n.mu.Unlock()
	if !strings.Contains(strings.Join(queued, "\n"), "typ relay") {
		t.Fatalf("b's relay candidate was not queued at a: %q", queued)
	}
	t.Logf("queued before the connection existed: %q", queued)

	a.mu.Lock()
	a.peer = b
	a.mu.Unlock()
	if err := a.n.UpsertConnection(ConnectionParams{ID: "c1", RemoteKey: b.n.PublicKey(), PresharedKey: psk, Local: credsA, Remote: credsB, Role: RoleControlling}); err != nil {
		t.Fatal(err)
	}
	if err := a.n.SetAllowedIPs("c1", []netip.Prefix{prefix32(b.ip)}); err != nil {
		t.Fatal(err)
	}
	a.n.mu.Lock()
	left, applied := len(a.n.queued["c1"]), len(a.n.conns["c1"].sm.RemoteCandidates())
	a.n.mu.Unlock()
	if left != 0 || applied == 0 {
		t.Fatalf("queue not applied on upsert: %d left, %d remote candidates", left, applied)
	}
	rtt := roundTrip(t, a, b, 5*time.Second)
	roundTrip(t, b, a, 2*time.Second)
	s := statsOf(t, a.n, "c1")
	t.Logf("first round trip %v: %s", rtt, describe(s))
	if s.Path != PathRelay {
		t.Fatalf("want a relayed path: %s", describe(s))
	}
}

// TestCandidateQueueModel checks the queue against a simple model under
// random adds, removals, takes (UpsertConnection) and clock advances: the
// bounds hold, ErrCandidateQueueFull comes exactly when the model is full,
// and a take returns exactly the live candidates in arrival order.
func TestCandidateQueueModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		now := time.Unix(1_000_000, 0)
		n := &Node{
			log: slog.New(slog.DiscardHandler), conns: map[string]*connection{},
			queued: map[string][]queuedCandidate{}, clock: func() time.Time { return now },
		}
		type entry struct {
			sdp string
			at  time.Time
		}
		model := map[string][]entry{}
		expire := func() {
			for id, q := range model {
				var keep []entry
				for _, e := range q {
					if now.Sub(e.at) < queuedCandidateTTL {
						keep = append(keep, e)
					}
				}
				if len(keep) == 0 {
					delete(model, id)
				} else {
					model[id] = keep
				}
			}
		}
		// Few ids and candidates, so that bounds and duplicates are hit; the
		// per-id bound needs up to 33 distinct candidates.
		genID := rapid.SampledFrom([]string{"a", "b", "c"})
		t.Repeat(map[string]func(*rapid.T){
			"add": func(t *rapid.T) {
				id, k := genID.Draw(t, "id"), rapid.IntRange(0, maxQueuedPerConn+2).Draw(t, "k")
				sdp := trimCandidate(hostCand(k))
				err := n.AddRemoteCandidate(id, hostCand(k))
				expire()
				dup := false
				for _, e := range model[id] {
					dup = dup || e.sdp == sdp
				}
				full := !dup && len(model[id]) >= maxQueuedPerConn
				if full != errors.Is(err, ErrCandidateQueueFull) || (!full && err != nil) {
					t.Fatalf("add %s/%d: err %v, model full=%v", id, k, err, full)
				}
				if !full && !dup {
					model[id] = append(model[id], entry{sdp, now})
				}
			},
			"remove": func(t *rapid.T) {
				id, k := genID.Draw(t, "id"), rapid.IntRange(0, maxQueuedPerConn+2).Draw(t, "k")
				sdp := trimCandidate(hostCand(k))
				err := n.RemoveRemoteCandidate(id, hostCand(k))
				expire()
				idx := -1
				for i, e := range model[id] {
					if e.sdp == sdp {
						idx = i
					}
				}
				if (idx < 0) != errors.Is(err, ErrUnknownConnection) {
					t.Fatalf("remove %s/%d: err %v, queued=%v", id, k, err, idx >= 0)
				}
				if idx >= 0 {
					model[id] = append(model[id][:idx:idx], model[id][idx+1:]...)
					if len(model[id]) == 0 {
						delete(model, id)
					}
				}
			},
			"take": func(t *rapid.T) {
				id := genID.Draw(t, "id")
				n.mu.Lock()
				got := n.takeQueuedLocked(id, now)
				n.mu.Unlock()
				expire()
				var want []string
				for _, e := range model[id] {
					want = append(want, e.sdp)
				}
				delete(model, id)
				if strings.Join(got, "|") != strings.Join(want, "|") {
					t.Fatalf("take %s: got %q, want %q", id, got, want)
				}
			},
			"advance": func(t *rapid.T) {
				now = now.Add(time.Duration(rapid.IntRange(0, 40).Draw(t, "s")) * time.Second)
			},
			"": func(t *rapid.T) {
				if len(n.queued) > maxQueuedConns {
					t.Fatalf("%d connections queued", len(n.queued))
				}
				for id, q := range n.queued {
					if len(q) > maxQueuedPerConn || len(q) == 0 {
						t.Fatalf("%s: %d queued", id, len(q))
					}
				}
			},
		})
	})
}
