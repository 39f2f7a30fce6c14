// Package connsm is the node's per-connection lifecycle as a sans-IO state
// machine: ICE runs and re-runs, nomination → established or failed, path
// checks, the connection's relay, its local and remote candidates and
// roaming. It owns no socket, agent, goroutine or clock: the node (the
// shell) feeds it what happened with Handle…(…, now) and carries out what it
// asks for, read with PollAction and PollEvent; PollTimeout says when
// HandleTimeout must run next.
//
// The shell must drain PollAction and PollEvent after every Handle… call
// (and after New): later inputs assume the actions were carried out in
// order. ICE agents are named by a generation: the callbacks of an agent
// (HandleLocalCandidate, HandleNominated, HandleICEFailed) carry its
// generation and are ignored once the core moved on to another agent or
// stopped listening to it.
//
// A Conn is not safe for concurrent use.
package connsm

import (
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Config configures a connection's core.
type Config struct {
	// ID names the connection in events and logs.
	ID string
	// Controlling is this side's ICE role (the client controls); only the
	// controlling side forces a WireGuard handshake on nomination.
	Controlling bool
	// RelayID is the relay sampled for this connection ("": none ready yet;
	// the first that becomes ready is adopted).
	RelayID string
	// Srflx are the node-wide server-reflexive addresses known now.
	Srflx []netip.AddrPort
	// Remote are remote candidates received before the connection existed.
	Remote []Candidate
	// HandshakeTimeout bounds the wait for WireGuard's handshake on a
	// nominated pair (node.Config.HandshakeTimeout).
	HandshakeTimeout time.Duration
	// PathFailAfter: an established path failed when we kept sending but
	// nothing came back for this long.
	PathFailAfter time.Duration
	// AgentGrace is how long an agent stays up (answering checks, its
	// callbacks ignored) once the connection is established: the peer's
	// agent may still need our responses to nominate the pair.
	AgentGrace time.Duration
	// Logger receives the connection's logs; nil discards them.
	Logger *slog.Logger
}

// agentState is the core's view of its current ICE agent.
type agentState int

const (
	agentNone    agentState = iota
	agentRunning            // its callbacks count
	agentGrace              // established: closes at graceUntil, callbacks ignored
)

// Conn is one connection's lifecycle.
type Conn struct {
	cfg Config
	log *slog.Logger

	state           State
	everEstablished bool
	run             Reason
	runStarted      time.Time
	nominatedAt     time.Time

	gen        uint64
	agent      agentState
	graceUntil time.Time

	relayID    string
	srflx      []netip.AddrPort
	srflxGiven map[netip.AddrPort]bool // given to the current agent

	remote  map[string]Candidate // by SDP
	removed map[netip.AddrPort]bool

	local      []string          // signalled local candidates, in order
	localSet   map[string]bool   //
	relayCands map[string]string // our relay candidate SDP → relay id

	path          Path
	rtt           time.Duration
	rttAt         time.Time // when rtt was measured
	lastHandshake time.Time

	actions []Action
	events  []Event
}

// New creates the core of a new connection at now and starts its first ICE
// run (StartAgent).
func New(cfg Config, now time.Time) *Conn {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Conn{
		cfg: cfg, log: log,
		relayID:    cfg.RelayID,
		srflx:      slices.Clone(cfg.Srflx),
		remote:     make(map[string]Candidate),
		removed:    make(map[netip.AddrPort]bool),
		localSet:   make(map[string]bool),
		relayCands: make(map[string]string),
	}
	for _, r := range cfg.Remote {
		c.remote[r.SDP] = r
	}
	c.startAgent(RunInitial, now)
	return c
}

// PollAction returns the next action for the shell.
func (c *Conn) PollAction() (Action, bool) { return popFront(&c.actions) }

// PollEvent returns the next event for the node's caller.
func (c *Conn) PollEvent() (Event, bool) { return popFront(&c.events) }

func popFront[T any](q *[]T) (T, bool) {
	var zero T
	if len(*q) == 0 {
		return zero, false
	}
	v := (*q)[0]
	(*q)[0] = zero
	*q = (*q)[1:]
	if len(*q) == 0 {
		*q = nil
	}
	return v, true
}

// State returns where the connection is in its life.
func (c *Conn) State() State { return c.state }

// Path returns the path in use (Kind PathNone before the first nomination).
func (c *Conn) Path() Path { return c.path }

// RTT returns the path's round-trip time, the newest of two measures: ICE's
// when the pair was nominated (and re-nominated on every re-run), and
// WireGuard's at every handshake (HandleHandshake: at least every two
// minutes while traffic flows, as WireGuard rekeys).
func (c *Conn) RTT() time.Duration { return c.rtt }

// Srflx returns the node-wide server-reflexive addresses the core knows.
func (c *Conn) Srflx() []netip.AddrPort { return slices.Clone(c.srflx) }

// RelayID returns the relay sampled for the connection ("" none).
func (c *Conn) RelayID() string { return c.relayID }

// LastHandshake returns when WireGuard's latest handshake completed.
func (c *Conn) LastHandshake() time.Time { return c.lastHandshake }

// Agent returns the current agent's generation and whether the core still
// wants it to run (false: none, or closing after its grace).
func (c *Conn) Agent() (gen uint64, running bool) { return c.gen, c.agent == agentRunning }

// HasAgent reports whether agent gen is still the core's (running or in its
// grace period).
func (c *Conn) HasAgent(gen uint64) bool { return gen == c.gen && c.agent != agentNone }

// RemoteCandidateType returns the type of the candidate the peer signalled
// for addr, if it signalled one.
func (c *Conn) RemoteCandidateType(addr netip.AddrPort) (CandidateType, bool) {
	for _, sdp := range slices.Sorted(maps.Keys(c.remote)) {
		if r := c.remote[sdp]; r.Addr == addr {
			return r.Type, true
		}
	}
	return 0, false
}

// RemoteCandidates returns the peer's candidates (sorted by SDP).
func (c *Conn) RemoteCandidates() []Candidate {
	out := make([]Candidate, 0, len(c.remote))
	for _, sdp := range slices.Sorted(maps.Keys(c.remote)) {
		out = append(out, c.remote[sdp])
	}
	return out
}

// LocalCandidates returns the local candidates signalled so far, in order.
func (c *Conn) LocalCandidates() []string { return slices.Clone(c.local) }

func (c *Conn) current(gen uint64) bool { return gen == c.gen && c.agent == agentRunning }

func (c *Conn) closeAgent() {
	if c.agent != agentNone {
		c.actions = append(c.actions, CloseAgent{Gen: c.gen})
		c.agent = agentNone
	}
}

// startAgent (re)starts ICE, replacing the current agent.
func (c *Conn) startAgent(reason Reason, now time.Time) {
	c.closeAgent()
	c.gen++
	c.agent = agentRunning
	c.run = reason
	c.runStarted = now
	if reason != RunUpsert {
		c.state = Connecting
	}
	c.srflxGiven = make(map[netip.AddrPort]bool, len(c.srflx))
	for _, a := range c.srflx {
		c.srflxGiven[a] = true
	}
	c.actions = append(c.actions, StartAgent{
		Gen: c.gen, Reason: reason, RelayID: c.relayID,
		Srflx: slices.Clone(c.srflx), Remote: c.RemoteCandidates(),
	})
}

// rerunReason is the reason of a re-run for want, unless the connection was
// never up (then it is still its initial run).
func (c *Conn) rerunReason(want Reason) Reason {
	if !c.everEstablished {
		return RunInitial
	}
	return want
}

// HandleUpsert: the same parameters were upserted again. The local
// candidates are signalled again and, unless an agent runs, ICE re-runs to
// confirm or repair the path (without a new WireGuard handshake). Waking the
// connection from idle is the shell's (the idle scheduler's).
func (c *Conn) HandleUpsert(now time.Time) {
	for _, sdp := range c.local {
		c.events = append(c.events, Event{Kind: EventCandidateAdded, Candidate: sdp})
	}
	if c.agent != agentRunning {
		c.startAgent(c.rerunReason(RunUpsert), now)
	}
}

// HandleRemoteCandidate adds a candidate the peer signalled (duplicates are
// ignored).
func (c *Conn) HandleRemoteCandidate(cand Candidate, _ time.Time) {
	if _, dup := c.remote[cand.SDP]; dup {
		return
	}
	c.remote[cand.SDP] = cand
	delete(c.removed, cand.Addr)
	if c.agent == agentRunning {
		c.actions = append(c.actions, AddRemoteCandidate{Gen: c.gen, Candidate: cand})
	}
}

// HandleRemoteCandidateRemoved drops a candidate the peer invalidated. If
// the path uses it, a new path search starts at once.
func (c *Conn) HandleRemoteCandidateRemoved(cand Candidate, now time.Time) {
	delete(c.remote, cand.SDP)
	c.removed[cand.Addr] = true // a running agent may still nominate it
	if cand.Addr == c.path.Remote && (c.state == Established || c.state == Nominated) {
		c.log.Info("remote candidate of the path invalidated: re-running ICE", "connection", c.cfg.ID)
		c.startAgent(c.rerunReason(RunPathLost), now)
	}
}

// HandleLocalCandidate records a candidate agent gen gathered or was given;
// relayID names our relay for a relay candidate. A candidate not signalled
// before is signalled (EventCandidateAdded).
func (c *Conn) HandleLocalCandidate(gen uint64, cand Candidate, relayID string, _ time.Time) {
	if !c.current(gen) {
		return
	}
	if cand.Type == CandidateRelay && relayID != "" {
		c.relayCands[cand.SDP] = relayID
	}
	if c.localSet[cand.SDP] {
		return
	}
	c.localSet[cand.SDP] = true
	c.local = append(c.local, cand.SDP)
	c.events = append(c.events, Event{Kind: EventCandidateAdded, Candidate: cand.SDP})
}

// HandleNominated: agent gen nominated pair; rtt is ICE's measure of it (0:
// none). The connection's WireGuard traffic moves to it (UsePath). A first
// nomination waits for WireGuard's handshake; on a connection that was up it
// is established at once (same session).
func (c *Conn) HandleNominated(gen uint64, pair Pair, rtt time.Duration, now time.Time) {
	if !c.current(gen) {
		return
	}
	if c.removed[pair.Remote.Addr] || pair.RelayGone {
		// The agent nominated a pair that went away meanwhile (invalidated
		// by the peer, or our relay was dropped): start over without it.
		c.log.Info("nominated pair is gone: re-running ICE", "connection", c.cfg.ID,
			"local", pair.Local.Addr, "remote", pair.Remote.Addr)
		c.startAgent(c.rerunReason(RunPathLost), now)
		return
	}
	c.path = Path{Kind: pair.Kind(), Local: pair.Local.Addr, Remote: pair.Remote.Addr, RelayID: pair.RelayID}
	c.sampleRTT(rtt, now)
	rerun := c.everEstablished
	c.log.Debug("ice pair nominated", "connection", c.cfg.ID, "path", c.path.Kind.String(),
		"local", pair.Local.Addr, "remote", pair.Remote.Addr, "rerun", rerun)
	c.actions = append(c.actions, UsePath{Gen: gen, Pair: pair, Rerun: rerun, ForceHandshake: c.cfg.Controlling && !rerun})
	if rerun {
		c.establish(now)
		return
	}
	c.state = Nominated
	c.nominatedAt = now
	if !c.lastHandshake.Before(c.runStarted) && !c.lastHandshake.IsZero() {
		// WireGuard finished its handshake before ICE nominated here (the
		// peer's initiation came along a pair we had not nominated yet).
		c.establish(now)
	}
}

// HandleHandshake: WireGuard completed a handshake with the peer at at,
// with round trip rtt. A nominated connection is now established.
func (c *Conn) HandleHandshake(at time.Time, rtt time.Duration, now time.Time) {
	if at.After(c.lastHandshake) {
		c.lastHandshake = at
	}
	c.sampleRTT(rtt, at)
	if c.state == Nominated && !at.Before(c.runStarted) {
		c.establish(now)
	}
}

// sampleRTT keeps rtt if it is the newest measure.
func (c *Conn) sampleRTT(rtt time.Duration, at time.Time) {
	if rtt > 0 && !at.Before(c.rttAt) {
		c.rtt, c.rttAt = rtt, at
	}
}

func (c *Conn) establish(now time.Time) {
	announce := !c.everEstablished || c.run != RunUpsert
	c.state = Established
	c.everEstablished = true
	if c.agent == agentRunning {
		// Agents wake the process every 2 s: this one must not outlive
		// its job, but the peer's agent may still need its answers.
		c.agent = agentGrace
		c.graceUntil = now.Add(c.cfg.AgentGrace)
	}
	if announce {
		c.events = append(c.events, Event{Kind: EventEstablished, Path: c.path, HandshakeTime: now.Sub(c.runStarted)})
	}
}

// HandleICEFailed: agent gen found no path. A connection that was up and
// re-ran ICE only to confirm its path (upsert) stays as it is; otherwise it
// failed.
func (c *Conn) HandleICEFailed(gen uint64, _ time.Time) {
	if !c.current(gen) {
		return
	}
	c.closeAgent()
	if c.run == RunUpsert && c.everEstablished {
		return
	}
	c.state = Failed
	c.events = append(c.events, Event{Kind: EventFailed, Err: ErrICEFailed})
	c.log.Warn("connection failed: ICE found no path", "connection", c.cfg.ID)
}

// HandleRelayReady: an allocation of relay relayID became ready. A
// connection without a relay adopts it; a running agent gets the candidates
// of the connection's relay (only that one: one relay per connection).
func (c *Conn) HandleRelayReady(relayID string, _ time.Time) {
	if c.relayID == "" {
		c.relayID = relayID
	}
	if c.relayID == relayID && c.agent == agentRunning {
		c.actions = append(c.actions, AddRelayCandidates{Gen: c.gen, RelayID: relayID})
	}
}

// HandleRelayDropped: relay relayID is gone; replacement is the relay the
// node samples instead ("" none). Our candidates on it are invalidated; a
// connection sampled to it moves to the replacement (a running agent gets
// its candidates), and one whose path goes through it (our allocation there,
// now closed) holds its traffic (SuspendPath) and looks for a new path at
// once.
func (c *Conn) HandleRelayDropped(relayID, replacement string, now time.Time) {
	if c.path.RelayID == relayID && (c.state == Established || c.state == Nominated) {
		c.actions = append(c.actions, SuspendPath{Gen: c.gen})
	}
	for _, sdp := range slices.Sorted(maps.Keys(c.relayCands)) {
		if c.relayCands[sdp] != relayID {
			continue
		}
		delete(c.relayCands, sdp)
		delete(c.localSet, sdp)
		c.local = slices.DeleteFunc(c.local, func(s string) bool { return s == sdp })
		c.events = append(c.events, Event{Kind: EventCandidateInvalidated, Candidate: sdp, RelayID: relayID})
	}
	if c.relayID == relayID {
		c.relayID = replacement
		if c.agent == agentRunning {
			if replacement != "" {
				c.actions = append(c.actions, AddRelayCandidates{Gen: c.gen, RelayID: replacement})
			}
			return
		}
	}
	if c.path.RelayID == relayID && c.agent != agentRunning {
		c.log.Info("path relay dropped: re-running ICE", "connection", c.cfg.ID, "relay", relayID)
		c.startAgent(c.rerunReason(RunPathLost), now)
	}
}

// HandleSrflx: the node's server-reflexive addresses are now addrs (learnt
// from relay keepalives; node-wide, independent of allocations). A running
// agent gets each address it does not have, once.
func (c *Conn) HandleSrflx(addrs []netip.AddrPort, _ time.Time) {
	c.srflx = slices.Clone(addrs)
	if c.agent != agentRunning {
		return
	}
	for _, a := range addrs {
		if !c.srflxGiven[a] {
			c.srflxGiven[a] = true
			c.actions = append(c.actions, AddSrflxCandidate{Gen: c.gen, Addr: a})
		}
	}
}

// HandleWentIdle: the connection went idle (no traffic for the idle
// period). An established connection sends one NAT keepalive, and an ICE
// re-run still going is stopped: an idle connection must not keep an agent
// awake.
func (c *Conn) HandleWentIdle(_ time.Time) {
	if c.state != Established {
		return
	}
	c.actions = append(c.actions, SendKeepalive{})
	if c.agent == agentRunning {
		c.closeAgent()
	}
}

// HandleKeepaliveTick: the coalesced NAT keepalive tick of idle connections.
// lastTx and lastRx are the latest WireGuard messages sent and received
// (zero: none).
func (c *Conn) HandleKeepaliveTick(lastTx, lastRx, now time.Time) {
	if c.state == Established {
		c.actions = append(c.actions, SendKeepalive{})
	}
	c.checkPath(lastTx, lastRx, now)
}

// HandleActiveCheck: the path check of active connections.
func (c *Conn) HandleActiveCheck(lastTx, lastRx, now time.Time) { c.checkPath(lastTx, lastRx, now) }

// checkPath re-runs ICE for an established connection whose traffic stopped
// coming back: we kept sending, nothing was received for PathFailAfter.
func (c *Conn) checkPath(lastTx, lastRx, now time.Time) {
	if c.agent == agentRunning || c.state != Established {
		return
	}
	limit := c.cfg.PathFailAfter
	if lastTx.Sub(lastRx) > limit && now.Sub(lastRx) > limit {
		c.log.Info("path failed: nothing received, re-running ICE", "connection", c.cfg.ID)
		c.startAgent(RunPathFailed, now)
	}
}

// HandleRoamed: WireGuard moved the peer of an established connection to
// remote (authenticated packets came from there), through our relay relayID
// ("" from our socket). relayedLocal is that allocation's address,
// socketLocal our socket's unspecified address of remote's family. The path
// follows; ICE does not re-run (the agents are gone, and the peer's
// authenticated packets already prove the address).
func (c *Conn) HandleRoamed(remote netip.AddrPort, relayID string, relayedLocal, socketLocal netip.AddrPort, _ time.Time) {
	if c.state != Established || remote == c.path.Remote && relayID == c.path.RelayID {
		return
	}
	from := c.path.Remote
	c.path.Remote = remote
	rt, known := c.RemoteCandidateType(remote)
	switch {
	case relayID != "":
		c.path.Kind, c.path.Local = PathRelay, relayedLocal
	case known && rt == CandidateRelay: // the peer's allocation, from our socket
		c.path.Kind = PathRelay
	case known && rt == CandidateHost && c.path.Kind == PathHost:
		// Another host address of the peer, on the same kind of path.
	default:
		// Not signalled (peer-reflexive: reported as srflx), or srflx.
		c.path.Kind = PathServerReflexive
	}
	if relayID == "" && c.path.RelayID != "" {
		c.path.Local = socketLocal // the path left our allocation
	}
	c.path.RelayID = relayID
	c.log.Info("peer roamed: its connection follows it", "connection", c.cfg.ID,
		"from", from, "to", remote, "relay", relayID, "path", c.path.Kind.String())
}

// PollTimeout returns when HandleTimeout must run next: the end of an
// agent's grace period, or the deadline of WireGuard's handshake on a
// nominated pair.
func (c *Conn) PollTimeout() (time.Time, bool) {
	var next time.Time
	ok := false
	if c.agent == agentGrace {
		next, ok = c.graceUntil, true
	}
	if c.state == Nominated {
		if d := c.nominatedAt.Add(c.cfg.HandshakeTimeout); !ok || d.Before(next) {
			next, ok = d, true
		}
	}
	return next, ok
}

// HandleTimeout runs what is due at now.
func (c *Conn) HandleTimeout(now time.Time) {
	if c.agent == agentGrace && !now.Before(c.graceUntil) {
		c.closeAgent()
	}
	if c.state == Nominated && !now.Before(c.nominatedAt.Add(c.cfg.HandshakeTimeout)) {
		c.state = Failed
		c.closeAgent()
		c.events = append(c.events, Event{Kind: EventFailed, Err: ErrHandshakeTimeout})
		c.log.Warn("connection failed: no WireGuard handshake on the nominated path", "connection", c.cfg.ID)
	}
}

// String describes the core for logs and test failures.
func (c *Conn) String() string {
	var b strings.Builder
	b.WriteString(c.cfg.ID)
	b.WriteString(": ")
	b.WriteString(c.state.String())
	b.WriteString(" path=")
	b.WriteString(c.path.Kind.String())
	b.WriteString(" relay=")
	b.WriteString(c.relayID)
	return b.String()
}
