// Package teltest helps tests use internal/telemetry: a trace-level logger writing to a goroutine-safe
// buffer, and a check that no secret reached the output.
//
// A daemon's no-secret test:
//
//	tel, out := teltest.Setup(t, telemetry.Options{Component: "relay"}) // LogLevel "trace" by default
//	runScenario(t, tel.Logger, tel.MeterProvider)
//	teltest.AssertNoSecrets(t, out.String(), relaySecret, turnPassword, token)
package teltest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/snowgate/snowgate/internal/telemetry"
)

// Buffer is a bytes.Buffer safe for concurrent use; loggers write to it while the test reads it.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write implements io.Writer.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Reset discards everything written so far.
func (b *Buffer) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.b.Reset()
}

// Setup calls telemetry.Setup with Output set to a new Buffer, LogLevel "trace" when o.LogLevel is empty
// and no error telemetry (OTLPEndpoint is ignored and OTEL_EXPORTER_OTLP_ENDPOINT cleared for the test).
// Shutdown runs at cleanup. The MeterProvider and MetricsHandler are real (scrape them in tests).
func Setup(tb testing.TB, o telemetry.Options) (*telemetry.Telemetry, *Buffer) {
	tb.Helper()
	if t, ok := tb.(*testing.T); ok {
		t.Setenv(telemetry.EnvOTLPEndpoint, "")
		t.Setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "")
	}
	buf := &Buffer{}
	o.Output = buf
	o.OTLPEndpoint = ""
	if o.LogLevel == "" {
		o.LogLevel = "trace"
	}
	tel, err := telemetry.Setup(context.Background(), o)
	if err != nil {
		tb.Fatalf("telemetry.Setup: %v", err)
	}
	tb.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	return tel, buf
}

// NewLogger returns a logger at trace level (human format, component "test") writing to a new Buffer.
func NewLogger(tb testing.TB) (*slog.Logger, *Buffer) {
	tb.Helper()
	tel, buf := Setup(tb, telemetry.Options{Component: "test"})
	return tel.Logger, buf
}

// AssertNoSecrets fails tb if out contains any of secrets, or, for a secret that is base64 (a WireGuard
// key or PSK), its hex or other base64 encodings. Empty secrets are ignored.
func AssertNoSecrets(tb testing.TB, out string, secrets ...string) {
	tb.Helper()
	for _, s := range secrets {
		for _, form := range Forms(s) {
			if i := strings.Index(out, form); i >= 0 {
				lo, hi := max(0, i-80), min(len(out), i+len(form)+80)
				tb.Errorf("secret %q (as %q) found in log output: …%s…", s, form, out[lo:hi])
			}
		}
	}
}

// Forms returns the spellings of secret that AssertNoSecrets looks for.
func Forms(secret string) []string {
	if secret == "" {
		return nil
	}
	forms := []string{secret}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
		raw, err := enc.DecodeString(secret)
		if err != nil || len(raw) < 8 {
			continue
		}
		for _, f := range []string{hex.EncodeToString(raw), base64.StdEncoding.EncodeToString(raw),
			base64.URLEncoding.EncodeToString(raw), base64.RawStdEncoding.EncodeToString(raw),
			base64.RawURLEncoding.EncodeToString(raw)} {
			if !contains(forms, f) {
				forms = append(forms, f)
			}
		}
		break
	}
	return forms
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}
