package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }
func (s *syncBuffer) Bytes() []byte  { return []byte(s.String()) }
func (s *syncBuffer) Len() int       { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Len() }
func (s *syncBuffer) Reset()         { s.mu.Lock(); defer s.mu.Unlock(); s.b.Reset() }

func newTestLogger(t *testing.T, o Options) (*slog.Logger, *syncBuffer) {
	t.Helper()
	var buf syncBuffer
	o.Output = &buf
	tel, err := setup(t.Context(), o, deps{getenv: func(string) string { return "" }})
	if err != nil {
		t.Fatalf("setup: %v", err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	return tel.Logger, &buf
}

func TestParseDirectives(t *testing.T) {
	tests := []struct {
		in      string
		wantErr bool
		levels  map[string]slog.Level // component → expected level
	}{
		{in: "", levels: map[string]slog.Level{"": slog.LevelInfo, "node": slog.LevelInfo}},
		{in: "debug", levels: map[string]slog.Level{"relay": slog.LevelDebug}},
		{in: "info,node=debug,client/dns=trace", levels: map[string]slog.Level{
			"node": slog.LevelDebug, "node/ice": slog.LevelDebug, "nodes": slog.LevelInfo,
			"client": slog.LevelInfo, "client/dns": LevelTrace, "client/dns/tcp": LevelTrace, "client/dnsx": slog.LevelInfo,
			"gateway": slog.LevelInfo,
		}},
		{in: "warn,client=debug,client/dns=error", levels: map[string]slog.Level{
			"client": slog.LevelDebug, "client/dns": slog.LevelError, "client/routes": slog.LevelDebug, "relay": slog.LevelWarn,
		}},
		{in: " TRACE , pion=warning ", levels: map[string]slog.Level{"x": LevelTrace, "pion/ice": slog.LevelWarn}},
		{in: "pion=off,-4", levels: map[string]slog.Level{"pion/turn": levelOff, "node": slog.LevelDebug}},
		{in: "/client/dns/=debug", levels: map[string]slog.Level{"client/dns": slog.LevelDebug}},
		{in: "verbose", wantErr: true},
		{in: "node=loud", wantErr: true},
		{in: "=debug", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			d, err := ParseDirectives(tc.in)
			if tc.wantErr {
				if !errors.Is(err, ErrInvalidLogLevel) {
					t.Fatalf("err = %v, want ErrInvalidLogLevel", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for c, want := range tc.levels {
				if got := d.Level(c); got != want {
					t.Errorf("Level(%q) = %v, want %v", c, got, want)
				}
			}
		})
	}
	if _, err := Setup(t.Context(), Options{LogLevel: "bogus"}); !errors.Is(err, ErrInvalidLogLevel) {
		t.Errorf("Setup with a bad level: %v", err)
	}
	if _, err := Setup(t.Context(), Options{LogFormat: "xml"}); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("Setup with a bad format: %v", err)
	}
}

func TestHumanFormat(t *testing.T) {
	var buf bytes.Buffer
	h := newHandler(&sink{w: &buf, levels: Directives{Default: slog.LevelInfo}}, "relay")
	l := Component(slog.New(h), "node").With("gateway", "gw 1").WithGroup("conn")
	r := slog.NewRecord(time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC), slog.LevelInfo, "connection established", 0)
	r.AddAttrs(slog.String("path", "relay"), slog.Int("n", 2), slog.Duration("rtt", 1500*time.Microsecond),
		Err(fmt.Errorf("dial: %w", errors.New("refused"))))
	if err := l.Handler().Handle(t.Context(), r); err != nil {
		t.Fatal(err)
	}
	want := `2026-11-27T10:00:00.000Z INFO node: connection established gateway="gw 1" conn.path=relay conn.n=2 conn.rtt=1.5ms conn.error="dial: refused" conn.error.chain=["dial: refused","refused"]` + "\n"
	if got := buf.String(); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestJSONFormat(t *testing.T) {
	l, buf := newTestLogger(t, Options{Component: "client", LogFormat: "json", LogLevel: "trace"})
	l.Log(t.Context(), LevelTrace, "query", "name", "example.com", "n", 3, "ok", true,
		Err(fmt.Errorf("resolve: %w", errors.New("timeout"))))
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatalf("not JSON: %v: %s", err, buf)
	}
	want := map[string]any{"level": "TRACE", "component": "client", "msg": "query", "name": "example.com",
		"n": 3.0, "ok": true, "error": "resolve: timeout", "error.chain": []any{"resolve: timeout", "timeout"}}
	for k, v := range want {
		if fmt.Sprint(m[k]) != fmt.Sprint(v) {
			t.Errorf("%s = %v, want %v", k, m[k], v)
		}
	}
	if _, err := time.Parse(time.RFC3339Nano, fmt.Sprint(m["time"])); err != nil {
		t.Errorf("time %v: %v", m["time"], err)
	}
}

func TestComponentLevels(t *testing.T) {
	l, buf := newTestLogger(t, Options{Component: "client", LogLevel: "info,node=debug,client/dns=trace"})
	Component(l, "node").Debug("node debug")
	Component(l, "node").Log(t.Context(), LevelTrace, "node trace")
	Component(l, "client/dns").Log(t.Context(), LevelTrace, "dns trace")
	l.Debug("client debug")
	l.Info("client info")
	Component(l, "gateway").Debug("other debug")
	got := buf.String()
	for _, s := range []string{"DEBUG node: node debug", "TRACE client/dns: dns trace", "INFO client: client info"} {
		if !strings.Contains(got, s) {
			t.Errorf("missing %q in\n%s", s, got)
		}
	}
	for _, s := range []string{"node trace", "client debug", "other debug"} {
		if strings.Contains(got, s) {
			t.Errorf("%q logged despite its level in\n%s", s, got)
		}
	}
	// A logger not made here gets a component attribute.
	var b2 bytes.Buffer
	Component(slog.New(slog.NewTextHandler(&b2, nil)), "node").Info("x")
	if !strings.Contains(b2.String(), "component=node") {
		t.Errorf("foreign logger: %q", b2.String())
	}
	Component(nil, "node").Info("discarded") // must not panic
}

// sourceOf returns the "source" of the last JSON line in buf.
func sourceOf(t *testing.T, buf *syncBuffer) string {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	var m map[string]any
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &m); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	s, _ := m["source"].(string)
	return s
}

func here(t *testing.T, delta int) string {
	t.Helper()
	_, file, line, _ := runtime.Caller(1)
	return "telemetry/" + file[strings.LastIndexByte(file, '/')+1:] + ":" + strconv.Itoa(line+delta) // delta lines after the call of here
}

func TestCallSite(t *testing.T) {
	l, buf := newTestLogger(t, Options{LogFormat: "json", LogLevel: "trace"})
	pion := PionLoggerFactory(l).NewLogger("ice")
	cases := []struct {
		name string
		log  func() string // logs and returns the expected source
	}{
		{"slog", func() string { w := here(t, 0); l.Info("x"); return w }},
		{"component", func() string { w := here(t, 0); Component(l, "node").Warn("x"); return w }},
		{"pion Debugf", func() string { w := here(t, 0); pion.Debugf("x %d", 1); return w }},
		{"pion Trace", func() string { w := here(t, 0); pion.Trace("x"); return w }},
		{"pion Errorf", func() string { w := here(t, 0); pion.Errorf("x %d", 1); return w }},
		{"pion Info", func() string { w := here(t, 0); pion.Info("x"); return w }},
	}
	for _, tc := range cases {
		buf.Reset()
		want := tc.log()
		if got := sourceOf(t, buf); got != want {
			t.Errorf("%s: source %q, want %q", tc.name, got, want)
		}
	}
}

func TestAdapterLevels(t *testing.T) {
	l, buf := newTestLogger(t, Options{LogLevel: "trace"})
	p := PionLoggerFactory(l).NewLogger("turn")
	p.Trace("a")
	p.Debugf("b%d", 1)
	p.Info("c")
	p.Warnf("d%s", "!")
	p.Error("e")
	want := []string{"TRACE pion/turn: a", "TRACE pion/turn: b1", "DEBUG pion/turn: c", "DEBUG pion/turn: d!",
		"DEBUG pion/turn: e"}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != len(want) {
		t.Fatalf("got %d lines:\n%s", len(lines), buf)
	}
	for i, w := range want {
		if !strings.Contains(lines[i], w) {
			t.Errorf("line %d = %q, want %q", i, lines[i], w)
		}
	}
	// Default level: pion per-packet logs stay out of INFO.
	l2, buf2 := newTestLogger(t, Options{})
	p2 := PionLoggerFactory(l2).NewLogger("ice")
	p2.Debug("ping")
	p2.Tracef("pong %d", 1)
	p2.Info("state change")
	if buf2.Len() != 0 {
		t.Errorf("chatty pion logs at info: %q", buf2)
	}
	PionLoggerFactory(nil).NewLogger("x").Error("discarded")
}

func TestStatsLoop(t *testing.T) {
	l, buf := newTestLogger(t, Options{LogFormat: "json"})
	ctx, cancel := context.WithCancel(t.Context())
	n := 0
	done := make(chan struct{})
	w := here(t, 3)
	go func() {
		defer close(done)
		StatsLoop(ctx, l, time.Millisecond, func() []slog.Attr { n++; return []slog.Attr{slog.Int("flows", n)} })
	}()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && strings.Count(buf.String(), "\n") < 2 {
		time.Sleep(5 * time.Millisecond) // polling for the loop's output; the loop itself is timer driven
	}
	cancel()
	<-done
	out := buf.String()
	if !strings.Contains(out, `"msg":"stats","source":"`+w+`","flows":1}`) {
		t.Errorf("stats line missing or wrong call site (%s):\n%s", w, out)
	}
}
