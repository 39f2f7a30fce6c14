package node

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/pion/ice/v4"

	"github.com/snowgate/snowgate/node/internal/connsm"
)

// muxSettle is how long after an agent closed a new agent with the same
// ufrag waits, so that the shared mux's own clean-up of the old one (on a
// goroutine of its own) has run.
const muxSettle = 20 * time.Millisecond

// ufragGate keeps a new agent from registering a local ufrag with the
// shared mux while an agent with the same ufrag is still closing (closing
// one removes its ufrag from the mux): an ICE re-run, or a connection
// removed and created again with the same credentials. It is sans-IO;
// n.mu guards it.
type ufragGate struct {
	closing map[string]int       // agents still closing, per ufrag
	settle  map[string]time.Time // the last one closed; free from then on
}

func newUfragGate() ufragGate {
	return ufragGate{closing: make(map[string]int), settle: make(map[string]time.Time)}
}

// busy reports whether an agent may not register ufrag at now.
func (g *ufragGate) busy(ufrag string, now time.Time) bool {
	if g.closing[ufrag] > 0 {
		return true
	}
	t, ok := g.settle[ufrag]
	return ok && now.Before(t)
}

func (g *ufragGate) closeStarted(ufrag string) { g.closing[ufrag]++ }

func (g *ufragGate) closeDone(ufrag string, now time.Time) {
	if g.closing[ufrag]--; g.closing[ufrag] <= 0 {
		delete(g.closing, ufrag)
		g.settle[ufrag] = now.Add(muxSettle)
	}
}

// pollTimeout returns the earliest end of a settle period.
func (g *ufragGate) pollTimeout() (time.Time, bool) {
	var next time.Time
	ok := false
	for _, t := range g.settle {
		if !ok || t.Before(next) {
			next, ok = t, true
		}
	}
	return next, ok
}

// handleTimeout forgets the settle periods over at now.
func (g *ufragGate) handleTimeout(now time.Time) {
	for u, t := range g.settle {
		if !now.Before(t) {
			delete(g.settle, u)
		}
	}
}

// startAgentLocked creates agent gen for c with what the core knows now
// (its relay, the node's srflx addresses, the remote candidates). If the
// ufrag is still taken by a closing agent, the start waits (c.deferred) and
// startDeferredLocked does it later. A failed start is an ICE failure for
// the core. n.mu is held.
func (n *Node) startAgentLocked(c *connection, gen uint64, now time.Time) error {
	if c.agent != nil { // the core closes the old agent first; be safe
		n.closeAgentLocked(c, c.agentGen)
	}
	if n.ufrags.busy(c.params.Local.Ufrag, now) {
		c.deferred = gen
		return nil
	}
	c.deferred = 0
	set := n.io.Load()
	agent, err := n.newAgent(agentConfig{
		local: c.params.Local,
		ipv4:  set.v4 != nil, ipv6: set.v6 != nil,
		gatherHost: n.candidateTypeAllowed(candHost),
		mux:        set.mux,
	}, n.agentCallbacks(c, gen))
	if err != nil {
		c.sm.HandleICEFailed(gen, now)
		return fmt.Errorf("connection %s: %w", c.id, err)
	}
	c.agent, c.agentGen = agent, gen
	c.relayGiven = make(map[*allocation]bool)
	n.liveAgents.Add(1)
	n.given.agents.Add(1)
	for _, a := range c.sm.Srflx() {
		n.addSrflxLocked(c, a)
	}
	if id := c.sm.RelayID(); id != "" {
		n.addRelayCandidatesLocked(c, id)
	}
	for _, r := range c.sm.RemoteCandidates() {
		if err := agent.AddRemoteCandidate(r); err != nil {
			n.log.Debug("add remote candidate failed", "connection", c.id, "error", err)
		}
	}
	if err := agent.Start(c.params.Role == RoleControlling, c.params.Remote); err != nil {
		n.closeAgentLocked(c, gen)
		c.sm.HandleICEFailed(gen, now)
		return fmt.Errorf("connection %s: %w", c.id, err)
	}
	return nil
}

// startDeferredLocked starts the agents that waited for their ufrag, if the
// core still wants them. n.mu is held.
func (n *Node) startDeferredLocked(now time.Time) {
	for _, c := range n.sortedConnsLocked() {
		if c.deferred == 0 || n.ufrags.busy(c.params.Local.Ufrag, now) {
			continue
		}
		gen := c.deferred
		c.deferred = 0
		if g, running := c.sm.Agent(); g == gen && running {
			if err := n.startAgentLocked(c, gen, now); err != nil {
				n.log.Warn("start ICE failed", "connection", c.id, "error", err)
			}
			_ = n.driveLocked(c, now)
		}
	}
}

// closeAgentLocked closes agent gen of c on a goroutine owned by the node;
// the ufrag is free again once it is closed and the mux settled. n.mu is
// held.
func (n *Node) closeAgentLocked(c *connection, gen uint64) {
	if c.deferred == gen {
		c.deferred = 0
	}
	if c.agent == nil || c.agentGen != gen {
		return
	}
	a, ufrag := c.agent, c.params.Local.Ufrag
	c.agent = nil
	n.ufrags.closeStarted(ufrag)
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		a.Close()
		n.liveAgents.Add(-1)
		n.post(func(now time.Time) { n.ufrags.closeDone(ufrag, now) })
	}()
}

// agentCallbacks posts agent gen's callbacks to the loop, which hands them
// to c's core.
func (n *Node) agentCallbacks(c *connection, gen uint64) agentCallbacks {
	live := func() bool { return n.conns[c.id] == c && c.sm.HasAgent(gen) }
	return agentCallbacks{
		candidate: func(cand connsm.Candidate) {
			n.post(func(now time.Time) {
				if !live() {
					return
				}
				relayID := ""
				if cand.Type == connsm.CandidateRelay {
					if a := n.allocByRelayedLocked(cand.Addr); a != nil {
						relayID = a.relayID
					}
				}
				c.sm.HandleLocalCandidate(gen, cand, relayID, now)
				_ = n.driveLocked(c, now)
			})
		},
		selected: func(l, r connsm.Candidate) {
			n.post(func(now time.Time) {
				if !live() {
					return
				}
				pair := connsm.Pair{Local: l, Remote: r}
				if l.Type == connsm.CandidateRelay {
					if a := n.allocByRelayedLocked(l.Addr); a != nil {
						pair.RelayID = a.relayID
					} else {
						pair.RelayGone = true
					}
				}
				var rtt time.Duration
				if c.agent != nil && c.agentGen == gen {
					rtt = c.agent.SelectedRTT()
				}
				c.sm.HandleNominated(gen, pair, rtt, now)
				_ = n.driveLocked(c, now)
			})
		},
		failed: func() {
			n.post(func(now time.Time) {
				if !live() {
					return
				}
				c.sm.HandleICEFailed(gen, now)
				_ = n.driveLocked(c, now)
			})
		},
	}
}

// addSrflxLocked gives c's agent the node's server-reflexive address addr
// (its base is the socket's host address of that family). n.mu is held.
func (n *Node) addSrflxLocked(c *connection, addr netip.AddrPort) {
	set := n.io.Load()
	so := set.sockFor(addr)
	if so == nil {
		return
	}
	base := netip.AddrPortFrom(netip.IPv4Unspecified(), so.port)
	if so.family == 6 {
		base = netip.AddrPortFrom(netip.IPv6Unspecified(), so.port)
	}
	for _, h := range *n.hosts.Load() {
		if h.Addr().Is4() == (so.family == 4) {
			base = h
			break
		}
	}
	if err := c.agent.AddSrflxCandidate(addr, base); err != nil {
		n.log.Debug("add srflx candidate failed", "connection", c.id, "error", err)
		return
	}
	n.given.srflx.Add(1)
}

// addRelayCandidatesLocked gives c's agent the candidates of relay id's
// ready allocations it does not have yet. n.mu is held.
func (n *Node) addRelayCandidatesLocked(c *connection, id string) {
	if !n.candidateTypeAllowed(candRelay) {
		return
	}
	r := n.relays[id]
	if r == nil {
		return
	}
	for _, a := range r.allocs {
		if !a.ready.Load() || c.relayGiven[a] {
			continue
		}
		v, err := a.newView(c.params.Local.Ufrag)
		if err != nil {
			continue
		}
		if err := c.agent.AddRelayCandidate(a.relayedAddr, a.candidateBase(), v); err != nil {
			_ = v.Close()
			n.log.Debug("add relay candidate failed", "connection", c.id, "error", err)
			continue
		}
		c.relayGiven[a] = true
		n.given.relay.Add(1)
	}
}

// Candidate types Config.TestOnlyCandidateTypes may restrict.
const (
	candHost  = ice.CandidateTypeHost
	candSrflx = ice.CandidateTypeServerReflexive
	candRelay = ice.CandidateTypeRelay
)

// candidateTypeAllowed reports whether local candidates of type t are used.
func (n *Node) candidateTypeAllowed(t ice.CandidateType) bool {
	return len(n.cfg.TestOnlyCandidateTypes) == 0 || slices.Contains(n.cfg.TestOnlyCandidateTypes, t)
}
