package phoenix

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/coder/websocket"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/snowgate/snowgate/internal/fifo"
	"github.com/snowgate/snowgate/internal/telemetry"
)

// DialFunc opens a WebSocket; it has the shape of websocket.Dial with the handshake headers passed in.
// On an HTTP error status it returns a non-nil *http.Response with that status.
type DialFunc func(ctx context.Context, url string, header http.Header) (*websocket.Conn, *http.Response, error)

// Conn is one open connection to the server, carrying whole frames: a WebSocket, or an in-memory session
// of a simulation (see TransportFunc). Read and Write are called from different goroutines; Close ends a
// blocked Read.
type Conn interface {
	// Read returns the next frame the server sent; an error ends the connection.
	Read(ctx context.Context) ([]byte, error)
	// Write sends one frame.
	Write(ctx context.Context, frame []byte) error
	// Close closes the connection.
	Close() error
}

// TransportFunc opens a Conn to url with the handshake headers (the token). An error wrapping
// ErrUnauthorized is terminal (the client stops with EventFatal); any other is retried with backoff.
type TransportFunc func(ctx context.Context, url string, header http.Header) (Conn, error)

// ClientConfig configures a Client. Zero values pick the defaults.
type ClientConfig struct {
	// URL is the portal's WebSocket URL without public_key (Connect adds it), e.g.
	// ws://host:port/client/websocket?name=…&external_id=….
	URL string
	// Token is sent as "X-Authorization: Bearer <token>"; it is never logged.
	Token string
	// Version is the serializer; V1 (default) or V2 (adds vsn=2.0.0 to the URL).
	Version Version
	// HeartbeatInterval is the heartbeat period (10 s); the socket is dropped after MaxMissedHeartbeats
	// unanswered heartbeats.
	HeartbeatInterval time.Duration
	// JoinTimeout bounds the wait for a join reply (5 s); on expiry the socket is dropped and re-dialled.
	JoinTimeout time.Duration
	// DialTimeout bounds the WebSocket handshake (10 s).
	DialTimeout time.Duration
	// WriteTimeout bounds one frame write (5 s).
	WriteTimeout time.Duration
	// Backoff paces reconnects (100 ms .. 30 s with jitter); reset after a successful join.
	Backoff Backoff
	// MaxQueue bounds the pushes kept while disconnected (256); the oldest is dropped first.
	MaxQueue int
	// Logger gets the client's logs; nil discards them.
	Logger *slog.Logger
	// MeterProvider gets the client's metrics; nil means no metrics.
	MeterProvider metric.MeterProvider
	// Dialer replaces websocket.Dial (tests).
	Dialer DialFunc
	// Transport, when set, replaces the WebSocket altogether (Dialer is then unused): simulations connect
	// the client to an in-memory portal with it.
	Transport TransportFunc
}

// maxEventBacklog is how many undelivered events the client keeps before it stops reading the socket.
const maxEventBacklog = 1024

// Client is a reconnecting Phoenix channels client. It starts disconnected; Connect starts it. Events are
// delivered on Events until Close. All methods are safe for concurrent use.
type Client struct {
	cfg    ClientConfig
	log    *slog.Logger
	events chan Event
	wake   chan struct{}
	inbox  chan connEvent
	done   chan struct{}
	exited chan struct{}
	once   sync.Once

	reconnects metric.Int64Counter
	dropped    metric.Int64Counter

	mu          sync.Mutex
	s           *session
	connectDone <-chan struct{} // Done of the ctx passed to the last Connect
}

type connEventKind int

const (
	ceDialed connEventKind = iota + 1
	ceDialFailed
	ceFrame
	ceClosed
)

type connEvent struct {
	gen  uint64
	kind connEventKind
	conn Conn
	data []byte
	err  error
}

// NewClient returns a disconnected client. Its owner goroutine runs until Close, which must be called.
func NewClient(cfg ClientConfig) *Client {
	if cfg.Version == 0 {
		cfg.Version = V1
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 5 * time.Second
	}
	if cfg.Dialer == nil {
		cfg.Dialer = func(ctx context.Context, u string, h http.Header) (*websocket.Conn, *http.Response, error) {
			return websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: h})
		}
	}
	l := cfg.Logger
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	mp := cfg.MeterProvider
	if mp == nil {
		mp = noop.NewMeterProvider()
	}
	meter := mp.Meter("github.com/snowgate/snowgate/internal/phoenix")
	reconnects, _ := meter.Int64Counter("phoenix.reconnects", metric.WithDescription("Portal connections lost"))
	dropped, _ := meter.Int64Counter("phoenix.pushes_dropped", metric.WithDescription("Pushes dropped from the full queue"))
	c := &Client{
		cfg:    cfg,
		log:    l,
		events: make(chan Event),
		wake:   make(chan struct{}, 1),
		inbox:  make(chan connEvent),
		done:   make(chan struct{}),
		exited: make(chan struct{}),
		s: newSession(sessionConfig{
			Version:           cfg.Version,
			HeartbeatInterval: cfg.HeartbeatInterval,
			JoinTimeout:       cfg.JoinTimeout,
			Backoff:           cfg.Backoff,
			MaxQueue:          cfg.MaxQueue,
			Rand:              rand.Float64,
			Logger:            l,
		}),
		reconnects: reconnects,
		dropped:    dropped,
	}
	go c.loop()
	return c
}

// Events returns the channel of events; it is closed by Close.
func (c *Client) Events() <-chan Event { return c.events }

// Join registers topic with its join payload (nil → JSON null). The topic is joined after every (re)connect,
// rejoined after "unmatched topic", phx_error and phx_close; joining again replaces the payload and rejoins.
// A payload that does not marshal to JSON is logged and the call ignored.
func (c *Client) Join(topic string, payload any) {
	raw, err := marshalPayload(payload)
	if err != nil {
		c.log.Error("phoenix join payload does not marshal, topic not joined", "topic", topic, telemetry.Err(err))
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.s.Join(topic, raw, time.Now())
	c.poke()
}

// Connect starts the connection with publicKey added as the public_key query parameter ("" adds none), or
// restarts it with that key if already connecting. It returns at once; the connection lives until ctx is
// done (then the client stays disconnected until the next Connect), a terminal error, or Close. It fails with
// ErrClosed after Close and with the terminal error after EventFatal.
func (c *Client) Connect(ctx context.Context, publicKey string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.s.Connect(publicKey, time.Now()); err != nil {
		return err
	}
	c.connectDone = ctx.Done()
	c.poke()
	return nil
}

// Push sends event on topic, queued while disconnected or while topic is not joined (bounded by MaxQueue,
// oldest dropped). The returned Ref matches the EventReplied.
func (c *Client) Push(topic, event string, payload any) (Ref, error) {
	raw, err := marshalPayload(payload)
	if err != nil {
		return Ref{}, fmt.Errorf("phoenix: push %s/%s: %w", topic, event, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	before := c.s.dropped
	ref, err := c.s.Push(topic, event, raw, time.Now())
	if n := c.s.dropped - before; n > 0 {
		c.dropped.Add(context.Background(), int64(n))
	}
	c.poke()
	return ref, err
}

// Reconnect drops the socket and dials again at once with the same key; no-op while not connecting.
func (c *Client) Reconnect() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.s.Reconnect(time.Now())
	c.poke()
}

// Close stops the client: the socket is closed, every goroutine ends and Events is closed. It always
// returns nil; later calls are no-ops.
func (c *Client) Close() error {
	c.once.Do(func() { close(c.done) })
	<-c.exited
	return nil
}

func (c *Client) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func marshalPayload(p any) (json.RawMessage, error) {
	switch v := p.(type) {
	case nil:
		return json.RawMessage("null"), nil
	case json.RawMessage:
		if len(v) == 0 {
			return json.RawMessage("null"), nil
		}
		if !json.Valid(v) {
			return nil, errors.New("payload is not valid JSON")
		}
		return v, nil
	}
	return json.Marshal(p)
}

// loop is the owner goroutine: it feeds the session, writes its frames, runs the per-connection goroutine
// and delivers events.
func (c *Client) loop() {
	defer close(c.exited)
	var (
		gen     uint64
		conn    Conn
		cancel  context.CancelFunc = func() {}
		wg      sync.WaitGroup
		backlog fifo.Queue[Event] // events not yet taken by the user
	)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	defer func() {
		cancel()
		wg.Wait()
		close(c.events)
	}()
	for {
		c.mu.Lock()
		now := time.Now()
		c.s.HandleTimeout(now)
		var frames [][]byte
		for {
			cmd, ok := c.s.PollCommand()
			if !ok {
				break
			}
			switch cmd.kind {
			case cmdDrop:
				cancel()
				cancel, conn = func() {}, nil
				gen++
			case cmdDial:
				gen++
				cancel = c.startConn(&wg, gen, c.dialURL(cmd.publicKey))
			}
		}
		for {
			b, ok := c.s.PollTransmit()
			if !ok {
				break
			}
			frames = append(frames, b)
		}
		for {
			ev, ok := c.s.PollEvent()
			if !ok {
				break
			}
			if ev.Kind == EventDisconnected {
				c.reconnects.Add(context.Background(), 1)
			}
			backlog.Push(ev)
		}
		deadline, hasDeadline := c.s.PollTimeout()
		connectDone := c.connectDone
		c.mu.Unlock()

		if conn != nil && len(frames) > 0 {
			if err := c.write(conn, frames); err != nil {
				c.mu.Lock()
				c.s.HandleClosed(fmt.Errorf("phoenix: write: %w", err), time.Now())
				c.mu.Unlock()
				continue
			}
		}

		var out chan<- Event
		var head Event
		if ev, ok := backlog.Peek(); ok {
			out, head = c.events, ev
		}
		in := c.inbox
		if backlog.Len() >= maxEventBacklog {
			in = nil
		}
		var timeout <-chan time.Time
		if hasDeadline {
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
			timer.Reset(max(time.Until(deadline), 0))
			timeout = timer.C
		}
		select {
		case <-c.done:
			c.mu.Lock()
			c.s.Close()
			c.mu.Unlock()
			return
		case <-c.wake:
		case <-timeout:
		case <-connectDone:
			c.mu.Lock()
			if c.connectDone == connectDone {
				c.s.Disconnect(time.Now())
				c.connectDone = nil
			}
			c.mu.Unlock()
		case out <- head:
			backlog.Pop()
		case ev := <-in:
			if ev.gen != gen {
				continue
			}
			c.mu.Lock()
			now := time.Now()
			switch ev.kind {
			case ceDialed:
				conn = ev.conn
				c.s.HandleDialed(now)
			case ceDialFailed:
				c.s.HandleDialFailed(ev.err, now)
			case ceFrame:
				c.s.HandleFrame(ev.data, now)
			case ceClosed:
				conn = nil
				c.s.HandleClosed(ev.err, now)
			}
			c.mu.Unlock()
		}
	}
}

func (c *Client) write(conn Conn, frames [][]byte) error {
	for _, b := range frames {
		ctx, cancel := context.WithTimeout(context.Background(), c.cfg.WriteTimeout)
		err := conn.Write(ctx, b)
		cancel()
		if err != nil {
			return err
		}
	}
	return nil
}

// startConn starts the goroutine of connection gen and returns the function that stops it.
func (c *Client) startConn(wg *sync.WaitGroup, gen uint64, u string) context.CancelFunc {
	ctx, cancel := context.WithCancel(context.Background())
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.runConn(ctx, gen, u)
	}()
	return cancel
}

// runConn is the one goroutine of a connection: it dials, then reads until ctx is cancelled or the socket
// fails, and reports to the owner loop.
func (c *Client) runConn(ctx context.Context, gen uint64, u string) {
	post := func(ev connEvent) bool {
		ev.gen = gen
		select {
		case c.inbox <- ev:
			return true
		case <-ctx.Done():
			return false
		}
	}
	h := http.Header{}
	if c.cfg.Token != "" {
		h.Set("X-Authorization", "Bearer "+c.cfg.Token)
	}
	c.log.Debug("phoenix dialing", "url", redactURL(u))
	dctx, dcancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	conn, err := c.dial(dctx, u, h)
	dcancel()
	if err != nil {
		post(connEvent{kind: ceDialFailed, err: err})
		return
	}
	defer func() { _ = conn.Close() }()
	if !post(connEvent{kind: ceDialed, conn: conn}) {
		return
	}
	c.log.Info("phoenix connected", "url", redactURL(u))
	for {
		data, err := conn.Read(ctx)
		if err != nil {
			post(connEvent{kind: ceClosed, err: fmt.Errorf("phoenix: read: %w", err)})
			return
		}
		if !post(connEvent{kind: ceFrame, data: data}) {
			return
		}
	}
}

// dial opens a connection through the Transport, else the (WebSocket) Dialer.
func (c *Client) dial(ctx context.Context, u string, h http.Header) (Conn, error) {
	if c.cfg.Transport != nil {
		conn, err := c.cfg.Transport(ctx, u, h)
		if err != nil {
			return nil, fmt.Errorf("phoenix: dial %s: %w", redactURL(u), err)
		}
		return conn, nil
	}
	conn, resp, err := c.cfg.Dialer(ctx, u, h)
	if resp != nil && resp.Body != nil {
		_ = resp.Body.Close()
	}
	if err != nil {
		if resp != nil && resp.StatusCode == http.StatusUnauthorized {
			return nil, fmt.Errorf("phoenix: dial %s: %w: %w", redactURL(u), ErrUnauthorized, err)
		}
		return nil, fmt.Errorf("phoenix: dial %s: %w", redactURL(u), err)
	}
	conn.SetReadLimit(16 << 20)
	return wsConn{conn}, nil
}

// wsConn is a WebSocket as a Conn (text frames).
type wsConn struct{ c *websocket.Conn }

func (w wsConn) Read(ctx context.Context) ([]byte, error) {
	_, data, err := w.c.Read(ctx)
	return data, err
}

func (w wsConn) Write(ctx context.Context, frame []byte) error {
	return w.c.Write(ctx, websocket.MessageText, frame)
}

func (w wsConn) Close() error { return w.c.CloseNow() }

// dialURL is the configured URL with public_key and vsn set.
func (c *Client) dialURL(publicKey string) string {
	u, err := url.Parse(c.cfg.URL)
	if err != nil {
		return c.cfg.URL // the dial reports the error
	}
	q := u.Query()
	if publicKey != "" {
		q.Set("public_key", publicKey)
	} else {
		q.Del("public_key")
	}
	if c.cfg.Version == V2 {
		q.Set("vsn", V2.String())
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// redactURL returns u without credentials: userinfo and the token query parameter are replaced.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "<unparsable url>"
	}
	if u.User != nil {
		u.User = url.User("redacted")
	}
	q := u.Query()
	if q.Has("token") {
		q.Set("token", "redacted")
		u.RawQuery = q.Encode()
	}
	return u.String()
}
