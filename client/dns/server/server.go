// Package server is the thin driver of the client's stub resolver (client/dns): it owns the sockets and
// goroutines, serialises calls into the sans-IO core, serves queries on UDP packet conns and TCP listeners
// (real sockets, or the sentinel listeners of client/dns/tcpdns), and performs the core's upstream queries
// with miekg/dns connections.
package server

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/snowgate/snowgate/client/dns"
)

// TCPIdleTimeout closes a DNS-over-TCP connection that sent nothing for this long.
const TCPIdleTimeout = 30 * time.Second

// ErrUnknownSentinel is returned by Serve for an address that is not one of the Resolver's sentinels.
var ErrUnknownSentinel = errors.New("not a sentinel address of this resolver")

// DialFunc dials an upstream resolver ("udp" or "tcp").
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// Config configures a Server.
type Config struct {
	// Resolver is the core; the Server is its only user from now on.
	Resolver *dns.Resolver
	// Dial dials upstreams reached over the physical network (nil → net.Dialer).
	Dial DialFunc
	// TunnelDial dials upstreams inside a CIDR resource (Forward.ThroughTunnel); nil → Dial.
	TunnelDial DialFunc
	// OnEvent receives "name now maps to IPs" events; it is called without the core lock held and must not block.
	OnEvent func(dns.NameAssigned)
	// Now is the clock (nil → time.Now).
	Now func() time.Time
	// Logger receives logs (nil → discard).
	Logger *slog.Logger
}

// Server drives a dns.Resolver. Its goroutines end with Close.
type Server struct {
	cfg Config
	log *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex // guards the core and the maps below
	r         *dns.Resolver
	pcs       map[uint64]net.PacketConn
	conns     map[uint64]*tcpConn
	exchanges map[dns.ForwardID]context.CancelCauseFunc
	closed    bool // set by Close: no new goroutines (s.wg.Add happens under mu while !closed)

	// roams counts Roam calls (written under mu): forwards drained before a roam are not sent after it,
	// since the roam already answered their queries.
	roams atomic.Uint64

	umu        sync.Mutex // guards udpUps
	udpUps     map[netip.AddrPort]*udpUpstream
	kick       chan struct{}
	timerArmed atomic.Bool

	nextHandle atomic.Uint64
}

type tcpConn struct {
	c   net.Conn
	wmu sync.Mutex
}

// New creates a Server; call Serve to add sockets and Close to stop.
func New(cfg Config) (*Server, error) {
	if cfg.Resolver == nil {
		return nil, errors.New("dns server: Config.Resolver is nil")
	}
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = d.DialContext
	}
	if cfg.TunnelDial == nil {
		cfg.TunnelDial = cfg.Dial
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg: cfg, log: log, ctx: ctx, cancel: cancel, r: cfg.Resolver,
		pcs: make(map[uint64]net.PacketConn), conns: make(map[uint64]*tcpConn),
		exchanges: make(map[dns.ForwardID]context.CancelCauseFunc),
		udpUps:    make(map[netip.AddrPort]*udpUpstream),
		kick:      make(chan struct{}, 1),
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.timerLoop()
	}()
	return s, nil
}

// Serve answers queries arriving on the UDP packet conns and the TCP listener (either may be empty/nil) as if
// they were sent to sentinel:53. It takes ownership of them, closes them when ctx ends or the Server is
// closed, and returns then. TCP connections it accepted live on until they end or the Server is closed.
// sentinel must be one of the Resolver's sentinels (ErrUnknownSentinel otherwise).
func (s *Server) Serve(ctx context.Context, sentinel netip.Addr, udp []net.PacketConn, tcp net.Listener) error {
	known := false
	for _, st := range s.r.Sentinels() {
		known = known || st.Addr == sentinel.Unmap()
	}
	if !known {
		for _, pc := range udp {
			_ = pc.Close()
		}
		if tcp != nil {
			_ = tcp.Close()
		}
		return fmt.Errorf("serving %s: %w", sentinel, ErrUnknownSentinel)
	}
	server := netip.AddrPortFrom(sentinel.Unmap(), 53)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for _, pc := range udp {
		h := s.nextHandle.Add(1)
		s.mu.Lock()
		s.pcs[h] = pc
		s.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.udpLoop(pc, h, server)
		}()
	}
	if tcp != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.acceptLoop(ctx, tcp, server)
		}()
	}
	select {
	case <-ctx.Done():
	case <-s.ctx.Done():
	}
	for _, pc := range udp {
		_ = pc.Close()
	}
	if tcp != nil {
		_ = tcp.Close()
	}
	wg.Wait()
	s.mu.Lock()
	for h, pc := range s.pcs {
		for _, u := range udp {
			if u == pc {
				delete(s.pcs, h)
			}
		}
	}
	s.mu.Unlock()
	return nil
}

// pending holds the core's outputs drained under the lock, to be performed after it.
type pending struct {
	forwards []dns.Forward
	replies  []dns.Reply
	events   []dns.NameAssigned
	roams    uint64 // s.roams when the forwards were drained
}

func (p *pending) empty() bool { return len(p.forwards)+len(p.replies)+len(p.events) == 0 }

// drainLocked moves the core's outputs into p. s.mu must be held.
func (s *Server) drainLocked(p *pending) {
	p.roams = s.roams.Load()
	for f, ok := s.r.PollForward(); ok; f, ok = s.r.PollForward() {
		p.forwards = append(p.forwards, f)
	}
	for rep, ok := s.r.PollReply(); ok; rep, ok = s.r.PollReply() {
		p.replies = append(p.replies, rep)
	}
	for e, ok := s.r.PollEvent(); ok; e, ok = s.r.PollEvent() {
		p.events = append(p.events, e)
	}
}

// dispatch performs the drained outputs and empties p.
func (s *Server) dispatch(p *pending) {
	for _, e := range p.events {
		if s.cfg.OnEvent != nil {
			s.cfg.OnEvent(e)
		} else {
			s.log.Debug("name now maps to proxy IPs", "name", e.Name, "resource", e.ResourceID, "ips", e.IPs)
		}
	}
	for _, rep := range p.replies {
		s.send(rep)
	}
	for _, f := range p.forwards {
		if f.Transport == dns.UDP && !f.ThroughTunnel {
			s.forwardUDP(f, p.roams)
		} else {
			s.startExchange(f, p.roams)
		}
	}
	p.forwards, p.replies, p.events = p.forwards[:0], p.replies[:0], p.events[:0]
}

func (s *Server) send(rep dns.Reply) {
	s.mu.Lock()
	pc := s.pcs[rep.To.Handle]
	tc := s.conns[rep.To.Handle]
	s.mu.Unlock()
	switch rep.To.Transport {
	case dns.UDP:
		if pc == nil {
			return
		}
		if _, err := pc.WriteTo(rep.Payload, net.UDPAddrFromAddrPort(rep.To.Client)); err != nil {
			s.log.Debug("writing DNS reply", "to", rep.To.Client, "error", err)
		}
	case dns.TCP:
		if tc == nil {
			return
		}
		tc.write(rep.Payload)
	}
}

func (tc *tcpConn) write(msg []byte) {
	frame := make([]byte, 2+len(msg))
	binary.BigEndian.PutUint16(frame, uint16(len(msg)))
	copy(frame[2:], msg)
	tc.wmu.Lock()
	defer tc.wmu.Unlock()
	_ = tc.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = tc.c.Write(frame)
}

func (s *Server) udpLoop(pc net.PacketConn, h uint64, server netip.AddrPort) {
	buf := make([]byte, 65535)
	out := make([]byte, 0, 1500)
	var p pending
	udpc, _ := pc.(*net.UDPConn)
	for {
		var n int
		var from netip.AddrPort
		var err error
		if udpc != nil {
			n, from, err = udpc.ReadFromUDPAddrPort(buf)
		} else {
			var a net.Addr
			n, a, err = pc.ReadFrom(buf)
			if ua, ok := a.(*net.UDPAddr); ok {
				from = ua.AddrPort()
			}
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) || s.ctx.Err() != nil {
				return
			}
			s.log.Debug("reading DNS query", "error", err)
			continue
		}
		src := dns.Source{Transport: dns.UDP, Client: from, Server: server, Handle: h}
		s.mu.Lock()
		reply, ok := s.r.HandleQuery(src, buf[:n], s.cfg.Now(), out[:0])
		s.drainLocked(&p)
		s.mu.Unlock()
		if ok {
			if udpc != nil {
				_, err = udpc.WriteToUDPAddrPort(reply, from)
			} else {
				_, err = pc.WriteTo(reply, net.UDPAddrFromAddrPort(from))
			}
			if err != nil {
				s.log.Debug("writing DNS reply", "to", from, "error", err)
			}
		}
		if !p.empty() {
			s.dispatch(&p)
		}
	}
}

func (s *Server) acceptLoop(ctx context.Context, ln net.Listener, server netip.AddrPort) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			s.log.Debug("accepting DNS-over-TCP connection", "error", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		h := s.nextHandle.Add(1)
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			_ = c.Close()
			return
		}
		err = s.r.HandleTCPAccept(server.Addr(), h)
		if err == nil {
			s.conns[h] = &tcpConn{c: c}
			s.wg.Add(1)
		}
		s.mu.Unlock()
		if err != nil {
			s.log.Debug("refusing DNS-over-TCP connection", "from", c.RemoteAddr(), "error", err)
			resetConn(c)
			continue
		}
		go func() {
			defer s.wg.Done()
			s.tcpLoop(c, h, server)
		}()
	}
}

// tcpLoop reads pipelined, length-prefixed queries; replies are written as they become ready (any order).
func (s *Server) tcpLoop(c net.Conn, h uint64, server netip.AddrPort) {
	defer func() {
		s.mu.Lock()
		s.r.HandleTCPClose(h)
		delete(s.conns, h)
		s.mu.Unlock()
		_ = c.Close()
	}()
	stop := context.AfterFunc(s.ctx, func() { _ = c.Close() })
	defer stop()
	var client netip.AddrPort
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		client = ta.AddrPort()
	}
	src := dns.Source{Transport: dns.TCP, Client: client, Server: server, Handle: h}
	buf := make([]byte, 65535)
	var p pending
	for {
		_ = c.SetReadDeadline(time.Now().Add(TCPIdleTimeout))
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(c, buf[:n]); err != nil {
			return
		}
		s.mu.Lock()
		reply, ok := s.r.HandleQuery(src, buf[:n], s.cfg.Now(), nil)
		tc := s.conns[h]
		s.drainLocked(&p)
		s.mu.Unlock()
		if ok && tc != nil {
			tc.write(reply)
		}
		if !p.empty() {
			s.dispatch(&p)
		}
	}
}

// errRoamed is the cancellation cause of the upstream exchanges a roam abandons.
var errRoamed = errors.New("network roamed")

// startExchange performs one forwarded query in its own goroutine, unless a roam since it was drained from the
// core (roams) already answered it.
func (s *Server) startExchange(f dns.Forward, roams uint64) {
	rctx, roam := context.WithCancelCause(s.ctx)
	ctx, cancel := context.WithDeadline(rctx, f.Deadline)
	s.mu.Lock()
	if s.closed || s.roams.Load() != roams {
		s.mu.Unlock()
		cancel()
		roam(nil)
		return
	}
	s.exchanges[f.ID] = roam
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		defer roam(nil)
		defer cancel()
		resp, err := s.exchange(ctx, f)
		var p pending
		s.mu.Lock()
		delete(s.exchanges, f.ID)
		if err != nil {
			if ctx.Err() == context.DeadlineExceeded {
				err = fmt.Errorf("%w: %w", dns.ErrUpstreamTimeout, err)
			}
			s.r.HandleUpstreamError(f.ID, err, s.cfg.Now())
		} else {
			s.r.HandleUpstreamResponse(f.ID, resp, s.cfg.Now())
		}
		s.drainLocked(&p)
		s.mu.Unlock()
		s.dispatch(&p)
	}()
}

// exchange sends the query byte for byte over a fresh socket (so every exchange has its own local port, and
// the ones after a roam get new ones) and returns the first answer carrying the query's id. When a roam
// abandons it, a TCP socket is reset (RST) rather than closed gracefully.
func (s *Server) exchange(ctx context.Context, f dns.Forward) ([]byte, error) {
	dial := s.cfg.Dial
	if f.ThroughTunnel {
		dial = s.cfg.TunnelDial
	}
	network := f.Transport.String()
	nc, err := dial(ctx, network, f.Upstream.String())
	if err != nil {
		return nil, fmt.Errorf("dialing upstream %s/%s: %w", f.Upstream, network, err)
	}
	stop := context.AfterFunc(ctx, func() {
		if errors.Is(context.Cause(ctx), errRoamed) {
			resetConn(nc)
			return
		}
		_ = nc.SetDeadline(time.Unix(1, 0))
	})
	defer stop()
	defer nc.Close()
	_ = nc.SetDeadline(f.Deadline)
	co := &mdns.Conn{Conn: nc}
	if _, err := co.Write(f.Query); err != nil {
		return nil, fmt.Errorf("sending to upstream %s/%s: %w", f.Upstream, network, err)
	}
	want := binary.BigEndian.Uint16(f.Query)
	buf := make([]byte, 65535)
	for {
		n, err := co.Read(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("reading from upstream %s/%s: %w", f.Upstream, network, ctx.Err())
			}
			return nil, fmt.Errorf("reading from upstream %s/%s: %w", f.Upstream, network, err)
		}
		if n >= 2 && binary.BigEndian.Uint16(buf) == want {
			return buf[:n:n], nil
		}
		if f.Transport == dns.TCP {
			return nil, fmt.Errorf("upstream %s/tcp answered with a wrong id", f.Upstream)
		}
	}
}

// Roam handles a network change: every upstream exchange in flight is abandoned (its TCP socket reset, the
// shared UDP sockets closed; later queries get new sockets with new local ports) and every query in flight
// is answered SERVFAIL, TCP ones on the application's connection. The applications' DNS-over-TCP
// connections stay open for their next queries.
func (s *Server) Roam() {
	var p pending
	s.mu.Lock()
	s.roams.Add(1)
	res := s.r.Roam(s.cfg.Now())
	for _, id := range res.Cancelled {
		if roam := s.exchanges[id]; roam != nil {
			roam(errRoamed)
			delete(s.exchanges, id)
		}
	}
	s.drainLocked(&p)
	s.mu.Unlock()
	s.closeUDPUpstreams()
	s.dispatch(&p)
	s.log.Info("roamed: upstream DNS sockets reset, queries in flight answered SERVFAIL", "cancelled_queries", len(res.Cancelled))
}

// resetConn aborts a connection with RST where the transport allows it.
func resetConn(c net.Conn) {
	switch v := c.(type) {
	case interface{ Reset() error }:
		_ = v.Reset()
	case *net.TCPConn:
		_ = v.SetLinger(0)
		_ = v.Close()
	default:
		_ = c.Close()
	}
}

// Close stops every goroutine and closes every socket the Server owns; it waits for them.
func (s *Server) Close() error {
	s.cancel()
	s.mu.Lock()
	s.closed = true
	for _, tc := range s.conns {
		_ = tc.c.Close()
	}
	s.mu.Unlock()
	s.closeUDPUpstreams()
	s.wg.Wait()
	return nil
}
