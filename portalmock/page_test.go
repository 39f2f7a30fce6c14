package portalmock

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/snowgate/snowgate/internal/portalapi"
)

func TestPageServed(t *testing.T) {
	defer http.DefaultClient.CloseIdleConnections()
	s := startServer(t, nil)
	for _, tc := range []struct{ path, ctype, contains string }{
		{"/", "text/html; charset=utf-8", `<svg id="topology"`},
		{"/?token=whatever", "text/html; charset=utf-8", `<script src="page.js"`},
		{"/page.js", "text/javascript; charset=utf-8", "new EventSource('/events'"},
		{"/page.css", "text/css; charset=utf-8", "#topology"},
	} {
		resp := adminDo(t, s, "GET", tc.path, "", nil) // no token: the page holds no data
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != tc.ctype || !strings.Contains(string(b), tc.contains) {
			t.Errorf("GET %s: %d %q, body has %q: %v", tc.path, resp.StatusCode, resp.Header.Get("Content-Type"), tc.contains, strings.Contains(string(b), tc.contains))
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: security headers %q", tc.path, resp.Header)
		}
	}
	// The data is not public: the stream and the API need the admin token.
	for _, path := range []string{"/events", "/events?token=wrong", "/v1/state", "/nothing-here"} {
		if resp := adminDo(t, s, "GET", path, "", nil); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET %s without the token: %d", path, resp.StatusCode)
		}
	}
	if resp := adminDo(t, s, "POST", "/", "", nil); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("POST / without the token: %d", resp.StatusCode)
	}
	u, err := url.Parse(s.PageURL())
	if err != nil || u.Query().Get("token") != DefaultAdminToken || "http://"+u.Host != s.AdminURL() || u.Path != "/" {
		t.Errorf("PageURL %q", s.PageURL())
	}
}

// sseStream reads server-sent events.
type sseStream struct {
	t      *testing.T
	r      *bufio.Reader
	body   io.Closer
	cancel context.CancelFunc
}

func openEvents(t *testing.T, s *Server, token string) *sseStream {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	req, err := http.NewRequestWithContext(ctx, "GET", s.AdminURL()+"/events?token="+url.QueryEscape(token), nil)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		resp.Body.Close()
		client.CloseIdleConnections()
	})
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("GET /events: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	return &sseStream{t: t, r: bufio.NewReader(resp.Body), body: resp.Body, cancel: cancel}
}

// next returns the next block's event name and data (comments have the event ":" and the comment as data).
func (e *sseStream) next() (event, data string) {
	e.t.Helper()
	type block struct {
		event, data string
		err         error
	}
	ch := make(chan block, 1)
	go func() {
		var b block
		for {
			line, err := e.r.ReadString('\n')
			if err != nil {
				b.err = err
				ch <- b
				return
			}
			line = strings.TrimSuffix(line, "\n")
			switch {
			case line == "":
				if b.event != "" || b.data != "" {
					ch <- b
					return
				}
			case strings.HasPrefix(line, ":"):
				b.event, b.data = ":", strings.TrimSpace(line[1:])
			case strings.HasPrefix(line, "event: "):
				b.event = line[len("event: "):]
			case strings.HasPrefix(line, "data: "):
				b.data += line[len("data: "):]
			case strings.HasPrefix(line, "retry: "):
				b.event = "retry"
			}
		}
	}()
	select {
	case b := <-ch:
		if b.err != nil {
			e.t.Fatalf("event stream: %v", b.err)
		}
		return b.event, b.data
	case <-time.After(waitTime):
		e.cancel() // unblocks the reader
		e.t.Fatal("timed out waiting for an event")
	}
	return "", ""
}

// state returns the next state event, skipping heartbeats.
func (e *sseStream) state() PageState {
	e.t.Helper()
	for {
		ev, data := e.next()
		if ev != "state" {
			continue
		}
		var ps PageState
		if err := json.Unmarshal([]byte(data), &ps); err != nil {
			e.t.Fatalf("state %s: %v", data, err)
		}
		return ps
	}
}

func waitStreams(t *testing.T, s *Server, n int32) {
	t.Helper()
	deadline := time.Now().Add(waitTime)
	for s.streams.Load() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d event streams open, want %d", s.streams.Load(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestEventsStreamState(t *testing.T) {
	s := startServer(t, nil)
	ev := openEvents(t, s, DefaultAdminToken)
	if e, _ := ev.next(); e != "retry" {
		t.Fatalf("first block %q, want the retry hint", e)
	}
	st := ev.state()
	if len(st.Clients) != 2 || st.Clients[0].Online || len(st.Relays) != 0 || len(st.Sites) != 1 || st.Sites[0].Name != "dev-site" ||
		len(st.Resources) != 5 || len(st.Policies) != 5 || st.Gateways[0].Site != siteDev {
		t.Fatalf("first state %+v", st)
	}
	if p := st.Policies[3]; p.ClientName != "client-1" || p.ResourceName != "Internet" {
		t.Errorf("policy names %+v", p)
	}
	if p := st.Policies[0]; p.Client != "*" || p.ClientName != "every client" || p.ResourceName != "lab network" {
		t.Errorf("policy names %+v", p)
	}

	// A relay joins: a new state.
	connectRelay(t, s, "secret-1", "198.18.0.1", "")
	if st = ev.state(); len(st.Relays) != 1 || st.Relays[0].ID != portalapi.RelayID("secret-1") {
		t.Fatalf("after the relay joined: %+v", st.Relays)
	}
	// An admin change (no portal event): a new state.
	if err := s.PutResource(ResourceConfig{ID: "r-new", Type: "dns", Name: `<img src=x onerror="alert(1)">`, Address: "*.new.test", Sites: []string{siteDev}}); err != nil {
		t.Fatal(err)
	}
	if st = ev.state(); len(st.Resources) != 6 || st.Resources[5].Name != `<img src=x onerror="alert(1)">` {
		t.Fatalf("after the admin change: %+v", st.Resources)
	}
	// A client joins and reports its connection: the page sees the path.
	c := connectPeer(t, s, "client", DefaultClientToken1, newKey(t))
	c.expect(portalapi.EventInit)
	if st = ev.state(); !st.Clients[0].Online {
		t.Fatalf("client not online: %+v", st.Clients[0])
	}
	rep := portalapi.ReportConnections{Connections: []portalapi.ConnectionReport{{PeerID: gateway1, Path: portalapi.PathRelay, RelayID: st.Relays[0].ID, RTTMillis: 2.5}}}
	c.send(portalapi.TopicClient, portalapi.EventReportConnections, rep)
	if st = ev.state(); len(st.Clients[0].Connections) != 1 || st.Clients[0].Connections[0] != rep.Connections[0] {
		t.Fatalf("reported connection %+v", st.Clients[0].Connections)
	}

	// The browser goes away: the handler returns.
	waitStreams(t, s, 1)
	ev.cancel()
	waitStreams(t, s, 0)
}

func TestEventsHeartbeatAndClose(t *testing.T) {
	s, err := New(Config{EventsHeartbeat: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.StartAdmin(ln); err != nil {
		t.Fatal(err)
	}
	ev := openEvents(t, s, DefaultAdminToken)
	ev.state()
	for range 3 {
		if e, data := ev.next(); e != ":" || data != "heartbeat" {
			t.Fatalf("got %q %q while nothing changed, want a heartbeat", e, data)
		}
	}
	// Closing the server ends the stream (and Close does not wait for the browser).
	done := make(chan error, 1)
	go func() { done <- s.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitTime):
		t.Fatal("Close hangs on an open event stream")
	}
	if n := s.streams.Load(); n != 0 {
		t.Fatalf("%d streams open after Close", n)
	}
}
