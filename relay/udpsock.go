package relay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// udpSocket is a non-blocking UDP socket that the relay reads and writes
// with raw system calls (unix.RawSyscall6), outside Go's netpoller.
//
// Why not *net.UDPConn: a relay's work is one recvfrom and one sendto per
// datagram, and the runtime's bookkeeping around each of them
// (entersyscall/exitsyscall, and since Go 1.26 a sysmon wake-up whenever
// sysmon sleeps) costs as much as the calls themselves at low rates. Calls
// on a non-blocking UDP socket never block, so they need none of it.
// Readiness comes from a worker's own epoll set (see worker), which is the
// only thing parked on the netpoller.
//
// Any goroutine may send; the owning worker reads. mu is held for reading
// around every system call on fd and for writing by close, so a call never
// uses a closed (and possibly reused) descriptor.
type udpSocket struct {
	fd    int
	v6    bool
	local netip.AddrPort

	mu     sync.RWMutex
	closed bool
}

// errSocketClosed is returned by calls on a closed udpSocket.
var errSocketClosed = net.ErrClosed

// openUDP binds a non-blocking UDP socket of network ("udp4" or "udp6") on
// addr with the options; IPv6 sockets are IPv6-only.
func openUDP(network string, addr netip.AddrPort, o socketOptions) (*udpSocket, error) {
	domain := unix.AF_INET
	v6 := network == "udp6"
	if v6 {
		domain = unix.AF_INET6
	}
	fd, err := unix.Socket(domain, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("listen %s %s: socket: %w", network, addr, err)
	}
	fail := func(what string, err error) (*udpSocket, error) {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("listen %s %s: %s: %w", network, addr, what, err)
	}
	if v6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return fail("set IPV6_V6ONLY", err)
		}
	}
	if err := o.apply(fd); err != nil {
		return fail("socket options", err)
	}
	var sa unix.Sockaddr
	if v6 {
		sa = &unix.SockaddrInet6{Port: int(addr.Port()), Addr: addr.Addr().As16()}
	} else {
		if !addr.Addr().Unmap().Is4() {
			return fail("bind", unix.EAFNOSUPPORT)
		}
		sa = &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().Unmap().As4()}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fail("bind", err)
	}
	bound, err := unix.Getsockname(fd)
	if err != nil {
		return fail("getsockname", err)
	}
	s := &udpSocket{fd: fd, v6: v6}
	switch b := bound.(type) {
	case *unix.SockaddrInet4:
		s.local = netip.AddrPortFrom(netip.AddrFrom4(b.Addr), uint16(b.Port)) //nolint:gosec // a port
	case *unix.SockaddrInet6:
		s.local = netip.AddrPortFrom(netip.AddrFrom16(b.Addr), uint16(b.Port)) //nolint:gosec // a port
	}
	return s, nil
}

// LocalAddr is the bound address as a *net.UDPAddr (what pion expects).
func (s *udpSocket) LocalAddr() net.Addr { return net.UDPAddrFromAddrPort(s.local) }

// sockaddr is room for a sockaddr_in or sockaddr_in6 in wire layout.
type sockaddr = unix.RawSockaddrInet6

// encode writes to into sa for this socket's family and returns the length
// to pass to the kernel (0: the address cannot be sent to from here).
func (s *udpSocket) encode(sa *sockaddr, to netip.AddrPort) uint32 {
	a := to.Addr()
	port := (*[2]byte)(unsafe.Pointer(&sa.Port))
	port[0], port[1] = byte(to.Port()>>8), byte(to.Port())
	switch {
	case !a.IsValid():
		return 0
	case s.v6:
		if a.Is4() || a.Is4In6() {
			return 0 // IPv6-only socket
		}
		sa.Family = unix.AF_INET6
		sa.Addr = a.As16()
		sa.Scope_id = 0
		sa.Flowinfo = 0
		return unix.SizeofSockaddrInet6
	case a.Unmap().Is4():
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		sa4.Family = unix.AF_INET
		sa4.Addr = a.Unmap().As4()
		sa4.Zero = [8]uint8{}
		return unix.SizeofSockaddrInet4
	}
	return 0
}

// decodeSockaddr reads a sockaddr_in or sockaddr_in6, unmapping IPv4-mapped
// addresses; zero if the family is neither.
func decodeSockaddr(sa *sockaddr) netip.AddrPort {
	port := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p := uint16(port[0])<<8 | uint16(port[1])
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), p)
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), p)
	}
	return netip.AddrPort{}
}

// errUnreachableFamily: the destination is not of the socket's family.
var errUnreachableFamily = errors.New("destination address family does not match the socket")

// sendTo sends one datagram without blocking. A full send buffer
// (EAGAIN) is an error: UDP may drop, and a relay must not stall.
func (s *udpSocket) sendTo(b []byte, to netip.AddrPort) error {
	var sa sockaddr
	saLen := s.encode(&sa, to)
	if saLen == 0 {
		return fmt.Errorf("sendto %s: %w", to, errUnreachableFamily)
	}
	var buf unsafe.Pointer
	if len(b) > 0 {
		buf = unsafe.Pointer(&b[0])
	}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return errSocketClosed
	}
	var errno syscall.Errno
	for {
		_, _, errno = unix.RawSyscall6(unix.SYS_SENDTO, uintptr(s.fd), uintptr(buf), uintptr(len(b)),
			unix.MSG_DONTWAIT, uintptr(unsafe.Pointer(&sa)), uintptr(saLen))
		if errno != unix.EINTR {
			break
		}
	}
	s.mu.RUnlock()
	if errno != 0 {
		return fmt.Errorf("sendto %s: %w", to, errno)
	}
	return nil
}

// close marks the socket closed and closes the descriptor once no call is
// using it; the caller removes it from its worker first.
func (s *udpSocket) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errSocketClosed
	}
	s.closed = true
	if err := unix.Close(s.fd); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	return nil
}

// mmsghdr is struct mmsghdr (recvmmsg/sendmmsg).
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
}

// recvBatch is a worker's reusable recvmmsg state: count buffers with
// headroom bytes before each payload (room for a ChannelData header).
type recvBatch struct {
	msgs  []mmsghdr
	iovs  []unix.Iovec
	addrs []sockaddr
	bufs  [][]byte // full buffers, headroom included
	room  int      // headroom
}

func newRecvBatch(count, size, headroom int) *recvBatch {
	b := &recvBatch{
		msgs:  make([]mmsghdr, count),
		iovs:  make([]unix.Iovec, count),
		addrs: make([]sockaddr, count),
		bufs:  make([][]byte, count),
		room:  headroom,
	}
	for i := range b.msgs {
		b.bufs[i] = make([]byte, headroom+size+4) // 4: room to pad a ChannelData
		b.iovs[i].Base = &b.bufs[i][headroom]
		b.iovs[i].SetLen(size)
		b.msgs[i].hdr.Iov = &b.iovs[i]
		b.msgs[i].hdr.SetIovlen(1)
		b.msgs[i].hdr.Name = (*byte)(unsafe.Pointer(&b.addrs[i]))
	}
	return b
}

// read receives up to len(b.msgs) datagrams without blocking. It returns
// how many arrived (0 when none was waiting) and a non-EAGAIN error.
func (b *recvBatch) read(s *udpSocket) (int, error) {
	for i := range b.msgs {
		b.msgs[i].hdr.Namelen = uint32(unsafe.Sizeof(sockaddr{}))
		b.msgs[i].hdr.Flags = 0
	}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return 0, errSocketClosed
	}
	var r uintptr
	var errno syscall.Errno
	for {
		r, _, errno = unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&b.msgs[0])),
			uintptr(len(b.msgs)), unix.MSG_DONTWAIT, 0, 0)
		if errno != unix.EINTR {
			break
		}
	}
	s.mu.RUnlock()
	switch errno {
	case 0:
		return int(r), nil
	case unix.EAGAIN:
		return 0, nil
	}
	return 0, fmt.Errorf("recvmmsg: %w", errno)
}

// payload is datagram i's bytes, its source, and whether the kernel cut it
// short (longer than the buffer).
func (b *recvBatch) payload(i int) ([]byte, netip.AddrPort, bool) {
	m := &b.msgs[i]
	n := int(m.n)
	return b.bufs[i][b.room : b.room+n], decodeSockaddr(&b.addrs[i]), m.hdr.Flags&unix.MSG_TRUNC != 0
}

// withHeader is datagram i with hdr bytes of its headroom in front (hdr ≤
// headroom) and tail bytes after it (inside the buffer's spare room).
func (b *recvBatch) withHeader(i, hdr, tail int) []byte {
	n := int(b.msgs[i].n)
	return b.bufs[i][b.room-hdr : b.room+n+tail]
}
