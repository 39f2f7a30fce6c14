package relay

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/snowgate/snowgate/internal/phoenix"
)

func TestPortalURL(t *testing.T) {
	for _, tc := range []struct {
		api, ip4, ip6, want string
	}{
		{"http://portal:8081", "198.18.0.1", "2001:db8::1",
			"ws://portal:8081/relay/websocket?ipv4=198.18.0.1&ipv6=2001%3Adb8%3A%3A1&name=r1&port=3478"},
		{"wss://portal.example/api/", "198.18.0.1", "", "wss://portal.example/api/relay/websocket?ipv4=198.18.0.1&name=r1&port=3478"},
		{"https://p", "", "2001:db8::1", "wss://p/relay/websocket?ipv6=2001%3Adb8%3A%3A1&name=r1&port=3478"},
	} {
		got, err := portalURL(&PortalConfig{APIURL: tc.api, Token: "t", Name: "r1"}, tc.ip4, tc.ip6, 3478)
		if err != nil || got != tc.want {
			t.Errorf("portalURL(%q) = %q, %v; want %q", tc.api, got, err, tc.want)
		}
	}
}

// fakePortal accepts relay sockets, records what they send and can drop them.
type fakePortal struct {
	t     *testing.T
	mu    sync.Mutex
	query []url.Values
	auth  []string
	joins []string // stamp secrets
	leave int
	conns []*phoenix.ServerConn
}

func (p *fakePortal) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/relay/websocket" {
		http.NotFound(w, r)
		return
	}
	p.mu.Lock()
	p.query = append(p.query, r.URL.Query())
	p.auth = append(p.auth, r.Header.Get("X-Authorization"))
	p.mu.Unlock()
	c, err := phoenix.Accept(w, r, nil)
	if err != nil {
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, c)
	p.mu.Unlock()
	ctx := r.Context()
	for {
		m, err := c.Read(ctx)
		if err != nil {
			return
		}
		switch {
		case m.Topic == "phoenix" && m.Event == phoenix.EventHeartbeat:
			_ = c.Reply(ctx, m, "ok", nil)
		case m.Topic == "relay" && m.Event == phoenix.EventJoin:
			var payload struct {
				StampSecret string `json:"stamp_secret"`
			}
			_ = json.Unmarshal(m.Payload, &payload)
			p.mu.Lock()
			p.joins = append(p.joins, payload.StampSecret)
			p.mu.Unlock()
			_ = c.Reply(ctx, m, "ok", nil)
			_ = c.Push(ctx, m.Ref, "relay", "init", map[string]any{})
		case m.Topic == "relay" && m.Event == phoenix.EventLeave:
			p.mu.Lock()
			p.leave++
			p.mu.Unlock()
			_ = c.Reply(ctx, m, "ok", nil)
		}
	}
}

func (p *fakePortal) dropAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Conn.Close(websocket.StatusGoingAway, "bye")
	}
	p.conns = nil
}

func (p *fakePortal) snapshot() (joins []string, leave int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.joins...), p.leave
}

func TestPortalRegistration(t *testing.T) {
	portal := &fakePortal{t: t}
	hs := httptest.NewServer(portal)
	defer hs.Close()
	cfg := loopbackConfig()
	cfg.Portal = &PortalConfig{APIURL: hs.URL, Token: "relay-token", Name: "relay-1"}
	s := startRelay(t, cfg)
	if s.Ready() {
		t.Fatal("ready before joining the portal")
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	waitFor(t, 5*time.Second, "join", s.Ready)
	joins, _ := portal.snapshot()
	if len(joins) != 1 || joins[0] != s.StampSecret() || len(s.StampSecret()) != 64 {
		t.Fatalf("joins %q, stamp secret %q", joins, s.StampSecret())
	}
	portal.mu.Lock()
	q, auth := portal.query[0], portal.auth[0]
	portal.mu.Unlock()
	if auth != "Bearer relay-token" {
		t.Fatalf("auth header %q", auth)
	}
	if q.Get("ipv4") != "127.0.0.1" || q.Get("ipv6") != "::1" || q.Get("name") != "relay-1" ||
		q.Get("port") != strings.TrimPrefix(s.Addr().String(), "127.0.0.1:") {
		t.Fatalf("query %v", q)
	}

	// The portal goes away: not ready, relaying continues, rejoin follows.
	portal.dropAll()
	waitFor(t, 5*time.Second, "not ready after portal loss", func() bool { return !s.Ready() })
	user, pass := firezoneCreds(s, "salt", time.Hour)
	if _, err := newRawClient(t, s.Addr(), user, pass).allocate(); err != nil {
		t.Fatalf("allocate while the portal is away: %v", err)
	}
	waitFor(t, 10*time.Second, "rejoin", s.Ready)
	joins, _ = portal.snapshot()
	if len(joins) != 2 || joins[1] != s.StampSecret() {
		t.Fatalf("rejoin payloads %q", joins)
	}

	// Drain leaves the portal.
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
	if _, leave := portal.snapshot(); leave != 1 {
		t.Fatalf("phx_leave count %d", leave)
	}
}
