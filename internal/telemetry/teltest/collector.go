package teltest

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	collogs "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/protobuf/proto"

	"github.com/snowgate/snowgate/internal/telemetry"
)

// Record is one log record as an OTLP collector received it.
type Record struct {
	// Severity is the severity text ("ERROR", "WARN", "INFO").
	Severity string
	// Body is the log message.
	Body string
	// Attrs holds the attributes: string, int64, float64 and bool values as such, string slices as []string.
	Attrs map[string]any
}

// Collector is an OTLP/HTTP log collector on loopback that decodes what error telemetry exports to it.
type Collector struct {
	// URL is the endpoint to put into telemetry.Options.OTLPEndpoint.
	URL string

	mu      sync.Mutex
	records []Record
}

// NewCollector starts a Collector; it stops at the test's cleanup.
func NewCollector(tb testing.TB) *Collector {
	tb.Helper()
	c := &Collector{}
	srv := httptest.NewServer(http.HandlerFunc(c.serve))
	tb.Cleanup(srv.Close)
	c.URL = srv.URL
	return c
}

func (c *Collector) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err == nil && r.Header.Get("Content-Encoding") == "gzip" {
		var zr *gzip.Reader
		if zr, err = gzip.NewReader(bytes.NewReader(body)); err == nil {
			body, err = io.ReadAll(zr)
		}
	}
	var req collogs.ExportLogsServiceRequest
	if err == nil {
		err = proto.Unmarshal(body, &req)
	}
	if err != nil {
		http.Error(w, "bad OTLP request", http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	for _, rl := range req.GetResourceLogs() {
		for _, sl := range rl.GetScopeLogs() {
			for _, lr := range sl.GetLogRecords() {
				rec := Record{Severity: lr.GetSeverityText(), Body: lr.GetBody().GetStringValue(), Attrs: map[string]any{}}
				for _, kv := range lr.GetAttributes() {
					rec.Attrs[kv.GetKey()] = anyValue(kv.GetValue())
				}
				c.records = append(c.records, rec)
			}
		}
	}
	c.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-protobuf")
	b, _ := proto.Marshal(&collogs.ExportLogsServiceResponse{})
	_, _ = w.Write(b)
}

func anyValue(v *commonpb.AnyValue) any {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return x.IntValue
	case *commonpb.AnyValue_DoubleValue:
		return x.DoubleValue
	case *commonpb.AnyValue_BoolValue:
		return x.BoolValue
	case *commonpb.AnyValue_ArrayValue:
		var out []string
		for _, e := range x.ArrayValue.GetValues() {
			out = append(out, e.GetStringValue())
		}
		return out
	}
	return nil
}

// Records returns what the collector received so far, in order.
func (c *Collector) Records() []Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.records)
}

// SetupExport is Setup with error telemetry on: records go through the real OTLP/HTTP exporter to a new
// Collector. Exported records are batched: call Flush before reading the Collector.
func SetupExport(tb testing.TB, o telemetry.Options) (*telemetry.Telemetry, *Buffer, *Collector) {
	tb.Helper()
	if t, ok := tb.(*testing.T); ok {
		t.Setenv(telemetry.EnvOTLPEndpoint, "")
		t.Setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "")
	}
	c := NewCollector(tb)
	buf := &Buffer{}
	o.Output = buf
	o.OTLPEndpoint = c.URL
	if o.LogLevel == "" {
		o.LogLevel = "trace"
	}
	tel, err := telemetry.Setup(context.Background(), o)
	if err != nil {
		tb.Fatalf("telemetry.Setup: %v", err)
	}
	tb.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	return tel, buf, c
}

// Flush shuts tel down, which sends every exported record still batched to the collector; log nothing
// through tel afterwards.
func Flush(tb testing.TB, tel *telemetry.Telemetry) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tel.Shutdown(ctx); err != nil {
		tb.Fatalf("flushing telemetry: %v", err)
	}
}
