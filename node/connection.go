package node

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/ice/v4"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"golang.zx2c4.com/wireguard/device"
)

// connState is where a connection is in its life.
type connState int32

const (
	stateConnecting  connState = iota // ICE running, nothing nominated
	stateNominated                    // pair nominated, waiting for WireGuard's reply
	stateEstablished                  // WireGuard up on the nominated path
	stateFailed                       // ICE found no path
)

// rerunReason says why ICE runs on a connection.
type rerunReason int

const (
	runInitial    rerunReason = iota // new connection
	runUpsert                        // same credentials upserted again
	runPathFailed                    // traffic stopped coming back
	runRelayMoved                    // the path's relay went away
)

// ErrICEFailed is the error of EventConnectionFailed when ICE found no path.
var ErrICEFailed = errors.New("node: ICE found no working candidate pair")

// ErrHandshakeTimeout is the error of EventConnectionFailed when ICE found a
// path but WireGuard never answered on it (e.g. mismatched keys or PSK).
var ErrHandshakeTimeout = errors.New("node: no WireGuard handshake on the nominated path")

// connection is one peer: an ICE agent while a path is being found, a
// wireguard-go peer, and the counters the bind updates lock-free.
type connection struct {
	id string
	// srflxAdded holds the server-reflexive addresses already given to the current agent, so an address
	// learnt after the agent started is added exactly once.
	srflxAdded map[netip.AddrPort]bool
	remoteKey  Key
	psk        Key
	local      Credentials
	remote     Credentials
	role       Role
	peer       *device.Peer
	createdAt  time.Time
	pendingEP  *endpoint

	// guarded by Node.mu
	allowed         []netip.Prefix
	agent           *ice.Agent
	agentGen        uint64
	runStarted      time.Time
	nominatedAt     time.Time
	run             rerunReason
	remoteCands     map[string]struct{} // SDP strings
	removedRemotes  map[netip.AddrPort]struct{}
	localCands      map[string]struct{}
	relayCands      map[string]string // our relay candidate SDP → relay id
	relayID         string
	path            Path
	localAddr       netip.AddrPort
	remoteAddr      netip.AddrPort
	rtt             time.Duration
	everEstablished bool

	state       atomic.Int32
	gotReply    atomic.Bool
	verifyTries atomic.Int32
	poked       atomic.Bool
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

// UpsertConnection creates the connection id or, when it exists with the same
// keys, PSK, credentials and role, keeps it: its candidates are signalled again,
// it is woken from idle and ICE re-runs to confirm or repair the path (without a
// new WireGuard handshake). Different parameters replace the connection.
// It returns ErrNoRelays when the node has no relay to give the connection.
func (n *Node) UpsertConnection(p ConnectionParams) error {
	id, remoteKey, psk, local, remote, role := p.ID, p.RemoteKey, p.PresharedKey, p.Local, p.Remote, p.Role
	if role != RoleControlling && role != RoleControlled {
		return fmt.Errorf("upsert connection %s: invalid role %d", id, role)
	}
	if local.Ufrag == "" || local.Password == "" || remote.Ufrag == "" || remote.Password == "" {
		return fmt.Errorf("upsert connection %s: empty ICE credentials", id)
	}
	now := time.Now()
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return ErrClosed
	}
	var keepAllowed []netip.Prefix
	if c := n.conns[id]; c != nil {
		if c.remoteKey == remoteKey && c.psk == psk && c.local == local && c.remote == remote && c.role == role {
			for sdp := range c.localCands {
				n.emit(Event{Kind: EventCandidateAdded, ConnectionID: id, Candidate: sdp})
			}
			n.sched.Activity(id, now)
			c.idleFlag.Store(false)
			n.wakeLoop()
			if c.agent == nil {
				reason := runUpsert
				if !c.everEstablished {
					reason = runInitial
				}
				if err := n.startAgentLocked(c, reason); err != nil {
					n.mu.Unlock()
					return err
				}
			}
			n.mu.Unlock()
			n.log.Debug("connection upserted with same parameters: kept", "connection", id)
			return nil
		}
	}
	relayID := n.pickRelayLocked()
	if relayID == "" && !n.relayPendingLocked() {
		n.mu.Unlock()
		return fmt.Errorf("upsert connection %s: %w", id, ErrNoRelays)
	}
	if c := n.conns[id]; c != nil {
		keepAllowed = c.allowed
		n.removeConnLocked(c)
		n.log.Info("connection replaced: parameters changed", "connection", id)
	}
	c := &connection{
		id: id, remoteKey: remoteKey, psk: psk, local: local, remote: remote, role: role,
		createdAt: now, allowed: keepAllowed, relayID: relayID,
		remoteCands:    make(map[string]struct{}),
		removedRemotes: make(map[netip.AddrPort]struct{}),
		localCands:     make(map[string]struct{}),
		relayCands:     make(map[string]string),
	}
	c.pendingEP = &endpoint{conn: c, pending: true}
	if err := n.dev.IpcSet(n.peerConfig(c)); err != nil {
		n.mu.Unlock()
		return fmt.Errorf("upsert connection %s: wireguard peer: %w", id, err)
	}
	c.peer = n.dev.LookupPeer(device.NoisePublicKey(remoteKey))
	if c.peer == nil {
		n.mu.Unlock()
		return fmt.Errorf("upsert connection %s: wireguard peer not created", id)
	}
	c.peer.SetEndpointFromPacket(c.pendingEP)
	for _, sdp := range n.takeQueuedLocked(id, n.clock()) {
		c.remoteCands[sdp] = struct{}{} // startAgentLocked gives them to the agent
	}
	n.conns[id] = c
	n.sched.Add(id, now)
	err := n.startAgentLocked(c, runInitial)
	n.mu.Unlock()
	n.wakeLoop()
	if err != nil {
		return err
	}
	n.log.Info("connection created", "connection", id, "role", role.String(), "relay", relayID)
	return nil
}

func (n *Node) peerConfig(c *connection) string {
	var b strings.Builder
	fmt.Fprintf(&b, "public_key=%s\npreshared_key=%s\nreplace_allowed_ips=true\n", c.remoteKey.hex(), c.psk.hex())
	for _, p := range c.allowed {
		fmt.Fprintf(&b, "allowed_ip=%s\n", p.String())
	}
	return b.String()
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
	var b strings.Builder
	fmt.Fprintf(&b, "public_key=%s\nupdate_only=true\nreplace_allowed_ips=true\n", c.remoteKey.hex())
	for _, p := range prefixes {
		fmt.Fprintf(&b, "allowed_ip=%s\n", p.Masked().String())
	}
	if err := n.dev.IpcSet(b.String()); err != nil {
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
	cand, err := parseRemoteCandidate(sdp)
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
	if _, dup := c.remoteCands[sdp]; dup {
		return nil
	}
	c.remoteCands[sdp] = struct{}{}
	if addr, ok := candidateAddr(cand); ok {
		delete(c.removedRemotes, addr)
	}
	if c.agent != nil {
		if err := c.agent.AddRemoteCandidate(cand); err != nil {
			return fmt.Errorf("remote candidate for %s: %w", id, err)
		}
	}
	return nil
}

// RemoveRemoteCandidate drops a candidate the peer invalidated. If the
// connection's path used it, ICE re-runs to find another path. For a
// connection the node does not know yet, it drops the candidate from the
// queue (see AddRemoteCandidate); ErrUnknownConnection means there was
// nothing to drop.
func (n *Node) RemoveRemoteCandidate(id, sdp string) error {
	sdp = trimCandidate(sdp)
	cand, err := parseRemoteCandidate(sdp)
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
	delete(c.remoteCands, sdp)
	addr, ok := candidateAddr(cand)
	if ok {
		c.removedRemotes[addr] = struct{}{} // a running agent may still nominate it
	}
	st := connState(c.state.Load())
	if ok && addr == c.remoteAddr && (st == stateEstablished || st == stateNominated) {
		n.log.Info("remote candidate of the path invalidated: re-running ICE", "connection", id)
		return n.startAgentLocked(c, runRelayMoved)
	}
	return nil
}

// RemoveConnection drops a connection and its WireGuard peer.
func (n *Node) RemoveConnection(id string) error {
	n.mu.Lock()
	c := n.conns[id]
	if c == nil {
		n.mu.Unlock()
		return fmt.Errorf("remove connection %s: %w", id, ErrUnknownConnection)
	}
	n.removeConnLocked(c)
	n.mu.Unlock()
	return nil
}

// removeConnLocked forgets c, closes its agent and removes its peer. n.mu is held.
func (n *Node) removeConnLocked(c *connection) {
	delete(n.conns, c.id)
	n.sched.Remove(c.id)
	if c.agent != nil {
		n.closeAgentAsync(c.agent)
		c.agent = nil
	}
	c.agentGen++
	n.dev.RemovePeer(device.NoisePublicKey(c.remoteKey))
	n.unregisterConnEndpoints(c)
}

// closeAgentAsync closes an agent on a goroutine owned by the node; n.mu is
// held (so that Close, which waits for these goroutines, cannot race). Closing
// an agent removes its ufrag from the shared mux, so a new agent with the same
// ufrag (an ICE re-run) only starts once the old one is fully closed: see
// startAgentLocked.
func (n *Node) closeAgentAsync(a *ice.Agent) { n.closeAgentAfter(a, 0) }

// closeAgentAfter closes an agent after a delay (see agentGrace). A new agent
// with the same ufrag waits for it.
func (n *Node) closeAgentAfter(a *ice.Agent, delay time.Duration) {
	done := make(chan struct{})
	n.closingMu.Lock()
	ufrag, known := n.agentUfrag[a]
	delete(n.agentUfrag, a)
	prev := n.closing[ufrag]
	if known {
		n.closing[ufrag] = done
	}
	n.closingMu.Unlock()
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer close(done)
		if prev != nil {
			<-prev
		}
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-n.ctx.Done():
			}
		}
		_ = a.GracefulClose()
		n.liveAgents.Add(-1)
		if !known {
			return
		}
		// The mux forgets a closed ufrag on a goroutine of its own: give it
		// a moment before a new agent registers the same ufrag.
		select {
		case <-time.After(muxSettle):
		case <-n.ctx.Done():
		}
		n.closingMu.Lock()
		if n.closing[ufrag] == done {
			delete(n.closing, ufrag)
		}
		n.closingMu.Unlock()
	}()
}

// muxSettle is how long after closing an agent a new agent with the same
// ufrag waits, so that the mux's own clean-up of the old one has run.
const muxSettle = 20 * time.Millisecond

// agentGrace is how long an agent stays up (answering checks, no callbacks)
// after its connection is established: the peer's agent may still need our
// responses to nominate the pair (a controlled agent only selects a pair
// once its own check on it succeeded).
const agentGrace = 2 * time.Second

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
	for _, c := range n.conns {
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
	if err := n.dev.IpcSet("private_key=" + priv.hex() + "\n"); err != nil {
		return Key{}, fmt.Errorf("reset: set private key: %w", err)
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
// goroutines are stopped around the swap (BindClose / BindUpdate).
func (n *Node) rotateIOLocked() error {
	old := n.io.Load()
	if err := n.dev.BindClose(); err != nil {
		return fmt.Errorf("close bind: %w", err)
	}
	fixed := n.cfg.Port != 0
	if fixed {
		old.close() // free the port first
	}
	set, err := n.openIO()
	if err != nil {
		if !fixed {
			_ = n.dev.BindUpdate() // keep running on the old sockets
			return fmt.Errorf("re-open sockets: %w", err)
		}
		return fmt.Errorf("re-open sockets on port %d: %w", n.cfg.Port, err)
	}
	n.io.Store(set)
	if !fixed {
		old.close()
	}
	if err := n.dev.BindUpdate(); err != nil {
		return fmt.Errorf("open bind: %w", err)
	}
	return nil
}

// Stats describes every connection.
func (n *Node) Stats() []ConnStats {
	hs := n.lastHandshakes()
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]ConnStats, 0, len(n.conns))
	for _, c := range n.conns {
		out = append(out, ConnStats{
			ID: c.id, Path: c.path, LocalAddr: c.localAddr, RemoteAddr: c.remoteAddr,
			RelayID: c.relayID, RTT: c.rtt,
			RxBytes: c.rxBytes.Load(), TxBytes: c.txBytes.Load(),
			LastHandshake: hs[c.remoteKey],
			Established:   connState(c.state.Load()) == stateEstablished,
			Idle:          n.isIdleLocked(c),
		})
	}
	slices.SortFunc(out, func(a, b ConnStats) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// lastHandshakes reads every peer's last handshake time from wireguard-go.
func (n *Node) lastHandshakes() map[Key]time.Time {
	out := make(map[Key]time.Time)
	for k, p := range n.peerStates() {
		if !p.handshake.IsZero() {
			out[k] = p.handshake
		}
	}
	return out
}

// peerState is what wireguard-go reports about one peer.
type peerState struct {
	handshake time.Time // last handshake; zero if none
	endpoint  string    // DstToString of the peer's endpoint; "" if none
}

// peerStates reads every peer's state from wireguard-go (one IpcGet:
// O(peers), it serialises the whole device).
func (n *Node) peerStates() map[Key]peerState {
	out := make(map[Key]peerState)
	s, err := n.dev.IpcGet()
	if err != nil {
		return out
	}
	var cur Key
	var sec int64
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		switch k {
		case "public_key":
			b, err := hex.DecodeString(v)
			if err == nil && len(b) == 32 {
				copy(cur[:], b)
			}
			out[cur] = peerState{}
		case "endpoint":
			p := out[cur]
			p.endpoint = v
			out[cur] = p
		case "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			nsec, _ := strconv.ParseInt(v, 10, 64)
			if sec != 0 || nsec != 0 {
				p := out[cur]
				p.handshake = time.Unix(sec, nsec)
				out[cur] = p
			}
		}
	}
	return out
}

// candidateTypes returns the local candidate types agents gather.
func (n *Node) candidateTypes() []ice.CandidateType {
	if len(n.cfg.TestOnlyCandidateTypes) > 0 {
		return n.cfg.TestOnlyCandidateTypes
	}
	return []ice.CandidateType{ice.CandidateTypeHost, ice.CandidateTypeServerReflexive, ice.CandidateTypeRelay}
}

func (n *Node) relayAllowed() bool {
	return slices.Contains(n.candidateTypes(), ice.CandidateTypeRelay)
}

// startAgentLocked (re)starts ICE for c. n.mu is held. If an agent with the
// same local ufrag is still closing, the start is deferred until it is gone.
func (n *Node) startAgentLocked(c *connection, reason rerunReason) error {
	if c.agent != nil {
		a := c.agent
		c.agent = nil
		n.closeAgentAsync(a)
	}
	c.agentGen++
	n.closingMu.Lock()
	closing := n.closing[c.local.Ufrag]
	n.closingMu.Unlock()
	if closing != nil {
		gen := c.agentGen
		c.run = reason
		if reason != runUpsert {
			c.state.Store(int32(stateConnecting))
		}
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			select {
			case <-closing:
			case <-n.ctx.Done():
				return
			}
			n.mu.Lock()
			defer n.mu.Unlock()
			if n.closed || n.conns[c.id] != c || c.agentGen != gen || c.agent != nil {
				return
			}
			if err := n.startAgentLocked(c, reason); err != nil {
				n.log.Warn("start ICE failed", "connection", c.id, "error", err)
			}
		}()
		return nil
	}
	gen := c.agentGen
	c.run = reason
	c.runStarted = time.Now()
	c.gotReply.Store(false)
	c.verifyTries.Store(0)
	if reason != runUpsert {
		c.state.Store(int32(stateConnecting))
	}
	set := n.io.Load()
	var netTypes []ice.NetworkType
	if set.v4 != nil {
		netTypes = append(netTypes, ice.NetworkTypeUDP4)
	}
	if set.v6 != nil {
		netTypes = append(netTypes, ice.NetworkTypeUDP6)
	}
	// pion gathers host candidates from the mux; srflx and relay candidates
	// come from the node (node-wide mapped addresses, shared allocations).
	var gatherTypes []ice.CandidateType
	if slices.Contains(n.candidateTypes(), ice.CandidateTypeHost) {
		gatherTypes = append(gatherTypes, ice.CandidateTypeHost)
	}
	opts := []ice.AgentOption{
		ice.WithNet(n.net),
		ice.WithLocalCredentials(c.local.Ufrag, c.local.Password),
		ice.WithUDPMux(set.mux),
		ice.WithUDPMuxSrflx(set.mux),
		ice.WithNetworkTypes(netTypes),
		ice.WithCandidateTypes(gatherTypes),
		ice.WithMulticastDNSMode(ice.MulticastDNSModeDisabled),
		ice.WithLoggerFactory(n.pionLog),
		ice.WithHostAcceptanceMinWait(0),
		ice.WithSrflxAcceptanceMinWait(50 * time.Millisecond),
		ice.WithPrflxAcceptanceMinWait(100 * time.Millisecond),
		ice.WithRelayAcceptanceMinWait(300 * time.Millisecond),
		ice.WithCheckInterval(100 * time.Millisecond),
		ice.WithFailedTimeout(n.cfg.ICEFailedTimeout),
		ice.WithDisconnectedTimeout(5 * time.Second),
	}
	if n.cfg.IncludeLoopback {
		opts = append(opts, ice.WithIncludeLoopback())
	}
	agent, err := ice.NewAgentWithOptions(opts...)
	if err != nil {
		return fmt.Errorf("connection %s: ice agent: %w", c.id, err)
	}
	c.agent = agent
	c.srflxAdded = nil
	n.liveAgents.Add(1)
	n.closingMu.Lock()
	n.agentUfrag[agent] = c.local.Ufrag
	n.closingMu.Unlock()
	if err := agent.OnCandidate(func(cand ice.Candidate) {
		if cand != nil {
			n.onLocalCandidate(c, gen, cand)
		}
	}); err != nil {
		return n.abortAgentLocked(c, err)
	}
	if err := agent.OnSelectedCandidatePairChange(func(l, r ice.Candidate) {
		n.onSelected(c, gen, l, r)
	}); err != nil {
		return n.abortAgentLocked(c, err)
	}
	if err := agent.OnConnectionStateChange(func(s ice.ConnectionState) {
		if s == ice.ConnectionStateFailed {
			n.onICEFailed(c, gen)
		}
	}); err != nil {
		return n.abortAgentLocked(c, err)
	}
	if len(gatherTypes) > 0 {
		if err := agent.GatherCandidates(); err != nil {
			return n.abortAgentLocked(c, err)
		}
	}
	n.addSrflxCandidatesLocked(c, set)
	n.addRelayCandidatesLocked(c)
	for sdp := range c.remoteCands {
		if cand, err := parseRemoteCandidate(sdp); err == nil {
			_ = agent.AddRemoteCandidate(cand)
		}
	}
	if c.role == RoleControlling {
		_, err = agent.StartDial(c.remote.Ufrag, c.remote.Password)
	} else {
		_, err = agent.StartAccept(c.remote.Ufrag, c.remote.Password)
	}
	if err != nil {
		return n.abortAgentLocked(c, err)
	}
	return nil
}

func (n *Node) abortAgentLocked(c *connection, err error) error {
	if c.agent != nil {
		n.closeAgentAsync(c.agent)
		c.agent = nil
	}
	c.agentGen++
	return fmt.Errorf("connection %s: start ice: %w", c.id, err)
}

// addSrflxCandidatesLocked gives the running agent of c the node-wide
// server-reflexive candidates (one per socket whose mapped address is known
// and differs from its host addresses).
func (n *Node) addSrflxCandidatesLocked(c *connection, set *ioSet) {
	if c.agent == nil || !slices.Contains(n.candidateTypes(), ice.CandidateTypeServerReflexive) {
		return
	}
	hosts := *n.hosts.Load()
	for _, so := range set.all {
		m := so.mapped.Load()
		if m == nil || !m.IsValid() {
			continue
		}
		base := &net.UDPAddr{IP: net.IPv4zero, Port: int(so.port)}
		if so.family == 6 {
			base.IP = net.IPv6unspecified
		}
		local := false
		for _, h := range hosts {
			if ua, ok := h.(*net.UDPAddr); ok && addrPortOf(ua) == *m {
				local = true
			}
			if ua, ok := h.(*net.UDPAddr); ok && base.IP.IsUnspecified() && (ua.IP.To4() != nil) == (so.family == 4) {
				base = ua
			}
		}
		if local || c.srflxAdded[*m] {
			continue // not behind a NAT on this family, or already given to this agent
		}
		cand, err := ice.NewCandidateServerReflexive(&ice.CandidateServerReflexiveConfig{
			Network: "udp", Address: m.Addr().String(), Port: int(m.Port()), Component: 1,
			RelAddr: base.IP.String(), RelPort: base.Port,
		})
		if err != nil {
			continue
		}
		conn, err := set.mux.GetConnForURL(c.local.Ufrag, "node-srflx", base)
		if err != nil {
			continue
		}
		if err := c.agent.AddVirtualCandidate(cand, conn); err != nil {
			_ = conn.Close()
			continue
		}
		if c.srflxAdded == nil {
			c.srflxAdded = map[netip.AddrPort]bool{}
		}
		c.srflxAdded[*m] = true
	}
}

// addRelayCandidatesLocked gives the running agent of c the relay candidates
// of its sampled relay (sampling one if it has none).
func (n *Node) addRelayCandidatesLocked(c *connection) {
	if c.agent == nil || !n.relayAllowed() {
		return
	}
	if c.relayID == "" || n.relays[c.relayID] == nil {
		c.relayID = n.pickRelayLocked()
	}
	r := n.relays[c.relayID]
	if r == nil {
		return
	}
	for _, a := range r.allocs {
		if !a.ready.Load() {
			continue
		}
		cand, err := a.candidate()
		if err != nil {
			n.log.Warn("relay candidate failed", "connection", c.id, "error", err)
			continue
		}
		v, err := a.newView(c.local.Ufrag)
		if err != nil {
			continue
		}
		if err := c.agent.AddVirtualCandidate(cand, v); err != nil {
			_ = v.Close()
			n.log.Debug("add relay candidate failed", "connection", c.id, "error", err)
		}
	}
}

func (n *Node) onLocalCandidate(c *connection, gen uint64, cand ice.Candidate) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.conns[c.id] != c || c.agentGen != gen {
		return
	}
	sdp := cand.Marshal()
	if cand.Type() == ice.CandidateTypeRelay {
		if addr, ok := candidateAddr(cand); ok {
			for id, r := range n.relays {
				for _, a := range r.allocs {
					if a.relayedAddr == addr {
						c.relayCands[sdp] = id
					}
				}
			}
		}
	}
	if _, seen := c.localCands[sdp]; seen {
		return
	}
	c.localCands[sdp] = struct{}{}
	n.emit(Event{Kind: EventCandidateAdded, ConnectionID: c.id, Candidate: sdp})
}

func candidateAddr(c ice.Candidate) (netip.AddrPort, bool) {
	ip, err := netip.ParseAddr(c.Address())
	if err != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(c.Port())), true
}

func pathOf(l, r ice.Candidate) Path {
	lt, rt := l.Type(), r.Type()
	switch {
	case lt == ice.CandidateTypeRelay || rt == ice.CandidateTypeRelay:
		return PathRelay
	case lt == ice.CandidateTypeHost && rt == ice.CandidateTypeHost:
		return PathHost
	}
	return PathServerReflexive
}

// onSelected points the WireGuard peer at the nominated pair and flushes what
// was buffered; the controlling side forces a handshake if nothing was.
func (n *Node) onSelected(c *connection, gen uint64, l, r ice.Candidate) {
	raddr, ok := candidateAddr(r)
	if !ok {
		return
	}
	laddr, _ := candidateAddr(l)
	n.mu.Lock()
	if n.conns[c.id] != c || c.agentGen != gen {
		n.mu.Unlock()
		return
	}
	ep := &endpoint{conn: c, dst: raddr}
	if l.Type() == ice.CandidateTypeRelay {
		ep.alloc = n.allocByRelayedLocked(laddr)
	}
	_, removed := c.removedRemotes[raddr]
	if removed || (l.Type() == ice.CandidateTypeRelay && ep.alloc == nil) {
		// The agent nominated a pair that went away meanwhile (invalidated
		// by the peer, or our relay was dropped): start over without it.
		n.log.Info("nominated pair is gone: re-running ICE", "connection", c.id, "local", laddr, "remote", raddr)
		reason := runRelayMoved
		if !c.everEstablished {
			reason = runInitial
		}
		if err := n.startAgentLocked(c, reason); err != nil {
			n.log.Warn("re-run ICE failed", "connection", c.id, "error", err)
		}
		n.mu.Unlock()
		return
	}
	c.path = pathOf(l, r)
	c.localAddr, c.remoteAddr = laddr, raddr
	if c.agent != nil {
		if st, ok := c.agent.GetSelectedCandidatePairStats(); ok {
			c.rtt = time.Duration(st.CurrentRoundTripTime * float64(time.Second))
		}
	}
	n.registerEndpoint(ep)
	// A re-run on a connection that was up keeps its WireGuard session: the
	// new path is used at once and a keepalive lets the peer roam to it.
	rerun := c.everEstablished
	if !rerun {
		c.state.Store(int32(stateNominated))
		c.nominatedAt = time.Now()
	}
	peer, role := c.peer, c.role
	n.mu.Unlock()

	n.log.Debug("ice pair nominated", "connection", c.id, "path", c.path.String(), "local", laddr, "remote", raddr)
	peer.SetEndpointFromPacket(ep)
	flushed := c.setNominated(ep)
	initiated := false
	for _, b := range flushed {
		if b[0] == 1 {
			initiated = true
		}
		if err := n.sendTo([][]byte{b}, ep); err != nil {
			n.log.Debug("flush buffered packet failed", "connection", c.id, "error", err)
		}
	}
	if rerun {
		n.establish(c, gen)
		peer.SendKeepalive()
		return
	}
	if role == RoleControlling && !initiated {
		_ = peer.SendHandshakeInitiation(false)
	}
	// The peer's handshake may have completed before our side nominated
	// (its packets then came from an address not yet tied to c).
	n.mu.Lock()
	started := c.runStarted
	n.mu.Unlock()
	if c.gotReply.Load() || n.lastHandshakes()[c.remoteKey].After(started) {
		c.gotReply.Store(true)
		n.poke(c)
	}
}

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

// establish marks c established (WireGuard answered on the nominated path)
// and closes its ICE agent: agents wake every 2 s and must not outlive this.
func (n *Node) establish(c *connection, gen uint64) {
	n.mu.Lock()
	if n.conns[c.id] != c || c.agentGen != gen {
		n.mu.Unlock()
		return
	}
	first := !c.everEstablished
	announce := first || c.run != runUpsert
	c.state.Store(int32(stateEstablished))
	c.everEstablished = true
	agent := c.agent
	c.agent = nil
	c.agentGen++
	ev := Event{
		Kind: EventConnectionEstablished, ConnectionID: c.id, Path: c.path,
		LocalAddr: c.localAddr, RemoteAddr: c.remoteAddr,
		HandshakeTime: time.Since(c.runStarted),
	}
	if announce {
		n.emit(ev)
	}
	if agent != nil {
		n.closeAgentAfter(agent, agentGrace)
	}
	n.mu.Unlock()
	if announce {
		pathAttr := metric.WithAttributes(attribute.String("path", ev.Path.String()))
		n.established.Add(n.ctx, 1, pathAttr)
		n.setupTime.Record(n.ctx, ev.HandshakeTime.Seconds(), pathAttr)
		n.log.Info("connection established", "connection", c.id, "path", ev.Path.String(),
			"local", ev.LocalAddr, "remote", ev.RemoteAddr, "handshake_time", ev.HandshakeTime)
	}
}

func (n *Node) onICEFailed(c *connection, gen uint64) {
	n.mu.Lock()
	if n.conns[c.id] != c || c.agentGen != gen {
		n.mu.Unlock()
		return
	}
	agent := c.agent
	c.agent = nil
	c.agentGen++
	quiet := c.run == runUpsert && c.everEstablished
	if !quiet {
		c.state.Store(int32(stateFailed))
		n.emit(Event{Kind: EventConnectionFailed, ConnectionID: c.id, Err: ErrICEFailed})
	}
	if agent != nil {
		n.closeAgentAsync(agent)
	}
	n.mu.Unlock()
	if !quiet {
		n.log.Warn("connection failed: ICE found no path", "connection", c.id)
	}
}

// parseRemoteCandidate parses a signalled SDP candidate (untrusted input from
// the portal): a parser panic becomes an error, and only UDP candidates with
// a literal IP address and a valid port are accepted.
func parseRemoteCandidate(sdp string) (cand ice.Candidate, err error) {
	defer func() {
		if r := recover(); r != nil {
			cand, err = nil, fmt.Errorf("parse candidate: %v", r)
		}
	}()
	cand, err = ice.UnmarshalCandidate(trimCandidate(sdp))
	if err != nil {
		return nil, fmt.Errorf("parse candidate: %w", err)
	}
	if !cand.NetworkType().IsUDP() {
		return nil, fmt.Errorf("parse candidate: %s is not UDP", cand.NetworkType())
	}
	if _, ok := candidateAddr(cand); !ok || cand.Port() <= 0 || cand.Port() > 65535 {
		return nil, fmt.Errorf("parse candidate: bad address %s:%d", cand.Address(), cand.Port())
	}
	return cand, nil
}
