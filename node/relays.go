package node

import (
	"errors"
	"net/netip"
	"slices"
	"time"

	"github.com/pion/stun/v4"

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
	now := time.Now()
	var drop []*allocation
	for _, id := range remove {
		drop = append(drop, n.dropRelayLocked(id, "removed", now)...)
	}
	for _, r := range add {
		if old := n.relays[r.ID]; old != nil {
			if old.cfg == r {
				continue
			}
			drop = append(drop, n.dropRelayLocked(r.ID, "replaced", now)...)
		}
		e := &relayEntry{cfg: r}
		set := n.io.Load()
		for _, server := range []struct {
			addr netip.AddrPort
			s    *socket
		}{{r.Addr4, set.v4}, {r.Addr6, set.v6}} {
			if !server.addr.IsValid() || server.s == nil {
				continue
			}
			a, err := newAllocation(n, r, unmapAddrPort(server.addr), server.s)
			if err != nil {
				n.log.Warn("relay client failed", "relay", r.ID, "error", err)
				continue
			}
			a.firstAttempt = true
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

// startAllocateLocked runs a's Allocate on a goroutine owned by the node;
// the loop learns the result (onAllocatedLocked).
func (n *Node) startAllocateLocked(a *allocation) {
	if !a.busy.CompareAndSwap(false, true) {
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		err := a.allocate(n.ctx)
		n.post(func(now time.Time) {
			a.busy.Store(false)
			n.onAllocatedLocked(a, err, now)
		})
	}()
}

// onAllocatedLocked applies the result of an Allocate. n.mu is held.
func (n *Node) onAllocatedLocked(a *allocation, err error, now time.Time) {
	a.firstAttempt = false
	if n.closed || !n.ownsLocked(a) {
		if err == nil {
			n.goClose(a.close)
		}
		return
	}
	if err != nil {
		if te := (*stun.TurnError)(nil); errors.As(err, &te) && te.ErrorCodeAttr.Code == stun.CodeAllocMismatch {
			// 437: the relay still holds an allocation for this address and port, made by an earlier run
			// with another key (killed without releasing it). Only its owner can delete it, so it stays
			// until it expires; a node on port 0 gets a fresh port on every start and never meets this.
			n.log.Warn("relay allocation failed: the relay still holds an allocation of an earlier run on this port "+
				"(it expires within its lifetime, at most 10 min; use port 0 to avoid this); retrying with the next keepalive",
				"relay", a.relayID, "server", a.server, "error", err)
			n.checkNoRelaysLocked()
			return
		}
		n.log.Warn("relay allocation failed: retrying with the next keepalive", "relay", a.relayID, "server", a.server, "error", err)
		n.checkNoRelaysLocked()
		return
	}
	a.ready.Store(true)
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		a.readLoop()
	}()
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		a.writeLoop()
	}()
	n.log.Info("relay allocation ready", "relay", a.relayID, "server", a.server, "relayed", a.relayedAddr,
		"rtt", time.Duration(a.rtt.Load()))
	n.emit(Event{Kind: EventRelayReady, RelayID: a.relayID, RelayedAddr: a.relayedAddr})
	n.checkNoRelaysLocked()
	// Connections still looking for a path get the new candidates: the relay's (if it is theirs, or they have
	// none), and the server-reflexive address its keepalive just learnt (node-wide, so a connection created
	// before any relay answered still gets a direct path through an endpoint-independent NAT).
	srflx := n.srflxAddrsLocked()
	for _, c := range n.sortedConnsLocked() {
		c.sm.HandleSrflx(srflx, now)
		c.sm.HandleRelayReady(a.relayID, now)
		n.driveLocked(c, now)
	}
}

// ownsLocked reports whether a is still one of the node's allocations.
func (n *Node) ownsLocked(a *allocation) bool {
	r := n.relays[a.relayID]
	return r != nil && slices.Contains(r.allocs, a)
}

// goClose runs f on a goroutine owned by the node (Close waits for it).
func (n *Node) goClose(f func()) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
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
			if a.firstAttempt {
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
func (n *Node) dropRelayLocked(id, why string, now time.Time) []*allocation {
	r := n.relays[id]
	if r == nil {
		return nil
	}
	delete(n.relays, id)
	for _, a := range r.allocs {
		a.gone.Store(true) // from now on the data path holds what it would send through them
	}
	n.cancelRelayJobsLocked(id)
	n.rebuildAllocIndex()
	n.log.Info("relay dropped", "relay", id, "reason", why)
	replacement := n.pickRelayLocked()
	for _, c := range n.sortedConnsLocked() {
		c.sm.HandleRelayDropped(id, replacement, now)
		n.driveLocked(c, now)
	}
	n.checkNoRelaysLocked()
	return r.allocs
}

func (n *Node) cancelRelayJobsLocked(id string) {
	n.sched.Cancel(idle.JobID{Kind: idle.KindRelayKeepalive, Key: id})
}

// relayKeepaliveLocked sends the STUN keepalive to a relay (one goroutine per
// allocation for the transaction) and retries its failed allocations. pion's
// turn client refreshes the allocation (lifetime/2), permissions (2 min) and
// channel bindings itself. A relay missing relayFailuresBeforeDrop
// keepalives in a row is dropped.
func (n *Node) relayKeepaliveLocked(id string) {
	r := n.relays[id]
	if r == nil {
		return
	}
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
			ok := a.probe()
			n.post(func(now time.Time) {
				a.busy.Store(false)
				n.onProbedLocked(a, ok, now)
			})
		}()
	}
}

// onProbedLocked applies the result of a relay keepalive. n.mu is held.
func (n *Node) onProbedLocked(a *allocation, ok bool, now time.Time) {
	if n.closed || !n.ownsLocked(a) {
		return
	}
	if ok {
		a.failures = 0
		srflx := n.srflxAddrsLocked()
		for _, c := range n.sortedConnsLocked() {
			c.sm.HandleSrflx(srflx, now)
			n.driveLocked(c, now)
		}
		return
	}
	a.failures++
	if a.failures < relayFailuresBeforeDrop {
		return
	}
	for _, d := range n.dropRelayLocked(a.relayID, "unresponsive", now) {
		n.goClose(d.close)
	}
}

// srflxAddrsLocked returns the node-wide server-reflexive addresses: each
// socket's mapped address as the relays see it, unless it is one of our host
// addresses (not behind a NAT on that family).
func (n *Node) srflxAddrsLocked() []netip.AddrPort {
	if !n.candidateTypeAllowed(candSrflx) {
		return nil
	}
	hosts := *n.hosts.Load()
	var out []netip.AddrPort
	for _, so := range n.io.Load().all {
		m := so.mapped.Load()
		if m == nil || !m.IsValid() || slices.Contains(hosts, *m) {
			continue
		}
		out = append(out, *m)
	}
	return out
}

// allocByRelayedLocked returns the ready allocation whose relayed address is addr.
func (n *Node) allocByRelayedLocked(addr netip.AddrPort) *allocation {
	for _, r := range n.relays {
		for _, a := range r.allocs {
			if a.ready.Load() && a.relayedAddr == addr {
				return a
			}
		}
	}
	return nil
}

func unmapAddrPort(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}
