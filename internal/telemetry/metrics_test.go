package telemetry

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

func scrape(t *testing.T, h http.Handler) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics: %d", rec.Code)
	}
	return rec.Body.String()
}

func TestPrometheusHandlerShowsCounter(t *testing.T) {
	tel, err := Setup(t.Context(), Options{Component: "relay", Output: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	c, err := tel.MeterProvider.Meter("github.com/snowgate/snowgate/relay").Int64Counter("relay.allocations",
		metric.WithDescription("TURN allocations created"), metric.WithUnit("{allocation}"))
	if err != nil {
		t.Fatal(err)
	}
	if out := scrape(t, tel.MetricsHandler); strings.Contains(out, "relay_allocations") {
		t.Errorf("counter exported before use:\n%s", out)
	}
	c.Add(t.Context(), 2, metric.WithAttributes(attribute.String("family", "ipv4")))
	c.Add(t.Context(), 1, metric.WithAttributes(attribute.String("family", "ipv4")))
	out := scrape(t, tel.MetricsHandler)
	if !strings.Contains(out, `relay_allocations_total{family="ipv4"} 3`) {
		t.Errorf("counter not found in:\n%s", grepLines(out, "relay_"))
	}
	if !strings.Contains(out, "go_goroutines") {
		t.Error("Go runtime collector missing")
	}
	// A second Setup has its own registry (no duplicate registration panics, no shared state).
	tel2, err := Setup(t.Context(), Options{Output: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	defer tel2.Shutdown(context.Background())
	if out := scrape(t, tel2.MetricsHandler); strings.Contains(out, "relay_allocations") {
		t.Error("registries shared between Setups")
	}
}

func grepLines(s, sub string) string {
	var out []string
	for l := range strings.Lines(s) {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "")
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestServe(t *testing.T) {
	tel, err := Setup(t.Context(), Options{Output: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	var ready atomic.Bool
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	addr, err := Serve(ctx, "127.0.0.1:0", ready.Load, tel.MetricsHandler, tel.Logger)
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + addr.String()
	if code, _ := get(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz %d", code)
	}
	if code, _ := get(t, base+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz before ready: %d", code)
	}
	ready.Store(true)
	if code, _ := get(t, base+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz when ready: %d", code)
	}
	if code, body := get(t, base+"/metrics"); code != http.StatusOK || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics %d", code)
	}
	if code, _ := get(t, base+"/nope"); code != http.StatusNotFound {
		t.Errorf("/nope %d", code)
	}
	http.DefaultClient.CloseIdleConnections()
	cancel()
	// Owned by ctx: the listener closes.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr.String(), time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("server still accepting after ctx cancel")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := Serve(t.Context(), "127.0.0.1:-1", nil, nil, nil); err == nil {
		t.Error("Serve on a bad address succeeded")
	}
}
