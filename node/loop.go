package node

import (
	"time"

	"github.com/pion/ice/v4"
	"github.com/snowgate/snowgate/node/idle"
	"golang.zx2c4.com/wireguard/device"
)

// loop is the node's single timer goroutine: it sleeps until the idle
// scheduler says something is due, and otherwise only wakes for packets that
// change a connection's state (idle → active, WireGuard reply after nomination)
// and for inputs that move the next wake-up earlier.
func (n *Node) loop() {
	defer n.wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	// strayTimer spaces stray resolutions by strayInterval (roam.go).
	strayTimer := time.NewTimer(time.Hour)
	strayTimer.Stop()
	var strayC <-chan time.Time
	var lastStray time.Time
	resolve := func() {
		lastStray = time.Now()
		n.strayFlag.Store(false) // reports from now on wake the loop again
		n.resolveStrays()
	}
	for {
		n.mu.Lock()
		next, ok := n.sched.NextWake()
		n.mu.Unlock()
		var tc <-chan time.Time
		if ok {
			timer.Reset(max(time.Until(next), 0))
			tc = timer.C
		}
		select {
		case <-n.ctx.Done():
			timer.Stop()
			strayTimer.Stop()
			return
		case <-tc:
			n.wakeups.Add(1)
			n.onTimer(time.Now())
		case c := <-n.notify:
			c.poked.Store(false)
			n.onPoke(c)
		case <-n.kick:
			n.pokeAll()
		case <-n.strays:
			// strayFlag stays set until the resolution: no reports meanwhile.
			if wait := strayInterval - time.Since(lastStray); wait > 0 {
				strayTimer.Reset(wait)
				strayC = strayTimer.C
			} else {
				resolve()
			}
		case <-strayC:
			strayC = nil
			resolve()
		}
		timer.Stop()
	}
}

// wakeLoop makes the loop re-read the scheduler's next wake-up.
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
	conns := make([]*connection, 0, len(n.conns))
	for _, c := range n.conns {
		conns = append(conns, c)
	}
	n.mu.Unlock()
	for _, c := range conns {
		n.onPoke(c)
	}
}

// onPoke handles a connection the data path flagged.
func (n *Node) onPoke(c *connection) {
	if connState(c.state.Load()) == stateNominated && c.gotReply.Load() {
		n.mu.Lock()
		gen, started := c.agentGen, c.runStarted
		n.mu.Unlock()
		// A reply only counts once wireguard-go authenticated it (a response
		// with the wrong PSK is still a type-2 message). It processes packets
		// asynchronously, so look again shortly if it has not yet.
		if n.lastHandshakes()[c.remoteKey].After(started) {
			n.establish(c, gen)
		} else if tries := c.verifyTries.Add(1); tries <= 8 {
			time.AfterFunc(time.Duration(tries)*10*time.Millisecond, func() {
				if n.ctx.Err() == nil {
					n.poke(c)
				}
			})
		} else {
			c.gotReply.Store(false)
			c.verifyTries.Store(0)
		}
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
	var keepalive []*device.Peer
	var agents []*ice.Agent
	n.mu.Lock()
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
			if connState(c.state.Load()) == stateEstablished {
				keepalive = append(keepalive, c.peer)
				if c.agent != nil { // an ICE re-run must not keep an idle connection awake
					agents = append(agents, c.agent)
					c.agent = nil
					c.agentGen++
				}
			}
		case idle.KindNATKeepalive:
			if c := n.conns[id]; c != nil {
				if connState(c.state.Load()) == stateEstablished {
					keepalive = append(keepalive, c.peer)
				}
				n.checkPathLocked(c, now)
			}
		case idle.KindActiveCheck:
			if c := n.conns[id]; c != nil {
				n.checkPathLocked(c, now)
			}
		case idle.KindRelayKeepalive:
			n.relayKeepaliveLocked(id)
		}
	}
	for _, a := range agents {
		n.closeAgentAsync(a)
	}
	n.mu.Unlock()
	for _, p := range keepalive {
		p.SendKeepalive()
	}
}

// checkPathLocked re-runs ICE for an established connection whose traffic
// stopped coming back (we kept sending, nothing was received).
func (n *Node) checkPathLocked(c *connection, now time.Time) {
	if connState(c.state.Load()) == stateNominated && !c.nominatedAt.IsZero() &&
		now.Sub(c.nominatedAt) > n.cfg.ICEFailedTimeout {
		n.handshakeFailedLocked(c)
		return
	}
	if c.agent != nil || connState(c.state.Load()) != stateEstablished {
		return
	}
	// A path failed when we kept sending but nothing came back for 1.5
	// keepalive intervals: idle peers send each other a NAT keepalive every
	// interval, and wireguard-go answers data within 10 s (passive keepalive).
	limit := int64(max(n.cfg.KeepaliveInterval*3/2, 12*time.Second))
	if n.cfg.KeepaliveInterval < 8*time.Second { // shortened timings (tests)
		limit = int64(n.cfg.KeepaliveInterval * 3 / 2)
	}
	tx, rx := c.lastTx.Load(), c.lastAnyRx.Load()
	if tx-rx > limit && now.UnixNano()-rx > limit {
		n.log.Info("path failed: nothing received, re-running ICE", "connection", c.id)
		if err := n.startAgentLocked(c, runPathFailed); err != nil {
			n.log.Warn("re-run ICE failed", "connection", c.id, "error", err)
		}
	}
}

// handshakeFailedLocked gives up on a connection whose nominated path never
// carried a WireGuard reply.
func (n *Node) handshakeFailedLocked(c *connection) {
	c.state.Store(int32(stateFailed))
	if c.agent != nil {
		n.closeAgentAsync(c.agent)
		c.agent = nil
	}
	c.agentGen++
	n.emit(Event{Kind: EventConnectionFailed, ConnectionID: c.id, Err: ErrHandshakeTimeout})
	n.log.Warn("connection failed: no WireGuard handshake on the nominated path", "connection", c.id)
}
