package wglog

import (
	"bytes"
	"context"
	"encoding/json"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/snowgate/snowgate/internal/telemetry"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
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

func (s *syncBuffer) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Reset()
}

func newLogger(t *testing.T, o telemetry.Options) (*telemetry.Telemetry, *syncBuffer) {
	t.Helper()
	var buf syncBuffer
	o.Output = &buf
	tel, err := telemetry.Setup(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	return tel, &buf
}

// TestLevelsAndComponent: Verbosef is DEBUG and Errorf WARN, both as component "wireguard"; at the default
// level (info) the per-packet Verbosef lines stay out of the log; a nil logger discards.
func TestLevelsAndComponent(t *testing.T) {
	t.Setenv(telemetry.EnvOTLPEndpoint, "")
	tel, buf := newLogger(t, telemetry.Options{LogLevel: "trace"})
	wg := New(tel.Logger)
	wg.Verbosef("peer(%s) - sending handshake", "AbCd…")
	wg.Errorf("failed to send: %v", "no route")
	want := []string{"DEBUG wireguard: peer(AbCd…) - sending handshake", "WARN wireguard: failed to send: no route"}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != len(want) {
		t.Fatalf("got %d lines:\n%s", len(lines), buf)
	}
	for i, w := range want {
		if !strings.Contains(lines[i], w) {
			t.Errorf("line %d = %q, want %q", i, lines[i], w)
		}
	}

	tel2, buf2 := newLogger(t, telemetry.Options{})
	New(tel2.Logger).Verbosef("keepalive")
	if got := buf2.String(); got != "" {
		t.Errorf("wireguard-go's verbose logs at info: %q", got)
	}
	New(nil).Errorf("discarded") // must not panic
}

// TestCallSite: records carry the position of wireguard-go's call, not the adapter's.
func TestCallSite(t *testing.T) {
	t.Setenv(telemetry.EnvOTLPEndpoint, "")
	tel, buf := newLogger(t, telemetry.Options{LogFormat: "json", LogLevel: "trace"})
	wg := New(tel.Logger)
	for name, log := range map[string]func() string{
		"Verbosef": func() string { w := here(); wg.Verbosef("x %d", 1); return w },
		"Errorf":   func() string { w := here(); wg.Errorf("x %d", 1); return w },
	} {
		buf.Reset()
		want := log()
		var m map[string]any
		if err := json.Unmarshal([]byte(buf.String()), &m); err != nil {
			t.Fatalf("%s: not JSON: %v: %s", name, err, buf)
		}
		if got, _ := m["source"].(string); got != want {
			t.Errorf("%s: source %q, want %q", name, got, want)
		}
	}
}

// here returns "wglog/<file>:<line>" of its caller.
func here() string {
	_, file, line, _ := runtime.Caller(1)
	return "wglog/" + file[strings.LastIndexByte(file, '/')+1:] + ":" + strconv.Itoa(line)
}
