package node

import (
	"net/netip"
	"strings"
	"time"

	"github.com/pion/ice/v4"
)

// strayInterval is the shortest time between two resolutions of stray
// endpoints (each is one IpcGet, O(peers)): a flood of WireGuard-looking
// datagrams from strangers costs at most one per interval.
const strayInterval = 50 * time.Millisecond

// A stray endpoint is the endpoint of an address tied to no connection: the
// demux hands one up for a WireGuard message from an address that is no
// connection's path. wireguard-go authenticates the message and, if it is
// valid for a peer, roams that peer onto the stray endpoint (it does so on
// every authenticated packet). That happens when the remote's NAT remaps its
// mapping mid-connection. The peer's traffic must still count for its
// connection, so the node ties the address to the connection (resolveStrays)
// and from then on hands up, and sends along, the connection's endpoint.

// noteStray reports a WireGuard message received from, or sent to, a stray
// endpoint. It is called on the data path: lock-free, one atomic load when a
// report is already pending.
func (n *Node) noteStray() {
	if !n.strayFlag.Load() && n.strayFlag.CompareAndSwap(false, true) {
		select {
		case n.strays <- struct{}{}:
		default:
		}
	}
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

// resolveStrays asks wireguard-go where each peer of an established
// connection now is and ties every address a peer roamed to (by an
// authenticated packet) to that peer's connection: its counters and idle
// state follow the traffic again, and its path (Stats, the next ICE
// decisions) names the new remote address. It runs on the loop goroutine.
func (n *Node) resolveStrays() {
	n.mu.Lock()
	anyUp := false
	for _, c := range n.conns {
		if connState(c.state.Load()) == stateEstablished {
			anyUp = true
			break
		}
	}
	n.mu.Unlock()
	if !anyUp {
		return
	}
	peers := n.peerStates()
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, c := range n.conns {
		// While ICE runs (or before it first succeeded) the nomination
		// decides the path; onSelected points the peer at it.
		if connState(c.state.Load()) != stateEstablished {
			continue
		}
		p, ok := peers[c.remoteKey]
		if !ok || p.endpoint == "" {
			continue
		}
		e, ok := n.endpointFromStringLocked(p.endpoint)
		if !ok {
			continue
		}
		if b := n.boundEndpoint(e); b != nil {
			// Already tied: to c, or to a connection still using it.
			if b.conn == c || b.conn.remoteAddr == b.dst {
				continue
			}
		}
		e.conn = c
		n.registerEndpoint(e)
		from := c.remoteAddr
		c.remoteAddr = e.dst
		switch rt, known := c.remoteCandidateTypeLocked(e.dst); {
		case e.alloc != nil:
			c.path, c.localAddr = PathRelay, e.alloc.relayedAddr
		case known && rt == ice.CandidateTypeRelay: // the peer's allocation, from our socket
			c.path = PathRelay
		case known && rt == ice.CandidateTypeHost && c.path == PathHost:
			// Another host address of the peer, on the same kind of path.
		default:
			// Not signalled (peer-reflexive: reported as srflx), or srflx.
			c.path = PathServerReflexive
		}
		if e.alloc == nil && c.localAddr.Addr().IsValid() && n.allocByRelayedLocked(c.localAddr) != nil {
			// The path left our allocation: we now send from our socket.
			c.localAddr = netip.AddrPortFrom(netip.IPv4Unspecified(), n.Port())
			if !e.dst.Addr().Unmap().Is4() {
				c.localAddr = netip.AddrPortFrom(netip.IPv6Unspecified(), n.Port())
			}
		}
		n.log.Info("peer roamed: its connection follows it", "connection", c.id,
			"from", from, "to", e.DstToString(), "path", c.path.String())
	}
}

// endpointFromStringLocked parses what endpoint.DstToString returned for a
// direct or relayed endpoint. n.mu is held.
func (n *Node) endpointFromStringLocked(s string) (*endpoint, bool) {
	if rest, ok := strings.CutPrefix(s, "relay("); ok {
		i := strings.LastIndex(rest, ")/")
		if i < 0 {
			return nil, false
		}
		dst, err := netip.ParseAddrPort(rest[i+2:])
		if err != nil {
			return nil, false
		}
		r := n.relays[rest[:i]]
		if r == nil {
			return nil, false
		}
		for _, a := range r.allocs {
			if a.ready.Load() && a.relayedAddr.Addr().Unmap().Is4() == dst.Addr().Unmap().Is4() {
				return &endpoint{alloc: a, dst: dst}, true
			}
		}
		return nil, false
	}
	dst, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, false
	}
	return &endpoint{dst: dst}, true
}

// remoteCandidateTypeLocked returns the type of the candidate the peer
// signalled for addr, if it signalled one. n.mu is held.
func (c *connection) remoteCandidateTypeLocked(addr netip.AddrPort) (ice.CandidateType, bool) {
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	for sdp := range c.remoteCands {
		cand, err := parseRemoteCandidate(sdp)
		if err != nil {
			continue
		}
		if a, ok := candidateAddr(cand); ok && a == addr {
			return cand.Type(), true
		}
	}
	return 0, false
}
