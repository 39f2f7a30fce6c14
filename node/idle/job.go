package idle

import (
	"fmt"
	"time"
)

// State is a connection's activity state.
type State uint8

const (
	// Active: the connection carried a packet within the last IdleAfter.
	Active State = iota + 1
	// Idle: no packet for IdleAfter; only the shared NAT keepalive wakes the node for it.
	Idle
)

// String returns "active" or "idle".
func (s State) String() string {
	switch s {
	case Active:
		return "active"
	case Idle:
		return "idle"
	default:
		return fmt.Sprintf("State(%d)", uint8(s))
	}
}

// Kind says what a due job is. Kinds below KindAllocationRefresh belong to connections and are produced by
// the Scheduler itself (their Key is the connection id); the others are node jobs the caller registers.
type Kind uint8

const (
	// KindWentIdle: the connection (Key) just went idle. Send it one NAT keepalive and use idle timings.
	KindWentIdle Kind = iota + 1
	// KindNATKeepalive: the idle connection (Key) needs its NAT keepalive (all idle connections share one
	// tick).
	KindNATKeepalive
	// KindActiveCheck: the active connection (Key) is due its periodic path / consent check (all active
	// connections share one tick).
	KindActiveCheck

	// KindAllocationRefresh: refresh the TURN allocation of relay Key (node job).
	KindAllocationRefresh
	// KindChannelRefresh: refresh a channel binding; Key is chosen by the caller (node job).
	KindChannelRefresh
	// KindRelayKeepalive: send a STUN keepalive to relay Key (node job, usually every 25 s).
	KindRelayKeepalive

	// KindUser is the first kind free for callers' own node jobs (KindUser, KindUser+1, ...).
	KindUser Kind = 32
)

var kindNames = [...]string{
	KindWentIdle:          "went-idle",
	KindNATKeepalive:      "nat-keepalive",
	KindActiveCheck:       "active-check",
	KindAllocationRefresh: "allocation-refresh",
	KindChannelRefresh:    "channel-refresh",
	KindRelayKeepalive:    "relay-keepalive",
}

// String returns the kind's name, e.g. "nat-keepalive".
func (k Kind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	if k >= KindUser {
		return fmt.Sprintf("user+%d", uint8(k-KindUser))
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Connection reports whether the kind is one of the per-connection kinds the Scheduler produces itself.
func (k Kind) Connection() bool { return k >= KindWentIdle && k <= KindActiveCheck }

// JobID names one job: its kind and a key (a connection id, a relay id, ...).
type JobID struct {
	// Kind says what the job is.
	Kind Kind
	// Key tells jobs of one kind apart: the connection id for connection kinds, else the caller's key.
	Key string
}

// String returns "kind/key".
func (j JobID) String() string { return j.Kind.String() + "/" + j.Key }

// Due is one piece of work returned by Poll.
type Due struct {
	// Job says what to do; for connection kinds Job.Key is the connection id.
	Job JobID
	// At is when the work was due; it is at most Slack after the now given to Poll.
	At time.Time
}
