package socks5

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/snowgate/snowgate/internal/dialerr"
)

// udpBufSize is the buffer of each direction of a UDP association: the largest datagram plus its header.
const udpBufSize = 65535 + 22

// maxCachedNames bounds an association's cache of resolved domain names.
const maxCachedNames = 64

// association is one UDP ASSOCIATE: a relay socket on the host facing the client and, per address family, an
// outgoing socket from ListenPacket.
type association struct {
	s        *Server
	ctx      context.Context
	log      *slog.Logger
	relay    *net.UDPConn
	clientIP netip.Addr // the control connection's peer: the only source accepted
	wantPort uint16     // the port the client announced (0: any, the first datagram pins it)
	last     atomic.Int64

	mu     sync.Mutex
	client netip.AddrPort // pinned client address; valid after the first accepted datagram
	out    [2]net.PacketConn
	closed bool
	wg     sync.WaitGroup

	names map[string]netip.Addr // only the client reader touches it
}

// associate serves a UDP ASSOCIATE: it binds the relay socket on the address the client connected to,
// replies with it and relays datagrams until the control connection closes, the association is idle for
// UDPIdleTimeout or ctx ends.
func (s *Server) associate(ctx context.Context, c net.Conn, req Request, log *slog.Logger) {
	local, remote := addrOf(c.LocalAddr()), addrOf(c.RemoteAddr())
	relay, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local.IP, 0)))
	if err != nil {
		log.Debug("socks5: UDP relay socket", "error", err)
		s.reply(c, ReplyGeneralFailure, Addr{})
		return
	}
	a := &association{
		s: s, ctx: ctx, log: log, relay: relay, clientIP: remote.IP,
		names: make(map[string]netip.Addr),
	}
	// DST.ADDR/DST.PORT of the request are where the client will send from; only the port is used (the
	// address must be the control connection's anyway), 0 means "not known yet".
	a.wantPort = req.Addr.Port
	a.last.Store(time.Now().UnixNano())
	defer a.close()
	if err := s.reply(c, ReplySucceeded, addrOf(relay.LocalAddr())); err != nil {
		log.Debug("socks5: UDP ASSOCIATE reply", "error", err)
		return
	}
	c.SetDeadline(time.Time{})
	log.Debug("socks5: UDP ASSOCIATE", "relay", relay.LocalAddr())
	a.wg.Add(1)
	go a.fromClient()

	// The association lives as long as the control connection (RFC 1928 §7), and no longer than the idle
	// timeout; the client is not supposed to send anything on it.
	idle := orDefault(s.UDPIdleTimeout, DefaultUDPIdleTimeout)
	var buf [512]byte
	for {
		c.SetReadDeadline(time.Unix(0, a.last.Load()).Add(idle))
		_, err := c.Read(buf[:])
		if err == nil {
			continue
		}
		if dialerr.Classify(err) == dialerr.Timeout && time.Since(time.Unix(0, a.last.Load())) < idle {
			continue
		}
		log.Debug("socks5: UDP association ends", "reason", err)
		return
	}
}

// close closes every socket of the association and waits for its goroutines.
func (a *association) close() {
	a.mu.Lock()
	a.closed = true
	outs := a.out
	a.mu.Unlock()
	a.relay.Close()
	for _, pc := range outs {
		if pc != nil {
			pc.Close()
		}
	}
	a.wg.Wait()
}

// fromClient relays the client's datagrams to their destinations.
func (a *association) fromClient() {
	defer a.wg.Done()
	buf := make([]byte, udpBufSize)
	for {
		n, from, err := a.relay.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if !a.accept(from) {
			continue
		}
		d, err := ParseDatagram(buf[:n])
		if err != nil || d.Frag != 0 {
			continue // malformed, or a fragment: dropped (fragmentation is optional, RFC 1928 §7)
		}
		dst, err := a.destination(d.Addr)
		if err != nil {
			a.log.Debug("socks5: UDP destination", "addr", d.Addr, "error", err)
			continue
		}
		pc, err := a.outgoing(dst.Addr().Is6())
		if err != nil {
			a.log.Debug("socks5: UDP outgoing socket", "error", err)
			continue
		}
		a.last.Store(time.Now().UnixNano())
		if _, err := pc.WriteTo(d.Payload, net.UDPAddrFromAddrPort(dst)); err != nil {
			a.log.Debug("socks5: UDP send", "dst", dst, "error", err)
		}
	}
}

// accept reports whether a datagram from from belongs to the client: same IP as the control connection,
// and the announced port or, when none was announced, the port of the first datagram.
func (a *association) accept(from netip.AddrPort) bool {
	if from.Addr() != a.clientIP {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.client.IsValid() {
		return from == a.client
	}
	if a.wantPort != 0 && from.Port() != a.wantPort {
		return false
	}
	a.client = from
	return true
}

// destination resolves a datagram's destination (domain names through Resolve, cached).
func (a *association) destination(d Addr) (netip.AddrPort, error) {
	if d.Name == "" {
		return netip.AddrPortFrom(d.IP.Unmap(), d.Port), nil
	}
	if ip, ok := a.names[d.Name]; ok {
		return netip.AddrPortFrom(ip, d.Port), nil
	}
	ctx, cancel := context.WithTimeout(a.ctx, orDefault(a.s.DialTimeout, DefaultDialTimeout))
	defer cancel()
	addrs, err := a.s.resolve(ctx, d)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if len(a.names) >= maxCachedNames {
		clear(a.names)
	}
	a.names[d.Name] = addrs[0].Addr()
	return addrs[0], nil
}

// outgoing returns the outgoing socket of a family, opening it (and its reader) on first use.
func (a *association) outgoing(v6 bool) (net.PacketConn, error) {
	i, network, address := 0, "udp4", "0.0.0.0:0"
	if v6 {
		i, network, address = 1, "udp6", "[::]:0"
	}
	a.mu.Lock()
	pc := a.out[i]
	a.mu.Unlock()
	if pc != nil {
		return pc, nil
	}
	pc, err := a.s.ListenPacket(a.ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("opening %s socket: %w", network, err)
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		pc.Close()
		return nil, net.ErrClosed
	}
	a.out[i] = pc
	a.wg.Add(1)
	a.mu.Unlock()
	go a.toClient(pc)
	return pc, nil
}

// toClient relays datagrams from the outgoing socket pc to the client, each with a header naming its source.
func (a *association) toClient(pc net.PacketConn) {
	defer a.wg.Done()
	buf := make([]byte, udpBufSize)
	const room = 22 // the longest header (IPv6)
	for {
		n, from, err := pc.ReadFrom(buf[room:])
		if err != nil {
			return
		}
		src := addrOf(from)
		hl := datagramHeaderLen(src.IP)
		hdr, err := AppendDatagram(buf[room-hl:room-hl], Datagram{Addr: src})
		if err != nil || len(hdr) != hl {
			continue
		}
		a.mu.Lock()
		client := a.client
		a.mu.Unlock()
		if !client.IsValid() {
			continue
		}
		a.last.Store(time.Now().UnixNano())
		if _, err := a.relay.WriteToUDPAddrPort(buf[room-hl:room+n], client); err != nil {
			a.log.Debug("socks5: UDP send to client", "error", err)
		}
	}
}
