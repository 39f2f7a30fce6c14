package node

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v4"
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

// allocation is one TURN client on the node's socket of its family (no
// Listen: the demux feeds HandleInbound) with its shared UDP allocation.
//
// The blocking TURN transactions (Allocate, the keepalive's binding request)
// run on goroutines owned by the node; their results go to the node's loop.
// Fields marked "loop" are only touched under Node.mu.
type allocation struct {
	n       *Node
	relayID string
	server  netip.AddrPort
	sock    *socket
	client  turnClient

	ready       atomic.Bool
	relayed     relayedConn
	relayedAddr netip.AddrPort
	rtt         atomic.Int64 // ns, from the last keepalive
	mapped      atomic.Pointer[netip.AddrPort]
	busy        atomic.Bool // a keepalive or allocate is in flight

	failures     int  // loop: consecutive failed keepalives
	firstAttempt bool // loop: the first Allocate has not completed yet

	// gone is set when the relay is dropped or close starts: the data path
	// stops sending through it.
	gone atomic.Bool

	// iceOut holds the datagrams the connections' ICE agents send through the allocation, and
	// writeLoop sends them. pion's WriteTo blocks while it creates the permission for a new peer: a
	// transaction of up to ≈8 s on a relay that stopped answering. An agent must never wait for
	// that: its loop runs every check of its connection, and the node's loop calls into it under
	// Node.mu (a relay dying during ICE stalled the whole node until the transaction timed out).
	iceOut  chan relayWrite
	stopOut chan struct{} // closed by close: writeLoop returns

	mu         sync.Mutex
	views      map[*relayView]struct{}
	lastWriter map[netip.AddrPort]*relayView
	closed     bool
}

// turnSockConn is the PacketConn given to the TURN client: writes go out on
// the node socket; reads never happen (no Listen).
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
	c, err := n.newTURN(turnConfig{relay: r, server: server, conn: &turnSockConn{s: s, done: n.ctx.Done()}, ipv6: s.family == 6})
	if err != nil {
		return nil, err
	}
	a := &allocation{n: n, relayID: r.ID, server: server, sock: s, client: c}
	a.init()
	return a, nil
}

// iceOutQueue bounds the ICE datagrams waiting for writeLoop per allocation; more are dropped (the
// agents retransmit their checks).
const iceOutQueue = 256

// relayWrite is one datagram an ICE agent sends to peer through the allocation.
type relayWrite struct {
	b    []byte
	peer netip.AddrPort
}

// init makes the allocation's maps and its ICE send queue.
func (a *allocation) init() {
	a.views = make(map[*relayView]struct{})
	a.lastWriter = make(map[netip.AddrPort]*relayView)
	a.iceOut = make(chan relayWrite, iceOutQueue)
	a.stopOut = make(chan struct{})
}

// queueICE queues a copy of b for writeLoop and returns at once; a full queue drops it, as a
// congested link would.
func (a *allocation) queueICE(b []byte, peer netip.AddrPort) (int, error) {
	select {
	case <-a.stopOut:
		return 0, net.ErrClosed
	default:
	}
	select {
	case a.iceOut <- relayWrite{b: bytes.Clone(b), peer: peer}:
	default:
	}
	return len(b), nil
}

// writeLoop sends the queued ICE datagrams until close. It runs on a goroutine owned by the node,
// started when the allocation is ready.
func (a *allocation) writeLoop() {
	for {
		select {
		case <-a.stopOut:
			return
		case w := <-a.iceOut:
			if _, err := a.writeTo(w.b, w.peer); err != nil && !a.gone.Load() && a.n != nil {
				a.n.log.Debug("relayed ICE check not sent", "relay", a.relayID, "peer", w.peer, "error", err)
			}
		}
	}
}

// allocate runs the Allocate transaction and a first binding request (RTT and
// mapped address). It runs on its own goroutine owned by the node.
func (a *allocation) allocate(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, allocateTimeout)
	defer cancel()
	pc, err := a.client.Allocate(ctx)
	if err != nil {
		return fmt.Errorf("allocate on relay %s at %s: %w", a.relayID, a.server, err)
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		_ = pc.Close()
		return fmt.Errorf("allocate on relay %s: %w", a.relayID, ErrClosed)
	}
	a.relayed = pc
	a.relayedAddr = addrPortOf(pc.LocalAddr())
	a.mu.Unlock()
	a.probe()
	return nil
}

// probe sends a STUN binding request to the relay: keepalive for the NAT
// binding, RTT measurement and liveness check. It blocks for the transaction.
func (a *allocation) probe() bool {
	start := time.Now()
	m, err := a.client.Probe()
	if err != nil {
		return false
	}
	a.rtt.Store(int64(time.Since(start)))
	if m.IsValid() {
		a.mapped.Store(&m)
		a.sock.mapped.Store(&m)
	}
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
		a.n.noteRx(ep, b, time.Now().UnixNano())
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

// handleInbound feeds a datagram from the relay server to the TURN client.
func (a *allocation) handleInbound(b []byte, from netip.AddrPort) { a.client.HandleInbound(b, from) }

// peerForChannel maps a bound channel number to the peer address.
func (a *allocation) peerForChannel(ch uint16) (netip.AddrPort, bool) {
	if !a.ready.Load() {
		return netip.AddrPort{}, false
	}
	return a.relayed.PeerForChannel(ch)
}

// writeTo sends through the allocation to a peer.
func (a *allocation) writeTo(b []byte, peer netip.AddrPort) (int, error) {
	n, err := a.relayed.WriteTo(b, net.UDPAddrFromAddrPort(peer))
	if err != nil {
		return n, fmt.Errorf("relay %s write to %s: %w", a.relayID, peer, err)
	}
	return n, nil
}

// channelBinder is a relayed conn that tells which channel a peer is bound to (pionRelayed).
type channelBinder interface {
	boundChannel(peer netip.AddrPort) (uint16, bool)
}

// channelFrames is the scratch space of one writeBatch.
type channelFrames struct {
	buf    []byte
	frames [][]byte
}

var channelFramesPool = sync.Pool{New: func() any { return new(channelFrames) }}

// writeBatch sends bufs to peer through the allocation. The first goes through pion's WriteTo, which
// keeps its permission and channel-binding bookkeeping; if the peer's channel is bound, the node
// frames the rest as ChannelData itself (RFC 8656 §12.4, padded to 4 bytes like pion) and sends them
// to the relay in one batch (sendmmsg, UDP GSO: one trip through the stack for a burst) instead of
// one pion WriteTo, one allocation and one system call per message.
func (a *allocation) writeBatch(bufs [][]byte, peer netip.AddrPort) error {
	if len(bufs) == 0 {
		return nil
	}
	if _, err := a.writeTo(bufs[0], peer); err != nil {
		return err
	}
	rest := bufs[1:]
	if len(rest) == 0 {
		return nil
	}
	cb, ok := a.relayed.(channelBinder)
	var ch uint16
	if ok {
		ch, ok = cb.boundChannel(peer)
	}
	if !ok {
		for _, b := range rest {
			if _, err := a.writeTo(b, peer); err != nil {
				return err
			}
		}
		return nil
	}
	cf := channelFramesPool.Get().(*channelFrames)
	defer channelFramesPool.Put(cf)
	total := 0
	for _, b := range rest {
		total += channelDataLen(len(b))
	}
	if cap(cf.buf) < total {
		cf.buf = make([]byte, total)
	}
	buf := cf.buf[:total]
	cf.frames = cf.frames[:0]
	for _, b := range rest {
		n := channelDataLen(len(b))
		f := buf[:n:n]
		buf = buf[n:]
		binary.BigEndian.PutUint16(f[0:], ch)
		binary.BigEndian.PutUint16(f[2:], uint16(len(b)))
		clear(f[4+copy(f[4:], b):])
		cf.frames = append(cf.frames, f)
	}
	err := a.sock.writeBatch(cf.frames, a.server)
	clear(cf.frames)
	if err != nil {
		return fmt.Errorf("relay %s write to %s: %w", a.relayID, peer, err)
	}
	return nil
}

// channelDataLen is the length of a ChannelData message carrying n bytes, padded to 4.
func channelDataLen(n int) int { return (4 + n + 3) &^ 3 }

// close releases the allocation (refresh with lifetime 0) and the client.
func (a *allocation) close() {
	a.gone.Store(true)
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	a.closed = true
	if a.stopOut != nil {
		close(a.stopOut)
	}
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
		return a.queueICE(b, peer)
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

// candidateBase is the related address of this allocation's relay
// candidate: our mapped address as the relay sees it, if known.
func (a *allocation) candidateBase() netip.AddrPort {
	if m := a.mapped.Load(); m != nil && m.IsValid() {
		return *m
	}
	if a.sock.family == 6 {
		return netip.AddrPortFrom(netip.IPv6Unspecified(), 0)
	}
	return netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
}
