package relay

import (
	"context"
	"encoding/binary"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/snowgate/snowgate/internal/telemetry"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// batchReader is the recvmmsg side of ipv4.PacketConn / ipv6.PacketConn.
type batchReader interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
}

// listenerConn wraps one listener socket handed to pion. It counts the
// datagrams pion relays to clients (ChannelData and Data indications), can
// serve pion's one-at-a-time ReadFrom from a recvmmsg batch, and lets the
// server answer some requests before pion sees them (intercept).
//
// pion runs exactly one read loop per PacketConnConfig, so ReadFrom has a
// single caller and the batch state needs no lock. WriteTo is called from
// many goroutines (every allocation's relay loop) and only touches atomics.
type listenerConn struct {
	*net.UDPConn
	shard     *trafficShard
	intercept func(b []byte, from net.Addr) bool
	fast      *fastPath // nil: everything goes to pion

	batch   batchReader
	msgs    []ipv4.Message
	next, n int
}

func newListenerConn(c *net.UDPConn, shard *trafficShard, batch int, intercept func([]byte, net.Addr) bool) *listenerConn {
	l := &listenerConn{UDPConn: c, shard: shard, intercept: intercept}
	if batch > 1 {
		if c.LocalAddr().(*net.UDPAddr).IP.To4() != nil {
			l.batch = ipv4.NewPacketConn(c)
		} else {
			l.batch = ipv6.NewPacketConn(c)
		}
		l.msgs = make([]ipv4.Message, batch)
		for i := range l.msgs {
			l.msgs[i].Buffers = [][]byte{make([]byte, 2048)}
		}
	}
	return l
}

// ReadFrom implements net.PacketConn for pion's read loop. ChannelData of
// bound channels is relayed here (fast path) and never reaches pion.
func (l *listenerConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, from, err := l.readOne(p)
		if err != nil {
			return n, nil, err
		}
		if n > len(p) {
			// Oversized: report the full size so pion drops it (it checks
			// n >= its MTU) rather than relaying a truncated datagram.
			return n, net.UDPAddrFromAddrPort(from), nil
		}
		if l.fast != nil && l.fast.forwardToPeer(p[:n], from) {
			continue
		}
		addr := net.UDPAddrFromAddrPort(from)
		if l.intercept != nil && l.intercept(p[:n], addr) {
			continue
		}
		return n, addr, nil
	}
}

// readOne reads one datagram; the source address is unmapped.
func (l *listenerConn) readOne(p []byte) (int, netip.AddrPort, error) {
	if l.batch == nil {
		n, from, err := l.UDPConn.ReadFromUDPAddrPort(p)
		return n, netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), err
	}
	if l.next >= l.n {
		n, err := l.batch.ReadBatch(l.msgs, 0)
		if err != nil {
			return 0, netip.AddrPort{}, err
		}
		l.next, l.n = 0, n
	}
	m := &l.msgs[l.next]
	l.next++
	n := copy(p, m.Buffers[0][:m.N])
	if m.N > len(p) {
		n = m.N
	}
	from, _ := udpAddrPort(m.Addr)
	return n, from, nil
}

// WriteTo implements net.PacketConn and counts relayed traffic to clients.
func (l *listenerConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	n, err := l.UDPConn.WriteTo(p, addr)
	if err == nil && len(p) >= 4 {
		switch {
		case p[0]&0xC0 == 0x40: // ChannelData
			l.shard.toClientPackets.Add(1)
			l.shard.toClientBytes.Add(uint64(binary.BigEndian.Uint16(p[2:4])))
		case p[0] == 0x00 && p[1] == 0x17: // Data indication
			l.shard.toClientPackets.Add(1)
			l.shard.toClientBytes.Add(uint64(len(p)))
		}
	}
	return n, err
}

// relayConn wraps an allocation's relay socket. It counts datagrams relayed
// to peers and, with a fast path, sends datagrams from peers with a bound
// channel straight to the client as ChannelData.
type relayConn struct {
	*net.UDPConn
	shard *trafficShard
	fast  *fastPath
	key   relayKey
	guard *sendGuard // nil: no destination check (tests of the conn alone)

	mu    sync.RWMutex
	peers map[netip.AddrPort]*peerChannel
	buf   []byte // read buffer with room for the ChannelData header; single reader
}

// relayReadSize matches pion's relay read buffer (rtpMTU).
const relayReadSize = 1600

// WriteTo implements net.PacketConn for pion's sends to peers (Send
// indications, ChannelData outside the fast path) and counts them. A
// datagram to one of the relay's own addresses outside the relay port range
// is dropped (and counted as a refused peer) while pretending success, so
// that pion does not log an error per datagram.
func (r *relayConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	if r.guard != nil {
		if dst, ok := udpAddrPort(addr); ok && r.guard.refuse(dst) {
			return len(p), nil
		}
	}
	n, err := r.UDPConn.WriteTo(p, addr)
	if err == nil {
		r.shard.toPeerPackets.Add(1)
		r.shard.toPeerBytes.Add(uint64(n))
	}
	return n, err
}

// sendGuard drops datagrams to the relay's own addresses outside the relay
// port range (see PeerPolicy.OwnOutsideRange).
type sendGuard struct {
	policy *PeerPolicy
	stats  *stats
	log    *slog.Logger
}

// refuse reports whether dst must not be sent to, counting and logging (at
// trace level: one line per datagram) the refusal.
func (g *sendGuard) refuse(dst netip.AddrPort) bool {
	if !g.policy.OwnOutsideRange(dst) {
		return false
	}
	g.stats.refusedPeers.Add(1)
	if ctx := context.Background(); g.log.Enabled(ctx, telemetry.LevelTrace) {
		g.log.Log(ctx, telemetry.LevelTrace, "datagram to own address outside the relay port range dropped", "peer", dst.String())
	}
	return true
}

// refusesAddr reports, without counting, whether a channel to peer would
// be refused datagrams; such a channel stays on pion's path (through
// relayConn.WriteTo, which drops and counts) and out of the fast path.
func (g *sendGuard) refusesAddr(peer net.Addr) bool {
	dst, ok := udpAddrPort(peer)
	return !ok || g.policy.OwnOutsideRange(dst)
}

// writeToPeer is the fast path's client → peer send. The fast path never
// holds a binding to a destination sendGuard refuses (fastPath.bind).
func (r *relayConn) writeToPeer(p []byte, peer netip.AddrPort) {
	if _, err := r.UDPConn.WriteToUDPAddrPort(p, peer); err == nil {
		r.shard.toPeerPackets.Add(1)
		r.shard.toPeerBytes.Add(uint64(len(p)))
	}
}

func (r *relayConn) setChannel(peer netip.AddrPort, pc *peerChannel) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if pc == nil {
		delete(r.peers, peer)
		return
	}
	if r.peers == nil {
		r.peers = map[netip.AddrPort]*peerChannel{}
	}
	r.peers[peer] = pc
}

func (r *relayConn) channel(peer netip.AddrPort) *peerChannel {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.peers[peer]
}

// ReadFrom implements net.PacketConn for pion's relay loop. Datagrams from
// peers with a bound channel go to the client here; the rest (permission
// only: Data indications, or no permission: dropped) return to pion.
func (r *relayConn) ReadFrom(p []byte) (int, net.Addr, error) {
	if r.fast == nil {
		return r.UDPConn.ReadFrom(p)
	}
	if r.buf == nil {
		r.buf = make([]byte, 4+relayReadSize+3)
	}
	for {
		n, from, err := r.UDPConn.ReadFromUDPAddrPort(r.buf[4 : 4+relayReadSize])
		if err != nil {
			return 0, nil, err
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if pc := r.channel(from); pc != nil {
			binary.BigEndian.PutUint16(r.buf[0:2], pc.number)
			binary.BigEndian.PutUint16(r.buf[2:4], uint16(n)) //nolint:gosec // n <= relayReadSize
			total := 4 + n
			for total%4 != 0 { // pad to 4 bytes like pion does
				r.buf[total] = 0
				total++
			}
			if _, err := pc.out.WriteToUDPAddrPort(r.buf[:total], pc.client); err == nil {
				r.shard.toClientPackets.Add(1)
				r.shard.toClientBytes.Add(uint64(n))
			}
			continue
		}
		return copy(p, r.buf[4:4+n]), net.UDPAddrFromAddrPort(from), nil
	}
}

// Close implements net.PacketConn.
func (r *relayConn) Close() error {
	if r.fast != nil {
		r.fast.removeRelay(r)
	}
	return r.UDPConn.Close()
}
