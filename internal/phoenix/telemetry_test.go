package phoenix

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/internal/telemetry/teltest"
)

// TestUnauthorizedExportedAsWarning: a real 401 on the WebSocket upgrade, through the client, reaches error
// telemetry (the real OTLP exporter, to a loopback collector) as a warning-level record carrying the error
// chain, never as an ERROR exception, and no Options.WarningErrors are needed for it: a 401 is expected now
// and then (a revoked or expired token), something to count, not a bug. Before, the client logged the error
// as a string at ERROR, which telemetry exported as an exception without type or chain.
func TestUnauthorizedExportedAsWarning(t *testing.T) {
	p := newFakePortal(t)
	p.status.Store(http.StatusUnauthorized)
	tel, _, col := teltest.SetupExport(t, telemetry.Options{Component: "client"})
	cfg := fastConfig(p)
	cfg.Logger = tel.Logger
	c := newTestClient(t, cfg)
	if err := c.Connect(t.Context(), "k"); err != nil {
		t.Fatal(err)
	}
	ev := nextEvent(t, c, EventFatal, EventDisconnected)
	if ev.Kind != EventFatal || !errors.Is(ev.Err, ErrUnauthorized) {
		t.Fatalf("event %v err %v, want EventFatal wrapping ErrUnauthorized", ev.Kind, ev.Err)
	}
	// The application logs the fatal error at ERROR (an operator must act): still a warning for telemetry.
	tel.Logger.Error("portal refused us", telemetry.Err(ev.Err))
	teltest.Flush(t, tel)

	rs := col.Records()
	var warned []teltest.Record
	for _, r := range rs {
		if r.Severity == "ERROR" {
			t.Errorf("exported at ERROR: %+v", r)
		}
		if _, ok := r.Attrs["exception.type"]; ok {
			t.Errorf("exported as an exception: %+v", r)
		}
		if r.Severity == "WARN" {
			warned = append(warned, r)
		}
	}
	if len(warned) != 2 {
		t.Fatalf("%d warnings exported (the client's and the application's), want 2; all records: %+v", len(warned), rs)
	}
	for _, r := range warned {
		chain, _ := r.Attrs["error.chain"].([]string)
		if !slices.Contains(chain, ErrUnauthorized.Error()) || !strings.Contains(fmt.Sprint(chain), "401") {
			t.Errorf("%q: error.chain %q, want ErrUnauthorized and the HTTP status in it", r.Body, chain)
		}
		if strings.Contains(fmt.Sprint(r.Attrs), "s3cret") {
			t.Errorf("%q leaks the token: %v", r.Body, r.Attrs)
		}
	}
}
