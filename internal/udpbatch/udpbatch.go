// Package udpbatch reads and writes UDP datagrams in batches: several per
// system call (recvmmsg/sendmmsg through golang.org/x/net/ipv4 and ipv6) on
// a kernel socket, one per call on anything else (a pion vnet conn in
// tests, other platforms' sockets behind net.PacketConn).
//
// The node's sockets use it. client/dns/server has its own batched I/O
// (batch.go, the same x/net calls); Conn.WriteDatagrams is the shape its
// replies (many destinations per batch) need, so it can adopt this package.
package udpbatch

import (
	"fmt"
	"net"
	"net/netip"
	"sync"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// MaxBatch is the most datagrams a Reader reads or a write sends per
// system call.
const MaxBatch = 128

// batchConn is the batched I/O of golang.org/x/net/ipv4 and ipv6 (their
// Message is the same type).
type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// Conn is a UDP socket with batched I/O where the platform has it. Its
// methods are safe for concurrent use; a Reader is not (one per reading
// goroutine).
type Conn struct {
	pc    net.PacketConn
	batch batchConn // nil: one datagram per call
	msgs  sync.Pool // *[]ipv4.Message for writes
}

// New wraps pc. A *net.UDPConn gets batched I/O; family is 4 or 6 (the
// socket's address family).
func New(pc net.PacketConn, family int) *Conn {
	c := &Conn{pc: pc}
	if uc, ok := pc.(*net.UDPConn); ok {
		if family == 6 {
			c.batch = ipv6BatchConn{ipv6.NewPacketConn(uc)}
		} else {
			c.batch = ipv4.NewPacketConn(uc)
		}
	}
	c.msgs.New = func() any {
		ms := make([]ipv4.Message, MaxBatch)
		for i := range ms {
			ms[i].Buffers = make([][]byte, 1)
		}
		return &ms
	}
	return c
}

// Batched reports whether the Conn reads and writes several datagrams per
// system call.
func (c *Conn) Batched() bool { return c.batch != nil }

// PacketConn returns the wrapped conn.
func (c *Conn) PacketConn() net.PacketConn { return c.pc }

// ipv6BatchConn adapts ipv6.PacketConn (its Message is ipv4.Message).
type ipv6BatchConn struct{ c *ipv6.PacketConn }

func (b ipv6BatchConn) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	return b.c.ReadBatch(ms, flags)
}

func (b ipv6BatchConn) WriteBatch(ms []ipv4.Message, flags int) (int, error) {
	return b.c.WriteBatch(ms, flags)
}

// Reader holds one reading goroutine's state.
type Reader struct {
	c    *Conn
	msgs []ipv4.Message
}

// NewReader returns a Reader of up to n (at most MaxBatch) datagrams per call.
func (c *Conn) NewReader(n int) *Reader {
	r := &Reader{c: c, msgs: make([]ipv4.Message, min(max(n, 1), MaxBatch))}
	for i := range r.msgs {
		r.msgs[i].Buffers = make([][]byte, 1)
	}
	return r
}

// Read fills bufs[:k] with datagrams, sizes[:k] with their lengths and
// from[:k] with their sources, and returns k ≥ 1 (or an error). The slices
// must be as long as bufs.
func (r *Reader) Read(bufs [][]byte, sizes []int, from []netip.AddrPort) (int, error) {
	c := r.c
	if c.batch == nil {
		n, addr, err := c.pc.ReadFrom(bufs[0])
		if err != nil {
			return 0, err
		}
		sizes[0] = n
		from[0] = AddrPortOf(addr)
		return 1, nil
	}
	num := min(len(bufs), len(r.msgs))
	for i := 0; i < num; i++ {
		r.msgs[i].Buffers[0] = bufs[i]
		r.msgs[i].N = 0
		r.msgs[i].Addr = nil
	}
	n, err := c.batch.ReadBatch(r.msgs[:num], 0)
	if err != nil {
		return 0, err
	}
	for i := 0; i < n; i++ {
		sizes[i] = r.msgs[i].N
		from[i] = AddrPortOf(r.msgs[i].Addr)
	}
	return n, nil
}

// WriteTo sends one datagram.
func (c *Conn) WriteTo(b []byte, dst netip.AddrPort) (int, error) {
	return c.pc.WriteTo(b, net.UDPAddrFromAddrPort(dst))
}

// WriteBatch sends every buffer to dst, with as few system calls as the
// platform allows.
func (c *Conn) WriteBatch(bufs [][]byte, dst netip.AddrPort) error {
	ua := net.UDPAddrFromAddrPort(dst)
	if c.batch == nil || len(bufs) == 1 {
		for _, b := range bufs {
			if _, err := c.pc.WriteTo(b, ua); err != nil {
				return fmt.Errorf("send to %s: %w", dst, err)
			}
		}
		return nil
	}
	msp := c.msgs.Get().(*[]ipv4.Message)
	defer c.msgs.Put(msp)
	ms := *msp
	for len(bufs) > 0 {
		k := min(len(bufs), len(ms))
		for i := 0; i < k; i++ {
			ms[i].Buffers[0] = bufs[i]
			ms[i].Addr = ua
		}
		if _, err := c.writeAll(ms[:k]); err != nil {
			return fmt.Errorf("send batch to %s: %w", dst, err)
		}
		bufs = bufs[k:]
	}
	return nil
}

// Datagram is one datagram to send with WriteDatagrams.
type Datagram struct {
	Payload []byte
	Addr    netip.AddrPort
}

// WriteDatagrams sends datagrams to their own destinations, with as few
// system calls as the platform allows. It returns how many were sent before
// an error.
func (c *Conn) WriteDatagrams(ds []Datagram) (int, error) {
	if c.batch == nil {
		for i, d := range ds {
			if _, err := c.WriteTo(d.Payload, d.Addr); err != nil {
				return i, fmt.Errorf("send to %s: %w", d.Addr, err)
			}
		}
		return len(ds), nil
	}
	msp := c.msgs.Get().(*[]ipv4.Message)
	defer c.msgs.Put(msp)
	ms := *msp
	sent := 0
	for len(ds) > 0 {
		k := min(len(ds), len(ms))
		for i := 0; i < k; i++ {
			ms[i].Buffers[0] = ds[i].Payload
			ms[i].Addr = net.UDPAddrFromAddrPort(ds[i].Addr)
		}
		n, err := c.writeAll(ms[:k])
		sent += n
		if err != nil {
			return sent, fmt.Errorf("send batch: %w", err)
		}
		ds = ds[k:]
	}
	return sent, nil
}

// writeAll writes ms with as many WriteBatch calls as the kernel needs.
func (c *Conn) writeAll(ms []ipv4.Message) (int, error) {
	done := 0
	for done < len(ms) {
		n, err := c.batch.WriteBatch(ms[done:], 0)
		done += n
		if err != nil {
			return done, err
		}
		if n == 0 {
			break
		}
	}
	return done, nil
}

// SetBuffers asks for size-byte receive and send buffers, past the
// system's maximum where the process may (Linux, CAP_NET_ADMIN).
func SetBuffers(uc *net.UDPConn, size int) {
	_ = uc.SetReadBuffer(size)
	_ = uc.SetWriteBuffer(size)
	forceBuffers(uc, size)
}

// AddrPortOf returns a's address and port, IPv4-mapped addresses unmapped
// (the zero AddrPort if a is nil or not an address).
func AddrPortOf(a net.Addr) netip.AddrPort {
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
