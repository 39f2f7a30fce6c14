package telemetry

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	otellog "go.opentelemetry.io/otel/log"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	collogs "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	"google.golang.org/protobuf/proto"
)

// memExporter is an in-memory sdklog.Exporter.
type memExporter struct {
	mu      sync.Mutex
	records []sdklog.Record
}

func (m *memExporter) Export(_ context.Context, rs []sdklog.Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range rs {
		m.records = append(m.records, r.Clone())
	}
	return nil
}
func (m *memExporter) Shutdown(context.Context) error   { return nil }
func (m *memExporter) ForceFlush(context.Context) error { return nil }

func (m *memExporter) all() []sdklog.Record {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.records)
}

func attrs(r sdklog.Record) map[string]attribute.Value {
	out := map[string]attribute.Value{}
	r.WalkAttributes(func(kv attribute.KeyValue) bool {
		out[string(kv.Key)] = kv.Value
		return true
	})
	return out
}

// setupExport makes a Telemetry whose error telemetry goes to an in-memory exporter.
func setupExport(t *testing.T, o Options, seed uint64) (*Telemetry, *memExporter, *bytes.Buffer) {
	t.Helper()
	exp := &memExporter{}
	var buf bytes.Buffer
	o.Output = &buf
	if o.OTLPEndpoint == "" {
		o.OTLPEndpoint = "http://127.0.0.1:4318"
	}
	tel, err := setup(t.Context(), o, deps{
		exporter: exp,
		random:   rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)).Float64,
		getenv:   func(string) string { return "" },
	})
	if err != nil {
		t.Fatalf("setup: %v", err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	return tel, exp, &buf
}

type dialError struct{ addr string }

func (e *dialError) Error() string { return "connect to " + e.addr + " refused" }

func TestErrorExportedAsException(t *testing.T) {
	tel, exp, _ := setupExport(t, Options{Component: "gateway"}, 1)
	root := &dialError{addr: "198.51.100.7:443"}
	err := fmt.Errorf("join portal: %w", fmt.Errorf("dial: %w", root))
	tel.Logger.Info("starting", "version", "1.2.3")
	tel.Logger.Error("portal unreachable", Err(err), "attempt", 3)

	rs := exp.all()
	if len(rs) != 1 {
		t.Fatalf("exported %d records, want 1", len(rs))
	}
	r := rs[0]
	if r.Severity() != otellog.SeverityError {
		t.Errorf("severity %v, want ERROR", r.Severity())
	}
	if got := r.Body().AsString(); got != "portal unreachable" {
		t.Errorf("body %q", got)
	}
	a := attrs(r)
	if got := a["exception.type"].AsString(); got != "*telemetry.dialError" {
		t.Errorf("exception.type %q, want *telemetry.dialError", got)
	}
	if got := a["exception.message"].AsString(); got != err.Error() {
		t.Errorf("exception.message %q", got)
	}
	wantChain := []string{err.Error(), "dial: connect to 198.51.100.7:443 refused", "connect to 198.51.100.7:443 refused"}
	if got := a["exception.chain"].AsStringSlice(); !slices.Equal(got, wantChain) {
		t.Errorf("exception.chain %q, want %q", got, wantChain)
	}
	if got := a["attempt"].AsInt64(); got != 3 {
		t.Errorf("attempt %d", got)
	}
	if got := a["component"].AsString(); got != "gateway" {
		t.Errorf("component %q", got)
	}
	if got := a["code.file.path"].AsString(); !strings.HasSuffix(got, "export_test.go") {
		t.Errorf("code.file.path %q, want the caller's file", got)
	}
	bc := a["breadcrumbs"].AsStringSlice()
	if len(bc) != 1 || !strings.Contains(bc[0], "INFO gateway: starting version=1.2.3") {
		t.Errorf("breadcrumbs %q", bc)
	}

	// Breadcrumbs go with one event only.
	tel.Logger.Warn("second")
	if a := attrs(exp.all()[1]); a["breadcrumbs"].Type() != attribute.EMPTY {
		t.Errorf("breadcrumbs re-sent: %v", a["breadcrumbs"].String())
	}
}

func TestWarnExportedAsMessage(t *testing.T) {
	tel, exp, _ := setupExport(t, Options{Component: "relay", LogLevel: "error"}, 1)
	tel.Logger.Warn("peer refused", "peer", "203.0.113.9")
	tel.Logger.Debug("not exported")
	rs := exp.all()
	if len(rs) != 1 {
		t.Fatalf("exported %d records, want 1", len(rs))
	}
	a := attrs(rs[0])
	if rs[0].Severity() != otellog.SeverityWarn || rs[0].Body().AsString() != "peer refused" {
		t.Errorf("got severity %v body %q", rs[0].Severity(), rs[0].Body().AsString())
	}
	if _, ok := a["exception.type"]; ok {
		t.Error("a warning carries exception.type")
	}
	if a["peer"].AsString() != "203.0.113.9" {
		t.Errorf("peer %q", a["peer"].AsString())
	}
}

// TestWarningCarriesErrorChain: a warning (a WARN record, or an ERROR whose error is marked as a warning) is
// exported with the chain of its error value, also when the error was logged as a plain "error" attribute
// rather than with Err, and without the chain being repeated when Err already wrote it.
func TestWarningCarriesErrorChain(t *testing.T) {
	tel, exp, _ := setupExport(t, Options{Component: "client"}, 1)
	inner := errors.New("no route")
	tel.Logger.Warn("dial failed", "error", fmt.Errorf("dial: %w", inner))
	tel.Logger.Error("token refused", "error", AsWarning(fmt.Errorf("connect: %w", inner)))
	tel.Logger.Warn("with Err", Err(fmt.Errorf("dial: %w", inner)))
	rs := exp.all()
	if len(rs) != 3 {
		t.Fatalf("exported %d records, want 3", len(rs))
	}
	want := [][]string{{"dial: no route", "no route"}, {"connect: no route", "no route"}, {"dial: no route", "no route"}}
	for i, r := range rs {
		if r.Severity() != otellog.SeverityWarn {
			t.Errorf("record %d: severity %v, want WARN", i, r.Severity())
		}
		n := 0
		r.WalkAttributes(func(kv attribute.KeyValue) bool {
			if kv.Key == KeyErrorChain {
				n++
				if got := kv.Value.AsStringSlice(); !slices.Equal(got, want[i]) {
					t.Errorf("record %d: error.chain %q, want %q", i, got, want[i])
				}
			}
			return true
		})
		if n != 1 {
			t.Errorf("record %d: %d error.chain attributes, want 1", i, n)
		}
	}
}

func TestBreadcrumbRingIsBounded(t *testing.T) {
	tel, exp, _ := setupExport(t, Options{}, 1)
	for i := range 3 * breadcrumbCap {
		tel.Logger.Info("step", "i", i)
	}
	tel.Logger.Warn("odd")
	bc := attrs(exp.all()[0])["breadcrumbs"].AsStringSlice()
	if len(bc) != breadcrumbCap {
		t.Fatalf("%d breadcrumbs, want %d", len(bc), breadcrumbCap)
	}
	if !strings.HasSuffix(bc[0], fmt.Sprintf("i=%d", 2*breadcrumbCap)) || !strings.HasSuffix(bc[len(bc)-1], fmt.Sprintf("i=%d", 3*breadcrumbCap-1)) {
		t.Errorf("breadcrumbs not the latest, oldest first: first %q last %q", bc[0], bc[len(bc)-1])
	}
}

var errUnauthorized = errors.New("portal: 401 unauthorized")

type unauthorizedError struct{}

func (unauthorizedError) Error() string          { return "HTTP 401" }
func (unauthorizedError) TelemetryWarning() bool { return true }

func TestUnauthorizedExportedAsWarning(t *testing.T) {
	tel, exp, _ := setupExport(t, Options{Component: "client", WarningErrors: []error{errUnauthorized}}, 1)
	cases := []error{
		fmt.Errorf("connect: %w", errUnauthorized),            // sentinel from Options.WarningErrors
		AsWarning(fmt.Errorf("connect: %w", errors.New("x"))), // explicit marker
		fmt.Errorf("connect: %w", unauthorizedError{}),        // error type implementing TelemetryWarning
	}
	for _, err := range cases {
		tel.Logger.Error("portal rejected the token", Err(err))
	}
	tel.Logger.Error("real bug", Err(errors.New("boom")))
	rs := exp.all()
	if len(rs) != len(cases)+1 {
		t.Fatalf("exported %d records, want %d", len(rs), len(cases)+1)
	}
	for i, r := range rs[:len(cases)] {
		if r.Severity() != otellog.SeverityWarn {
			t.Errorf("case %d: severity %v, want WARN", i, r.Severity())
		}
		if _, ok := attrs(r)["exception.type"]; ok {
			t.Errorf("case %d: exported as exception", i)
		}
	}
	if rs[len(cases)].Severity() != otellog.SeverityError {
		t.Errorf("unmarked error: severity %v, want ERROR", rs[len(cases)].Severity())
	}
	if got := AsWarning(errUnauthorized); !errors.Is(got, errUnauthorized) || got.Error() != errUnauthorized.Error() {
		t.Errorf("AsWarning changes the error: %v", got)
	}
}

func TestTelemetryTargetSampled(t *testing.T) {
	const n = 100_000
	for _, seed := range []uint64{1, 2, 3} {
		tel, exp, out := setupExport(t, Options{Component: "client"}, seed)
		tl := Component(tel.Logger, TargetTelemetry)
		for i := range n {
			tl.Log(t.Context(), LevelTrace, "unknown DNS query type", "i", i)
		}
		rs := exp.all()
		// Binomial(n, 0.01): mean 1000, sd ≈ 31.5; accept ±5 sd (false failure probability < 1e-6).
		mean := n * TelemetrySampleRate
		sd := math.Sqrt(n * TelemetrySampleRate * (1 - TelemetrySampleRate))
		if d := math.Abs(float64(len(rs)) - mean); d > 5*sd {
			t.Errorf("seed %d: %d of %d exported, want %.0f ± %.0f", seed, len(rs), n, mean, 5*sd)
		}
		for _, r := range rs {
			if r.Severity() != otellog.SeverityInfo || r.Body().AsString() != "unknown DNS query type" {
				t.Fatalf("sampled record severity %v body %q", r.Severity(), r.Body().AsString())
			}
			if a := attrs(r); a["sample_rate"].AsFloat64() != TelemetrySampleRate || a["component"].AsString() != TargetTelemetry {
				t.Fatalf("sampled record attributes %v", a)
			}
		}
		if out.Len() != 0 {
			t.Errorf("trace events written at level info: %q", out.String()[:min(out.Len(), 200)])
		}
		t.Logf("seed %d: %d/%d exported", seed, len(rs), n)
	}
}

func TestTelemetryTargetDebugNotSampled(t *testing.T) {
	tel, exp, _ := setupExport(t, Options{}, 1)
	tl := Component(tel.Logger, TargetTelemetry)
	for range 1000 {
		tl.Debug("debug is not the sampled level")
	}
	if n := len(exp.all()); n != 0 {
		t.Errorf("exported %d debug events of the telemetry target", n)
	}
}

func TestNothingExportedWithoutEndpoint(t *testing.T) {
	exp := &memExporter{}
	var buf bytes.Buffer
	tel, err := setup(t.Context(), Options{Output: &buf, LogLevel: "trace"}, deps{exporter: exp, getenv: func(string) string { return "" }})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	if tel.logs != nil {
		t.Error("log provider created without an endpoint")
	}
	tl := Component(tel.Logger, TargetTelemetry)
	for range 1000 {
		tl.Log(t.Context(), LevelTrace, "odd")
	}
	tel.Logger.Warn("w")
	tel.Logger.Error("e", Err(errors.New("x")))
	if n := len(exp.all()); n != 0 {
		t.Errorf("exported %d records without an endpoint", n)
	}
	if !strings.Contains(buf.String(), "ERROR e error=x") {
		t.Errorf("logs not written: %q", buf.String())
	}
}

func TestEndpointFromEnvironment(t *testing.T) {
	exp := &memExporter{}
	env := map[string]string{EnvOTLPEndpoint: "http://127.0.0.1:4318"}
	tel, err := setup(t.Context(), Options{Output: &bytes.Buffer{}}, deps{exporter: exp, getenv: func(k string) string { return env[k] }})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	tel.Logger.Warn("w")
	if n := len(exp.all()); n != 1 {
		t.Errorf("exported %d records with %s set, want 1", n, EnvOTLPEndpoint)
	}
}

// TestOTLPExportOverHTTP drives the real OTLP/HTTP exporter against a loopback collector and decodes what
// it receives.
func TestOTLPExportOverHTTP(t *testing.T) {
	type got struct {
		path string
		req  *collogs.ExportLogsServiceRequest
	}
	reqs := make(chan got, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(bytes.NewReader(body))
			if err == nil {
				body, _ = io.ReadAll(zr)
			}
		}
		var req collogs.ExportLogsServiceRequest
		if err := proto.Unmarshal(body, &req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		reqs <- got{r.URL.Path, &req}
		w.Header().Set("Content-Type", "application/x-protobuf")
		b, _ := proto.Marshal(&collogs.ExportLogsServiceResponse{})
		_, _ = w.Write(b)
	}))
	defer srv.Close()

	tel, err := Setup(t.Context(), Options{Component: "relay", Output: io.Discard, OTLPEndpoint: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	tel.Logger.Error("allocation failed", Err(fmt.Errorf("allocate: %w", &dialError{addr: "192.0.2.1:3478"})))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tel.Shutdown(ctx); err != nil { // flushes the batch
		t.Fatalf("shutdown: %v", err)
	}
	var g got
	select {
	case g = <-reqs:
	default:
		t.Fatal("collector received nothing")
	}
	if g.path != "/v1/logs" {
		t.Errorf("path %q, want /v1/logs", g.path)
	}
	rl := g.req.GetResourceLogs()
	if len(rl) != 1 || len(rl[0].GetScopeLogs()) != 1 || len(rl[0].GetScopeLogs()[0].GetLogRecords()) != 1 {
		t.Fatalf("unexpected request shape: %v", g.req)
	}
	var service string
	for _, kv := range rl[0].GetResource().GetAttributes() {
		if kv.GetKey() == "service.name" {
			service = kv.GetValue().GetStringValue()
		}
	}
	if service != "snowgate-relay" {
		t.Errorf("service.name %q", service)
	}
	lr := rl[0].GetScopeLogs()[0].GetLogRecords()[0]
	if lr.GetBody().GetStringValue() != "allocation failed" || lr.GetSeverityText() != "ERROR" {
		t.Errorf("record body %q severity %q", lr.GetBody().GetStringValue(), lr.GetSeverityText())
	}
	var typ string
	for _, kv := range lr.GetAttributes() {
		if kv.GetKey() == "exception.type" {
			typ = kv.GetValue().GetStringValue()
		}
	}
	if typ != "*telemetry.dialError" {
		t.Errorf("exception.type %q", typ)
	}
	if _, err := Setup(t.Context(), Options{OTLPEndpoint: "not a url"}); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("bad endpoint: %v, want ErrInvalidOptions", err)
	}
}

func TestExportRedactsSecrets(t *testing.T) {
	tel, exp, _ := setupExport(t, Options{}, 1)
	tel.Logger.Info("joined", "token", "tok-SECRET-1")
	tel.Logger.Error("auth failed", "password", "pw-SECRET-2", Err(fmt.Errorf("GET /socket?token=tok-SECRET-3: %w", errors.New("401"))))
	for _, r := range exp.all() {
		var sb strings.Builder
		sb.WriteString(r.Body().String())
		r.WalkAttributes(func(kv attribute.KeyValue) bool {
			sb.WriteString(" " + string(kv.Key) + "=" + kv.Value.String())
			return true
		})
		if s := sb.String(); strings.Contains(s, "SECRET") {
			t.Errorf("secret exported: %s", s)
		}
	}
}

var _ slog.Handler = (*handler)(nil)
