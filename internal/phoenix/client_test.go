package phoenix

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakePortal is a minimal Phoenix server for the client tests: it records every upgrade request, hands each
// socket to the test and answers heartbeats unless told not to.
type fakePortal struct {
	t      *testing.T
	srv    *httptest.Server
	ctx    context.Context
	status atomic.Int32 // non-zero: refuse the upgrade with this HTTP status
	mute   atomic.Bool  // stop answering heartbeats
	conns  chan *fakeConn

	mu       sync.Mutex
	requests []*http.Request
	dialAt   []time.Time
}

type fakeConn struct {
	*ServerConn
	query url.Values
	in    chan Message // every frame but heartbeats
	hbs   atomic.Int32 // heartbeats received
	done  chan struct{}
}

func newFakePortal(t *testing.T) *fakePortal {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &fakePortal{t: t, ctx: ctx, conns: make(chan *fakeConn, 16)}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(func() {
		cancel()
		p.srv.Close()
	})
	return p
}

func (p *fakePortal) url() string {
	return "ws" + strings.TrimPrefix(p.srv.URL, "http") + "/client/websocket?name=test&external_id=ext1"
}

func (p *fakePortal) serve(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.requests = append(p.requests, r.Clone(context.Background()))
	p.dialAt = append(p.dialAt, time.Now())
	p.mu.Unlock()
	if st := p.status.Load(); st != 0 {
		http.Error(w, http.StatusText(int(st)), int(st))
		return
	}
	sc, err := Accept(w, r, nil)
	if err != nil {
		if !errors.Is(err, ErrUnsupportedVersion) {
			p.t.Errorf("accept: %v", err)
		}
		return
	}
	defer func() { _ = sc.Conn.CloseNow() }()
	fc := &fakeConn{ServerConn: sc, query: r.URL.Query(), in: make(chan Message, 64), done: make(chan struct{})}
	defer close(fc.done)
	p.conns <- fc
	for {
		m, err := sc.Read(p.ctx)
		if errors.Is(err, ErrMalformed) {
			p.t.Errorf("client sent a malformed frame: %v", err)
			continue
		}
		if err != nil {
			return
		}
		if m.Topic == TopicPhoenix && m.Event == EventHeartbeat {
			fc.hbs.Add(1)
			if string(m.Payload) != "{}" {
				p.t.Errorf("heartbeat payload %s, want {}", m.Payload)
			}
			if !p.mute.Load() {
				_ = sc.Reply(p.ctx, m, StatusOK, nil)
			}
			continue
		}
		select {
		case fc.in <- m:
		case <-p.ctx.Done():
			return
		}
	}
}

func (p *fakePortal) dials() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.requests)
}

func (p *fakePortal) request(i int) *http.Request {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.requests[i]
}

func (p *fakePortal) nextConn(t *testing.T) *fakeConn {
	t.Helper()
	select {
	case c := <-p.conns:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("no connection from the client")
		return nil
	}
}

func (fc *fakeConn) next(t *testing.T) Message {
	t.Helper()
	select {
	case m := <-fc.in:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no frame from the client")
		return Message{}
	}
}

// expectJoin reads the next frame, checks it is a join of topic and answers it with ok.
func (fc *fakeConn) expectJoin(t *testing.T, topic string) Message {
	t.Helper()
	m := fc.next(t)
	if m.Event != EventJoin || m.Topic != topic {
		t.Fatalf("got %s/%s, want %s/phx_join", m.Topic, m.Event, topic)
	}
	if err := fc.Reply(context.Background(), m, StatusOK, map[string]int{"joined": 1}); err != nil {
		t.Fatal(err)
	}
	return m
}

func nextEvent(t *testing.T, c *Client, kinds ...EventKind) Event {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev, ok := <-c.Events():
			if !ok {
				t.Fatal("events closed")
			}
			for _, k := range kinds {
				if ev.Kind == k {
					return ev
				}
			}
		case <-timeout:
			t.Fatalf("no %v event", kinds)
		}
	}
}

func fastConfig(p *fakePortal) ClientConfig {
	return ClientConfig{
		URL:               p.url(),
		Token:             "s3cret-token",
		HeartbeatInterval: time.Second,
		JoinTimeout:       2 * time.Second,
		Backoff:           Backoff{Initial: 10 * time.Millisecond, Max: 40 * time.Millisecond},
	}
}

func newTestClient(t *testing.T, cfg ClientConfig) *Client {
	t.Helper()
	c := NewClient(cfg)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestConnectJoinPushV1(t *testing.T) {
	p := newFakePortal(t)
	var logs syncBuffer
	cfg := fastConfig(p)
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c := newTestClient(t, cfg)
	defer func() {
		out := logs.String()
		if strings.Contains(out, "s3cret") {
			t.Errorf("logs contain the token:\n%s", out)
		}
		if !strings.Contains(out, "phoenix connected") || !strings.Contains(out, "/client/websocket") {
			t.Errorf("logs lack the connect line with the URL:\n%s", out)
		}
	}()
	// Queued while disconnected, sent after the join.
	ref, err := c.Push("client", "create_flow", map[string]string{"resource_id": "r1"})
	if err != nil {
		t.Fatal(err)
	}
	if !ref.Numeric {
		t.Errorf("V1 ref %+v is not numeric", ref)
	}
	c.Join("client", nil)
	if err := c.Connect(t.Context(), "PUBKEY+/="); err != nil {
		t.Fatal(err)
	}
	fc := p.nextConn(t)
	if got := p.request(0).Header.Get("X-Authorization"); got != "Bearer s3cret-token" {
		t.Errorf("X-Authorization = %q", got)
	}
	if got := fc.query.Get("public_key"); got != "PUBKEY+/=" {
		t.Errorf("public_key = %q", got)
	}
	if fc.query.Get("name") != "test" || fc.query.Get("external_id") != "ext1" || fc.query.Has("vsn") {
		t.Errorf("query = %v", fc.query)
	}
	join := fc.expectJoin(t, "client")
	if string(join.Payload) != "null" || !join.Ref.Numeric || !join.JoinRef.IsZero() {
		t.Errorf("join = %+v, want payload null, numeric ref, no join_ref", join)
	}
	ev := nextEvent(t, c, EventJoined)
	if ev.Topic != "client" || string(ev.Payload) != `{"joined":1}` {
		t.Errorf("joined event = %+v", ev)
	}
	push := fc.next(t)
	if push.Event != "create_flow" || push.Ref != ref || string(push.Payload) != `{"resource_id":"r1"}` {
		t.Errorf("push = %+v, want create_flow with ref %v", push, ref)
	}
	if err := fc.Reply(t.Context(), push, StatusOK, map[string]string{"ok": "yes"}); err != nil {
		t.Fatal(err)
	}
	ev = nextEvent(t, c, EventReplied)
	if ev.Ref != ref || ev.Status != StatusOK || string(ev.Payload) != `{"ok":"yes"}` {
		t.Errorf("reply event = %+v", ev)
	}
	if err := fc.Push(t.Context(), Ref{}, "client", "init", map[string]any{"resources": []any{}}); err != nil {
		t.Fatal(err)
	}
	ev = nextEvent(t, c, EventMessage)
	if ev.Topic != "client" || ev.Event != "init" || string(ev.Payload) != `{"resources":[]}` {
		t.Errorf("message event = %+v", ev)
	}
}

func TestV2Framing(t *testing.T) {
	p := newFakePortal(t)
	cfg := fastConfig(p)
	cfg.Version = V2
	c := newTestClient(t, cfg)
	c.Join("relay", map[string]string{"stamp_secret": "x"})
	if err := c.Connect(t.Context(), ""); err != nil {
		t.Fatal(err)
	}
	fc := p.nextConn(t)
	if fc.Version != V2 || fc.query.Get("vsn") != "2.0.0" || fc.query.Has("public_key") {
		t.Fatalf("version %v query %v", fc.Version, fc.query)
	}
	join := fc.expectJoin(t, "relay")
	if join.Ref.Numeric || join.Ref.IsZero() || join.JoinRef != join.Ref || string(join.Payload) != `{"stamp_secret":"x"}` {
		t.Errorf("v2 join = %+v", join)
	}
	nextEvent(t, c, EventJoined)
	ref, err := c.Push("relay", "ping", nil)
	if err != nil {
		t.Fatal(err)
	}
	push := fc.next(t)
	if push.Ref != ref || push.JoinRef != join.Ref {
		t.Errorf("v2 push refs = %+v, want ref %v join_ref %v", push, ref, join.Ref)
	}
	// A message carrying an old join_ref is ignored, the current one is delivered.
	_ = fc.Push(t.Context(), Ref{Value: "999"}, "relay", "stale", nil)
	_ = fc.Push(t.Context(), join.Ref, "relay", "init", map[string]int{"a": 1})
	ev := nextEvent(t, c, EventMessage)
	if ev.Event != "init" {
		t.Errorf("got %+v, want init (stale message must be dropped)", ev)
	}
}

func TestHeartbeatLossReconnectsAndRejoins(t *testing.T) {
	p := newFakePortal(t)
	cfg := fastConfig(p)
	cfg.HeartbeatInterval = 20 * time.Millisecond
	c := newTestClient(t, cfg)
	c.Join("gateway", nil)
	if err := c.Connect(t.Context(), "k"); err != nil {
		t.Fatal(err)
	}
	fc := p.nextConn(t)
	fc.expectJoin(t, "gateway")
	nextEvent(t, c, EventJoined)
	// Answered heartbeats keep the socket up.
	time.Sleep(150 * time.Millisecond)
	if p.dials() != 1 {
		t.Fatalf("reconnected while heartbeats were answered: %d dials", p.dials())
	}
	p.mute.Store(true)
	ev := nextEvent(t, c, EventDisconnected)
	if !errors.Is(ev.Err, ErrHeartbeatTimeout) {
		t.Errorf("disconnect err = %v, want ErrHeartbeatTimeout", ev.Err)
	}
	if n := fc.hbs.Load(); n < MaxMissedHeartbeats+1 {
		t.Errorf("server saw %d heartbeats", n)
	}
	p.mute.Store(false)
	fc2 := p.nextConn(t)
	fc2.expectJoin(t, "gateway")
	nextEvent(t, c, EventJoined)
	<-fc.done // the old socket was closed
}

func TestServerCloseReconnectsWithBackoff(t *testing.T) {
	p := newFakePortal(t)
	cfg := fastConfig(p)
	cfg.Backoff = Backoff{Initial: 60 * time.Millisecond, Max: 60 * time.Millisecond}
	c := newTestClient(t, cfg)
	c.Join("client", nil)
	if err := c.Connect(t.Context(), "k"); err != nil {
		t.Fatal(err)
	}
	fc := p.nextConn(t)
	fc.expectJoin(t, "client")
	nextEvent(t, c, EventJoined)
	closedAt := time.Now()
	_ = fc.Conn.Close(websocket.StatusGoingAway, "restart")
	ev := nextEvent(t, c, EventDisconnected)
	if ev.Err == nil {
		t.Error("disconnect without a cause")
	}
	fc2 := p.nextConn(t)
	p.mu.Lock()
	gap := p.dialAt[1].Sub(closedAt)
	p.mu.Unlock()
	if gap < 30*time.Millisecond {
		t.Errorf("redialled after %v, want ≥ 30ms (backoff 60ms with jitter in [30,60])", gap)
	}
	fc2.expectJoin(t, "client")
	nextEvent(t, c, EventJoined)
}

func TestHTTPErrorsRetry(t *testing.T) {
	p := newFakePortal(t)
	p.status.Store(http.StatusServiceUnavailable)
	c := newTestClient(t, fastConfig(p))
	c.Join("client", nil)
	if err := c.Connect(t.Context(), "k"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.dials() < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if p.dials() < 3 {
		t.Fatalf("%d dials after 503s, want retries", p.dials())
	}
	p.status.Store(0)
	p.nextConn(t).expectJoin(t, "client")
	nextEvent(t, c, EventJoined)
}

func TestRefusedConnectionRetries(t *testing.T) {
	p := newFakePortal(t)
	u := p.url()
	p.srv.Close() // nothing listens any more: connection refused
	cfg := fastConfig(p)
	cfg.URL = u
	var dials atomic.Int32
	cfg.Dialer = func(ctx context.Context, u string, h http.Header) (*websocket.Conn, *http.Response, error) {
		dials.Add(1)
		return websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: h})
	}
	c := newTestClient(t, cfg)
	if err := c.Connect(t.Context(), "k"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for dials.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if dials.Load() < 3 {
		t.Fatalf("%d dials, want retries after connection refused", dials.Load())
	}
}

func TestUnauthorizedIsFatal(t *testing.T) {
	p := newFakePortal(t)
	p.status.Store(http.StatusUnauthorized)
	c := newTestClient(t, fastConfig(p))
	c.Join("client", nil)
	if err := c.Connect(t.Context(), "k"); err != nil {
		t.Fatal(err)
	}
	ev := nextEvent(t, c, EventFatal, EventDisconnected)
	if ev.Kind != EventFatal || !errors.Is(ev.Err, ErrUnauthorized) {
		t.Fatalf("event %v err %v, want EventFatal wrapping ErrUnauthorized", ev.Kind, ev.Err)
	}
	if strings.Contains(ev.Err.Error(), "s3cret") {
		t.Errorf("error leaks the token: %v", ev.Err)
	}
	time.Sleep(200 * time.Millisecond) // 5+ backoff periods (10..40ms)
	if n := p.dials(); n != 1 {
		t.Errorf("%d dials, want exactly 1 after a 401", n)
	}
	if err := c.Connect(t.Context(), "k"); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("Connect after 401 = %v, want ErrUnauthorized", err)
	}
	if _, err := c.Push("client", "x", nil); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("Push after 401 = %v, want ErrUnauthorized", err)
	}
}

func TestTokenExpiredIsFatal(t *testing.T) {
	p := newFakePortal(t)
	c := newTestClient(t, fastConfig(p))
	c.Join("client", nil)
	if err := c.Connect(t.Context(), "k"); err != nil {
		t.Fatal(err)
	}
	fc := p.nextConn(t)
	join := fc.expectJoin(t, "client")
	nextEvent(t, c, EventJoined)
	_ = fc.Push(t.Context(), join.JoinRef, "client", EventDisconnectPush, map[string]string{"reason": ReasonTokenExpired})
	ev := nextEvent(t, c, EventFatal)
	if !errors.Is(ev.Err, ErrTokenExpired) {
		t.Fatalf("fatal err = %v, want ErrTokenExpired", ev.Err)
	}
	<-fc.done
	time.Sleep(150 * time.Millisecond)
	if n := p.dials(); n != 1 {
		t.Errorf("%d dials after token_expired, want 1", n)
	}
}

func TestUnmatchedTopicRejoins(t *testing.T) {
	p := newFakePortal(t)
	c := newTestClient(t, fastConfig(p))
	c.Join("client", nil)
	if err := c.Connect(t.Context(), "k"); err != nil {
		t.Fatal(err)
	}
	fc := p.nextConn(t)
	fc.expectJoin(t, "client")
	nextEvent(t, c, EventJoined)
	ref, _ := c.Push("client", "broadcast_ice_candidates", map[string]any{"candidates": []string{"c"}})
	push := fc.next(t)
	if push.Ref != ref {
		t.Fatalf("push %+v", push)
	}
	_ = fc.Reply(t.Context(), push, StatusError, map[string]string{"reason": ReasonUnmatchedTopic})
	ev := nextEvent(t, c, EventReplied)
	if ev.Status != StatusError || ev.Ref != ref {
		t.Errorf("reply event %+v", ev)
	}
	fc.expectJoin(t, "client") // rejoined on the same socket
	nextEvent(t, c, EventJoined)
	if p.dials() != 1 {
		t.Errorf("%d dials, want the rejoin on the same socket", p.dials())
	}
}

func TestPhxErrorRejoinsAfterBackoff(t *testing.T) {
	p := newFakePortal(t)
	c := newTestClient(t, fastConfig(p))
	c.Join("client", nil)
	if err := c.Connect(t.Context(), "k"); err != nil {
		t.Fatal(err)
	}
	fc := p.nextConn(t)
	join := fc.expectJoin(t, "client")
	nextEvent(t, c, EventJoined)
	for _, e := range []string{EventError, EventClose} {
		_ = fc.Write(t.Context(), Message{JoinRef: join.JoinRef, Ref: join.Ref, Topic: "client", Event: e, Payload: json.RawMessage("{}")})
		fc.expectJoin(t, "client")
		nextEvent(t, c, EventJoined)
	}
}

func TestConnectWithNewKeyReconnects(t *testing.T) {
	p := newFakePortal(t)
	c := newTestClient(t, fastConfig(p))
	c.Join("client", nil)
	if err := c.Connect(t.Context(), "key-A"); err != nil {
		t.Fatal(err)
	}
	fc := p.nextConn(t)
	fc.expectJoin(t, "client")
	nextEvent(t, c, EventJoined)
	if err := c.Connect(t.Context(), "key-B"); err != nil {
		t.Fatal(err)
	}
	fc2 := p.nextConn(t)
	if got := fc2.query.Get("public_key"); got != "key-B" {
		t.Errorf("public_key after rotation = %q, want key-B", got)
	}
	<-fc.done // the socket with the old key is gone
	fc2.expectJoin(t, "client")
	nextEvent(t, c, EventJoined)
	// Reconnect keeps the key.
	c.Reconnect()
	fc3 := p.nextConn(t)
	if got := fc3.query.Get("public_key"); got != "key-B" {
		t.Errorf("public_key after Reconnect = %q, want key-B", got)
	}
}

func TestConnectContextCancelDisconnects(t *testing.T) {
	p := newFakePortal(t)
	c := newTestClient(t, fastConfig(p))
	ctx, cancel := context.WithCancel(t.Context())
	if err := c.Connect(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	fc := p.nextConn(t)
	cancel()
	<-fc.done
	time.Sleep(100 * time.Millisecond)
	if n := p.dials(); n != 1 {
		t.Errorf("%d dials after the Connect context ended, want 1", n)
	}
}

func TestCloseStopsEverything(t *testing.T) {
	p := newFakePortal(t)
	before := goleak.IgnoreCurrent()
	c := NewClient(fastConfig(p))
	c.Join("client", nil)
	if err := c.Connect(t.Context(), "k"); err != nil {
		t.Fatal(err)
	}
	fc := p.nextConn(t)
	fc.expectJoin(t, "client")
	// Events are not read: the backlog must not block Close.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	<-fc.done
	for range c.Events() {
		// drain until closed
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := c.Connect(t.Context(), "k"); !errors.Is(err, ErrClosed) {
		t.Errorf("Connect after Close = %v, want ErrClosed", err)
	}
	if _, err := c.Push("client", "x", nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Push after Close = %v, want ErrClosed", err)
	}
	goleak.VerifyNone(t, before)
}

func TestRedactURL(t *testing.T) {
	got := redactURL("wss://user:pw@portal.example/client/websocket?token=abc&name=n")
	if strings.Contains(got, "abc") || strings.Contains(got, "pw") || !strings.Contains(got, "name=n") {
		t.Errorf("redactURL = %s", got)
	}
}

func TestAcceptRefusesUnknownVsn(t *testing.T) {
	p := newFakePortal(t)
	_, resp, err := websocket.Dial(t.Context(), p.url()+"&vsn=3.0.0", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("dial with vsn=3.0.0: resp %v err %v, want HTTP 400", resp, err)
	}
}
