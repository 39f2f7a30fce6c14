package node

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// maxBatch is the number of datagrams read or written per batch.
const maxBatch = conn.IdealBatchSize

// maxPending bounds the packets wireguard-go sends to a connection before ICE
// has nominated a pair (in practice: its handshake initiations).
const maxPending = 16

// endpoint is the conn.Endpoint of the node's bind. It says which path a
// packet takes: pending (buffered until ICE nominates a pair), direct to dst
// from the node's socket, or through our allocation alloc to the peer at dst.
type endpoint struct {
	conn    *connection // nil for sources not (yet) tied to a connection
	alloc   *allocation // non-nil: relayed through our allocation
	dst     netip.AddrPort
	pending bool
}

var _ conn.Endpoint = (*endpoint)(nil)

func (e *endpoint) ClearSrc()           {}
func (e *endpoint) SrcToString() string { return "" }
func (e *endpoint) SrcIP() netip.Addr   { return netip.Addr{} }
func (e *endpoint) DstIP() netip.Addr   { return e.dst.Addr() }

func (e *endpoint) DstToString() string {
	switch {
	case e.pending:
		return "pending"
	case e.alloc != nil:
		return fmt.Sprintf("relay(%s)/%s", e.alloc.relayID, e.dst)
	}
	return e.dst.String()
}

func (e *endpoint) DstToBytes() []byte {
	b, _ := e.dst.MarshalBinary()
	return b
}

// bind is the node's conn.Bind. The node owns the sockets; the bind's receive
// functions read them, classify every datagram once and hand only WireGuard
// messages (including ones unwrapped from ChannelData) to wireguard-go.
type bind struct {
	n       *Node
	mu      sync.Mutex
	closed  chan struct{} // nil while not open
	relayIn chan relayedPacket
}

// relayedPacket is a WireGuard message that reached an allocation as a TURN
// Data indication (before its channel was bound).
type relayedPacket struct {
	b  []byte
	ep *endpoint
}

var _ conn.Bind = (*bind)(nil)

func newBind(n *Node) *bind {
	return &bind{n: n, relayIn: make(chan relayedPacket, 256)}
}

// Open implements conn.Bind. The port argument is ignored: the node's sockets
// are already bound; their port is reported.
func (b *bind) Open(uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed != nil {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	closed := make(chan struct{})
	b.closed = closed
	var fns []conn.ReceiveFunc
	set := b.n.io.Load()
	for _, s := range set.all {
		_ = s.pc.SetReadDeadline(time.Time{})
		fns = append(fns, b.makeReceive(s, closed))
	}
	fns = append(fns, b.makeRelayReceive(closed))
	return fns, set.port(), nil
}

// Close implements conn.Bind: receive functions return net.ErrClosed; the
// sockets stay open (the node owns them).
func (b *bind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed == nil {
		return nil
	}
	close(b.closed)
	b.closed = nil
	for _, s := range b.n.io.Load().all {
		_ = s.pc.SetReadDeadline(time.Now()) // unblock readers
	}
	return nil
}

func (b *bind) SetMark(uint32) error { return nil }
func (b *bind) BatchSize() int       { return maxBatch }

// ParseEndpoint implements conn.Bind for "ip:port" (direct) endpoints.
func (b *bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, fmt.Errorf("parse endpoint %q: %w", s, err)
	}
	return b.n.directEndpoint(netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())), nil
}

func (b *bind) makeReceive(s *socket, closed chan struct{}) conn.ReceiveFunc {
	r := s.io.NewReader(maxBatch)
	from := make([]netip.AddrPort, maxBatch)
	fn := func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		for {
			n, err := r.Read(packets, sizes, from)
			if err != nil {
				select {
				case <-closed:
					return 0, net.ErrClosed
				default:
				}
				if errors.Is(err, net.ErrClosed) || s.closed.Load() {
					return 0, net.ErrClosed
				}
				if errors.Is(err, os.ErrDeadlineExceeded) {
					continue
				}
				return 0, fmt.Errorf("read udp%d: %w", s.family, err)
			}
			now := time.Now().UnixNano()
			valid := 0
			for i := 0; i < n; i++ {
				if b.n.demux(packets[i], &sizes[i], &eps[i], from[i], now) {
					valid++
				}
			}
			if valid > 0 {
				return n, nil
			}
		}
	}
	return fn
}

// makeRelayReceive hands up WireGuard messages that arrived as Data indications.
func (b *bind) makeRelayReceive(closed chan struct{}) conn.ReceiveFunc {
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		select {
		case <-closed:
			return 0, net.ErrClosed
		case p := <-b.relayIn:
			sizes[0] = copy(packets[0], p.b)
			eps[0] = p.ep
			k := 1
			for k < len(packets) {
				select {
				case p := <-b.relayIn:
					sizes[k] = copy(packets[k], p.b)
					eps[k] = p.ep
					k++
				default:
					return k, nil
				}
			}
			return k, nil
		}
	}
}

// Send implements conn.Bind.
func (b *bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	e, ok := ep.(*endpoint)
	if !ok {
		return conn.ErrWrongEndpointType
	}
	if e.pending {
		nominated, buffered := e.conn.bufferPending(bufs)
		if buffered {
			return nil
		}
		e = nominated
	}
	if e.alloc != nil && e.alloc.gone.Load() {
		// The allocation under this path is closed (its relay went away), yet wireguard-go still uses it: a
		// send in flight when the path was suspended, or a packet received along it just before moved the
		// peer back. Such packets wait for the next path; nothing could carry them here.
		if e.conn == nil {
			return nil
		}
		nominated, buffered := e.conn.bufferPending(bufs)
		if buffered || (nominated.alloc != nil && nominated.alloc.gone.Load()) {
			return nil
		}
		e = nominated
	}
	return b.n.sendTo(bufs, e)
}
