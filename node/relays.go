package node

import (
	"net/netip"
	"time"

	"github.com/snowgate/snowgate/node/idle"
)

// UpdateRelays removes relays by id and adds new ones (the portal's relay
// objects, merged per id). Allocations are made in the background; each
// ready allocation is reported as EventRelayReady. Removing a relay
// invalidates its candidates (events) and moves its connections to another
// relay; losing the last one is reported as EventNoRelays.
func (n *Node) UpdateRelays(remove []string, add []Relay) {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return
	}
	var drop []*allocation
	for _, id := range remove {
		drop = append(drop, n.dropRelayLocked(id, "removed")...)
	}
	for _, r := range add {
		if old := n.relays[r.ID]; old != nil {
			if old.cfg == r {
				continue
			}
			drop = append(drop, n.dropRelayLocked(r.ID, "replaced")...)
		}
		e := &relayEntry{cfg: r}
		for _, server := range []struct {
			addr netip.AddrPort
			s    *socket
		}{{r.Addr4, n.io.Load().v4}, {r.Addr6, n.io.Load().v6}} {
			if !server.addr.IsValid() || server.s == nil {
				continue
			}
			addr := unmapAddrPort(server.addr)
			a, err := newAllocation(n, r, addr, server.s)
			if err != nil {
				n.log.Warn("relay client failed", "relay", r.ID, "error", err)
				continue
			}
			a.firstAttempt.Store(true)
			e.allocs = append(e.allocs, a)
		}
		if len(e.allocs) == 0 {
			n.log.Warn("relay has no address usable by this node", "relay", r.ID)
			continue
		}
		n.relays[r.ID] = e
		for _, a := range e.allocs {
			n.startAllocateLocked(a)
		}
		// Relay keepalives ride the idle batch's keepalive ticks: no wake-up of their own.
		k := n.cfg.KeepaliveInterval
		now := time.Now()
		_ = n.sched.Every(idle.JobID{Kind: idle.KindRelayKeepalive, Key: r.ID}, n.sched.NextTick(now, k), k)
	}
	n.rebuildAllocIndex()
	n.checkNoRelaysLocked()
	n.mu.Unlock()
	for _, a := range drop {
		a.close()
	}
	n.wakeLoop()
}

func (n *Node) startAllocateLocked(a *allocation) {
	if !a.busy.CompareAndSwap(false, true) {
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer a.busy.Store(false)
		err := a.allocate(n.ctx)
		a.firstAttempt.Store(false)
		n.onAllocated(a, err)
	}()
}

func (n *Node) onAllocated(a *allocation, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	r := n.relays[a.relayID]
	owned := false
	if r != nil {
		for _, x := range r.allocs {
			owned = owned || x == a
		}
	}
	if !owned || n.closed {
		if err == nil {
			n.wg.Add(1) // we run on a goroutine the node waits for
			go func() {
				defer n.wg.Done()
				a.close()
			}()
		}
		return
	}
	if err != nil {
		n.log.Warn("relay allocation failed: retrying with the next keepalive", "relay", a.relayID, "server", a.server, "error", err)
		n.checkNoRelaysLocked()
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		a.readLoop()
	}()
	n.log.Info("relay allocation ready", "relay", a.relayID, "server", a.server, "relayed", a.relayedAddr,
		"rtt", time.Duration(a.rtt.Load()))
	n.emit(Event{Kind: EventRelayReady, RelayID: a.relayID, RelayedAddr: a.relayedAddr})
	// Connections still looking for a path get the new candidates: the relay's, and the server-reflexive
	// address its keepalive just learnt (node-wide, so a connection created before any relay answered still
	// gets a direct path through an endpoint-independent NAT).
	set := n.io.Load()
	for _, c := range n.conns {
		if c.agent == nil {
			continue
		}
		n.addSrflxCandidatesLocked(c, set)
		if c.relayID == "" || c.relayID == a.relayID || n.relays[c.relayID] == nil {
			if c.relayID == "" {
				c.relayID = a.relayID
			}
			if c.relayID == a.relayID {
				n.addRelayAllocCandidateLocked(c, a)
			}
		}
	}
}

// addRelayAllocCandidateLocked adds one allocation's candidate to c's agent.
func (n *Node) addRelayAllocCandidateLocked(c *connection, a *allocation) {
	if c.agent == nil || !n.relayAllowed() || !a.ready.Load() {
		return
	}
	cand, err := a.candidate()
	if err != nil {
		return
	}
	v, err := a.newView(c.local.Ufrag)
	if err != nil {
		return
	}
	if err := c.agent.AddVirtualCandidate(cand, v); err != nil {
		_ = v.Close()
	}
}

// pickRelayLocked samples the relay for a new connection: the one with the
// lowest RTT among relays with a ready allocation.
func (n *Node) pickRelayLocked() string {
	best, bestRTT := "", time.Duration(0)
	for id, r := range n.relays {
		for _, a := range r.allocs {
			if !a.ready.Load() {
				continue
			}
			rtt := time.Duration(a.rtt.Load())
			if best == "" || rtt < bestRTT || (rtt == bestRTT && id < best) {
				best, bestRTT = id, rtt
			}
		}
	}
	return best
}

// relayPendingLocked reports whether some allocation is still on its first attempt.
func (n *Node) relayPendingLocked() bool {
	for _, r := range n.relays {
		for _, a := range r.allocs {
			if a.firstAttempt.Load() {
				return true
			}
		}
	}
	return false
}

func (n *Node) checkNoRelaysLocked() {
	if n.pickRelayLocked() == "" && !n.relayPendingLocked() {
		if !n.noRelays {
			n.noRelays = true
			n.emit(Event{Kind: EventNoRelays})
			n.log.Warn("node has no relays")
		}
		return
	}
	n.noRelays = false
}

// dropRelayLocked forgets a relay: its candidates are invalidated and its
// connections move to another relay (ICE re-runs if their path used it).
// It returns the allocations the caller closes after unlocking.
func (n *Node) dropRelayLocked(id, why string) []*allocation {
	r := n.relays[id]
	if r == nil {
		return nil
	}
	delete(n.relays, id)
	n.cancelRelayJobsLocked(id)
	n.rebuildAllocIndex()
	n.log.Info("relay dropped", "relay", id, "reason", why)
	for _, c := range n.conns {
		for sdp, rid := range c.relayCands {
			if rid == id {
				delete(c.relayCands, sdp)
				delete(c.localCands, sdp)
				n.emit(Event{Kind: EventCandidateInvalidated, ConnectionID: c.id, Candidate: sdp, RelayID: id})
			}
		}
		if c.relayID != id {
			continue
		}
		c.relayID = n.pickRelayLocked()
		if c.agent != nil {
			n.addRelayCandidatesLocked(c)
			continue
		}
		if ep := c.currentEndpoint(); ep != nil && ep.alloc != nil && ep.alloc.relayID == id {
			n.log.Info("path relay dropped: re-running ICE", "connection", c.id, "relay", id)
			if err := n.startAgentLocked(c, runRelayMoved); err != nil {
				n.log.Warn("re-run ICE failed", "connection", c.id, "error", err)
			}
		}
	}
	n.checkNoRelaysLocked()
	return r.allocs
}

func (c *connection) currentEndpoint() *endpoint {
	c.pendMu.Lock()
	defer c.pendMu.Unlock()
	return c.nominated
}

func (n *Node) cancelRelayJobsLocked(id string) {
	n.sched.Cancel(idle.JobID{Kind: idle.KindRelayKeepalive, Key: id})
}

// relayKeepaliveLocked sends the STUN keepalive to a relay (one goroutine per
// allocation for the transaction) and retries its failed allocations. pion's
// turn client refreshes the allocation (lifetime/2), permissions (2 min) and
// channel bindings itself.
func (n *Node) relayKeepaliveLocked(id string) {
	if r := n.relays[id]; r != nil {
		for _, a := range r.allocs {
			if !a.ready.Load() {
				n.startAllocateLocked(a)
				continue
			}
			if !a.busy.CompareAndSwap(false, true) {
				continue
			}
			n.wg.Add(1)
			go func() {
				defer n.wg.Done()
				defer a.busy.Store(false)
				if a.probe() || a.failures.Load() < relayFailuresBeforeDrop {
					return
				}
				n.mu.Lock()
				var drop []*allocation
				if cur := n.relays[a.relayID]; cur != nil && containsAlloc(cur.allocs, a) {
					drop = n.dropRelayLocked(a.relayID, "unresponsive")
				}
				n.mu.Unlock()
				for _, d := range drop {
					d.close()
				}
			}()
		}
	}
}

func containsAlloc(as []*allocation, a *allocation) bool {
	for _, x := range as {
		if x == a {
			return true
		}
	}
	return false
}

func unmapAddrPort(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}
