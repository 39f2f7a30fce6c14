package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/stun/v4"
	"github.com/pion/turn/v5"
)

// allocateTimeout bounds one Allocate transaction.
const allocateTimeout = 10 * time.Second

// relayFailuresBeforeDrop is how many consecutive keepalives a relay may miss
// before its allocations are dropped and its connections move.
const relayFailuresBeforeDrop = 2

// relayEntry is one relay the portal gave us, with up to one allocation per family.
type relayEntry struct {
	cfg    Relay
	allocs []*allocation
}

// allocation is one turn.Client on the node's socket of its family (no
// Listen: the demux feeds HandleInbound) with its shared UDP allocation.
type allocation struct {
	n       *Node
	relayID string
	server  netip.AddrPort
	sock    *socket
	client  *turn.Client

	ready       atomic.Bool
	relayed     net.PacketConn
	relayedAddr netip.AddrPort
	chans       interface {
		FindAddrByChannelNumber(uint16) (net.Addr, bool)
	}
	rtt          atomic.Int64 // ns, from the last keepalive
	mapped       atomic.Pointer[netip.AddrPort]
	failures     atomic.Int32
	busy         atomic.Bool // a keepalive or allocate is in flight
	firstAttempt atomic.Bool // the first Allocate has not completed yet

	mu         sync.Mutex
	views      map[*relayView]struct{}
	lastWriter map[netip.AddrPort]*relayView
	closed     bool
}

// turnSockConn is the PacketConn given to turn.Client: writes go out on the
// node socket; reads never happen (no Listen).
type turnSockConn struct {
	s    *socket
	done <-chan struct{}
}

func (c *turnSockConn) ReadFrom([]byte) (int, net.Addr, error) {
	<-c.done
	return 0, nil, net.ErrClosed
}
func (c *turnSockConn) WriteTo(b []byte, a net.Addr) (int, error) { return c.s.pc.WriteTo(b, a) }
func (c *turnSockConn) Close() error                              { return nil }
func (c *turnSockConn) LocalAddr() net.Addr                       { return c.s.pc.LocalAddr() }
func (c *turnSockConn) SetDeadline(time.Time) error               { return nil }
func (c *turnSockConn) SetReadDeadline(time.Time) error           { return nil }
func (c *turnSockConn) SetWriteDeadline(time.Time) error          { return nil }

func newAllocation(n *Node, r Relay, server netip.AddrPort, s *socket) (*allocation, error) {
	fam := turn.RequestedAddressFamilyIPv4
	if s.family == 6 {
		fam = turn.RequestedAddressFamilyIPv6
	}
	c, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr:         server.String(),
		TURNServerAddr:         server.String(),
		Username:               r.Username,
		Password:               r.Password,
		Realm:                  r.Realm,
		Conn:                   &turnSockConn{s: s, done: n.ctx.Done()},
		Net:                    n.net,
		LoggerFactory:          n.pionLog,
		RequestedAddressFamily: fam,
		RTO:                    n.cfg.RelayRTO,
	})
	if err != nil {
		return nil, fmt.Errorf("turn client for relay %s at %s: %w", r.ID, server, err)
	}
	return &allocation{
		n: n, relayID: r.ID, server: server, sock: s, client: c,
		views:      make(map[*relayView]struct{}),
		lastWriter: make(map[netip.AddrPort]*relayView),
	}, nil
}

// allocate runs the Allocate transaction and a first binding request (RTT and
// mapped address). It runs on its own goroutine owned by the node.
func (a *allocation) allocate(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, allocateTimeout)
	defer cancel()
	pc, err := a.client.AllocateWithContext(ctx)
	if err != nil {
		return fmt.Errorf("allocate on relay %s at %s: %w", a.relayID, a.server, err)
	}
	relayed := addrPortOf(pc.LocalAddr())
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		_ = pc.Close()
		return fmt.Errorf("allocate on relay %s: %w", a.relayID, ErrClosed)
	}
	a.relayed = pc
	a.relayedAddr = relayed
	if cl, ok := pc.(interface {
		FindAddrByChannelNumber(uint16) (net.Addr, bool)
	}); ok {
		a.chans = cl
	}
	a.mu.Unlock()
	a.probe()
	a.ready.Store(true)
	return nil
}

// probe sends a STUN binding request to the relay: keepalive for the NAT
// binding, RTT measurement and liveness check. It blocks for the transaction.
func (a *allocation) probe() bool {
	start := time.Now()
	mapped, err := a.client.SendBindingRequestTo(net.UDPAddrFromAddrPort(a.server))
	if err != nil {
		a.failures.Add(1)
		return false
	}
	a.rtt.Store(int64(time.Since(start)))
	m := addrPortOf(mapped)
	if m.IsValid() {
		a.mapped.Store(&m)
		a.sock.mapped.Store(&m)
	}
	a.failures.Store(0)
	return true
}

// readLoop reads the relayed conn (Data indications and non-WireGuard
// ChannelData the demux handed to HandleInbound) and dispatches it.
func (a *allocation) readLoop() {
	buf := make([]byte, 65536)
	for {
		n, from, err := a.relayed.ReadFrom(buf)
		if err != nil {
			return
		}
		a.dispatch(buf[:n], addrPortOf(from))
	}
}

func (a *allocation) dispatch(b []byte, from netip.AddrPort) {
	if isWireGuard(b) {
		ep := a.n.relayEndpoint(a, from)
		cp := make([]byte, len(b))
		copy(cp, b)
		a.n.noteRx(ep.conn, b, time.Now().UnixNano())
		select {
		case a.n.bind.relayIn <- relayedPacket{b: cp, ep: ep}:
		default:
		}
		return
	}
	if !isSTUN(b) {
		return
	}
	v := a.viewFor(b, from)
	if v != nil {
		v.push(b, from)
	}
}

// viewFor picks the connection view a STUN message from a peer belongs to:
// requests by the USERNAME's first ufrag (ours), others by the view that last
// wrote to that peer.
func (a *allocation) viewFor(b []byte, from netip.AddrPort) *relayView {
	a.mu.Lock()
	defer a.mu.Unlock()
	if b[0] == 0 && b[1] == 1 { // binding request
		msg := &stun.Message{Raw: append([]byte(nil), b...)}
		if err := msg.Decode(); err == nil {
			if u, err := msg.Get(stun.AttrUsername); err == nil {
				ufrag, _, _ := strings.Cut(string(u), ":")
				for v := range a.views {
					if v.ufrag == ufrag {
						return v
					}
				}
			}
		}
	}
	return a.lastWriter[from]
}

// handleInbound feeds a datagram from the relay server to the turn client.
func (a *allocation) handleInbound(b []byte, from netip.AddrPort) {
	_, _ = a.client.HandleInbound(b, net.UDPAddrFromAddrPort(from))
}

// peerForChannel maps a bound channel number to the peer address.
func (a *allocation) peerForChannel(ch uint16) (netip.AddrPort, bool) {
	if a.chans == nil {
		return netip.AddrPort{}, false
	}
	addr, ok := a.chans.FindAddrByChannelNumber(ch)
	if !ok {
		return netip.AddrPort{}, false
	}
	return addrPortOf(addr), true
}

// writeTo sends through the allocation to a peer.
func (a *allocation) writeTo(b []byte, peer netip.AddrPort) (int, error) {
	n, err := a.relayed.WriteTo(b, net.UDPAddrFromAddrPort(peer))
	if err != nil {
		return n, fmt.Errorf("relay %s write to %s: %w", a.relayID, peer, err)
	}
	return n, nil
}

// close releases the allocation (refresh with lifetime 0) and the client.
func (a *allocation) close() {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	a.closed = true
	views := make([]*relayView, 0, len(a.views))
	for v := range a.views {
		views = append(views, v)
	}
	relayed := a.relayed
	a.mu.Unlock()
	for _, v := range views {
		_ = v.Close()
	}
	if relayed != nil {
		_ = relayed.Close()
	}
	a.client.Close()
}

// relayView is the per-connection PacketConn over the shared relayed conn that
// backs the connection's relay candidate in its ICE agent.
type relayView struct {
	*pushConn
	a     *allocation
	ufrag string
}

func (a *allocation) newView(ufrag string) (*relayView, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed || a.relayed == nil {
		return nil, errors.New("allocation closed")
	}
	v := &relayView{a: a, ufrag: ufrag}
	v.pushConn = newPushConn(a.relayed.LocalAddr(), 64, func(b []byte, to net.Addr) (int, error) {
		peer := addrPortOf(to)
		a.mu.Lock()
		a.lastWriter[peer] = v
		a.mu.Unlock()
		return a.writeTo(b, peer)
	})
	v.pushConn.onClose = func() {
		a.mu.Lock()
		delete(a.views, v)
		for k, w := range a.lastWriter {
			if w == v {
				delete(a.lastWriter, k)
			}
		}
		a.mu.Unlock()
	}
	a.views[v] = struct{}{}
	return v, nil
}

// candidate builds the relay candidate of this allocation.
func (a *allocation) candidate() (*ice.CandidateRelay, error) {
	rel := netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
	if a.sock.family == 6 {
		rel = netip.AddrPortFrom(netip.IPv6Unspecified(), 0)
	}
	if m := a.mapped.Load(); m != nil && m.IsValid() {
		rel = *m
	}
	c, err := ice.NewCandidateRelay(&ice.CandidateRelayConfig{
		Network:       "udp",
		Address:       a.relayedAddr.Addr().String(),
		Port:          int(a.relayedAddr.Port()),
		Component:     1,
		RelAddr:       rel.Addr().String(),
		RelPort:       int(rel.Port()),
		RelayProtocol: "udp",
	})
	if err != nil {
		return nil, fmt.Errorf("relay candidate for %s: %w", a.relayID, err)
	}
	return c, nil
}
