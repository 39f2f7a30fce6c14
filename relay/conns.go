package relay

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/snowgate/snowgate/internal/telemetry"
)

// Inbox sizes: how many datagrams may wait for pion's read loop of a
// listener socket (STUN requests of every client on it) and of an
// allocation (Data indications to build).
const (
	listenerInbox = 1024
	relayInbox    = 128
)

// errNoDeadlines: the relay's sockets are read by workers, so read and
// write deadlines (which pion does not use) are not offered.
var errNoDeadlines = fmt.Errorf("relay socket deadlines: %w", errors.ErrUnsupported)

// noDeadlines is the deadline part of net.PacketConn for the relay's conns.
type noDeadlines struct{}

// SetDeadline implements net.PacketConn; deadlines are not offered.
func (noDeadlines) SetDeadline(time.Time) error { return errNoDeadlines }

// SetReadDeadline implements net.PacketConn; deadlines are not offered.
func (noDeadlines) SetReadDeadline(time.Time) error { return errNoDeadlines }

// SetWriteDeadline implements net.PacketConn; deadlines are not offered.
func (noDeadlines) SetWriteDeadline(time.Time) error { return errNoDeadlines }

// workerConn is what listenerConn and relayConn share: a socket a worker
// reads, the inbox that serves pion's ReadFrom, and a close undoing both.
type workerConn struct {
	noDeadlines
	sock  *udpSocket
	inbox *inbox

	w         *worker
	slot      int32
	closeOnce sync.Once
	closeErr  error
}

// attach registers the socket with w, which hands its datagrams to handle.
func (c *workerConn) attach(w *worker, handle func(*recvBatch, int, *sendBatch), readErr func(error)) error {
	slot, err := w.add(c.sock, handle, readErr)
	if err != nil {
		return err
	}
	c.w, c.slot = w, slot
	return nil
}

// close runs first (if not nil), then the worker stops reading the
// socket, pion's ReadFrom returns net.ErrClosed, and the socket is closed;
// only the first call does anything.
func (c *workerConn) close(first func()) error {
	c.closeOnce.Do(func() {
		if first != nil {
			first()
		}
		if c.w != nil {
			c.w.remove(c.slot)
		}
		c.inbox.close()
		c.closeErr = c.sock.close()
	})
	return c.closeErr
}

// LocalAddr implements net.PacketConn.
func (c *workerConn) LocalAddr() net.Addr { return c.sock.LocalAddr() }

// listenerConn is one listener socket as pion sees it (a net.PacketConn).
// Its worker reads the socket: ChannelData of bound channels is relayed
// there (fast path) and everything else waits in the inbox for pion's read
// loop, which ReadFrom serves. ReadFrom also lets the server answer some
// requests before pion sees them (intercept). WriteTo sends directly and
// counts relayed traffic; it is called from many goroutines.
type listenerConn struct {
	workerConn
	shard     *trafficShard
	stats     *stats
	intercept func(b []byte, from net.Addr) bool
	fast      *fastPath // nil: everything goes to pion
}

// attach registers the listener with its worker.
func (l *listenerConn) attach(w *worker) error {
	return l.workerConn.attach(w, l.handleBatch, l.stats.readError)
}

// handleBatch runs on the worker: relay bound ChannelData, queue the rest.
func (l *listenerConn) handleBatch(b *recvBatch, n int, out *sendBatch) {
	for i := range n {
		p, from, truncated := b.payload(i)
		if truncated {
			l.stats.dropped[dropOversized].Add(1)
			continue
		}
		if l.fast != nil {
			// The fast path never holds a binding to a destination
			// sendGuard refuses (fastPath.bind).
			if fc, payload, ok := l.fast.route(p, from); ok {
				out.add(fc.relay.sock, payload, fc.peer, len(payload), fc.relay.shard, false)
				continue
			}
		}
		if !l.inbox.push(p, from) {
			l.stats.dropped[dropBacklog].Add(1)
		}
	}
}

// ReadFrom implements net.PacketConn for pion's read loop.
func (l *listenerConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, from, err := l.inbox.pop(p)
		if err != nil {
			return 0, nil, err
		}
		addr := net.UDPAddrFromAddrPort(from)
		if n <= len(p) && l.intercept != nil && l.intercept(p[:n], addr) {
			continue
		}
		return n, addr, nil
	}
}

// WriteTo implements net.PacketConn and counts relayed traffic to clients.
func (l *listenerConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	to, ok := udpAddrPort(addr)
	if !ok {
		return 0, fmt.Errorf("write to %v: %w", addr, errUnreachableFamily)
	}
	if err := l.sock.sendTo(p, to); err != nil {
		return 0, err
	}
	if len(p) >= 4 {
		switch {
		case p[0]&0xC0 == 0x40: // ChannelData
			l.shard.toClientPackets.Add(1)
			l.shard.toClientBytes.Add(uint64(binary.BigEndian.Uint16(p[2:4])))
		case p[0] == 0x00 && p[1] == 0x17: // Data indication
			l.shard.toClientPackets.Add(1)
			l.shard.toClientBytes.Add(uint64(len(p)))
		}
	}
	return len(p), nil
}

// Close implements net.PacketConn: the worker stops reading the socket,
// pion's ReadFrom returns net.ErrClosed, and the socket is closed.
func (l *listenerConn) Close() error { return l.close(nil) }

// relayConn is an allocation's relay socket as pion sees it. Its worker
// reads the socket: datagrams from peers with a bound channel go to the
// client as ChannelData right there (fast path); the rest (permission only:
// Data indications, or no permission: dropped by pion) wait in the inbox for
// pion's relay loop (ReadFrom). WriteTo carries pion's sends to peers.
type relayConn struct {
	workerConn
	shard *trafficShard
	stats *stats
	fast  *fastPath
	key   relayKey
	guard *sendGuard // nil: no destination check (tests of the conn alone)

	mu    sync.RWMutex
	peers map[netip.AddrPort]*peerChannel
}

// attach registers the relay socket with its worker.
func (r *relayConn) attach(w *worker) error {
	return r.workerConn.attach(w, r.handleBatch, r.stats.readError)
}

// handleBatch runs on the worker: datagrams from peers with a bound channel
// become ChannelData in place (the batch keeps 4 bytes of headroom and room
// for the padding) and go to the client; the rest wait for pion.
func (r *relayConn) handleBatch(b *recvBatch, n int, out *sendBatch) {
	for i := range n {
		p, from, truncated := b.payload(i)
		if truncated {
			r.stats.dropped[dropOversized].Add(1)
			continue
		}
		if pc := r.channel(from); pc != nil {
			pad := (4 - len(p)%4) % 4 // ChannelData over UDP is padded to 4 bytes, like pion does
			frame := b.withHeader(i, channelDataHeader, pad)
			binary.BigEndian.PutUint16(frame[0:2], pc.number)
			binary.BigEndian.PutUint16(frame[2:4], uint16(len(p))) //nolint:gosec // len(p) <= maxReadBuffer
			clear(frame[4+len(p):])
			out.add(pc.out, frame, pc.client, len(p), r.shard, true)
			continue
		}
		if !r.inbox.push(p, from) {
			r.stats.dropped[dropBacklog].Add(1)
		}
	}
}

// ReadFrom implements net.PacketConn for pion's relay loop.
func (r *relayConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, from, err := r.inbox.pop(p)
		if err != nil {
			return 0, nil, err
		}
		if n <= len(p) {
			return n, net.UDPAddrFromAddrPort(from), nil
		}
		// pion's relay buffer is 1600 bytes and it would relay a cut
		// datagram: drop it instead and wait for the next one.
		r.stats.dropped[dropOversized].Add(1)
	}
}

// WriteTo implements net.PacketConn for pion's sends to peers (Send
// indications, ChannelData outside the fast path) and counts them. A
// datagram to one of the relay's own addresses outside the relay port range
// is dropped (and counted as a refused peer) while pretending success, so
// that pion does not log an error per datagram.
func (r *relayConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	dst, ok := udpAddrPort(addr)
	if !ok {
		return 0, fmt.Errorf("write to %v: %w", addr, errUnreachableFamily)
	}
	if r.guard != nil && r.guard.refuse(dst) {
		return len(p), nil
	}
	if err := r.sock.sendTo(p, dst); err != nil {
		return 0, err
	}
	r.shard.toPeerPackets.Add(1)
	r.shard.toPeerBytes.Add(uint64(len(p)))
	return len(p), nil
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

// Close implements net.PacketConn: the fast path forgets the socket first.
func (r *relayConn) Close() error {
	return r.close(func() {
		if r.fast != nil {
			r.fast.removeRelay(r)
		}
	})
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
