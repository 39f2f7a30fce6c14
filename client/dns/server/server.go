// Package server is the thin driver of the client's stub resolver (client/dns): it owns the sockets and
// goroutines, serialises calls into the sans-IO core, serves queries on UDP packet conns and TCP listeners
// (real sockets, or the sentinel listeners of client/dns/tcpdns), and performs the core's upstream queries.
//
// UDP queries to upstreams on the physical network go out from a small pool of connected sockets per upstream
// with random source ports, rotated after a bounded number of queries or time, under random DNS ids; an answer
// is accepted only from the upstream's address and port with the id and question of a query outstanding on that
// socket (RFC 5452), others are dropped (counted in the resolver's snowgate.client.dns.upstream.answers.dropped
// metric, by reason) and the real answer still awaited. On real UDP sockets queries are
// read, and replies and upstream queries written, several per system call (recvmmsg/sendmmsg on Linux). TCP
// queries, and queries to upstreams inside the tunnel, get a socket of their own per query (miekg/dns
// connections over Config.Dial / Config.TunnelDial), also under random ids. When an application closes its
// DNS-over-TCP connection, the upstream exchanges of its queries in flight are cancelled at once (their
// sockets closed).
package server

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"

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
	pcs       map[uint64]*udpOut
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
	readBufs   sync.Pool // *[]ipv4.Message for upstream socket readers

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
	wbufs    [][]byte       // scratch space for rewritten upstream queries
	ms       []ipv4.Message // scratch space for batched writes
	udpFwds  []dns.Forward  // scratch space for the UDP forwards of one upstream
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
	s.sendReplies(p)
	for i, f := range p.forwards {
		if f.Transport == dns.UDP && !f.ThroughTunnel {
			// Every UDP forward to this upstream at once, over one socket and one system call.
			if f.Upstream.IsValid() {
				p.udpFwds = append(p.udpFwds[:0], f)
				for j := i + 1; j < len(p.forwards); j++ {
					if g := p.forwards[j]; g.Transport == dns.UDP && !g.ThroughTunnel && g.Upstream == f.Upstream {
						p.udpFwds = append(p.udpFwds, g)
						p.forwards[j].Upstream = netip.AddrPort{} // sent
					}
				}
				s.forwardUDP(p.udpFwds, p)
			}
		} else {
			s.startExchange(f, p.roams)
		}
	}
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
	frame := make([]byte, 2+len(msg))
	binary.BigEndian.PutUint16(frame, uint16(len(msg)))
	copy(frame[2:], msg)
	tc.wmu.Lock()
	defer tc.wmu.Unlock()
	_ = tc.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = tc.c.Write(frame)
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
		s.cancelForwards(res.Cancelled, errAppClosed)
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

// errAppClosed is the cancellation cause of the upstream exchanges of queries whose application closed its
// DNS-over-TCP connection.
var errAppClosed = errors.New("the application closed its DNS-over-TCP connection")

// cancelForwards abandons the upstream exchanges of forwards the core no longer waits for (they must not be in
// flight in the core any more): an exchange of its own (TCP, through the tunnel) is cancelled with cause (its
// socket reset for errRoamed, else closed), and a query pending on an upstream UDP socket is forgotten, so
// that its answer, should it come, is dropped like any unknown one.
func (s *Server) cancelForwards(ids []dns.ForwardID, cause error) {
	if len(ids) == 0 {
		return
	}
	var udp []dns.ForwardID
	s.mu.Lock()
	for _, id := range ids {
		if cancel := s.exchanges[id]; cancel != nil {
			cancel(cause)
			delete(s.exchanges, id)
		} else {
			udp = append(udp, id)
		}
	}
	s.mu.Unlock()
	if len(udp) > 0 {
		s.forgetUDPPending(udp) // not under s.mu: openUDPSockLocked takes s.mu under a pool's lock
	}
}

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

// exchange sends the query under a fresh random id over a fresh socket (so every exchange has its own local
// port, and the ones after a roam get new ones) and returns the first answer carrying that id and the query's
// question (dns.AnswerMatchesQuery; over UDP other datagrams are dropped, over TCP they fail the exchange),
// with the application's id put back. When a roam abandons it, a TCP socket is reset (RST) rather than closed
// gracefully; when the application closed its connection (errAppClosed) it is closed.
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
	q := slices.Clone(f.Query)
	want := uint16(rand.Uint32())
	binary.BigEndian.PutUint16(q, want)
	if _, err := co.Write(q); err != nil {
		return nil, fmt.Errorf("sending to upstream %s/%s: %w", f.Upstream, network, err)
	}
	buf := make([]byte, 65535)
	for {
		n, err := co.Read(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("reading from upstream %s/%s: %w", f.Upstream, network, ctx.Err())
			}
			return nil, fmt.Errorf("reading from upstream %s/%s: %w", f.Upstream, network, err)
		}
		if n >= 2 && binary.BigEndian.Uint16(buf) == want && (f.Transport == dns.TCP || dns.AnswerMatchesQuery(f.Query, buf[:n])) {
			// Over TCP the core checks the question (SERVFAIL when it differs).
			binary.BigEndian.PutUint16(buf, binary.BigEndian.Uint16(f.Query))
			return buf[:n:n], nil
		}
		if f.Transport == dns.TCP {
			return nil, fmt.Errorf("upstream %s/tcp answered with a wrong id", f.Upstream)
		}
		switch {
		case n < 12:
			s.r.ReportDroppedAnswer(dns.DropMalformed)
		case binary.BigEndian.Uint16(buf) != want:
			s.r.ReportDroppedAnswer(dns.DropUnknownID)
		default:
			s.r.ReportDroppedAnswer(dns.DropWrongQuestion)
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
