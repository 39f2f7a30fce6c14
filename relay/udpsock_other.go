//go:build (unix && !linux) || relay_portable

package relay

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// udpSocket is a UDP socket on Go's netpoller: the portable data path for
// systems without epoll, recvmmsg and UDP GSO (see datapath.go). Any
// goroutine may send; the socket's reader goroutine (worker.add) reads.
type udpSocket struct {
	conn  *net.UDPConn
	v6    bool
	local netip.AddrPort

	mu     sync.Mutex
	closed bool
}

// openUDP binds a UDP socket of network ("udp4" or "udp6") on addr with the
// options; IPv6 sockets are IPv6-only (Go's default for "udp6").
func openUDP(network string, addr netip.AddrPort, o socketOptions) (*udpSocket, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var sockErr error
		err := c.Control(func(fd uintptr) {
			if o.reusePort {
				sockErr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}
		})
		if err != nil {
			return fmt.Errorf("raw conn control: %w", err)
		}
		if sockErr != nil {
			return fmt.Errorf("set SO_REUSEPORT: %w", sockErr)
		}
		return nil
	}}
	pc, err := lc.ListenPacket(context.Background(), network, addr.String())
	if err != nil {
		return nil, fmt.Errorf("listen %s %s: %w", network, addr, err)
	}
	c := pc.(*net.UDPConn)
	if o.buffer > 0 {
		_ = c.SetReadBuffer(o.buffer)
		_ = c.SetWriteBuffer(o.buffer)
	}
	local := c.LocalAddr().(*net.UDPAddr).AddrPort()
	return &udpSocket{conn: c, v6: network == "udp6", local: netip.AddrPortFrom(local.Addr().Unmap(), local.Port())}, nil
}

// LocalAddr is the bound address as a *net.UDPAddr (what pion expects).
func (s *udpSocket) LocalAddr() net.Addr { return net.UDPAddrFromAddrPort(s.local) }

// sendTo sends one datagram.
func (s *udpSocket) sendTo(b []byte, to netip.AddrPort) error {
	if s.v6 != (to.Addr().Is6() && !to.Addr().Is4In6()) {
		return fmt.Errorf("sendto %s: %w", to, errUnreachableFamily)
	}
	if _, err := s.conn.WriteToUDPAddrPort(b, to); err != nil {
		return fmt.Errorf("sendto %s: %w", to, err)
	}
	return nil
}

// close closes the socket, which ends its reader goroutine.
func (s *udpSocket) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errSocketClosed
	}
	s.closed = true
	if err := s.conn.Close(); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	return nil
}

// recvBatch holds one received datagram behind channelDataHeader bytes of
// headroom (the portable path reads one at a time).
type recvBatch struct {
	buf  []byte
	n    int
	from netip.AddrPort
	cut  bool
}

func newRecvBatch() *recvBatch {
	return &recvBatch{buf: make([]byte, channelDataHeader+maxReadBuffer+4)}
}

// read blocks for the next datagram on s.
func (b *recvBatch) read(s *udpSocket) error {
	n, from, err := s.conn.ReadFromUDPAddrPort(b.buf[channelDataHeader : channelDataHeader+maxReadBuffer+1])
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	b.n, b.cut = min(n, maxReadBuffer), n > maxReadBuffer
	b.from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	return nil
}

// payload is the datagram's bytes, its source, and whether it was longer
// than the buffer.
func (b *recvBatch) payload(int) ([]byte, netip.AddrPort, bool) {
	return b.buf[channelDataHeader : channelDataHeader+b.n], b.from, b.cut
}

// withHeader is the datagram with hdr bytes of headroom in front and tail
// bytes after it.
func (b *recvBatch) withHeader(_, hdr, tail int) []byte {
	return b.buf[channelDataHeader-hdr : channelDataHeader+b.n+tail]
}

// sendBatch sends at once (no sendmmsg or GSO here) and counts.
type sendBatch struct {
	stats *stats
}

func newSendBatch(_ int, st *stats, _ bool) *sendBatch { return &sendBatch{stats: st} }

// add sends frame (payload bytes of it counted) to to through sock.
func (b *sendBatch) add(sock *udpSocket, frame []byte, to netip.AddrPort, payload int, shard *trafficShard, toClient bool) {
	if err := sock.sendTo(frame, to); err != nil {
		b.stats.dropped[dropSend].Add(1)
		return
	}
	if toClient {
		shard.toClientPackets.Add(1)
		shard.toClientBytes.Add(uint64(payload)) //nolint:gosec // >= 0
	} else {
		shard.toPeerPackets.Add(1)
		shard.toPeerBytes.Add(uint64(payload)) //nolint:gosec // >= 0
	}
}
