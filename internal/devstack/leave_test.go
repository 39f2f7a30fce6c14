package devstack

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

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

// A stopping daemon leaves the portal over its still-open socket (the portal removes it from presence at
// once), instead of waiting out the leave timeout on a socket already closed.
func TestStopLeavesThePortal(t *testing.T) {
	var logs syncBuffer
	tel, err := telemetry.Setup(context.Background(), telemetry.Options{Component: "devstack", LogLevel: "info", Output: &logs})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := Start(ctx, Options{Relays: 1, Clients: 1, Logger: tel.Logger, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.WaitReady(ctx, 20*time.Second); err != nil {
		_ = st.Stop()
		t.Fatal(err)
	}
	cancel()
	if err := st.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	out := logs.String()
	if strings.Contains(out, "no answer to leaving the portal") {
		t.Errorf("a daemon could not leave the portal:\n%s", out)
	}
	if n := strings.Count(out, "left the portal"); n < 2 {
		t.Errorf("%d daemons left the portal, want the gateway and the client:\n%s", n, out)
	}
}
