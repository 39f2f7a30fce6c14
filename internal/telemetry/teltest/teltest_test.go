package teltest

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/snowgate/snowgate/internal/telemetry"
)

// recorder captures failures of AssertNoSecrets.
type recorder struct {
	testing.TB
	errs []string
}

func (r *recorder) Helper()                   {}
func (r *recorder) Errorf(f string, a ...any) { r.errs = append(r.errs, fmt.Sprintf(f, a...)) }

func TestAssertNoSecrets(t *testing.T) {
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	key := base64.StdEncoding.EncodeToString(raw)
	cases := []struct {
		out  string
		fail bool
	}{
		{"nothing here", false},
		{"key " + key, true},
		{"hex " + hex.EncodeToString(raw), true},
		{"url " + base64.RawURLEncoding.EncodeToString(raw), true},
	}
	for i, tc := range cases {
		r := &recorder{TB: t}
		AssertNoSecrets(r, tc.out, key, "")
		if got := len(r.errs) > 0; got != tc.fail {
			t.Errorf("case %d: failed=%v, want %v (%v)", i, got, tc.fail, r.errs)
		}
	}
}

func TestSetupLogsAtTraceWithoutSecrets(t *testing.T) {
	tel, out := Setup(t, telemetry.Options{Component: "relay"})
	tel.Logger.Log(t.Context(), telemetry.LevelTrace, "allocation", "password", "turn-pw-1", "user", "1700000000:abc")
	if !strings.Contains(out.String(), "TRACE relay: allocation password=[redacted] user=1700000000:abc") {
		t.Errorf("output %q", out.String())
	}
	AssertNoSecrets(t, out.String(), "turn-pw-1")
	l, buf := NewLogger(t)
	l.Debug("x")
	if !strings.Contains(buf.String(), "DEBUG test: x") {
		t.Errorf("NewLogger output %q", buf.String())
	}
}

// TestCollectorReceivesExport: a record logged through SetupExport reaches the Collector over OTLP/HTTP with
// its severity, body and attributes.
func TestCollectorReceivesExport(t *testing.T) {
	tel, _, c := SetupExport(t, telemetry.Options{Component: "relay"})
	tel.Logger.Warn("portal lost", "attempt", 3, telemetry.Err(fmt.Errorf("dial: %w", errors.New("refused"))))
	Flush(t, tel)
	rs := c.Records()
	if len(rs) != 1 {
		t.Fatalf("collector got %d records: %+v", len(rs), rs)
	}
	r := rs[0]
	if r.Severity != "WARN" || r.Body != "portal lost" || r.Attrs["attempt"] != int64(3) ||
		fmt.Sprint(r.Attrs["error.chain"]) != "[dial: refused refused]" {
		t.Errorf("record %+v", r)
	}
}
