package node

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/crypto/curve25519"
)

// DefaultPort is the conventional UDP port to pin a node to (both families), e.g. a gateway behind a
// port forward. The daemons default to port 0 (a fresh port on every start, as Firezone's clients and
// gateways do): a pinned port that a killed process left allocations on gets 437 Allocation Mismatch
// from every relay until those allocations expire, since only their owner's key can delete them.
const DefaultPort = 52625

// ErrNoRelays is returned by UpsertConnection when the node has no relay
// allocation (ready or in progress). The caller reacts by reconnecting to the
// portal, whose next init carries fresh relays.
var ErrNoRelays = errors.New("node: no relays available")

// ErrClosed is returned by methods called after Close.
var ErrClosed = errors.New("node: closed")

// ErrUnknownConnection is returned for operations on a connection id the node
// does not know.
var ErrUnknownConnection = errors.New("node: unknown connection")

// Key is a Curve25519 key (WireGuard static keys and pre-shared keys).
type Key [32]byte

// String returns the key in standard base64, as WireGuard and the portal use.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// IsZero reports whether the key is all zeroes.
func (k Key) IsZero() bool { return k == Key{} }

func (k Key) hex() string { return hex.EncodeToString(k[:]) }

// ParseKey decodes a base64 WireGuard key.
func ParseKey(s string) (Key, error) {
	var k Key
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return k, fmt.Errorf("parse key: %w", err)
	}
	if len(b) != len(k) {
		return k, fmt.Errorf("parse key: length %d, want 32", len(b))
	}
	copy(k[:], b)
	return k, nil
}

// GeneratePrivateKey returns a fresh clamped Curve25519 private key.
func GeneratePrivateKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return k, fmt.Errorf("generate private key: %w", err)
	}
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k, nil
}

// PublicKey derives the public key of a private key.
func (k Key) PublicKey() Key {
	var pub Key
	curve25519.ScalarBaseMult((*[32]byte)(&pub), (*[32]byte)(&k))
	return pub
}

// Credentials are ICE credentials (username fragment and password).
type Credentials struct {
	Ufrag    string
	Password string
}

// ConnectionParams are what UpsertConnection needs to create (or keep) a
// connection; the portal provides all of them: the peer's key, the flow's
// PSK and both sides' ICE credentials. Named fields keep the two keys and the
// two credentials from being swapped.
type ConnectionParams struct {
	// ID names the connection: the gateway's id on a client, the client's id
	// on a gateway.
	ID string
	// RemoteKey is the peer's WireGuard static public key.
	RemoteKey Key
	// PresharedKey is the flow's WireGuard pre-shared key.
	PresharedKey Key
	// Local are this side's ICE credentials.
	Local Credentials
	// Remote are the peer's ICE credentials.
	Remote Credentials
	// Role is this side's ICE role (the client controls).
	Role Role
}

// Role is the ICE role of this side of a connection. The client is
// controlling, the gateway controlled; only the controlling side forces a
// WireGuard handshake when a pair is nominated.
type Role int

const (
	// RoleControlling is the ICE controlling side (the client).
	RoleControlling Role = iota + 1
	// RoleControlled is the ICE controlled side (the gateway).
	RoleControlled
)

// String names the role.
func (r Role) String() string {
	switch r {
	case RoleControlling:
		return "controlling"
	case RoleControlled:
		return "controlled"
	}
	return fmt.Sprintf("role(%d)", int(r))
}

// Relay is a TURN relay as the portal describes it, merged per id by the
// caller from the portal's per-family objects. An invalid Addr4/Addr6 means
// the relay has no address in that family.
type Relay struct {
	ID       string
	Addr4    netip.AddrPort
	Addr6    netip.AddrPort
	Username string
	Password string
	Realm    string
}

// Path is the kind of path a connection's traffic takes.
type Path int

const (
	// PathNone means no path is nominated yet.
	PathNone Path = iota
	// PathHost is a direct path between host candidates.
	PathHost
	// PathServerReflexive is a direct path involving a server-reflexive or
	// peer-reflexive address (NAT traversal).
	PathServerReflexive
	// PathRelay goes through a TURN allocation (ours or the peer's).
	PathRelay
)

// String names the path as logs and metrics use it.
func (p Path) String() string {
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

// EventKind says what an Event reports.
type EventKind int

const (
	// EventCandidateAdded carries a new local candidate (SDP) to signal to
	// the peer of ConnectionID.
	EventCandidateAdded EventKind = iota + 1
	// EventCandidateInvalidated carries a local candidate the peer must drop.
	EventCandidateInvalidated
	// EventConnectionEstablished reports WireGuard up on a nominated path.
	EventConnectionEstablished
	// EventConnectionFailed reports that ICE could not find a path.
	EventConnectionFailed
	// EventNoRelays reports that the node lost its last relay allocation.
	EventNoRelays
	// EventRelayReady reports a new relay allocation (RelayID, RelayedAddr).
	EventRelayReady
)

// String names the event kind.
func (k EventKind) String() string {
	switch k {
	case EventCandidateAdded:
		return "candidate_added"
	case EventCandidateInvalidated:
		return "candidate_invalidated"
	case EventConnectionEstablished:
		return "connection_established"
	case EventConnectionFailed:
		return "connection_failed"
	case EventNoRelays:
		return "no_relays"
	case EventRelayReady:
		return "relay_ready"
	}
	return fmt.Sprintf("event(%d)", int(k))
}

// Event is something the caller must act on (signal a candidate, log, …).
type Event struct {
	Kind         EventKind
	ConnectionID string
	// Candidate is the SDP candidate string (candidate events).
	Candidate string
	// Path, LocalAddr, RemoteAddr and HandshakeTime describe an established
	// connection. HandshakeTime is the time from UpsertConnection (or the
	// ICE re-run) until the first authenticated WireGuard reply.
	Path          Path
	LocalAddr     netip.AddrPort
	RemoteAddr    netip.AddrPort
	HandshakeTime time.Duration
	// RelayID and RelayedAddr describe relay events.
	RelayID     string
	RelayedAddr netip.AddrPort
	// Err says why a connection failed.
	Err error
}

// ConnStats describes one connection for Stats.
type ConnStats struct {
	ID         string
	Path       Path
	LocalAddr  netip.AddrPort
	RemoteAddr netip.AddrPort
	// RelayID is the relay sampled for the connection: where its own relay
	// candidates are, whatever path ICE chose.
	RelayID string
	// PathRelayID names the relay that carries a relayed path: ours when
	// our allocation is the local end, else the peer's, found by the address
	// of its relayed candidate ("" if the path is not relayed or the relay is
	// not one of ours).
	PathRelayID   string
	RTT           time.Duration
	RxBytes       uint64
	TxBytes       uint64
	LastHandshake time.Time
	Established   bool
	Idle          bool
}
