package node

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/pion/transport/v5"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// socketBufferSize is the receive/send buffer size requested for node sockets
// (default kernel buffers cap a single flow far below line rate).
const socketBufferSize = 7 << 20

// batchConn is the batched I/O of golang.org/x/net/ipv4 and ipv6 (recvmmsg/sendmmsg on Linux).
type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// socket is one UDP socket of the node (one per address family).
type socket struct {
	family int // 4 or 6
	pc     net.PacketConn
	batch  batchConn // nil when pc is not a kernel socket (vnet): single-packet I/O
	port   uint16
	msgs   sync.Pool // []ipv4.Message for WriteBatch
	// mapped is the socket's server-reflexive address as the relays see it
	// (learnt from their STUN keepalives): the node-wide srflx candidate,
	// kept when relays go away.
	mapped atomic.Pointer[netip.AddrPort]
}

// listenSockets opens the v4 socket and, when possible, a v6 socket on the same
// port (the ICE mux advertises a single port for both families). v6 failing is
// not an error: the node runs IPv4-only.
func listenSockets(n transport.Net, port int, wantV6 bool) ([]*socket, error) {
	for attempt := 0; attempt < 8; attempt++ {
		s4, err := listenSocket(n, 4, port)
		if err != nil {
			return nil, err
		}
		if !wantV6 {
			return []*socket{s4}, nil
		}
		s6, err := listenSocket(n, 6, int(s4.port))
		if err == nil {
			return []*socket{s4, s6}, nil
		}
		if port == 0 && errors.Is(err, syscall.EADDRINUSE) {
			_ = s4.pc.Close()
			continue // ephemeral v4 port taken in v6: try another
		}
		return []*socket{s4}, nil
	}
	return nil, fmt.Errorf("listen: no port free in both families")
}

func listenSocket(n transport.Net, family, port int) (*socket, error) {
	network, ip := "udp4", net.IPv4zero
	if family == 6 {
		network, ip = "udp6", net.IPv6unspecified
	}
	uc, err := n.ListenUDP(network, &net.UDPAddr{IP: ip, Port: port})
	if err != nil {
		return nil, fmt.Errorf("listen %s port %d: %w", network, port, err)
	}
	s := &socket{family: family, pc: uc}
	if la, ok := uc.LocalAddr().(*net.UDPAddr); ok {
		s.port = uint16(la.Port)
	}
	if kc, ok := uc.(*net.UDPConn); ok {
		_ = kc.SetReadBuffer(socketBufferSize)
		_ = kc.SetWriteBuffer(socketBufferSize)
		forceBuffers(kc, socketBufferSize)
		if family == 4 {
			s.batch = ipv4.NewPacketConn(kc)
		} else {
			s.batch = ipv6BatchConn{ipv6.NewPacketConn(kc)}
		}
	}
	s.msgs.New = func() any {
		ms := make([]ipv4.Message, maxBatch)
		for i := range ms {
			ms[i].Buffers = make([][]byte, 1)
		}
		return &ms
	}
	return s, nil
}

// ipv6BatchConn adapts ipv6.PacketConn (its Message is the same type).
type ipv6BatchConn struct{ c *ipv6.PacketConn }

func (b ipv6BatchConn) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	return b.c.ReadBatch(ms, flags)
}

func (b ipv6BatchConn) WriteBatch(ms []ipv4.Message, flags int) (int, error) {
	return b.c.WriteBatch(ms, flags)
}

// reader holds the per-goroutine state for reading batches from a socket.
type reader struct {
	s    *socket
	msgs []ipv4.Message
}

func (s *socket) newReader(batch int) *reader {
	r := &reader{s: s, msgs: make([]ipv4.Message, batch)}
	for i := range r.msgs {
		r.msgs[i].Buffers = make([][]byte, 1)
	}
	return r
}

// read fills bufs[:n] with datagrams, their sizes and sources.
func (r *reader) read(bufs [][]byte, sizes []int, from []netip.AddrPort) (int, error) {
	s := r.s
	if s.batch == nil {
		n, addr, err := s.pc.ReadFrom(bufs[0])
		if err != nil {
			return 0, err
		}
		sizes[0] = n
		from[0] = addrPortOf(addr)
		return 1, nil
	}
	num := min(len(bufs), len(r.msgs))
	for i := 0; i < num; i++ {
		r.msgs[i].Buffers[0] = bufs[i]
		r.msgs[i].N = 0
		r.msgs[i].Addr = nil
	}
	n, err := s.batch.ReadBatch(r.msgs[:num], 0)
	if err != nil {
		return 0, err
	}
	for i := 0; i < n; i++ {
		sizes[i] = r.msgs[i].N
		from[i] = addrPortOf(r.msgs[i].Addr)
	}
	return n, nil
}

// writeBatch sends every buffer to dst.
func (s *socket) writeBatch(bufs [][]byte, dst netip.AddrPort) error {
	if s.batch == nil || len(bufs) == 1 {
		ua := net.UDPAddrFromAddrPort(dst)
		for _, b := range bufs {
			if _, err := s.pc.WriteTo(b, ua); err != nil {
				return fmt.Errorf("send to %s: %w", dst, err)
			}
		}
		return nil
	}
	msp := s.msgs.Get().(*[]ipv4.Message)
	defer s.msgs.Put(msp)
	ms := *msp
	ua := net.UDPAddrFromAddrPort(dst)
	for len(bufs) > 0 {
		k := min(len(bufs), len(ms))
		for i := 0; i < k; i++ {
			ms[i].Buffers[0] = bufs[i]
			ms[i].Addr = ua
		}
		sent := 0
		for sent < k {
			n, err := s.batch.WriteBatch(ms[sent:k], 0)
			if err != nil {
				return fmt.Errorf("send batch to %s: %w", dst, err)
			}
			sent += n
		}
		bufs = bufs[k:]
	}
	return nil
}

func (s *socket) writeTo(b []byte, dst netip.AddrPort) (int, error) {
	return s.pc.WriteTo(b, net.UDPAddrFromAddrPort(dst))
}

func addrPortOf(a net.Addr) netip.AddrPort {
	switch v := a.(type) {
	case *net.UDPAddr:
		ap := v.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case nil:
		return netip.AddrPort{}
	default:
		ap, err := netip.ParseAddrPort(a.String())
		if err != nil {
			return netip.AddrPort{}
		}
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
}
