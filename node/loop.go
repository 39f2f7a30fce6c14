package node

import (
	"sync"
	"time"

	"github.com/snowgate/snowgate/node/idle"
)

// inputQueue carries work to the loop from goroutines that must not take
// Node.mu or block: the ICE agents' callbacks and the goroutines of TURN
// transactions and agent closes. It is unbounded (each producer posts a
// bounded number of items per event) and never blocks.
type inputQueue struct {
	mu    sync.Mutex
	fns   []func(now time.Time)
	ready chan struct{}
}

func newInputQueue() inputQueue { return inputQueue{ready: make(chan struct{}, 1)} }

// post queues fn for the loop, which runs it under n.mu with the time.
func (n *Node) post(fn func(now time.Time)) {
	n.inputs.mu.Lock()
	n.inputs.fns = append(n.inputs.fns, fn)
	n.inputs.mu.Unlock()
	select {
	case n.inputs.ready <- struct{}{}:
	default:
	}
}

// runInputs runs what was posted.
func (n *Node) runInputs() {
	n.inputs.mu.Lock()
	fns := n.inputs.fns
	n.inputs.fns = nil
	n.inputs.mu.Unlock()
	if len(fns) == 0 {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	now := time.Now()
	for _, fn := range fns {
		fn(now)
	}
	n.startDeferredLocked(now)
}

// loop is the node's single timer goroutine: it sleeps until the idle
// scheduler or a connection's core says something is due, and otherwise only
// wakes for posted inputs (agent callbacks, TURN results) and for packets
// that change a connection's state (idle → active, a WireGuard handshake, a
// roam).
func (n *Node) loop() {
	defer n.wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		n.mu.Lock()
		next, ok := n.nextWakeLocked()
		n.mu.Unlock()
		var tc <-chan time.Time
		if ok {
			timer.Reset(max(time.Until(next), 0))
			tc = timer.C
		}
		select {
		case <-n.ctx.Done():
			timer.Stop()
			return
		case <-tc:
			n.wakeups.Add(1)
			n.onTimer(time.Now())
		case c := <-n.notify:
			c.poked.Store(false)
			n.onPoke(c)
		case <-n.kick:
			n.pokeAll()
		case <-n.inputs.ready:
			n.runInputs()
		}
		timer.Stop()
	}
}

// nextWakeLocked is the earliest of the scheduler's next wake-up, the
// connections' core timeouts and the ufrag gate's. n.mu is held.
func (n *Node) nextWakeLocked() (time.Time, bool) {
	next, ok := n.sched.NextWake()
	earlier := func(t time.Time, has bool) {
		if has && (!ok || t.Before(next)) {
			next, ok = t, true
		}
	}
	for _, c := range n.conns {
		earlier(c.sm.PollTimeout())
	}
	earlier(n.ufrags.pollTimeout())
	return next, ok
}

// wakeLoop makes the loop re-read its next wake-up.
func (n *Node) wakeLoop() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// isIdleLocked reports whether c is idle: the scheduler made it idle and no
// packet came since (the data path clears c.idleFlag before the loop reports
// the packet to the scheduler). n.mu is held.
func (n *Node) isIdleLocked(c *connection) bool {
	st, ok := n.sched.State(c.id)
	return ok && st == idle.Idle && c.idleFlag.Load()
}

// pokeAll runs onPoke for every connection: a poke that found n.notify full
// kicked the loop instead.
func (n *Node) pokeAll() {
	n.mu.Lock()
	conns := n.sortedConnsLocked()
	n.mu.Unlock()
	for _, c := range conns {
		n.onPoke(c)
	}
}

// handshakeDone is called on the data path when c's tracker saw a handshake
// complete: the loop hands it to the core.
func (n *Node) handshakeDone(c *connection) {
	c.hsDone.Store(true)
	n.updateIndices(c)
	n.poke(c)
}

// onPoke handles what the data path flagged on c: a completed handshake, a
// roam, a packet that woke it from idle.
func (n *Node) onPoke(c *connection) {
	hs, roam := c.hsDone.Swap(false), c.roamTo.Swap(nil)
	if hs || roam != nil {
		n.mu.Lock()
		if n.conns[c.id] == c {
			now := time.Now()
			if hs {
				n.feedHandshakeLocked(c, now)
			}
			if roam != nil {
				n.roamLocked(c, roam, now)
			}
			_ = n.driveLocked(c, now)
		}
		n.mu.Unlock()
	}
	if c.wakePending.Swap(false) {
		// A packet woke c from idle (markActive): the scheduler learns it now.
		// Unless an upsert or onTimer did so meanwhile, or c went idle again.
		n.mu.Lock()
		if n.conns[c.id] == c && !c.idleFlag.Load() {
			if st, ok := n.sched.State(c.id); ok && st == idle.Idle {
				now := c.lastActivity()
				if now.IsZero() {
					now = time.Now()
				}
				n.sched.Activity(c.id, now)
			}
		}
		n.mu.Unlock()
	}
}

// onTimer runs everything that is due, all in this one wake-up.
func (n *Node) onTimer(now time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, d := range n.sched.Poll(now) {
		id := d.Job.Key
		switch d.Job.Kind {
		case idle.KindWentIdle:
			c := n.conns[id]
			if c == nil {
				continue
			}
			c.idleFlag.Store(true)
			// Poll read c's activity times before the flag was set: a packet
			// recorded in between did not see the flag (markActive) and would
			// leave c idle. Look again, as Poll did (deadline past now+slack).
			cfg := n.sched.Config()
			if last := c.lastActivity(); last.Add(cfg.IdleAfter).After(now.Add(cfg.Slack)) {
				c.idleFlag.Store(false)
				n.sched.Activity(id, last)
				continue
			}
			c.sm.HandleWentIdle(now)
			_ = n.driveLocked(c, now)
		case idle.KindNATKeepalive:
			if c := n.conns[id]; c != nil {
				c.sm.HandleKeepaliveTick(unixTime(c.lastTx.Load()), unixTime(c.lastAnyRx.Load()), now)
				_ = n.driveLocked(c, now)
			}
		case idle.KindActiveCheck:
			if c := n.conns[id]; c != nil {
				c.sm.HandleActiveCheck(unixTime(c.lastTx.Load()), unixTime(c.lastAnyRx.Load()), now)
				_ = n.driveLocked(c, now)
			}
		case idle.KindRelayKeepalive:
			n.relayKeepaliveLocked(id)
		}
	}
	for _, c := range n.sortedConnsLocked() {
		if t, ok := c.sm.PollTimeout(); ok && !now.Before(t) {
			c.sm.HandleTimeout(now)
			_ = n.driveLocked(c, now)
		}
	}
	n.ufrags.handleTimeout(now)
	n.startDeferredLocked(now)
}

// unixTime converts a data-path timestamp (unix ns, 0: never).
func unixTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}
