//go:build !relay_portable

package relay

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
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
	noGSO  atomic.Bool // the kernel refused a UDP_SEGMENT send with EIO
}

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

// apply sets the options on fd. Buffer sizes try the FORCE variants first
// (they bypass net.core.[rw]mem_max but need CAP_NET_ADMIN) and fall back to
// the plain ones, which the kernel caps.
func (o socketOptions) apply(fd int) error {
	if o.reusePort {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return fmt.Errorf("set SO_REUSEPORT: %w", err)
		}
	}
	if o.buffer > 0 {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, o.buffer) != nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, o.buffer)
		}
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, o.buffer) != nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, o.buffer)
		}
	}
	return nil
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
	used  int      // messages the kernel filled in the last read (their lengths and flags need resetting)
}

func newRecvBatch(count, size, headroom int) *recvBatch {
	b := &recvBatch{
		msgs:  make([]mmsghdr, count),
		iovs:  make([]unix.Iovec, count),
		addrs: make([]sockaddr, count),
		bufs:  make([][]byte, count),
		room:  headroom,
		used:  count, // the first read sets every length
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
// how many arrived (0 when none was waiting or the socket is closed) and a
// non-EAGAIN error.
func (b *recvBatch) read(s *udpSocket) (int, error) {
	// The kernel writes back the address length and flags of the messages it
	// fills only: reset those of the last read, not the whole batch.
	for i := range b.used {
		b.msgs[i].hdr.Namelen = uint32(unsafe.Sizeof(sockaddr{}))
		b.msgs[i].hdr.Flags = 0
	}
	b.used = 0
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return 0, nil // being removed from its worker
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
		b.used = int(r)
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

// GSO limits: segments per UDP_SEGMENT send (the kernel's UDP_MAX_SEGMENTS
// is 64 on older kernels) and bytes per send (one IP datagram).
const (
	gsoMaxSegments = 64
	gsoMaxBytes    = 60000
)

// sendBatch collects a worker's outgoing datagrams and sends runs of them
// that leave through the same socket with one sendmmsg (a lone datagram with
// sendto). Consecutive datagrams of one size to the same destination are
// coalesced into one UDP GSO send (UDP_SEGMENT): the kernel routes and
// builds one packet and splits it at the end, which is most of a send's cost
// saved — a peer's burst to a client, or a client's burst to a peer, is
// common (WireGuard sends in bursts, and so do the benchmark tools).
//
// Datagrams point into the worker's receive buffers, so the worker flushes
// after handling each received batch. Successful sends are counted in the
// run's traffic shard and direction; failed ones as dropped.
type sendBatch struct {
	// Per message (a datagram or a GSO run of them).
	msgs  []mmsghdr
	addrs []sockaddr
	ctrls [][]byte // UDP_SEGMENT control messages
	first []int    // index of the message's first datagram
	segs  []int    // datagrams in the message
	bytes []int    // bytes in the message
	// Per datagram.
	iovs  []unix.Iovec
	sizes []int // payload bytes, for the byte counters

	nmsg, ndgram int
	open         bool // the last message may take more segments
	lastTo       netip.AddrPort

	sock     *udpSocket
	shard    *trafficShard
	toClient bool
	stats    *stats
	gso      bool
}

func newSendBatch(count int, st *stats, gso bool) *sendBatch {
	b := &sendBatch{
		msgs:  make([]mmsghdr, count),
		addrs: make([]sockaddr, count),
		ctrls: make([][]byte, count),
		first: make([]int, count),
		segs:  make([]int, count),
		bytes: make([]int, count),
		iovs:  make([]unix.Iovec, count),
		sizes: make([]int, count),
		stats: st,
		gso:   gso,
	}
	for i := range b.msgs {
		b.msgs[i].hdr.Name = (*byte)(unsafe.Pointer(&b.addrs[i]))
		b.ctrls[i] = make([]byte, unix.CmsgSpace(2))
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b.ctrls[i][0]))
		h.Level = unix.SOL_UDP
		h.Type = unix.UDP_SEGMENT
		h.SetLen(unix.CmsgLen(2))
	}
	return b
}

// add queues frame (payload bytes of it counted) to go to to through sock.
func (b *sendBatch) add(sock *udpSocket, frame []byte, to netip.AddrPort, payload int, shard *trafficShard, toClient bool) {
	if b.ndgram > 0 && (sock != b.sock || shard != b.shard || toClient != b.toClient) {
		b.flush()
	}
	if len(frame) == 0 {
		b.stats.dropped[dropSend].Add(1)
		return
	}
	b.sock, b.shard, b.toClient = sock, shard, toClient
	d := b.ndgram
	b.iovs[d].Base = &frame[0]
	b.iovs[d].SetLen(len(frame))
	b.sizes[d] = payload
	if m := b.nmsg - 1; b.gso && b.open && to == b.lastTo && !sock.noGSO.Load() &&
		len(frame) <= b.bytes[m]/b.segs[m] && b.segs[m] < gsoMaxSegments && b.bytes[m]+len(frame) <= gsoMaxBytes {
		// Another segment of the last message. A shorter one must be the
		// last segment (GSO splits at the first segment's size).
		if b.segs[m] == 1 {
			size := uint16(b.bytes[m]) //nolint:gosec // <= maxReadBuffer+channelDataHeader
			data := b.ctrls[m][unix.CmsgLen(0):]
			*(*uint16)(unsafe.Pointer(&data[0])) = size
			b.msgs[m].hdr.Control = &b.ctrls[m][0]
			b.msgs[m].hdr.SetControllen(len(b.ctrls[m]))
		}
		b.open = len(frame) == b.bytes[m]/b.segs[m]
		b.segs[m]++
		b.bytes[m] += len(frame)
		b.msgs[m].hdr.SetIovlen(b.segs[m])
	} else {
		m := b.nmsg
		saLen := sock.encode(&b.addrs[m], to)
		if saLen == 0 {
			b.stats.dropped[dropSend].Add(1)
			return
		}
		h := &b.msgs[m].hdr
		h.Namelen = saLen
		h.Iov = &b.iovs[d]
		h.SetIovlen(1)
		h.Control = nil
		h.SetControllen(0)
		b.first[m], b.segs[m], b.bytes[m] = d, 1, len(frame)
		b.nmsg++
		b.open, b.lastTo = true, to
	}
	b.ndgram++
	if b.ndgram == len(b.iovs) {
		b.flush()
	}
}

// flush sends what is queued.
func (b *sendBatch) flush() {
	if b.ndgram == 0 {
		return
	}
	s := b.sock
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		b.stats.dropped[dropSend].Add(uint64(b.ndgram)) //nolint:gosec // >= 0
		b.reset()
		return
	}
	for sent := 0; sent < b.nmsg; {
		var r uintptr
		var errno syscall.Errno
		if b.nmsg-sent == 1 && b.segs[sent] == 1 {
			m := &b.msgs[sent]
			_, _, errno = unix.RawSyscall6(unix.SYS_SENDTO, uintptr(s.fd), uintptr(unsafe.Pointer(m.hdr.Iov.Base)),
				uintptr(m.hdr.Iov.Len), unix.MSG_DONTWAIT, uintptr(unsafe.Pointer(m.hdr.Name)), uintptr(m.hdr.Namelen))
			r = 1
		} else {
			r, _, errno = unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&b.msgs[sent])),
				uintptr(b.nmsg-sent), unix.MSG_DONTWAIT, 0, 0)
		}
		switch {
		case errno == unix.EINTR:
			continue
		case errno == 0:
			for m := sent; m < sent+int(r); m++ {
				b.count(m)
			}
			sent += int(r)
			continue
		case b.segs[sent] > 1 && (errno == unix.EIO || errno == unix.EMSGSIZE || errno == unix.EINVAL):
			// GSO refused (a path MTU below a segment, a device or
			// kernel without it): send this run one datagram at a time,
			// and stop coalescing for a socket whose kernel says EIO.
			if errno == unix.EIO {
				s.noGSO.Store(true)
			}
			b.sendSegments(s, sent)
		default:
			// This message failed (full buffer, unreachable): drop it
			// and go on with the rest.
			b.stats.dropped[dropSend].Add(uint64(b.segs[sent])) //nolint:gosec // >= 0
		}
		sent++
	}
	s.mu.RUnlock()
	b.reset()
}

// sendSegments sends message m's datagrams one by one (s.mu held for
// reading).
func (b *sendBatch) sendSegments(s *udpSocket, m int) {
	h := &b.msgs[m].hdr
	for d := b.first[m]; d < b.first[m]+b.segs[m]; d++ {
		var errno syscall.Errno
		for {
			_, _, errno = unix.RawSyscall6(unix.SYS_SENDTO, uintptr(s.fd), uintptr(unsafe.Pointer(b.iovs[d].Base)),
				uintptr(b.iovs[d].Len), unix.MSG_DONTWAIT, uintptr(unsafe.Pointer(h.Name)), uintptr(h.Namelen))
			if errno != unix.EINTR {
				break
			}
		}
		if errno != 0 {
			b.stats.dropped[dropSend].Add(1)
			continue
		}
		b.countDatagrams(d, d+1)
	}
}

func (b *sendBatch) reset() { b.nmsg, b.ndgram, b.open = 0, 0, false }

// count adds message m's datagrams to the traffic counters.
func (b *sendBatch) count(m int) { b.countDatagrams(b.first[m], b.first[m]+b.segs[m]) }

func (b *sendBatch) countDatagrams(from, to int) {
	if b.shard == nil {
		return
	}
	var bytes uint64
	for _, n := range b.sizes[from:to] {
		bytes += uint64(n) //nolint:gosec // n >= 0
	}
	if b.toClient {
		b.shard.toClientPackets.Add(uint64(to - from)) //nolint:gosec // to >= from
		b.shard.toClientBytes.Add(bytes)
	} else {
		b.shard.toPeerPackets.Add(uint64(to - from)) //nolint:gosec // to >= from
		b.shard.toPeerBytes.Add(bytes)
	}
}
