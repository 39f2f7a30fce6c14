// Package portalmock is a real (if small) snowgate portal: a Phoenix channel server over WebSocket that
// authenticates clients, gateways and relays by token, tells them their configuration (init), hands out
// relays with derived credentials, authorizes flows (create_flow → authorize_flow → flow_created) with
// deterministic ICE credentials and PSKs, relays ICE signalling between the two sides of a flow, and applies
// resource and policy changes made through an admin HTTP API.
//
// Old gateway protocol: for a client configured with legacy_gateway_protocol, the portal speaks the old,
// non-idempotent exchange to the gateway and translates for the client, which still sends create_flow and
// gets flow_created. A client/gateway pair without a connection makes the gateway get
// request_connection{resource, client{id, payload{ice_parameters: the client's derived ICE credentials,
// domain: null}, peer{public_key, preshared_key, ipv4, ipv6}}, ref, expires_at}; the gateway answers
// connection_ready{ref, gateway_payload{connection_accepted{ice_parameters}}} with its own ICE credentials,
// which the client gets in flow_created (with the usual PSK). The pair then has a connection: later flows
// (while neither key changes) send the gateway allow_access{client_id, resource, expires_at, ref,
// client_ipv4, client_ipv6}, which has no answer, and the client flow_created at once with the remembered
// gateway credentials. ICE candidates are relayed as for new flows. A connection_ready with an unknown ref
// or without ICE parameters gets an error reply; the socket stays.
//
// Connection reports: clients and gateways may push report_connections (the whole current set of their
// connections and the path each takes); the latest report of each online peer is part of the State (admin
// GET /v1/state) and each one is an EventConnectionsReported. A report naming an unknown peer, or with an
// unknown path, gets an error reply and is not stored.
//
// Live page: the admin address also serves a read-only web page (GET /, embedded, no build step) that draws
// the topology (clients, relays, sites and gateways, and each connection's path as the peers report it) and
// redraws it from a server-sent event stream (GET /events, admin token required) on every change; see
// page.go and [Server.PageURL].
//
// A peer leaves presence when it sends phx_leave on its topic or its socket closes, whichever comes first,
// exactly once: a relay is then dropped from every client's and gateway's relays_presence and from later
// inits, a gateway's pending authorizations fail (flow_creation_failed "offline"), a client's are dropped.
// A peer may join its topic again on the same socket; a relay that joins again with the same stamp secret
// is the same relay (same id and credentials).
//
// The state machine (core) does no I/O; Server drives it from WebSocket connections under one lock, which
// is released however the core returns. A panic while the core handles one connection's input (a bug) is
// recovered: that connection is closed with an ERROR log and the server goes on serving the others. A
// Server holds no package-level state and owns every goroutine it starts until Close.
package portalmock

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/snowgate/snowgate/internal/phoenix"
)

// Config configures a Server.
type Config struct {
	// File is the declarative configuration; nil means the embedded default (DefaultFile).
	File *File
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// MeterProvider provides the server's metrics; nil means no metrics.
	MeterProvider metric.MeterProvider
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// IdleTimeout closes a socket that sent nothing (not even a heartbeat) for this long; 0 means 60 s.
	IdleTimeout time.Duration
	// WriteTimeout bounds one frame write; 0 means 10 s.
	WriteTimeout time.Duration
	// EventsHeartbeat is the period of the live page stream's heartbeat (GET /events on the admin
	// address); 0 means DefaultEventsHeartbeat.
	EventsHeartbeat time.Duration
	// SendQueue is the per-socket queue of frames; a peer that falls further behind is disconnected.
	// 0 means 1024.
	SendQueue int
}

// Server is the mock portal.
type Server struct {
	cfg    Config
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	core     *core
	closed   bool
	conns    map[uint64]*wsConn
	nextID   uint64
	history  []Event
	histBase int
	notify   chan struct{}
	servers  []*http.Server
	url      string
	adminURL string

	// streams counts the live page's open event streams.
	streams atomic.Int32

	sessions metric.Int64UpDownCounter
	flows    metric.Int64Counter
}

type wsConn struct {
	out    chan []byte
	cancel context.CancelFunc
}

// maxHistory bounds the event history kept for WaitFor.
const maxHistory = 4096

// New validates the configuration and creates a stopped server.
func New(cfg Config) (*Server, error) {
	if cfg.File == nil {
		cfg.File = DefaultFile()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.MeterProvider == nil {
		cfg.MeterProvider = noop.NewMeterProvider()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 60 * time.Second
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	if cfg.EventsHeartbeat <= 0 {
		cfg.EventsHeartbeat = DefaultEventsHeartbeat
	}
	if cfg.SendQueue <= 0 {
		cfg.SendQueue = 1024
	}
	m, err := buildModel(cfg.File)
	if err != nil {
		return nil, err
	}
	meter := cfg.MeterProvider.Meter("github.com/snowgate/snowgate/portalmock")
	sessions, err := meter.Int64UpDownCounter("portal.sessions", metric.WithDescription("open WebSocket sessions by kind"))
	if err != nil {
		return nil, fmt.Errorf("portalmock: metric: %w", err)
	}
	flows, err := meter.Int64Counter("portal.flows", metric.WithDescription("flow requests by result"))
	if err != nil {
		return nil, fmt.Errorf("portalmock: metric: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cfg: cfg, log: cfg.Logger, ctx: ctx, cancel: cancel,
		core:  newCore(m, cfg.Now, cfg.Logger),
		conns: map[uint64]*wsConn{}, notify: make(chan struct{}),
		sessions: sessions, flows: flows,
	}, nil
}

// ErrClosed is returned when starting a server that was closed.
var ErrClosed = errors.New("portalmock: server closed")

// Handler returns the WebSocket endpoints: /client/websocket, /gateway/websocket, /relay/websocket, their
// /…/v2/websocket aliases, and /healthz.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	for _, k := range []tokenKind{kindClient, kindGateway, kindRelay} {
		mux.HandleFunc("/"+k.String()+"/websocket", s.handleWS(k))
		mux.HandleFunc("/"+k.String()+"/v2/websocket", s.handleWS(k))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	return mux
}

// Start serves the WebSocket endpoints on ln in the background until Close.
func (s *Server) Start(ln net.Listener) error {
	if err := s.startHTTP(ln, s.Handler()); err != nil {
		return err
	}
	s.locked(func() { s.url = "ws://" + ln.Addr().String() })
	s.log.Info("portal listening", "addr", ln.Addr().String())
	return nil
}

// StartAdmin serves the admin API on ln in the background until Close.
func (s *Server) StartAdmin(ln net.Listener) error {
	if err := s.startHTTP(ln, s.AdminHandler()); err != nil {
		return err
	}
	s.locked(func() { s.adminURL = "http://" + ln.Addr().String() })
	s.log.Info("portal admin API and live page listening", "addr", ln.Addr().String(),
		"page", "http://"+ln.Addr().String()+"/?token=<admin token>")
	return nil
}

// Serve serves the WebSocket endpoints on ln until ctx is done, then closes the server.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if err := s.Start(ln); err != nil {
		return err
	}
	<-ctx.Done()
	return s.Close()
}

// URL is the base WebSocket URL ("ws://127.0.0.1:port") once Start has been called; peers append
// "/client/websocket?…" and so on.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.url
}

// AdminURL is the admin API's base URL ("http://…") once StartAdmin has been called.
func (s *Server) AdminURL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.adminURL
}

func (s *Server) startHTTP(ln net.Listener, h http.Handler) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return s.ctx },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	closed := false
	s.locked(func() {
		if closed = s.closed; !closed {
			s.servers = append(s.servers, srv)
			s.wg.Add(1)
		}
	})
	if closed {
		return ErrClosed
	}
	go func() {
		defer s.wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Warn("http server stopped", "addr", ln.Addr().String(), "error", err)
		}
	}()
	return nil
}

// Close stops the listeners, closes every socket and waits for all goroutines.
func (s *Server) Close() error {
	var servers []*http.Server
	already := false
	s.locked(func() { already, s.closed, servers = s.closed, true, s.servers })
	if already {
		return nil
	}
	s.cancel()
	// Memory sessions (DialMemory) have no context: tell their owners, who close them.
	s.locked(func() {
		for _, c := range s.conns {
			c.cancel()
		}
	})
	var errs []error
	for _, srv := range servers {
		if err := srv.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	s.wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("portalmock: close: %w", err)
	}
	return nil
}

// bearerToken takes the token from X-Authorization (or Authorization): Bearer …, else the token query
// parameter (for clients that cannot set headers, like browsers and the Phoenix JS client).
func bearerToken(r *http.Request) string {
	for _, h := range []string{"X-Authorization", "Authorization"} {
		if v := r.Header.Get(h); v != "" {
			if tok, ok := strings.CutPrefix(v, "Bearer "); ok {
				return strings.TrimSpace(tok)
			}
		}
	}
	return r.URL.Query().Get("token")
}

// authenticate looks the token up: who it stands for, and whether it may connect to kind's endpoint now.
func (s *Server) authenticate(kind tokenKind, tok string) (identity, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.core.m.tokens[tokenKey(tok)]
	if tok == "" || !ok || id.kind != kind {
		return identity{}, false
	}
	if d := s.core.m.clients[id.id]; id.kind == kindClient && (d == nil || !d.expiresAt.After(s.cfg.Now())) {
		return identity{}, false
	}
	return id, true
}

// admit numbers a new session and counts it in s.wg; false once the server is closing.
func (s *Server) admit(sess *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.nextID++
	sess.id = s.nextID
	s.wg.Add(1)
	return true
}

// panicError is a panic recovered while the core handled one connection's input.
type panicError struct {
	value any
	stack []byte
}

func (e *panicError) Error() string { return fmt.Sprintf("portal bug: panic: %v", e.value) }

// locked runs fn with the server lock held (released however fn ends).
func (s *Server) locked(fn func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fn()
}

// apply runs fn on the core with the server lock held, then hands the core's output to the sockets. The
// lock is released however fn ends. A panic in fn is recovered and returned as a *panicError (what the
// core produced before it is still delivered), so that the caller closes the one connection whose input
// caused it and the server goes on serving the others.
func (s *Server) apply(fn func(*core)) (err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer func() {
		if v := recover(); v != nil {
			err = &panicError{value: v, stack: debug.Stack()}
		}
		s.flush()
	}()
	fn(s.core)
	return nil
}

// logPanic logs a recovered panic at ERROR: it is a bug that needs a human.
func (s *Server) logPanic(msg string, err error, attrs ...any) {
	var pe *panicError
	if errors.As(err, &pe) {
		s.log.Error(msg, append(attrs, "panic", fmt.Sprint(pe.value), "stack", string(pe.stack))...)
	}
}

func (s *Server) handleWS(kind tokenKind) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, ok := s.authenticate(kind, bearerToken(r))
		if !ok {
			s.log.Info("refused connection: unknown or expired token", "path", r.URL.Path, "remote", r.RemoteAddr)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		sess, err := newSession(kind, id, r.URL.Query())
		if err != nil {
			s.log.Debug("bad connect request", "path", r.URL.Path, "error", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if !s.admit(sess) {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		defer s.wg.Done()

		ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
		if err != nil {
			s.log.Debug("websocket upgrade failed", "error", err)
			return
		}
		defer ws.CloseNow()
		ws.SetReadLimit(1 << 20)
		ctx, cancel := context.WithCancel(s.ctx)
		defer cancel()
		c := &wsConn{out: make(chan []byte, s.cfg.SendQueue), cancel: cancel}
		attrs := metric.WithAttributes(attribute.String("kind", kind.String()))
		s.sessions.Add(ctx, 1, attrs)
		defer s.sessions.Add(context.Background(), -1, attrs)
		s.log.Info("connected", "kind", kind, "id", id.id, "name", sess.name, "session", sess.id, "vsn", sess.version)

		var writer sync.WaitGroup
		defer writer.Wait()
		defer cancel()
		err = s.apply(func(core *core) {
			s.conns[sess.id] = c
			core.connect(sess)
		})
		if err == nil {
			writer.Go(func() { s.writeLoop(ctx, ws, c) })
			err = s.readLoop(ctx, ws, sess.id)
		}
		cancel()
		s.logPanic("portal bug: handling a connection panicked; closing it", err, "kind", kind, "id", id.id, "session", sess.id)
		derr := s.apply(func(core *core) {
			delete(s.conns, sess.id)
			core.disconnect(sess.id)
		})
		s.logPanic("portal bug: forgetting a connection panicked", derr, "kind", kind, "id", id.id, "session", sess.id)
		s.log.Info("disconnected", "kind", kind, "id", id.id, "session", sess.id, "reason", err)
	}
}

func newSession(kind tokenKind, id identity, q url.Values) (*session, error) {
	v, err := phoenix.ParseVersion(q.Get("vsn"))
	if err != nil {
		return nil, fmt.Errorf("vsn: %w", err)
	}
	s := &session{kind: kind, peerID: id.id, name: q.Get("name"), version: v}
	switch kind {
	case kindClient, kindGateway:
		pk := q.Get("public_key")
		if b, err := base64.StdEncoding.DecodeString(pk); err != nil || len(b) != 32 {
			return nil, errors.New("public_key must be a base64 32-byte WireGuard key")
		}
		s.publicKey = pk
	case kindRelay:
		port := uint16(3478)
		if p := q.Get("port"); p != "" {
			n, err := strconv.ParseUint(p, 10, 16)
			if err != nil || n == 0 {
				return nil, fmt.Errorf("port %q is not a port number", p)
			}
			port = uint16(n)
		}
		for _, fam := range []string{"ipv4", "ipv6"} {
			v := q.Get(fam)
			if v == "" {
				continue
			}
			a, err := netip.ParseAddr(v)
			if err != nil || a.Is4() != (fam == "ipv4") {
				return nil, fmt.Errorf("%s %q is not an %s address", fam, v, fam)
			}
			if fam == "ipv4" {
				s.addr4 = netip.AddrPortFrom(a, port)
			} else {
				s.addr6 = netip.AddrPortFrom(a, port)
			}
		}
		if !s.addr4.IsValid() && !s.addr6.IsValid() {
			return nil, errors.New("relay needs ipv4 and/or ipv6")
		}
		if s.name == "" {
			s.name = id.id
		}
	}
	return s, nil
}

func (s *Server) readLoop(ctx context.Context, ws *websocket.Conn, id uint64) error {
	for {
		rctx, rcancel := context.WithTimeout(ctx, s.cfg.IdleTimeout)
		_, data, err := ws.Read(rctx)
		rcancel()
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if err := s.apply(func(c *core) { c.frame(id, data) }); err != nil {
			return err
		}
	}
}

func (s *Server) writeLoop(ctx context.Context, ws *websocket.Conn, c *wsConn) {
	for {
		select {
		case <-ctx.Done():
			return
		case b := <-c.out:
			wctx, cancel := context.WithTimeout(ctx, s.cfg.WriteTimeout)
			err := ws.Write(wctx, websocket.MessageText, b)
			cancel()
			if err != nil {
				s.log.Debug("write failed", "error", err)
				c.cancel()
				return
			}
		}
	}
}

// flush hands the core's output to the sockets and records its events. Called with s.mu held.
func (s *Server) flush() {
	for _, o := range s.core.out {
		c := s.conns[o.sess]
		if c == nil {
			continue
		}
		if o.data != nil {
			select {
			case c.out <- o.data:
			default:
				s.log.Warn("peer too slow, disconnecting", "session", o.sess)
				c.cancel()
			}
		}
		if o.close {
			c.cancel()
		}
	}
	s.core.out = s.core.out[:0]
	if len(s.core.events) == 0 {
		return
	}
	for _, e := range s.core.events {
		switch e.Kind {
		case EventFlowAuthorized:
			s.flows.Add(s.ctx, 1, metric.WithAttributes(attribute.String("result", "authorized")))
		case EventFlowFailed:
			s.flows.Add(s.ctx, 1, metric.WithAttributes(attribute.String("result", e.Detail)))
		}
	}
	s.history = append(s.history, s.core.events...)
	s.core.events = s.core.events[:0]
	if over := len(s.history) - maxHistory; over > 0 {
		s.history = append([]Event(nil), s.history[over:]...)
		s.histBase += over
	}
	close(s.notify)
	s.notify = make(chan struct{})
}

// EventCount returns the number of events so far; pass it to WaitFrom to wait only for later events.
func (s *Server) EventCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.histBase + len(s.history)
}

// WaitFor returns the first event since the server started (of the last 4096) that matches, waiting for
// one if needed.
func (s *Server) WaitFor(ctx context.Context, match func(Event) bool) (Event, error) {
	return s.WaitFrom(ctx, 0, match)
}

// WaitFrom is WaitFor for events numbered from (see EventCount) onwards.
func (s *Server) WaitFrom(ctx context.Context, from int, match func(Event) bool) (Event, error) {
	for {
		var (
			evs   []Event
			ch    <-chan struct{}
			first int
		)
		s.locked(func() {
			first = min(max(from, s.histBase), s.histBase+len(s.history))
			evs = slices.Clone(s.history[first-s.histBase:])
			ch = s.notify
		})
		for _, e := range evs { // match runs without the lock
			if match(e) {
				return e, nil
			}
		}
		from = first + len(evs)
		select {
		case <-ch:
		case <-ctx.Done():
			return Event{}, fmt.Errorf("portalmock: waiting for event: %w", ctx.Err())
		}
	}
}

// Is returns a matcher for WaitFor: an event of that kind about that id ("" matches any id).
func Is(kind EventKind, id string) func(Event) bool {
	return func(e Event) bool { return e.Kind == kind && (id == "" || e.ID == id) }
}

// State returns a snapshot of online peers, relays and flows. Should taking it fail (a bug, logged at
// ERROR), the snapshot is empty.
func (s *Server) State() State {
	st, err := s.state()
	if err != nil {
		return State{Clients: []PeerState{}, Gateways: []PeerState{}, Relays: []RelayState{}, Flows: []FlowState{}}
	}
	return st
}

func (s *Server) state() (st State, err error) {
	err = s.apply(func(c *core) { st = c.state() })
	s.logPanic("portal bug: taking the state snapshot panicked", err)
	return st, err
}

// admin applies an admin change to the core and pushes its consequences; a panic is logged and returned.
func (s *Server) admin(change func(*core) error) error {
	var cerr error
	if err := s.apply(func(c *core) {
		if cerr = change(c); cerr == nil {
			s.changed()
		}
	}); err != nil {
		s.logPanic("portal bug: an admin change panicked", err)
		return err
	}
	return cerr
}

// PutResource creates or replaces a resource and pushes the change to affected clients and gateways.
func (s *Server) PutResource(r ResourceConfig) error {
	return s.admin(func(c *core) error { return c.putResource(r) })
}

// DeleteResource removes a resource (and its policies) and revokes access to it.
func (s *Server) DeleteResource(id string) error {
	return s.admin(func(c *core) error { return c.deleteResource(id) })
}

// PutPolicy creates or replaces a policy and pushes the change.
func (s *Server) PutPolicy(p PolicyConfig) error {
	return s.admin(func(c *core) error { return c.putPolicy(p) })
}

// DeletePolicy removes a policy and revokes the access it gave.
func (s *Server) DeletePolicy(id string) error {
	return s.admin(func(c *core) error { return c.deletePolicy(id) })
}

// Resources lists the resources, sorted by id.
func (s *Server) Resources() []ResourceConfig {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []ResourceConfig{}
	for _, id := range sortedKeys(s.core.m.resources) {
		out = append(out, s.core.m.resources[id])
	}
	return out
}

// Policies lists the policies, sorted by id.
func (s *Server) Policies() []PolicyConfig {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []PolicyConfig{}
	for _, id := range sortedKeys(s.core.m.policies) {
		out = append(out, s.core.m.policies[id])
	}
	return out
}
