// Package server is the thin driver of the client's stub resolver (client/dns): it owns the sockets and
// goroutines, serialises calls into the sans-IO core, serves queries on UDP packet conns and TCP listeners
// (real sockets, or the sentinel listeners of client/dns/tcpdns), and performs the core's upstream queries.
//
// # Upstream queries: Exchanger
//
// The upstream I/O is a component of its own, Exchanger, which performs a resolver's forwards without owning
// the resolver, so that a daemon keeping a dns.Resolver inside its own sans-IO core (queries arriving as IP
// packets from its TUN) can reuse it; Server uses it the same way. The owner of the core drains
// PollForward, hands the forwards to Exchange, and feeds each Result back into the core under its own lock
// (HandleUpstreamResponse or HandleUpstreamError); it runs the core's timer (PollTimeout, HandleTimeout) and
// Cancels what HandleTimeout expires and what HandleTCPClose lists; on a network change it calls the core's
// Roam, then Exchanger.Roam, then hands over the forwards drained after it. The core's deadlines are the one
// source of upstream timeouts.
//
// UDP queries to upstreams on the physical network go out from a small pool of connected sockets per upstream
// with random source ports, rotated after a bounded number of queries or time, under random DNS ids; an answer
// is accepted only from the upstream's address and port with the id and question of a query outstanding on that
// socket (RFC 5452), others are dropped (counted in the resolver's snowgate.client.dns.upstream.answers.dropped
// metric, by reason) and the real answer still awaited. On real UDP sockets queries are
// read, and replies and upstream queries written, several per system call (recvmmsg/sendmmsg on Linux). TCP
// queries, and queries to upstreams inside the tunnel, get a socket of their own per query (over
// Config.Dial / Config.TunnelDial), also under random ids. When an application closes its DNS-over-TCP
// connection, the upstream exchanges of its queries in flight are cancelled at once (their sockets closed).
// A roam resets every upstream socket; UDP queries in flight are sent again from new ones (see dns.Resolver.Roam).
//
// ReadTCPMessage and WriteTCPMessage frame DNS over TCP on an application's connection, for drivers that
// accept such connections themselves.
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv4"

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
	// Dial dials upstreams reached over the physical network (nil → net.Dialer); see ExchangerConfig.Dial
	// (its "udp" sockets must be *net.UDPConn).
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

	mu     sync.Mutex // guards the core, the maps below and armed
	r      *dns.Resolver
	pcs    map[uint64]*udpOut
	conns  map[uint64]*tcpConn
	closed bool      // set by Close: no new goroutines (s.wg.Add happens under mu while !closed)
	armed  time.Time // the core deadline the timer goroutine waits for (zero: none)

	ex *Exchanger // performs the core's forwards

	// roams counts Roam calls (written under mu): forwards drained before a roam are not sent after it,
	// since the roam already cancelled them (and resent their UDP queries as new forwards).
	roams atomic.Uint64

	// timer fires at armed for the timer goroutine. Whoever makes the core's deadline earlier resets it
	// under mu: resetting a timer wakes nobody, where a channel send to the timer goroutine put a second
	// goroutine (and often a second thread) on the path of every query that starts a deadline (issue 13).
	timer *time.Timer

	nextHandle atomic.Uint64
}

// udpOut is a UDP socket the Server answers on.
type udpOut struct {
	pc    net.PacketConn
	batch batchConn // nil unless pc is a *net.UDPConn
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
		pcs: make(map[uint64]*udpOut), conns: make(map[uint64]*tcpConn),
		timer: newStoppedTimer(),
	}
	ex, err := NewExchanger(ExchangerConfig{
		Dial: cfg.Dial, TunnelDial: cfg.TunnelDial, Logger: log,
		Done:      s.handleResults,
		OnDropped: cfg.Resolver.ReportDroppedAnswer,
	})
	if err != nil {
		cancel()
		return nil, err
	}
	s.ex = ex
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
		out := &udpOut{pc: pc}
		if uc, ok := pc.(*net.UDPConn); ok {
			out.batch = newBatchConn(uc)
		}
		s.pcs[h] = out
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
	for h, out := range s.pcs {
		for _, u := range udp {
			if u == out.pc {
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
	roams    uint64         // s.roams when the forwards were drained
	ms       []ipv4.Message // scratch space for batched writes
}

func (p *pending) empty() bool { return len(p.forwards)+len(p.replies)+len(p.events) == 0 }

// drainLocked moves the core's outputs into p, and wakes the timer goroutine when the core's next deadline
// is earlier than the one it waits for. s.mu must be held.
func (s *Server) drainLocked(p *pending) {
	s.drainOutputsLocked(p)
	if next, ok := s.r.PollTimeout(); ok && (s.armed.IsZero() || next.Before(s.armed)) {
		s.armed = next
		s.timer.Reset(max(next.Sub(s.cfg.Now()), 0)) // Go ≥ 1.23 timers: no stale tick survives Reset
	}
}

// drainOutputsLocked moves the core's outputs into p. s.mu must be held.
func (s *Server) drainOutputsLocked(p *pending) {
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

// handleResults feeds the Exchanger's results into the core (its Done callback).
func (s *Server) handleResults(rs []Result) {
	var p pending
	s.mu.Lock()
	now := s.cfg.Now()
	for _, r := range rs {
		if r.Err != nil {
			s.r.HandleUpstreamError(r.ID, r.Err, now)
		} else {
			s.r.HandleUpstreamResponse(r.ID, r.Response, now)
		}
	}
	s.drainLocked(&p)
	s.mu.Unlock()
	s.dispatch(&p)
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
	s.sendReplies(p)
	// Forwards drained before a roam are not sent after it: the roam cancelled them (and resent the UDP
	// queries among them as new forwards).
	if len(p.forwards) > 0 && s.roams.Load() == p.roams {
		s.ex.Exchange(p.forwards...)
	}
	clear(p.forwards)
	clear(p.ms)
	p.forwards, p.replies, p.events = p.forwards[:0], p.replies[:0], p.events[:0]
}

// sendReplies sends p.replies, the UDP ones to each socket in batches.
func (s *Server) sendReplies(p *pending) {
	if len(p.replies) == 1 {
		s.send(p.replies[0])
		return
	}
	for i, rep := range p.replies {
		if rep.Payload == nil {
			continue // sent in an earlier batch
		}
		if rep.To.Transport != dns.UDP {
			s.send(rep)
			continue
		}
		s.mu.Lock()
		out := s.pcs[rep.To.Handle]
		s.mu.Unlock()
		if out == nil || out.batch == nil {
			s.send(rep)
			continue
		}
		p.ms = p.ms[:0]
		for j := i; j < len(p.replies); j++ {
			r := &p.replies[j]
			if r.Payload == nil || r.To.Transport != dns.UDP || r.To.Handle != rep.To.Handle {
				continue
			}
			p.ms = append(p.ms, ipv4.Message{Buffers: [][]byte{r.Payload}, Addr: net.UDPAddrFromAddrPort(r.To.Client)})
			r.Payload = nil
		}
		if _, err := writeAll(out.batch, p.ms); err != nil {
			s.log.Debug("writing DNS replies", "error", err)
		}
	}
}

func (s *Server) send(rep dns.Reply) {
	s.mu.Lock()
	out := s.pcs[rep.To.Handle]
	tc := s.conns[rep.To.Handle]
	s.mu.Unlock()
	switch rep.To.Transport {
	case dns.UDP:
		if out == nil {
			return
		}
		pc := out.pc
		var err error
		if uc, ok := pc.(*net.UDPConn); ok {
			_, err = uc.WriteToUDPAddrPort(rep.Payload, rep.To.Client)
		} else {
			_, err = pc.WriteTo(rep.Payload, net.UDPAddrFromAddrPort(rep.To.Client))
		}
		if err != nil {
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
	tc.wmu.Lock()
	defer tc.wmu.Unlock()
	_ = tc.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_ = WriteTCPMessage(tc.c, msg)
}

func (s *Server) udpLoop(pc net.PacketConn, h uint64, server netip.AddrPort) {
	if uc, ok := pc.(*net.UDPConn); ok {
		s.udpBatchLoop(uc, h, server)
		return
	}
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

// udpBatchLoop is udpLoop for a real UDP socket: up to batchSize queries per system call, handled under one
// lock, their local replies sent with one system call and their forwards with one per upstream.
func (s *Server) udpBatchLoop(uc *net.UDPConn, h uint64, server netip.AddrPort) {
	bc := newBatchConn(uc)
	ms := newMessages(batchSize, batchQueryBuf)
	outs := make([][]byte, batchSize)
	for i := range outs {
		outs[i] = make([]byte, 0, 1500)
	}
	replies := make([]ipv4.Message, 0, batchSize)
	var p pending
	for {
		n, err := bc.ReadBatch(ms, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || s.ctx.Err() != nil {
				return
			}
			s.log.Debug("reading DNS queries", "error", err)
			continue
		}
		replies = replies[:0]
		s.mu.Lock()
		now := s.cfg.Now()
		for i := range ms[:n] {
			m := &ms[i]
			ua, ok := m.Addr.(*net.UDPAddr)
			if !ok || m.N >= batchQueryBuf {
				continue // possibly cut short
			}
			src := dns.Source{Transport: dns.UDP, Client: ua.AddrPort(), Server: server, Handle: h}
			reply, ok := s.r.HandleQuery(src, m.Buffers[0][:m.N], now, outs[i][:0])
			if ok {
				outs[i] = reply
				replies = append(replies, ipv4.Message{Buffers: outs[i : i+1 : i+1], Addr: m.Addr})
			}
		}
		s.drainLocked(&p)
		s.mu.Unlock()
		if len(replies) > 0 {
			if _, err := writeAll(bc, replies); err != nil {
				s.log.Debug("writing DNS replies", "error", err)
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
		res := s.r.HandleTCPClose(h)
		delete(s.conns, h)
		s.mu.Unlock()
		// Its queries' forwards were started by this goroutine (dispatch, before the next read), so every
		// one of them is registered by now: nothing is left to start after this.
		s.ex.Cancel(res.Cancelled...)
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
		q, err := ReadTCPMessage(c, buf)
		if err != nil {
			return
		}
		s.mu.Lock()
		reply, ok := s.r.HandleQuery(src, q, s.cfg.Now(), nil)
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

// Roam handles a network change: every upstream exchange in flight is abandoned (its TCP socket reset, the
// shared UDP sockets closed; later queries get new sockets with new local ports). TCP queries in flight are
// answered SERVFAIL on the application's connection; UDP ones are sent again from new sockets, so that the
// application sees nothing of the roam. The applications' DNS-over-TCP connections stay open for their next
// queries.
func (s *Server) Roam() {
	var p pending
	s.mu.Lock()
	s.roams.Add(1)
	res := s.r.Roam(s.cfg.Now())
	// Under the lock: every forward drained after the core's roam goes to the new sockets.
	s.ex.Roam()
	s.drainLocked(&p)
	s.mu.Unlock()
	s.dispatch(&p)
	s.log.Info("roamed: upstream DNS sockets reset, TCP queries in flight answered SERVFAIL, UDP ones resent",
		"cancelled", len(res.Cancelled), "resent", len(res.Resent))
}

// timerLoop runs the core's timer: it expires the forwards whose deadline passed (HandleTimeout: UDP queries
// get no answer, as without snowgate, TCP ones SERVFAIL) and cancels their upstream exchanges.
func (s *Server) timerLoop() {
	defer s.timer.Stop()
	for {
		var p pending
		s.mu.Lock()
		now := s.cfg.Now()
		res := s.r.HandleTimeout(now)
		s.drainOutputsLocked(&p)
		// From here on, whoever makes the core's next deadline earlier than this one kicks the loop.
		next, _ := s.r.PollTimeout()
		s.armed = next
		if next.IsZero() {
			s.timer.Stop()
		} else {
			s.timer.Reset(max(next.Sub(now), 0))
		}
		s.mu.Unlock()
		s.ex.Cancel(res.Expired...)
		if !p.empty() {
			s.dispatch(&p)
		}
		select {
		case <-s.ctx.Done():
			return
		case <-s.timer.C:
		}
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
	err := s.ex.Close()
	s.wg.Wait()
	return err
}

// newStoppedTimer returns a timer that is not running.
func newStoppedTimer() *time.Timer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}
