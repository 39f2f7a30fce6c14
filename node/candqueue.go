package node

import (
	"errors"
	"time"
)

// Bounds of the queue of remote candidates for connections the node does not
// know yet (see AddRemoteCandidate).
const (
	// maxQueuedPerConn is how many candidates are kept per unknown connection.
	maxQueuedPerConn = 32
	// maxQueuedConns is how many unknown connections may have candidates queued.
	maxQueuedConns = 64
	// queuedCandidateTTL is how long a queued candidate waits for its connection.
	queuedCandidateTTL = 60 * time.Second
)

// ErrCandidateQueueFull is returned by AddRemoteCandidate when a candidate for
// a connection the node does not know yet cannot be queued: that connection
// already has maxQueuedPerConn candidates queued, or maxQueuedConns other
// unknown connections have. The candidate is dropped.
var ErrCandidateQueueFull = errors.New("node: queue of candidates for unknown connections is full")

// queuedCandidate is a remote candidate received before its connection.
type queuedCandidate struct {
	sdp string
	at  time.Time
}

// queueCandidateLocked keeps a remote candidate for a connection that does
// not exist yet. Expired entries are dropped first (lazily: no timer). n.mu
// is held.
func (n *Node) queueCandidateLocked(id, sdp string, now time.Time) error {
	n.expireQueuedLocked(now)
	q, known := n.queued[id]
	for _, c := range q {
		if c.sdp == sdp {
			return nil
		}
	}
	if !known && len(n.queued) >= maxQueuedConns {
		return ErrCandidateQueueFull
	}
	if len(q) >= maxQueuedPerConn {
		return ErrCandidateQueueFull
	}
	n.queued[id] = append(q, queuedCandidate{sdp: sdp, at: now})
	return nil
}

// unqueueCandidateLocked forgets a queued candidate; it reports whether there
// was one. n.mu is held.
func (n *Node) unqueueCandidateLocked(id, sdp string, now time.Time) bool {
	n.expireQueuedLocked(now)
	q := n.queued[id]
	for i, c := range q {
		if c.sdp == sdp {
			q = append(q[:i:i], q[i+1:]...)
			if len(q) == 0 {
				delete(n.queued, id)
			} else {
				n.queued[id] = q
			}
			return true
		}
	}
	return false
}

// takeQueuedLocked removes and returns the live candidates queued for id.
// n.mu is held.
func (n *Node) takeQueuedLocked(id string, now time.Time) []string {
	n.expireQueuedLocked(now)
	q := n.queued[id]
	delete(n.queued, id)
	out := make([]string, 0, len(q))
	for _, c := range q {
		out = append(out, c.sdp)
	}
	return out
}

// expireQueuedLocked drops queued candidates older than queuedCandidateTTL.
// n.mu is held.
func (n *Node) expireQueuedLocked(now time.Time) {
	for id, q := range n.queued {
		keep := q[:0]
		for _, c := range q {
			if now.Sub(c.at) < queuedCandidateTTL {
				keep = append(keep, c)
			}
		}
		if dropped := len(q) - len(keep); dropped > 0 {
			n.log.Debug("queued remote candidates expired: their connection never came", "connection", id, "dropped", dropped)
		}
		if len(keep) == 0 {
			delete(n.queued, id)
		} else {
			n.queued[id] = keep
		}
	}
}
