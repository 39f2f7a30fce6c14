package node

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/snowgate/snowgate/node/internal/connsm"
	"github.com/snowgate/snowgate/node/internal/wgtrack"
)

// ErrICEFailed is the error of EventConnectionFailed when ICE found no path.
var ErrICEFailed = connsm.ErrICEFailed

// ErrHandshakeTimeout is the error of EventConnectionFailed when ICE found a
// path but WireGuard never answered on it (e.g. mismatched keys or PSK).
var ErrHandshakeTimeout = connsm.ErrHandshakeTimeout

// agentGrace is how long an agent stays up (answering checks, no callbacks)
// after its connection is established: the peer's agent may still need our
// responses to nominate the pair (a controlled agent only selects a pair
// once its own check on it succeeded).
const agentGrace = 2 * time.Second

// connection is one peer: its lifecycle core (connsm), the ICE agent and
// wireguard-go peer the core drives, and the counters the data path updates
// lock-free.
type connection struct {
	id        string
	params    ConnectionParams
	createdAt time.Time
	peer      wgPeer
	pendingEP *endpoint

	// guarded by Node.mu
	sm         *connsm.Conn
	allowed    []netip.Prefix
	agent      iceAgent // the running (or grace) agent; nil while none or deferred
	agentGen   uint64
	deferred   uint64 // generation of a start waiting for the ufrag (0: none)
	relayGiven map[*allocation]bool
	hsFed      uint64 // tracker completions the core has seen

	// hs follows WireGuard's handshakes (data path; hsMu). hsAwaiting
	// mirrors hs.Awaiting for a lock-free check per transport message;
	// hsDone tells the loop a handshake completed.
	hsMu       sync.Mutex
	hs         wgtrack.Tracker
	hsAwaiting atomic.Bool
	hsDone     atomic.Bool
	// roamTo is where wireguard-go moved the peer (a path tied to no
	// connection yet); roamAt spaces the reports (roam.go).
	roamTo atomic.Pointer[endpoint]
	roamAt atomic.Int64

	poked atomic.Bool
	// idleFlag is set (under n.mu) when the scheduler makes the connection
	// idle and cleared by the first packet after that, on the data path and
	// without a lock: Stats and metrics report the connection active from
	// that packet on. wakePending then tells the loop to report the packet to
	// the scheduler (Activity), which needs n.mu.
	idleFlag    atomic.Bool
	wakePending atomic.Bool

	pendMu    sync.Mutex
	pending   [][]byte
	nominated *endpoint

	lastRx    atomic.Int64 // last received WireGuard activity (unix ns)
	lastAnyRx atomic.Int64 // last received WireGuard message, keepalives included
	lastTx    atomic.Int64 // last sent WireGuard message
	lastActTx atomic.Int64 // last sent WireGuard activity
	rxBytes   atomic.Uint64
	txBytes   atomic.Uint64
}

// bufferPending keeps what wireguard-go sends before ICE nominated a pair
// (bounded; only the newest handshake initiation is kept). If a pair is
// nominated meanwhile it returns that endpoint instead.
func (c *connection) bufferPending(bufs [][]byte) (*endpoint, bool) {
	c.pendMu.Lock()
	defer c.pendMu.Unlock()
	if c.nominated != nil {
		return c.nominated, false
	}
	for _, b := range bufs {
		if len(b) > 0 && b[0] == 1 {
			c.pending = slices.DeleteFunc(c.pending, func(p []byte) bool { return p[0] == 1 })
		}
		if len(c.pending) >= maxPending {
			c.pending = c.pending[1:]
		}
		c.pending = append(c.pending, append([]byte(nil), b...))
	}
	return nil, true
}

// setNominated switches the connection to ep and returns what was buffered.
func (c *connection) setNominated(ep *endpoint) [][]byte {
	c.pendMu.Lock()
	defer c.pendMu.Unlock()
	c.nominated = ep
	p := c.pending
	c.pending = nil
	return p
}

// suspend sends what wireguard-go sends from now on to the pending buffer,
// until setNominated names the next path.
func (c *connection) suspend() {
	c.pendMu.Lock()
	c.nominated = nil
	c.pendMu.Unlock()
	c.peer.SetEndpoint(c.pendingEP)
}

// trackRx and trackTx feed the handshake tracker (data path). A completed
// handshake pokes the loop, which hands it to the core.
func (c *connection) trackRx(n *Node, b []byte, now int64) {
	c.hsMu.Lock()
	done := c.hs.Received(b, time.Unix(0, now))
	c.hsAwaiting.Store(c.hs.Awaiting())
	c.hsMu.Unlock()
	if done {
		n.handshakeDone(c)
	}
}

func (c *connection) trackTx(n *Node, b []byte, now int64) {
	c.hsMu.Lock()
	done := c.hs.Sent(b, time.Unix(0, now))
	c.hsAwaiting.Store(c.hs.Awaiting())
	c.hsMu.Unlock()
	if done {
		n.handshakeDone(c)
	}
}

// handshake returns the tracker's latest completion.
func (c *connection) handshake() (at time.Time, rtt time.Duration, completions uint64) {
	c.hsMu.Lock()
	defer c.hsMu.Unlock()
	at, rtt, _ = c.hs.Last()
	return at, rtt, c.hs.Completions()
}

// UpsertConnection creates the connection id or, when it exists with the same
// keys, PSK, credentials and role, keeps it: its candidates are signalled again,
// it is woken from idle and ICE re-runs to confirm or repair the path (without a
// new WireGuard handshake). Different parameters replace the connection.
// It returns ErrNoRelays when the node has no relay to give the connection.
func (n *Node) UpsertConnection(p ConnectionParams) error {
	id := p.ID
	if p.Role != RoleControlling && p.Role != RoleControlled {
		return fmt.Errorf("upsert connection %s: invalid role %d", id, p.Role)
	}
	if p.Local.Ufrag == "" || p.Local.Password == "" || p.Remote.Ufrag == "" || p.Remote.Password == "" {
		return fmt.Errorf("upsert connection %s: empty ICE credentials", id)
	}
	now := time.Now()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return ErrClosed
	}
	var keepAllowed []netip.Prefix
	if c := n.conns[id]; c != nil {
		if c.params == p {
			n.sched.Activity(id, now)
			c.idleFlag.Store(false)
			n.wakeLoop()
			c.sm.HandleUpsert(now)
			if err := n.driveLocked(c, now); err != nil {
				return fmt.Errorf("upsert connection %s: %w", id, err)
			}
			n.log.Debug("connection upserted with same parameters: kept", "connection", id)
			return nil
		}
	}
	relayID := n.pickRelayLocked()
	if relayID == "" && !n.relayPendingLocked() {
		return fmt.Errorf("upsert connection %s: %w", id, ErrNoRelays)
	}
	if c := n.conns[id]; c != nil {
		keepAllowed = c.allowed
		n.removeConnLocked(c)
		n.log.Info("connection replaced: parameters changed", "connection", id)
	}
	c := &connection{id: id, params: p, createdAt: now, allowed: keepAllowed}
	c.pendingEP = &endpoint{conn: c, pending: true}
	peer, err := n.dev.AddPeer(p.RemoteKey, p.PresharedKey, keepAllowed)
	if err != nil {
		return fmt.Errorf("upsert connection %s: wireguard peer: %w", id, err)
	}
	c.peer = peer
	c.peer.SetEndpoint(c.pendingEP)
	var remote []connsm.Candidate
	for _, sdp := range n.takeQueuedLocked(id, n.clock()) {
		if cand, err := parseCandidate(sdp); err == nil {
			remote = append(remote, cand)
		}
	}
	c.sm = connsm.New(connsm.Config{
		ID:               id,
		Controlling:      p.Role == RoleControlling,
		RelayID:          relayID,
		Srflx:            n.srflxAddrsLocked(),
		Remote:           remote,
		HandshakeTimeout: n.cfg.HandshakeTimeout,
		PathFailAfter:    n.pathFailAfter(),
		AgentGrace:       agentGrace,
		Logger:           n.log,
	}, now)
	n.conns[id] = c
	n.sched.Add(id, now)
	err = n.driveLocked(c, now)
	n.wakeLoop()
	if err != nil {
		return fmt.Errorf("upsert connection %s: %w", id, err)
	}
	n.log.Info("connection created", "connection", id, "role", p.Role.String(), "relay", relayID)
	return nil
}

// pathFailAfter is how long an established path may go without receiving
// anything while we send before ICE re-runs: 1.5 keepalive intervals (idle
// peers send each other a NAT keepalive every interval, and wireguard-go
// answers data within 10 s with a passive keepalive), at least 12 s unless
// the timings are shortened (tests).
func (n *Node) pathFailAfter() time.Duration {
	k := n.cfg.KeepaliveInterval
	if k < 8*time.Second {
		return k * 3 / 2
	}
	return max(k*3/2, 12*time.Second)
}

// SetAllowedIPs sets the prefixes routed to (and accepted from) a connection.
func (n *Node) SetAllowedIPs(id string, prefixes []netip.Prefix) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := n.conns[id]
	if c == nil {
		return fmt.Errorf("set allowed IPs of %s: %w", id, ErrUnknownConnection)
	}
	c.allowed = slices.Clone(prefixes)
	if err := n.dev.SetAllowedIPs(c.params.RemoteKey, prefixes); err != nil {
		return fmt.Errorf("set allowed IPs of %s: %w", id, err)
	}
	return nil
}

// AddRemoteCandidate adds a candidate the peer signalled (SDP as pion marshals it).
//
// A candidate for a connection the node does not know yet is queued and
// applied when UpsertConnection creates it: the portal forwards a gateway's
// candidates as soon as the gateway has the connection, which can be before
// the client has it. The queue is bounded (32 candidates per connection, 64
// connections; beyond that ErrCandidateQueueFull) and a queued candidate is
// dropped after 60 s without its connection.
func (n *Node) AddRemoteCandidate(id, sdp string) error {
	sdp = trimCandidate(sdp)
	cand, err := parseCandidate(sdp)
	if err != nil {
		return fmt.Errorf("remote candidate for %s: %w", id, err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	c := n.conns[id]
	if c == nil {
		if n.closed {
			return ErrClosed
		}
		if err := n.queueCandidateLocked(id, sdp, n.clock()); err != nil {
			n.log.Warn("remote candidate for an unknown connection dropped", "connection", id, "error", err)
			return fmt.Errorf("remote candidate for %s: %w", id, err)
		}
		return nil
	}
	now := time.Now()
	c.sm.HandleRemoteCandidate(cand, now)
	// As the seed does: the state change is handled at once (timeouts
	// included), not at the next tick.
	n.timeoutConnLocked(c, now)
	if err := n.driveLocked(c, now); err != nil {
		return fmt.Errorf("remote candidate for %s: %w", id, err)
	}
	return nil
}

// RemoveRemoteCandidate drops a candidate the peer invalidated. If the
// connection's path used it, ICE re-runs at once to find another path. For a
// connection the node does not know yet, it drops the candidate from the
// queue (see AddRemoteCandidate); ErrUnknownConnection means there was
// nothing to drop.
func (n *Node) RemoveRemoteCandidate(id, sdp string) error {
	sdp = trimCandidate(sdp)
	cand, err := parseCandidate(sdp)
	if err != nil {
		return fmt.Errorf("remove remote candidate for %s: %w", id, err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	c := n.conns[id]
	if c == nil {
		if n.unqueueCandidateLocked(id, sdp, n.clock()) {
			return nil
		}
		return fmt.Errorf("remove remote candidate for %s: %w", id, ErrUnknownConnection)
	}
	now := time.Now()
	c.sm.HandleRemoteCandidateRemoved(cand, now)
	n.timeoutConnLocked(c, now)
	if err := n.driveLocked(c, now); err != nil {
		return fmt.Errorf("remove remote candidate for %s: %w", id, err)
	}
	return nil
}

// RemoveConnection drops a connection and its WireGuard peer.
func (n *Node) RemoveConnection(id string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := n.conns[id]
	if c == nil {
		return fmt.Errorf("remove connection %s: %w", id, ErrUnknownConnection)
	}
	n.removeConnLocked(c)
	return nil
}

// removeConnLocked forgets c, closes its agent and removes its peer. n.mu is held.
func (n *Node) removeConnLocked(c *connection) {
	delete(n.conns, c.id)
	n.sched.Remove(c.id)
	n.closeAgentLocked(c, c.agentGen)
	c.deferred = 0
	n.dev.RemovePeer(c.params.RemoteKey)
	n.unregisterConnEndpoints(c)
	n.forgetIndices(c)
}

// Reset drops every connection, queued remote candidate and allocation,
// rotates the static key,
// re-opens the sockets (a new port unless Config.Port fixes it) with a fresh
// ICE mux, and returns the new public key. This is roaming: the portal
// session then reconnects with the new key, and the caller passes the
// portal's relays again.
func (n *Node) Reset() (Key, error) {
	priv, err := GeneratePrivateKey()
	if err != nil {
		return Key{}, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return Key{}, ErrClosed
	}
	for _, c := range n.sortedConnsLocked() {
		n.removeConnLocked(c)
	}
	for id, r := range n.relays {
		n.cancelRelayJobsLocked(id)
		for _, a := range r.allocs {
			a.close() // deallocates through the old socket
		}
	}
	n.relays = make(map[string]*relayEntry)
	n.queued = make(map[string][]queuedCandidate)
	n.rebuildAllocIndex()
	n.noRelays = true // dropped on purpose: the caller passes relays again
	n.priv = priv
	if err := n.dev.SetPrivateKey(priv); err != nil {
		return Key{}, fmt.Errorf("reset: %w", err)
	}
	if err := n.rotateIOLocked(); err != nil {
		return Key{}, fmt.Errorf("reset: %w", err)
	}
	pub := priv.PublicKey()
	n.log.Info("node reset: connections and allocations dropped, key rotated, sockets re-opened",
		"public_key", pub.String(), "port", n.io.Load().port())
	return pub, nil
}

// rotateIOLocked replaces the sockets and the mux. wireguard-go's receive
// goroutines are stopped around the swap (BindClose / BindUpdate): closing
// the old sockets ends their reads (no read deadline, so no timer is
// involved: the simulated clock of node/nodetest needs nothing else to run
// while n.mu is held).
func (n *Node) rotateIOLocked() error {
	old := n.io.Load()
	fixed := n.cfg.Port != 0
	var set *ioSet
	if !fixed {
		var err error
		if set, err = n.openIO(); err != nil {
			return fmt.Errorf("re-open sockets: %w", err) // keep running on the old sockets
		}
	}
	old.close() // free the port; the receive functions return net.ErrClosed
	if err := n.dev.BindClose(); err != nil {
		return fmt.Errorf("close bind: %w", err)
	}
	if fixed {
		var err error
		if set, err = n.openIO(); err != nil {
			return fmt.Errorf("re-open sockets on port %d: %w", n.cfg.Port, err)
		}
	}
	n.io.Store(set)
	if err := n.dev.BindUpdate(); err != nil {
		return fmt.Errorf("open bind: %w", err)
	}
	return nil
}

// Stats describes every connection. RTT is the path's current round-trip
// time: ICE's measure when the pair was (re-)nominated, then WireGuard's at
// every handshake (at least every two minutes while traffic flows).
func (n *Node) Stats() []ConnStats {
	n.mu.Lock()
	defer n.mu.Unlock()
	now := time.Now()
	out := make([]ConnStats, 0, len(n.conns))
	for _, c := range n.sortedConnsLocked() {
		n.feedHandshakeLocked(c, now)
		_ = n.driveLocked(c, now)
		path := c.sm.Path()
		hs, _, _ := c.handshake()
		out = append(out, ConnStats{
			ID: c.id, Path: Path(path.Kind), LocalAddr: path.Local, RemoteAddr: path.Remote,
			RelayID: c.sm.RelayID(), PathRelayID: n.pathRelayLocked(path), RTT: c.sm.RTT(),
			RxBytes: c.rxBytes.Load(), TxBytes: c.txBytes.Load(),
			LastHandshake: hs,
			Established:   c.sm.State() == connsm.Established,
			Idle:          n.isIdleLocked(c),
		})
	}
	return out
}

// pathRelayLocked names the relay carrying a relayed path: ours when our
// allocation is its local end, else the peer's, recognised by the address of
// the peer's relayed candidate (a relay allocates on its own public address,
// and both ends get their relays from the same portal). n.mu is held.
func (n *Node) pathRelayLocked(p connsm.Path) string {
	if p.Kind != connsm.PathRelay {
		return ""
	}
	if p.RelayID != "" {
		return p.RelayID
	}
	remote := p.Remote.Addr().Unmap()
	for _, id := range slices.Sorted(maps.Keys(n.relays)) {
		cfg := n.relays[id].cfg
		if (cfg.Addr4.IsValid() && cfg.Addr4.Addr().Unmap() == remote) || (cfg.Addr6.IsValid() && cfg.Addr6.Addr() == remote) {
			return id
		}
	}
	return ""
}

// sortedConnsLocked returns the connections by id (a stable order for
// everything that walks them).
func (n *Node) sortedConnsLocked() []*connection {
	out := make([]*connection, 0, len(n.conns))
	for _, c := range n.conns {
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b *connection) int { return strings.Compare(a.id, b.id) })
	return out
}

// feedHandshakeLocked hands the core the tracker's latest handshake, if it
// has not seen it. n.mu is held.
func (n *Node) feedHandshakeLocked(c *connection, now time.Time) {
	at, rtt, k := c.handshake()
	if k == c.hsFed || at.Before(c.createdAt) {
		return
	}
	c.hsFed = k
	c.sm.HandleHandshake(at, rtt, now)
}

// timeoutConnLocked runs c's core timeouts due at now. n.mu is held.
func (n *Node) timeoutConnLocked(c *connection, now time.Time) {
	if t, ok := c.sm.PollTimeout(); ok && !now.Before(t) {
		c.sm.HandleTimeout(now)
	}
}

// driveLocked carries out what c's core asks for and emits its events,
// until it has nothing more to say. It returns the first error of starting
// an agent (the core then saw the run fail). n.mu is held.
func (n *Node) driveLocked(c *connection, now time.Time) error {
	var first error
	for {
		if a, ok := c.sm.PollAction(); ok {
			if err := n.actLocked(c, a, now); err != nil && first == nil {
				first = err
			}
			continue
		}
		if e, ok := c.sm.PollEvent(); ok {
			n.emitConnEvent(c, e)
			continue
		}
		return first
	}
}

// actLocked carries out one action of c's core. n.mu is held.
func (n *Node) actLocked(c *connection, a connsm.Action, now time.Time) error {
	switch a := a.(type) {
	case connsm.StartAgent:
		return n.startAgentLocked(c, a.Gen, now)
	case connsm.CloseAgent:
		n.closeAgentLocked(c, a.Gen)
	case connsm.AddRemoteCandidate:
		if c.agent != nil && c.agentGen == a.Gen {
			if err := c.agent.AddRemoteCandidate(a.Candidate); err != nil {
				n.log.Debug("add remote candidate failed", "connection", c.id, "error", err)
			}
		}
	case connsm.AddSrflxCandidate:
		if c.agent != nil && c.agentGen == a.Gen {
			n.addSrflxLocked(c, a.Addr)
		}
	case connsm.AddRelayCandidates:
		if c.agent != nil && c.agentGen == a.Gen {
			n.addRelayCandidatesLocked(c, a.RelayID)
		}
	case connsm.UsePath:
		n.usePathLocked(c, a, now)
	case connsm.SuspendPath:
		// The path's allocation is closed: hold the traffic for the next path.
		c.suspend()
	case connsm.SendKeepalive:
		c.peer.SendKeepalive()
	}
	return nil
}

// usePathLocked points c's WireGuard peer at the nominated pair and flushes
// what was buffered; a handshake is forced only if the core asks for it (the
// controlling side's first nomination) and none was just flushed.
func (n *Node) usePathLocked(c *connection, a connsm.UsePath, now time.Time) {
	ep := &endpoint{conn: c, dst: a.Pair.Remote.Addr}
	if a.Pair.RelayID != "" {
		ep.alloc = n.allocByRelayedLocked(a.Pair.Local.Addr)
	}
	n.registerEndpoint(ep)
	// WireGuard may have shaken hands along this path before it was tied to
	// c (the peer's initiation came first): the stray log has it.
	n.replayStrays(c, ep)
	c.peer.SetEndpoint(ep)
	initiated := false
	for _, b := range c.setNominated(ep) {
		if b[0] == 1 {
			initiated = true
		}
		if err := n.sendTo([][]byte{b}, ep); err != nil {
			n.log.Debug("flush buffered packet failed", "connection", c.id, "error", err)
		}
	}
	switch {
	case a.Rerun:
		c.peer.SendKeepalive()
	case a.ForceHandshake && !initiated:
		c.peer.SendHandshakeInitiation()
	}
	n.feedHandshakeLocked(c, now)
}

// emitConnEvent turns a core event into a node event (and metrics).
func (n *Node) emitConnEvent(c *connection, e connsm.Event) {
	switch e.Kind {
	case connsm.EventCandidateAdded:
		n.emit(Event{Kind: EventCandidateAdded, ConnectionID: c.id, Candidate: e.Candidate})
	case connsm.EventCandidateInvalidated:
		n.emit(Event{Kind: EventCandidateInvalidated, ConnectionID: c.id, Candidate: e.Candidate, RelayID: e.RelayID})
	case connsm.EventFailed:
		n.emit(Event{Kind: EventConnectionFailed, ConnectionID: c.id, Err: e.Err})
	case connsm.EventEstablished:
		ev := Event{
			Kind: EventConnectionEstablished, ConnectionID: c.id, Path: Path(e.Path.Kind),
			LocalAddr: e.Path.Local, RemoteAddr: e.Path.Remote, HandshakeTime: e.HandshakeTime,
		}
		n.emit(ev)
		pathAttr := metric.WithAttributes(attribute.String("path", ev.Path.String()))
		n.established.Add(n.ctx, 1, pathAttr)
		n.setupTime.Record(n.ctx, ev.HandshakeTime.Seconds(), pathAttr)
		n.log.Info("connection established", "connection", c.id, "path", ev.Path.String(),
			"local", ev.LocalAddr, "remote", ev.RemoteAddr, "handshake_time", ev.HandshakeTime)
	}
}
