package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/internal/telemetry/teltest"
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

// TestPortal401ExportedAsWarning: a portal answering the relay's WebSocket upgrade with 401 (a bad or revoked
// token) stops the registration, relaying goes on, and error telemetry (the real OTLP exporter, to a loopback
// collector) gets the refusal as warnings with the error chain, not as an ERROR exception: 401s happen now
// and then and are to be counted, not paged on. Before, the relay logged the error as a string at ERROR,
// which went out as an exception without type or chain. No Options.WarningErrors are set: the error itself
// says it is a warning.
func TestPortal401ExportedAsWarning(t *testing.T) {
	var upgrades sync.WaitGroup
	upgrades.Add(1)
	var once sync.Once
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer once.Do(upgrades.Done)
		http.Error(w, "invalid token", http.StatusUnauthorized)
	}))
	defer hs.Close()
	tel, out, col := teltest.SetupExport(t, telemetry.Options{Component: "relay", LogLevel: "info"})
	cfg := loopbackConfig()
	cfg.Logger = tel.Logger
	cfg.Portal = &PortalConfig{APIURL: hs.URL, Token: "relay-token-401", Name: "relay-1"}
	s := startRelay(t, cfg)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	upgrades.Wait()
	waitFor(t, 5*time.Second, "the relay to report the refusal", func() bool {
		return strings.Contains(out.String(), "portal refused the relay")
	})
	if s.Ready() {
		t.Error("ready after the portal refused the relay")
	}
	user, pass := firezoneCreds(s, "salt", time.Hour)
	if _, err := newRawClient(t, s.Addr(), user, pass).allocate(); err != nil {
		t.Errorf("allocate after the portal refused the relay: %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
	teltest.Flush(t, tel)

	var refusals int
	for _, r := range col.Records() {
		if r.Severity == "ERROR" {
			t.Errorf("exported at ERROR: %q %v", r.Body, r.Attrs)
		}
		if _, ok := r.Attrs["exception.type"]; ok {
			t.Errorf("exported as an exception: %q %v", r.Body, r.Attrs)
		}
		chain, _ := r.Attrs["error.chain"].([]string)
		if r.Severity != "WARN" || !slices.Contains(chain, phoenix.ErrUnauthorized.Error()) {
			continue
		}
		refusals++
		if !strings.Contains(strings.Join(chain, " "), "401") {
			t.Errorf("%q: error.chain %q does not name the HTTP status", r.Body, chain)
		}
	}
	if refusals < 2 { // the phoenix client's "stopped" and the relay's own report
		t.Errorf("%d warnings with ErrUnauthorized in their error chain, want 2; records: %+v", refusals, col.Records())
	}
	teltest.AssertNoSecrets(t, out.String(), "relay-token-401")
	teltest.AssertNoSecrets(t, fmt.Sprint(col.Records()), "relay-token-401")
}
