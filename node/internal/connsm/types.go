package connsm

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// ErrICEFailed is the error of a Failed event when ICE found no path.
var ErrICEFailed = errors.New("node: ICE found no working candidate pair")

// ErrHandshakeTimeout is the error of a Failed event when ICE found a path
// but WireGuard never answered on it (e.g. mismatched keys or PSK).
var ErrHandshakeTimeout = errors.New("node: no WireGuard handshake on the nominated path")

// State is where a connection is in its life.
type State int

const (
	// Connecting: ICE runs, nothing nominated (also during a re-run that
	// is not an upsert's).
	Connecting State = iota
	// Nominated: a pair is nominated, WireGuard's handshake on it has not
	// completed yet.
	Nominated
	// Established: WireGuard is up on the nominated path.
	Established
	// Failed: ICE found no path, or WireGuard never answered on it.
	Failed
)

// String names the state.
func (s State) String() string {
	switch s {
	case Connecting:
		return "connecting"
	case Nominated:
		return "nominated"
	case Established:
		return "established"
	case Failed:
		return "failed"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// PathKind is the kind of path a connection's traffic takes. Its values are
// those of node.Path.
type PathKind int

const (
	// PathNone: nothing nominated yet.
	PathNone PathKind = iota
	// PathHost: direct between host candidates.
	PathHost
	// PathServerReflexive: direct, through a NAT (srflx or prflx address).
	PathServerReflexive
	// PathRelay: through a TURN allocation (ours or the peer's).
	PathRelay
)

// String names the path kind as node.Path does.
func (p PathKind) String() string {
	switch p {
	case PathHost:
		return "host"
	case PathServerReflexive:
		return "srflx"
	case PathRelay:
		return "relay"
	}
	return "none"
}

// CandidateType is the type of an ICE candidate.
type CandidateType int

const (
	// CandidateHost is a host candidate.
	CandidateHost CandidateType = iota + 1
	// CandidateServerReflexive is a server-reflexive candidate.
	CandidateServerReflexive
	// CandidatePeerReflexive is a peer-reflexive candidate (learnt from a check).
	CandidatePeerReflexive
	// CandidateRelay is a relay candidate.
	CandidateRelay
)

// String names the candidate type as SDP does.
func (t CandidateType) String() string {
	switch t {
	case CandidateHost:
		return "host"
	case CandidateServerReflexive:
		return "srflx"
	case CandidatePeerReflexive:
		return "prflx"
	case CandidateRelay:
		return "relay"
	}
	return fmt.Sprintf("type(%d)", int(t))
}

// Candidate is an ICE candidate as the core sees it: its SDP (what is
// signalled), its transport address and its type. The shell parses SDP.
type Candidate struct {
	SDP  string
	Addr netip.AddrPort
	Type CandidateType
}

// Pair is a nominated candidate pair.
type Pair struct {
	Local, Remote Candidate
	// RelayID names our relay whose allocation the local candidate is ("":
	// the local candidate is direct, from our socket).
	RelayID string
	// RelayGone: the local candidate is a relay candidate whose allocation
	// the node no longer has.
	RelayGone bool
}

// Kind is the path kind of the pair.
func (p Pair) Kind() PathKind {
	switch {
	case p.Local.Type == CandidateRelay || p.Remote.Type == CandidateRelay:
		return PathRelay
	case p.Local.Type == CandidateHost && p.Remote.Type == CandidateHost:
		return PathHost
	}
	return PathServerReflexive
}

// Path describes the path in use.
type Path struct {
	Kind          PathKind
	Local, Remote netip.AddrPort
	// RelayID names our relay when the path goes through our allocation.
	RelayID string
}

// Reason says why ICE (re-)runs.
type Reason int

const (
	// RunInitial: a new connection (or one never established).
	RunInitial Reason = iota
	// RunUpsert: the same parameters were upserted again.
	RunUpsert
	// RunPathFailed: traffic stopped coming back.
	RunPathFailed
	// RunPathLost: the path's relay went away or the peer invalidated the
	// candidate in use.
	RunPathLost
)

// String names the reason.
func (r Reason) String() string {
	switch r {
	case RunInitial:
		return "initial"
	case RunUpsert:
		return "upsert"
	case RunPathFailed:
		return "path_failed"
	case RunPathLost:
		return "path_lost"
	}
	return fmt.Sprintf("reason(%d)", int(r))
}

// Action is something the shell must do. The concrete types are
// StartAgent, CloseAgent, AddRemoteCandidate, AddSrflxCandidate,
// AddRelayCandidates, UsePath, SuspendPath and SendKeepalive.
type Action interface{ isAction() }

// StartAgent: create ICE agent Gen with the connection's local credentials,
// gather host candidates, give it the node-wide server-reflexive addresses
// Srflx, the candidates of relay RelayID ("" none) and the remote
// candidates, and start it in the connection's role. Gen replaces every
// older agent (whose CloseAgent precedes).
type StartAgent struct {
	Gen     uint64
	Reason  Reason
	RelayID string
	Srflx   []netip.AddrPort
	Remote  []Candidate
}

// CloseAgent: close agent Gen (asynchronously: the core ignores its
// callbacks from now on).
type CloseAgent struct{ Gen uint64 }

// AddRemoteCandidate: give agent Gen a candidate the peer signalled.
type AddRemoteCandidate struct {
	Gen       uint64
	Candidate Candidate
}

// AddSrflxCandidate: give agent Gen the node's server-reflexive address Addr
// (learnt after it started).
type AddSrflxCandidate struct {
	Gen  uint64
	Addr netip.AddrPort
}

// AddRelayCandidates: give agent Gen the candidates of relay RelayID's ready
// allocations it does not have yet (the shell knows the allocations).
type AddRelayCandidates struct {
	Gen     uint64
	RelayID string
}

// UsePath: send the connection's WireGuard traffic along Pair from now on
// (point the peer at it, flush what was buffered). Rerun: the connection was
// up before (same WireGuard session): send a keepalive so the peer roams to
// the new path. ForceHandshake: start a WireGuard handshake on it unless one
// was just flushed (only the controlling side, and only on a first
// nomination).
type UsePath struct {
	Gen            uint64
	Pair           Pair
	Rerun          bool
	ForceHandshake bool
}

// SuspendPath: the path's relay allocation is gone, so nothing can be sent
// along it: buffer the connection's WireGuard traffic (as before a first
// nomination) until the next UsePath flushes it. A running agent (or one
// StartAgent after this action) is looking for the new path; Gen is the
// agent current when the path was lost.
type SuspendPath struct{ Gen uint64 }

// SendKeepalive: send a WireGuard keepalive to the peer (NAT keepalive).
type SendKeepalive struct{}

func (StartAgent) isAction()         {}
func (CloseAgent) isAction()         {}
func (AddRemoteCandidate) isAction() {}
func (AddSrflxCandidate) isAction()  {}
func (AddRelayCandidates) isAction() {}
func (UsePath) isAction()            {}
func (SuspendPath) isAction()        {}
func (SendKeepalive) isAction()      {}

// EventKind says what an Event reports.
type EventKind int

const (
	// EventCandidateAdded: a new local candidate to signal.
	EventCandidateAdded EventKind = iota + 1
	// EventCandidateInvalidated: a local (relay) candidate the peer must drop.
	EventCandidateInvalidated
	// EventEstablished: WireGuard up on the nominated path.
	EventEstablished
	// EventFailed: no path (ErrICEFailed) or no handshake on it (ErrHandshakeTimeout).
	EventFailed
)

// Event is what the caller of the node learns about the connection.
type Event struct {
	Kind EventKind
	// Candidate is the SDP of candidate events.
	Candidate string
	// RelayID is the relay of an invalidated relay candidate.
	RelayID string
	// Path and HandshakeTime describe an established connection:
	// HandshakeTime runs from the start of the ICE run.
	Path          Path
	HandshakeTime time.Duration
	// Err says why the connection failed.
	Err error
}
