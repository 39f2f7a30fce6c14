// Package udpbatch reads and writes UDP datagrams in batches: several per
// system call (recvmmsg/sendmmsg through golang.org/x/net/ipv4 and ipv6) on
// a kernel socket, one per call on anything else (a pion vnet conn in
// tests, other platforms' sockets behind net.PacketConn).
//
// On Linux, EnableOffload adds UDP generic segmentation and receive
// offload, as wireguard-go's own StdNetBind has: WriteBatch sends each run
// of equal-size datagrams to one destination as one UDP_SEGMENT send (one
// trip through the network stack instead of one per datagram), and the
// kernel may hand a Reader a run of equal-size datagrams of one flow as one
// (UDP_GRO), which the Reader splits again. Both matter for a tunnel: a TCP
// flow through the TUN arrives as 64 KB segments that wireguard-go turns
// into bursts of equal-size WireGuard messages to one peer.
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
	"sync/atomic"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// MaxBatch is the most datagrams a Reader reads or a write sends per
// system call.
const MaxBatch = 128

// Offload limits: the kernel sends at most maxSegments datagrams per
// UDP_SEGMENT message (UDP_MAX_SEGMENTS) and coalesces at most as many per
// UDP_GRO message, of at most maxPayload4/6 bytes in all.
const (
	maxSegments = 64
	maxPayload4 = 1<<16 - 1 - 20 - 8
	maxPayload6 = 1<<16 - 1 - 8
	// groMessages is how many (possibly coalesced) messages a Reader reads
	// per call with GRO on, each into a 64 KB buffer of its own.
	groMessages = 4
	groBufSize  = 1 << 16
)

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
	// gso: WriteBatch coalesces with UDP_SEGMENT (turned off for good if
	// the path refuses it); gro: the socket has UDP_GRO, Readers split.
	gso     atomic.Bool
	gro     atomic.Bool
	gsoMsgs sync.Pool // *gsoBatch
}

// gsoBatch is the scratch space of one GSO WriteBatch.
type gsoBatch struct {
	ms     []ipv4.Message
	oob    [][]byte
	counts []int // datagrams per message
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

// EnableOffload turns on UDP GSO for WriteBatch and UDP GRO for Readers
// where the socket supports them (Linux; a batched Conn only) and reports
// which it turned on. Call it before the first Read. With GRO on, a Reader
// reads into buffers of its own (groMessages × 64 KB, allocated at its first
// Read) and copies each datagram into the caller's buffers.
func (c *Conn) EnableOffload() (gso, gro bool) {
	uc, ok := c.pc.(*net.UDPConn)
	if !ok || c.batch == nil {
		return false, false
	}
	gso, gro = enableOffload(uc)
	c.gso.Store(gso)
	c.gro.Store(gro)
	return gso, gro
}

// Offload reports whether GSO sends and GRO reads are on now (GSO goes off
// if the path refuses it).
func (c *Conn) Offload() (gso, gro bool) { return c.gso.Load(), c.gro.Load() }

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
	// GRO: messages land in big (with their control data in oob) and wait
	// in pend, split into datagrams as the caller's buffers allow.
	big  [][]byte
	oob  [][]byte
	pend []run
	head int // pend[head:] is unread
}

// run is what is left of one received message: datagrams of size bytes
// (size 0: one datagram, all of b) from one source.
type run struct {
	b    []byte
	size int
	from netip.AddrPort
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
	if c.gro.Load() {
		return r.readGRO(bufs, sizes, from)
	}
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

// readGRO is Read with UDP_GRO on: it reads up to groMessages messages
// into the Reader's own buffers when nothing is pending, then copies
// datagrams (a coalesced message is a run of equal-size ones, the last
// possibly shorter) into bufs; what does not fit waits for the next call.
func (r *Reader) readGRO(bufs [][]byte, sizes []int, from []netip.AddrPort) (int, error) {
	if r.head == len(r.pend) {
		if r.big == nil {
			r.big, r.oob = make([][]byte, groMessages), make([][]byte, groMessages)
			for i := range r.big {
				r.big[i], r.oob[i] = make([]byte, groBufSize), make([]byte, gsoControlSize)
			}
		}
		ms := r.msgs[:min(len(r.msgs), groMessages)]
		for i := range ms {
			ms[i].Buffers[0], ms[i].OOB = r.big[i], r.oob[i]
			ms[i].N, ms[i].NN, ms[i].Addr = 0, 0, nil
		}
		n, err := r.c.batch.ReadBatch(ms, 0)
		if err != nil {
			return 0, err
		}
		r.pend, r.head = r.pend[:0], 0
		for i := 0; i < n; i++ {
			r.pend = append(r.pend, run{b: r.big[i][:ms[i].N], size: groSize(ms[i].OOB[:ms[i].NN]), from: AddrPortOf(ms[i].Addr)})
		}
	}
	k := 0
	for k < len(bufs) && r.head < len(r.pend) {
		p := &r.pend[r.head]
		seg := len(p.b)
		if p.size > 0 && p.size < seg {
			seg = p.size
		}
		sizes[k] = copy(bufs[k], p.b[:seg])
		from[k] = p.from
		k++
		if p.b = p.b[seg:]; len(p.b) == 0 {
			r.head++
		}
	}
	return k, nil
}

// WriteTo sends one datagram.
func (c *Conn) WriteTo(b []byte, dst netip.AddrPort) (int, error) {
	return c.pc.WriteTo(b, net.UDPAddrFromAddrPort(dst))
}

// WriteBatch sends every buffer to dst, with as few system calls as the
// platform allows.
func (c *Conn) WriteBatch(bufs [][]byte, dst netip.AddrPort) error {
	ua := net.UDPAddrFromAddrPort(dst)
	if len(bufs) > 1 && c.gso.Load() {
		sent, err := c.writeGSO(bufs, ua, dst)
		switch {
		case err == nil:
			return nil
		case gsoRefused(err):
			c.gso.Store(false) // this path cannot segment: one datagram per message from now on
		case !gsoTooBig(err):
			return fmt.Errorf("send batch to %s: %w", dst, err)
		}
		bufs = bufs[sent:] // the rest without GSO
	}
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

// writeGSO sends bufs to ua, each run of equal-size datagrams (the last
// of a run may be shorter) as one UDP_SEGMENT message, and returns how many
// datagrams went out before an error.
func (c *Conn) writeGSO(bufs [][]byte, ua *net.UDPAddr, dst netip.AddrPort) (int, error) {
	gb, _ := c.gsoMsgs.Get().(*gsoBatch)
	if gb == nil {
		gb = &gsoBatch{ms: make([]ipv4.Message, MaxBatch), oob: make([][]byte, MaxBatch), counts: make([]int, MaxBatch)}
		for i := range gb.oob {
			gb.oob[i] = make([]byte, gsoControlSize)
		}
	}
	defer c.gsoMsgs.Put(gb)
	maxPayload := maxPayload4
	if dst.Addr().Is6() {
		maxPayload = maxPayload6
	}
	sent, i := 0, 0
	for i < len(bufs) {
		k := 0
		for ; i < len(bufs) && k < len(gb.ms); k++ {
			size, total, j := len(bufs[i]), len(bufs[i]), i+1
			for size > 0 && j < len(bufs) && j-i < maxSegments && len(bufs[j]) > 0 && len(bufs[j]) <= size && total+len(bufs[j]) <= maxPayload {
				total += len(bufs[j])
				j++
				if len(bufs[j-1]) < size {
					break // a shorter datagram ends the run
				}
			}
			m := &gb.ms[k]
			m.Buffers, m.Addr, m.OOB = bufs[i:j], ua, nil
			if j-i > 1 {
				m.OOB = putGSO(gb.oob[k], size)
			}
			gb.counts[k] = j - i
			i = j
		}
		n, err := c.writeAll(gb.ms[:k])
		clearMsgs(gb.ms[:k])
		for _, cnt := range gb.counts[:n] {
			sent += cnt
		}
		if err != nil {
			return sent, err
		}
	}
	return sent, nil
}

// clearMsgs drops the references to the caller's buffers.
func clearMsgs(ms []ipv4.Message) {
	for i := range ms {
		ms[i].Buffers, ms[i].Addr, ms[i].OOB = nil, nil, nil
	}
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
		done += max(n, 0) // x/net reports -1 with the error
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
