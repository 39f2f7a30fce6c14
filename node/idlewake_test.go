package node

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/snowgate/snowgate/node/idle"
	"github.com/snowgate/snowgate/node/internal/connsm"
	"pgregory.net/rapid"
)

// idleCore is a node reduced to its idle bookkeeping: connections, the
// scheduler and the data path's accounting (noteRx), with no sockets, no
// WireGuard device and no loop goroutine. The test plays the loop (onTimer,
// drain), so every interleaving is chosen, not left to the Go scheduler.
type idleCore struct {
	n *Node
	c *connection
	// duringPoll, if set, runs once inside the next Poll, right after the
	// scheduler read the connection's activity times (Config.LastActivity).
	duringPoll func()
}

const coreIdleAfter, coreKeepalive = 20 * time.Second, 25 * time.Second

func newIdleCore(t0 time.Time) *idleCore {
	n := &Node{
		cfg: Config{IdleAfter: coreIdleAfter, KeepaliveInterval: coreKeepalive},
		log: slog.New(slog.DiscardHandler), ctx: context.Background(),
		conns:  make(map[string]*connection),
		notify: make(chan *connection, 256),
		kick:   make(chan struct{}, 1),
	}
	// A connection whose first ICE run never ends (its StartAgent is not
	// carried out): no keepalives, no path checks.
	c := &connection{id: "c", sm: connsm.New(connsm.Config{ID: "c"}, t0)}
	for {
		if _, ok := c.sm.PollAction(); !ok {
			break
		}
	}
	ic := &idleCore{n: n, c: c}
	n.sched = idle.New(idle.Config{
		IdleAfter: coreIdleAfter, KeepaliveInterval: coreKeepalive,
		LastActivity: func(id string) time.Time {
			last := n.lastActivityLocked(id)
			if f := ic.duringPoll; f != nil {
				ic.duringPoll = nil
				f()
			}
			return last
		},
	})
	n.mu.Lock()
	n.conns[ic.c.id] = ic.c
	n.sched.Add(ic.c.id, t0)
	n.mu.Unlock()
	return ic
}

// packet is a received WireGuard transport message with payload.
func (ic *idleCore) packet(at time.Time) {
	b := make([]byte, wgKeepaliveSize+16)
	b[0] = 4
	ic.n.noteRx(&endpoint{conn: ic.c}, b, at.UnixNano())
}

// idle is what Stats reports as ConnStats.Idle.
func (ic *idleCore) idle() bool {
	ic.n.mu.Lock()
	defer ic.n.mu.Unlock()
	return ic.n.isIdleLocked(ic.c)
}

func (ic *idleCore) schedState() idle.State {
	ic.n.mu.Lock()
	defer ic.n.mu.Unlock()
	st, _ := ic.n.sched.State(ic.c.id)
	return st
}

// drain runs what the loop does for pokes until nothing is pending.
func (ic *idleCore) drain() {
	for {
		select {
		case c := <-ic.n.notify:
			c.poked.Store(false)
			ic.n.onPoke(c)
		case <-ic.n.kick:
			ic.n.pokeAll()
		default:
			return
		}
	}
}

// TestPacketWakesIdleConnectionBeforeLoopRuns: a packet on an idle connection
// makes it active at once, as soon as the data path has processed it, not
// when the node's loop gets to run (under CPU load that can be much later:
// the flake of TestIdleConnectionsCoalesceAndReactivate, whose peer answered
// the ping before its loop had looked at the connection).
func TestPacketWakesIdleConnectionBeforeLoopRuns(t *testing.T) {
	t0 := time.Now()
	ic := newIdleCore(t0)
	now := t0.Add(coreIdleAfter)
	ic.n.onTimer(now)
	if !ic.idle() || ic.schedState() != idle.Idle {
		t.Fatalf("not idle after %v without traffic (stats idle %v, scheduler %v)", coreIdleAfter, ic.idle(), ic.schedState())
	}
	now = now.Add(3 * time.Second)
	ic.packet(now)
	if ic.idle() {
		t.Fatal("connection still idle after a packet, until the loop runs")
	}
	ic.drain()
	if ic.idle() || ic.schedState() != idle.Active {
		t.Fatalf("after the loop: stats idle %v, scheduler %v; want active", ic.idle(), ic.schedState())
	}
	// The scheduler counts IdleAfter from the packet, not from when the loop ran.
	ic.n.onTimer(now.Add(coreIdleAfter - 2*time.Second))
	if ic.idle() {
		t.Fatal("idle again before IdleAfter since the packet")
	}
	ic.n.onTimer(now.Add(coreIdleAfter))
	if !ic.idle() {
		t.Fatal("not idle IdleAfter after the packet")
	}
}

// TestPacketRacingWentIdleWakesConnection: a packet recorded while the
// scheduler decides that the connection goes idle (after Poll read its
// activity time, before onTimer flags it idle) does not see the idle flag on
// the data path; onTimer must see the packet instead, or the connection stays
// idle with traffic on it.
func TestPacketRacingWentIdleWakesConnection(t *testing.T) {
	t0 := time.Now()
	ic := newIdleCore(t0)
	now := t0.Add(coreIdleAfter)
	ic.duringPoll = func() { ic.packet(now) }
	ic.n.onTimer(now)
	if ic.duringPoll != nil {
		t.Fatal("the packet was not injected during Poll")
	}
	if ic.idle() {
		t.Fatal("connection idle although a packet came while it went idle")
	}
	ic.drain()
	if ic.idle() || ic.schedState() != idle.Active {
		t.Fatalf("after the loop: stats idle %v, scheduler %v; want active", ic.idle(), ic.schedState())
	}
}

// TestIdleWakeModel drives the idle bookkeeping with random interleavings of
// timer wake-ups, packets (also inside the scheduler's Poll), loop runs and
// idempotent upserts, checking against a model:
//   - a packet makes the connection active at once (Stats), until a later
//     timer wake-up makes it idle again;
//   - once the loop ran, Stats and the scheduler agree;
//   - once the loop ran, a connection with a packet less than IdleAfter-Slack
//     ago is active in the scheduler too (no lost wake-up).
func TestIdleWakeModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		t0 := time.Unix(1_700_000_000, 0)
		ic := newIdleCore(t0)
		slack := ic.n.sched.Config().Slack
		now := t0
		lastActivity := t0        // packets and upserts
		packetSinceTimer := false // a packet came after the latest timer wake-up began
		steps := rapid.IntRange(1, 80).Draw(t, "steps")
		for range steps {
			switch rapid.IntRange(0, 5).Draw(t, "op") {
			case 0: // time passes
				now = now.Add(time.Duration(rapid.Int64Range(0, int64(2*coreKeepalive)).Draw(t, "advance")))
			case 1: // the timer fires (due or early: a spurious wake-up)
				packetSinceTimer = false
				ic.n.onTimer(now)
			case 2: // the timer fires and a packet arrives while Poll runs
				packetSinceTimer = false
				ic.duringPoll = func() {
					ic.packet(now)
					packetSinceTimer, lastActivity = true, now
				}
				ic.n.onTimer(now)
				ic.duringPoll = nil // not called when the connection was idle already
			case 3: // a packet
				ic.packet(now)
				packetSinceTimer, lastActivity = true, now
			case 4: // the loop runs
				ic.drain()
				st := ic.schedState()
				if ic.idle() != (st == idle.Idle) {
					t.Fatalf("after the loop ran: Stats idle %v, scheduler %v", ic.idle(), st)
				}
				if st == idle.Idle && now.Add(slack).Before(lastActivity.Add(coreIdleAfter)) {
					t.Fatalf("idle at %v with activity at %v (IdleAfter %v)", now.Sub(t0), lastActivity.Sub(t0), coreIdleAfter)
				}
			case 5: // idempotent upsert (as in UpsertConnection)
				ic.n.mu.Lock()
				ic.n.sched.Activity(ic.c.id, now)
				ic.c.idleFlag.Store(false)
				ic.n.mu.Unlock()
				lastActivity = now
			}
			if packetSinceTimer && ic.idle() {
				t.Fatalf("idle in Stats after a packet with no timer wake-up since")
			}
		}
	})
}
