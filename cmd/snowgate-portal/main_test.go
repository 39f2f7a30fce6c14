package main

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/snowgate/snowgate/portalmock"
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

// The binary starts with examples/portal.yaml, logs where it listens, serves the admin API, and stops on
// cancellation.
func TestRunExampleConfig(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out syncBuffer
	started := make(chan *portalmock.Server, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--config", "../../examples/portal.yaml", "--listen", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"},
			&out, func(s *portalmock.Server) { started <- s })
	}()
	var srv *portalmock.Server
	select {
	case srv = <-started:
	case err := <-done:
		t.Fatalf("run: %v\n%s", err, out.String())
	case <-time.After(10 * time.Second):
		t.Fatal("portal did not start")
	}
	addr := strings.TrimPrefix(srv.URL(), "ws://")
	if !strings.Contains(out.String(), "portal listening") || !strings.Contains(out.String(), addr) {
		t.Errorf("log does not say where the portal listens (%s):\n%s", addr, out.String())
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.AdminURL()+"/v1/resources", nil)
	req.Header.Set("Authorization", "Bearer "+portalmock.DefaultAdminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	http.DefaultClient.CloseIdleConnections()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("admin API: %d", resp.StatusCode)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("portal did not stop")
	}
}

func TestRunBadConfig(t *testing.T) {
	var out syncBuffer
	if err := run(t.Context(), []string{"--config", "/nonexistent.yaml"}, &out, nil); err == nil {
		t.Error("missing config accepted")
	}
}

// TestStatsLine: the portal logs one INFO stats line per interval with who is online.
func TestStatsLine(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--listen", "127.0.0.1:0", "--admin-addr", "", "--stats-interval", "50ms"}, &out, nil)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "INFO portal: stats clients_online=0 gateways_online=0 relays=0 flows=0") {
		if time.Now().After(deadline) {
			t.Fatalf("no stats line:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
