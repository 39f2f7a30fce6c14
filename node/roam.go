package node

import (
	"net/netip"
	"slices"
	"time"

	"github.com/snowgate/snowgate/node/internal/connsm"
	"github.com/snowgate/snowgate/node/internal/wgtrack"
)

// Paths tied to no connection ("stray" endpoints).
//
// The demux hands wireguard-go a stray endpoint for a WireGuard message
// along a path that is no connection's: before ICE nominated the path on
// this side (the peer's handshake initiation can arrive first), or where a
// peer roamed (its NAT remapped mid-connection). wireguard-go authenticates
// the message and, if it is valid for a peer, moves that peer onto the
// endpoint (it does so on every authenticated packet).
//
// Two things follow, both from the messages' index fields (wgtrack), with
// no text from wireguard-go:
//
//   - Handshake messages along a stray path are kept in a small log
//     (strayLog). When ICE nominates that path for a connection, the log is
//     replayed into the connection's tracker: a handshake that completed
//     before our nomination counts.
//   - wireguard-go sending a transport message along a stray path to one of
//     a connection's session indices of the peer means it moved that peer
//     there: the node ties the path to the connection (the loop, roamLocked),
//     so its counters and idle state follow the traffic again and its path
//     names the new remote address. The packets before that (a few
//     milliseconds) are not counted. ICE is not re-run: the agents are
//     closed, and the peer's authenticated packets already prove the
//     address.

// Bounds of the stray log: it keeps handshakes, at most strayPerPath
// messages per path and strayPaths paths (the oldest go first).
const (
	strayPerPath = 8
	strayPaths   = 64
	// roamReportInterval spaces the loop's roam checks per connection
	// while wireguard-go keeps sending along a stray path.
	roamReportInterval = 50 * time.Millisecond
)

// strayMsg is a WireGuard message along a stray path.
type strayMsg struct {
	at   time.Time
	sent bool
	h    wgtrack.Header
}

// boundEndpoint returns the connection's endpoint for the path of stray
// endpoint e, if the node has tied that path to a connection since e was
// handed to wireguard-go.
func (n *Node) boundEndpoint(e *endpoint) *endpoint {
	var b *endpoint
	if e.alloc != nil {
		b = (*n.epRelay.Load())[relayKey{e.alloc, e.dst}]
	} else {
		b = (*n.epDirect.Load())[e.dst]
	}
	if b == nil || b.conn == nil {
		return nil
	}
	return b
}

// strayRx records a message received along a stray path (data path).
func (n *Node) strayRx(e *endpoint, b []byte, now int64) {
	if h, ok := wgtrack.Parse(b); ok {
		n.logStray(relayKey{e.alloc, e.dst}, strayMsg{at: time.Unix(0, now), h: h})
	}
}

// strayTx records messages wireguard-go sends along a stray path, and
// reports a roam if they go to a connection's peer (data path).
func (n *Node) strayTx(e *endpoint, bufs [][]byte) {
	now := time.Now()
	for _, b := range bufs {
		h, ok := wgtrack.Parse(b)
		if !ok {
			continue
		}
		n.logStray(relayKey{e.alloc, e.dst}, strayMsg{at: now, sent: true, h: h})
		if h.Type != wgtrack.TypeTransport {
			continue
		}
		c := (*n.remoteIdx.Load())[h.Receiver]
		if c == nil {
			continue
		}
		if last := c.roamAt.Load(); now.UnixNano()-last < int64(roamReportInterval) {
			continue
		}
		c.roamAt.Store(now.UnixNano())
		c.roamTo.Store(&endpoint{conn: c, alloc: e.alloc, dst: e.dst})
		n.poke(c)
	}
}

// logStray appends a message to its path's log. Transport messages are kept
// only when they confirm a logged handshake (the first one to the index of
// a response), so traffic cannot push handshakes out.
func (n *Node) logStray(k relayKey, m strayMsg) {
	n.strayMu.Lock()
	defer n.strayMu.Unlock()
	log := n.strayLog[k]
	if m.h.Type == wgtrack.TypeTransport && !confirms(log, m) {
		return
	}
	if log == nil && len(n.strayLog) >= strayPaths {
		var oldest relayKey
		var at time.Time
		first := true
		for k2, l := range n.strayLog {
			if first || l[len(l)-1].at.Before(at) {
				oldest, at, first = k2, l[len(l)-1].at, false
			}
		}
		delete(n.strayLog, oldest)
	}
	if len(log) >= strayPerPath {
		log = slices.Delete(log, 0, 1)
	}
	n.strayLog[k] = append(log, m)
}

// confirms reports whether transport message m is the first to confirm a
// response in log (sent by us if m is received, received if m is sent).
func confirms(log []strayMsg, m strayMsg) bool {
	for i := len(log) - 1; i >= 0; i-- {
		l := log[i]
		if l.h.Type == wgtrack.TypeTransport && l.sent == m.sent && l.h.Receiver == m.h.Receiver {
			return false // already confirmed
		}
		if l.h.Type == wgtrack.TypeResponse && l.sent != m.sent && l.h.Sender == m.h.Receiver {
			return true
		}
	}
	return false
}

// replayStrays feeds the stray log of ep's path to c's tracker (messages
// since c was created) and forgets it: ep is now c's. n.mu is held.
func (n *Node) replayStrays(c *connection, ep *endpoint) {
	k := relayKey{ep.alloc, ep.dst}
	n.strayMu.Lock()
	log := n.strayLog[k]
	delete(n.strayLog, k)
	n.strayMu.Unlock()
	done := false
	c.hsMu.Lock()
	for _, m := range log {
		if m.at.Before(c.createdAt) {
			continue
		}
		if m.sent {
			done = c.hs.SentHeader(m.h, m.at) || done
		} else {
			done = c.hs.ReceivedHeader(m.h, m.at) || done
		}
	}
	c.hsAwaiting.Store(c.hs.Awaiting())
	c.hsMu.Unlock()
	if done {
		n.updateIndices(c)
	}
}

// updateIndices publishes c's peer session indices for strayTx.
func (n *Node) updateIndices(c *connection) {
	c.hsMu.Lock()
	remotes := c.hs.Remotes()
	c.hsMu.Unlock()
	n.idxMu.Lock()
	defer n.idxMu.Unlock()
	old := *n.remoteIdx.Load()
	m := make(map[uint32]*connection, len(old)+1)
	for k, v := range old {
		if v != c {
			m[k] = v
		}
	}
	for _, r := range remotes {
		m[r] = c
	}
	n.remoteIdx.Store(&m)
}

// forgetIndices drops c's peer session indices.
func (n *Node) forgetIndices(c *connection) {
	n.idxMu.Lock()
	defer n.idxMu.Unlock()
	old := *n.remoteIdx.Load()
	m := make(map[uint32]*connection, len(old))
	for k, v := range old {
		if v != c {
			m[k] = v
		}
	}
	n.remoteIdx.Store(&m)
}

// roamLocked ties the path wireguard-go moved c's peer to (ep) to c, and
// tells the core. n.mu is held.
func (n *Node) roamLocked(c *connection, ep *endpoint, now time.Time) {
	if c.sm.State() != connsm.Established || n.boundEndpoint(ep) != nil {
		// While ICE runs (or before it first succeeded) the nomination
		// decides the path. A path tied meanwhile is someone's already.
		return
	}
	if ep.alloc != nil && !n.ownsLocked(ep.alloc) {
		return
	}
	n.registerEndpoint(ep)
	relayID, relayed := "", netip.AddrPort{}
	if ep.alloc != nil {
		relayID, relayed = ep.alloc.relayID, ep.alloc.relayedAddr
	}
	socketLocal := netip.AddrPortFrom(netip.IPv4Unspecified(), n.Port())
	if !ep.dst.Addr().Unmap().Is4() {
		socketLocal = netip.AddrPortFrom(netip.IPv6Unspecified(), n.Port())
	}
	c.sm.HandleRoamed(ep.dst, relayID, relayed, socketLocal, now)
}
