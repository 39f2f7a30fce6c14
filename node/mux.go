package node

import (
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/pion/ice/v4"
)

// inboundPacket is a datagram handed from the demux to a virtual PacketConn.
type inboundPacket struct {
	b    []byte
	from netip.AddrPort
}

// pushConn is a net.PacketConn fed by the node's demux instead of reading a
// socket: the ICE mux and the per-connection relay views read from it, and
// writes go to the node's sockets (or the relayed conn) through write.
type pushConn struct {
	local net.Addr
	write func(b []byte, to net.Addr) (int, error)
	in    chan inboundPacket

	mu       sync.Mutex
	deadline time.Time
	wake     chan struct{}
	done     chan struct{}
	once     sync.Once
	onClose  func()
}

func newPushConn(local net.Addr, queue int, write func([]byte, net.Addr) (int, error)) *pushConn {
	return &pushConn{
		local: local,
		write: write,
		in:    make(chan inboundPacket, queue),
		wake:  make(chan struct{}, 1),
		done:  make(chan struct{}),
	}
}

// push queues a copy of b; it drops the datagram when the reader lags (UDP semantics).
func (c *pushConn) push(b []byte, from netip.AddrPort) bool {
	select {
	case <-c.done:
		return false
	default:
	}
	cp := make([]byte, len(b))
	copy(cp, b)
	select {
	case c.in <- inboundPacket{b: cp, from: from}:
		return true
	default:
		return false
	}
}

func (c *pushConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		c.mu.Lock()
		dl := c.deadline
		c.mu.Unlock()
		var timeout <-chan time.Time
		var t *time.Timer
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, nil, os.ErrDeadlineExceeded
			}
			t = time.NewTimer(d)
			timeout = t.C
		}
		select {
		case pkt := <-c.in:
			if t != nil {
				t.Stop()
			}
			n := copy(p, pkt.b)
			return n, net.UDPAddrFromAddrPort(pkt.from), nil
		case <-c.done:
			if t != nil {
				t.Stop()
			}
			return 0, nil, net.ErrClosed
		case <-timeout:
			return 0, nil, os.ErrDeadlineExceeded
		case <-c.wake:
			if t != nil {
				t.Stop()
			}
		}
	}
}

func (c *pushConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	select {
	case <-c.done:
		return 0, net.ErrClosed
	default:
	}
	return c.write(p, addr)
}

func (c *pushConn) Close() error {
	c.once.Do(func() {
		close(c.done)
		if c.onClose != nil {
			c.onClose()
		}
	})
	return nil
}

func (c *pushConn) LocalAddr() net.Addr { return c.local }

func (c *pushConn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

func (c *pushConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return nil
}

func (c *pushConn) SetWriteDeadline(time.Time) error { return nil }

// hostMux is the node's single ICE mux (one per node, shared by both sockets
// through one pushConn): it overrides GetListenAddresses so host candidates
// are exactly the node's interface addresses on its socket port.
type hostMux struct {
	*ice.UniversalUDPMuxDefault
	addrs func() []net.Addr
}

func (m *hostMux) GetListenAddresses() []net.Addr { return m.addrs() }
