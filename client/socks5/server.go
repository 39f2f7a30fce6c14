package socks5

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

	"github.com/snowgate/snowgate/internal/dialerr"
	"github.com/snowgate/snowgate/internal/splice"
)

// Defaults for the zero values of Server's limits.
const (
	DefaultMaxConns         = 1024
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultDialTimeout      = 30 * time.Second
	DefaultUDPIdleTimeout   = 2 * time.Minute
	// AttemptDelay is how long a CONNECT waits for one address before it also tries the next (RFC 8305's
	// connection attempt delay).
	AttemptDelay = 250 * time.Millisecond
	// MaxAttempts bounds the addresses a CONNECT to a domain name tries.
	MaxAttempts = 8
)

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("socks5: server closed")

// ErrNoDial is returned by Serve when Server.Dial is nil.
var ErrNoDial = errors.New("socks5: Server.Dial is nil")

// Server is a SOCKS5 proxy (RFC 1928): CONNECT and UDP ASSOCIATE, no authentication. Set the fields, then
// call Serve; do not change them afterwards. The zero limits take the Default… values.
type Server struct {
	// Dial opens outgoing TCP connections; network is "tcp4" or "tcp6" and address an "ip:port" literal.
	// Required. In the userspace client it dials through the netstack, so connections enter the tunnel.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// Resolve resolves DOMAINNAME targets (CONNECT and UDP). nil: domain names are answered with
	// ReplyAddressTypeNotSupported. An error or an empty answer is ReplyHostUnreachable.
	Resolve func(ctx context.Context, host string) ([]netip.Addr, error)
	// ListenPacket opens the outgoing socket of a UDP association; network is "udp4" or "udp6" and address
	// "0.0.0.0:0" or "[::]:0" (a netstack must bind to its own address of the family instead). It must return a socket whose ReadFrom reports *net.UDPAddr sources and whose
	// WriteTo accepts *net.UDPAddr (the host's and gonet's do). nil: UDP ASSOCIATE is answered with
	// ReplyCommandNotSupported.
	ListenPacket func(ctx context.Context, network, address string) (net.PacketConn, error)
	// Logger receives the server's logs; nil means slog.Default().
	Logger *slog.Logger
	// MaxConns bounds the client connections handled at once (UDP associations included); a connection
	// over the limit is closed at once.
	MaxConns int
	// HandshakeTimeout bounds the method negotiation, the request and the writing of the reply.
	HandshakeTimeout time.Duration
	// DialTimeout bounds the resolution and the dial of a CONNECT, and each resolution of a UDP
	// association.
	DialTimeout time.Duration
	// UDPIdleTimeout ends a UDP association (and its control connection) after no datagram either way.
	UDPIdleTimeout time.Duration

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	active    int
	wg        sync.WaitGroup

	accepted, rejected atomic.Int64
}

// Stats are a Server's counters.
type Stats struct {
	// Active is the number of client connections being handled.
	Active int
	// Accepted counts client connections handled; Rejected those closed at once over MaxConns.
	Accepted, Rejected int64
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Active: s.active, Accepted: s.accepted.Load(), Rejected: s.rejected.Load()}
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

func orDefault[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// Serve accepts connections on ln and handles them until ctx ends, Close is called or Accept fails for good.
// It then closes ln and the connections it accepted, waits for their goroutines and returns ctx.Err(),
// ErrServerClosed or the accept error. Serve may be called for several listeners.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.Dial == nil {
		ln.Close()
		return ErrNoDial
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	if s.listeners == nil {
		s.listeners = make(map[net.Listener]struct{})
	}
	s.listeners[ln] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	ctx, cancel := context.WithCancel(ctx)
	var conns sync.WaitGroup
	defer func() {
		cancel()
		ln.Close()
		conns.Wait()
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	log := s.logger()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			switch {
			case closed:
				return ErrServerClosed
			case ctx.Err() != nil:
				return ctx.Err()
			case isTemporary(err):
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				log.Warn("socks5: accept failed, retrying", "error", err, "backoff", backoff)
				select {
				case <-time.After(backoff):
				case <-ctx.Done():
				}
				continue
			}
			return fmt.Errorf("socks5: accepting: %w", err)
		}
		backoff = 0
		if !s.admit() {
			s.rejected.Add(1)
			log.Debug("socks5: connection limit reached, closing", "client", c.RemoteAddr(), "max_conns", orDefault(s.MaxConns, DefaultMaxConns))
			c.Close()
			continue
		}
		s.accepted.Add(1)
		conns.Add(1)
		go func() {
			defer conns.Done()
			defer s.leave()
			s.handle(ctx, c)
		}()
	}
}

// isTemporary reports accept errors worth retrying (EMFILE and the like report Timeout or Temporary).
func isTemporary(err error) bool {
	var te interface{ Temporary() bool }
	return errors.As(err, &te) && te.Temporary()
}

func (s *Server) admit() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active >= orDefault(s.MaxConns, DefaultMaxConns) {
		return false
	}
	s.active++
	return true
}

func (s *Server) leave() {
	s.mu.Lock()
	s.active--
	s.mu.Unlock()
}

// Close stops every Serve call (closing their listeners and connections) and waits for them to return.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	lns := make([]net.Listener, 0, len(s.listeners))
	for ln := range s.listeners {
		lns = append(lns, ln)
	}
	s.mu.Unlock()
	for _, ln := range lns {
		ln.Close()
	}
	s.wg.Wait()
	return nil
}

// handle runs one client connection. c is closed when it returns, and as soon as ctx ends.
func (s *Server) handle(ctx context.Context, c net.Conn) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	log := s.logger().With("client", c.RemoteAddr())

	c.SetDeadline(time.Now().Add(orDefault(s.HandshakeTimeout, DefaultHandshakeTimeout)))
	if err := negotiate(c); err != nil {
		log.Debug("socks5: method negotiation failed", "error", err)
		return
	}
	req, err := ReadRequest(c)
	if err != nil {
		log.Debug("socks5: bad request", "error", err)
		if errors.Is(err, ErrAddressType) {
			s.reply(c, ReplyAddressTypeNotSupported, Addr{})
		} else if errors.Is(err, ErrMalformed) {
			s.reply(c, ReplyGeneralFailure, Addr{})
		}
		return
	}
	switch {
	case req.Command == CommandConnect:
		s.connect(ctx, c, req, log)
	case req.Command == CommandUDPAssociate && s.ListenPacket != nil:
		s.associate(ctx, c, req, log)
	default:
		log.Debug("socks5: unsupported command", "command", req.Command)
		s.reply(c, ReplyCommandNotSupported, Addr{})
	}
}

// negotiate reads the client's methods and selects "no authentication", or answers 0xFF.
func negotiate(c net.Conn) error {
	var buf [2 + 255]byte
	if _, err := io.ReadFull(c, buf[:2]); err != nil {
		return fmt.Errorf("reading greeting: %w", err)
	}
	if _, err := io.ReadFull(c, buf[2:2+int(buf[1])]); err != nil {
		return fmt.Errorf("reading greeting methods: %w", err)
	}
	methods, _, err := ParseGreeting(buf[:2+int(buf[1])])
	if err != nil {
		if errors.Is(err, ErrMalformed) {
			c.Write([]byte{Version, MethodNoAcceptable})
		}
		return err
	}
	for _, m := range methods {
		if m == MethodNoAuth {
			_, err := c.Write([]byte{Version, MethodNoAuth})
			return err
		}
	}
	c.Write([]byte{Version, MethodNoAcceptable})
	return fmt.Errorf("client offers methods %v, not \"no authentication\"", methods)
}

// reply writes a reply within HandshakeTimeout.
func (s *Server) reply(c net.Conn, rep Reply, bnd Addr) error {
	c.SetWriteDeadline(time.Now().Add(orDefault(s.HandshakeTimeout, DefaultHandshakeTimeout)))
	_, err := c.Write(AppendReply(make([]byte, 0, 22), rep, bnd))
	if err != nil {
		return fmt.Errorf("writing reply: %w", err)
	}
	return nil
}

// ReplyFor maps a dial error to the reply code that describes it (dialerr's classes, which cover the host's
// errors and gVisor's).
func ReplyFor(err error) Reply {
	switch dialerr.Classify(err) {
	case dialerr.None:
		return ReplySucceeded
	case dialerr.Refused:
		return ReplyConnectionRefused
	case dialerr.NetworkUnreachable:
		return ReplyNetworkUnreachable
	case dialerr.HostUnreachable:
		return ReplyHostUnreachable
	case dialerr.Timeout:
		return ReplyTTLExpired
	case dialerr.Prohibited:
		return ReplyNotAllowed
	}
	return ReplyGeneralFailure
}

// errNoResolver and errNoAddresses are resolution failures.
var (
	errNoResolver  = errors.New("socks5: no resolver for domain names")
	errNoAddresses = errors.New("socks5: name has no addresses")
)

// resolve returns the addresses of a (one for an IP or an IP literal name), IPv4 first then alternating
// families, IPv4-mapped addresses unmapped, at most MaxAttempts.
func (s *Server) resolve(ctx context.Context, a Addr) ([]netip.AddrPort, error) {
	if a.Name == "" {
		return []netip.AddrPort{netip.AddrPortFrom(a.IP.Unmap(), a.Port)}, nil
	}
	if ip, err := netip.ParseAddr(a.Name); err == nil {
		return []netip.AddrPort{netip.AddrPortFrom(ip.Unmap(), a.Port)}, nil
	}
	if s.Resolve == nil {
		return nil, errNoResolver
	}
	ips, err := s.Resolve(ctx, a.Name)
	if err != nil {
		return nil, fmt.Errorf("resolving %s: %w", a.Name, err)
	}
	var v4, v6 []netip.AddrPort
	for _, ip := range ips {
		ip = ip.Unmap()
		switch {
		case ip.Is4():
			v4 = append(v4, netip.AddrPortFrom(ip, a.Port))
		case ip.Is6():
			v6 = append(v6, netip.AddrPortFrom(ip, a.Port))
		}
	}
	out := make([]netip.AddrPort, 0, len(v4)+len(v6))
	for i := 0; i < len(v4) || i < len(v6); i++ {
		if i < len(v4) {
			out = append(out, v4[i])
		}
		if i < len(v6) {
			out = append(out, v6[i])
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("resolving %s: %w", a.Name, errNoAddresses)
	}
	return out[:min(len(out), MaxAttempts)], nil
}

// connect serves a CONNECT: resolve, dial, reply, then relay until both sides are done.
func (s *Server) connect(ctx context.Context, c net.Conn, req Request, log *slog.Logger) {
	c.SetDeadline(time.Time{}) // the dial has its own timeout
	dctx, cancel := context.WithTimeout(ctx, orDefault(s.DialTimeout, DefaultDialTimeout))
	addrs, err := s.resolve(dctx, req.Addr)
	if err != nil {
		cancel()
		log.Debug("socks5: CONNECT target not resolved", "target", req.Addr, "error", err)
		rep := ReplyHostUnreachable
		if errors.Is(err, errNoResolver) {
			rep = ReplyAddressTypeNotSupported
		}
		s.reply(c, rep, Addr{})
		return
	}
	out, err := s.dialAny(dctx, addrs)
	cancel()
	if err != nil {
		rep := ReplyFor(err)
		if ctx.Err() != nil {
			rep = ReplyGeneralFailure
		}
		log.Debug("socks5: CONNECT failed", "target", req.Addr, "reply", rep, "error", err)
		s.reply(c, rep, Addr{})
		return
	}
	defer out.Close()
	stop := context.AfterFunc(ctx, func() { out.Close() })
	defer stop()
	if err := s.reply(c, ReplySucceeded, addrOf(out.LocalAddr())); err != nil {
		log.Debug("socks5: CONNECT reply", "error", err)
		return
	}
	c.SetDeadline(time.Time{})
	log.Debug("socks5: CONNECT", "target", req.Addr, "via", out.RemoteAddr())
	splice.Conns(c, out, func() {
		splice.Reset(c)
		splice.Reset(out)
	})
}

// dialAny dials addrs with a light Happy Eyeballs (RFC 8305): the first address at once, the next one
// AttemptDelay later or as soon as the previous attempt fails, and so on; the first connection wins and
// the others are canceled (and closed if they connected). It returns the error of the first address when
// all fail. It waits for every attempt it started.
func (s *Server) dialAny(ctx context.Context, addrs []netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		c   net.Conn
		err error
		i   int
	}
	results := make(chan result, len(addrs))
	next, pending := 0, 0
	start := func() {
		i, ap := next, addrs[next]
		next++
		pending++
		network := "tcp4"
		if ap.Addr().Is6() {
			network = "tcp6"
		}
		go func() {
			c, err := s.Dial(ctx, network, ap.String())
			results <- result{c, err, i}
		}()
	}
	timer := time.NewTimer(AttemptDelay)
	defer timer.Stop()
	start()
	var winner net.Conn
	errs := make([]error, len(addrs))
	for pending > 0 {
		select {
		case r := <-results:
			pending--
			switch {
			case r.err == nil && winner == nil:
				winner = r.c
				cancel()
			case r.err == nil:
				r.c.Close()
			default:
				errs[r.i] = r.err
				if winner == nil && next < len(addrs) {
					start()
					timer.Reset(AttemptDelay)
				}
			}
		case <-timer.C:
			if winner == nil && next < len(addrs) {
				start()
				timer.Reset(AttemptDelay)
			}
		}
	}
	if winner != nil {
		return winner, nil
	}
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return nil, errors.New("socks5: no address to dial")
}

// addrOf converts a connection's address into an Addr (0.0.0.0:0 when it is not an IP address).
func addrOf(a net.Addr) Addr {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	default:
		if a != nil {
			ap, _ = netip.ParseAddrPort(a.String())
		}
	}
	if !ap.IsValid() {
		return Addr{IP: netip.IPv4Unspecified()}
	}
	return Addr{IP: ap.Addr().Unmap(), Port: ap.Port()}
}
