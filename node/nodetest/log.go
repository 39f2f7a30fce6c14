package nodetest

import (
	"bytes"
	"log/slog"
	"os"
	"sync"
)

// testLogger logs to the test at the level of SNOWGATE_TEST_LOG ("debug",
// "info"; default: warn).
func testLogger(t TB) *slog.Logger {
	level := slog.LevelWarn
	switch os.Getenv("SNOWGATE_TEST_LOG") {
	case "debug":
		level = slog.LevelDebug
	case "info":
		level = slog.LevelInfo
	}
	w := &testWriter{t: t}
	// Registered before the nodes' Close, so it runs after them: goroutines
	// winding down may still log after the test is over.
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

type testWriter struct {
	t    TB
	mu   sync.Mutex
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(string(bytes.TrimRight(p, "\n")))
	}
	return len(p), nil
}
