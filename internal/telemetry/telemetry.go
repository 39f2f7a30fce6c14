package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploghttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
)

// TargetTelemetry is the component whose events at LevelTrace are sampled (TelemetrySampleRate) and
// exported as messages: log to Component(l, TargetTelemetry) at LevelTrace to count how often something odd
// happens without filling disks.
const TargetTelemetry = "telemetry"

// EnvOTLPEndpoint is the environment variable read when Options.OTLPEndpoint is empty.
const EnvOTLPEndpoint = "OTEL_EXPORTER_OTLP_ENDPOINT"

// envOTLPLogsEndpoint is the signal-specific variant, honoured as well.
const envOTLPLogsEndpoint = "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"

// Options configure Setup.
type Options struct {
	// Component is the daemon name ("relay", "portal", "client", "gateway", "devstack"): the component of
	// Telemetry.Logger and the service name of exported telemetry.
	Component string
	// LogLevel holds level directives: "info,node=debug,client/dns=trace" ("" → info). See ParseDirectives.
	LogLevel string
	// LogFormat is "human" (default) or "json".
	LogFormat string
	// Output receives the log lines; nil → os.Stderr.
	Output io.Writer
	// OTLPEndpoint is the OTLP/HTTP base URL for error telemetry ("http://collector:4318"); "" → the
	// OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_LOGS_ENDPOINT) environment variable; still "" → no
	// error telemetry export.
	OTLPEndpoint string
	// WarningErrors are sentinel errors (matched with errors.Is) that error telemetry reports as warnings
	// instead of exceptions when logged at ERROR, e.g. phoenix.ErrUnauthorized (a 401 from the portal).
	WarningErrors []error
}

// Telemetry holds the logger and metrics plumbing made by Setup.
type Telemetry struct {
	// Logger writes to Options.Output with the level directives applied, redacts secrets and feeds error
	// telemetry when it is enabled.
	Logger *slog.Logger
	// MeterProvider is backed by the otel SDK and a Prometheus exporter on a dedicated registry.
	MeterProvider metric.MeterProvider
	// MetricsHandler serves the Prometheus text format (mount it on METRICS_ADDR or HEALTH_CHECK_ADDR at
	// /metrics).
	MetricsHandler http.Handler

	meters *sdkmetric.MeterProvider
	logs   *sdklog.LoggerProvider // nil when error telemetry is off
}

// ErrInvalidOptions is returned (wrapped) by Setup for an unknown LogFormat or a bad OTLP endpoint.
var ErrInvalidOptions = errors.New("invalid telemetry options")

// deps are internal seams for tests.
type deps struct {
	exporter sdklog.Exporter // replaces the OTLP exporter (only used when an endpoint is configured)
	random   func() float64  // sampling source; must be uniform in [0,1)
	getenv   func(string) string
}

// Setup builds the logger, the meter provider with its Prometheus handler, and (when an OTLP endpoint is
// configured) error telemetry. Call Shutdown when done to flush exported events.
func Setup(ctx context.Context, o Options) (*Telemetry, error) {
	return setup(ctx, o, deps{})
}

func setup(ctx context.Context, o Options, d deps) (*Telemetry, error) {
	if d.getenv == nil {
		d.getenv = os.Getenv
	}
	if d.random == nil {
		d.random = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())).Float64
	}
	levels, err := ParseDirectives(o.LogLevel)
	if err != nil {
		return nil, fmt.Errorf("telemetry: log level %q: %w", o.LogLevel, err)
	}
	s := &sink{w: o.Output, levels: levels}
	if s.w == nil {
		s.w = os.Stderr
	}
	switch strings.ToLower(o.LogFormat) {
	case "", FormatHuman:
	case FormatJSON:
		s.json = true
	default:
		return nil, fmt.Errorf("telemetry: %w: log format %q (want human or json)", ErrInvalidOptions, o.LogFormat)
	}

	t := &Telemetry{}
	res := resource.NewSchemaless(attribute.String("service.name", serviceName(o.Component)))

	endpoint := o.OTLPEndpoint
	if endpoint == "" {
		endpoint = d.getenv(envOTLPLogsEndpoint)
	}
	if endpoint == "" {
		endpoint = d.getenv(EnvOTLPEndpoint)
	}
	if endpoint != "" {
		var proc sdklog.Processor
		if d.exporter != nil {
			proc = sdklog.NewSimpleProcessor(d.exporter)
		} else {
			u, err := otlpURL(endpoint)
			if err != nil {
				return nil, err
			}
			exp, err := otlploghttp.New(ctx, otlploghttp.WithEndpointURL(u))
			if err != nil {
				return nil, fmt.Errorf("telemetry: OTLP log exporter: %w", err)
			}
			proc = sdklog.NewBatchProcessor(exp)
		}
		t.logs = sdklog.NewLoggerProvider(sdklog.WithResource(res), sdklog.WithProcessor(proc))
		s.export = newExporter(t.logs.Logger("github.com/snowgate/snowgate/internal/telemetry"), d.random, o.WarningErrors)
	}
	t.Logger = slog.New(newHandler(s, o.Component))

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	pexp, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo())
	if err != nil {
		_ = t.shutdownLogs(ctx)
		return nil, fmt.Errorf("telemetry: prometheus exporter: %w", err)
	}
	t.meters = sdkmetric.NewMeterProvider(sdkmetric.WithReader(pexp), sdkmetric.WithResource(res))
	t.MeterProvider = t.meters
	t.MetricsHandler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	return t, nil
}

func serviceName(component string) string {
	if component == "" {
		return "snowgate"
	}
	return "snowgate-" + component
}

// otlpURL turns a base endpoint ("http://host:4318") into the logs URL ("http://host:4318/v1/logs"); a URL
// with a path is used as is.
func otlpURL(endpoint string) (string, error) {
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return "", fmt.Errorf("telemetry: %w: OTLP endpoint %q is not an http(s) URL", ErrInvalidOptions, endpoint)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/v1/logs"
	}
	return u.String(), nil
}

// Shutdown flushes and stops error telemetry and the meter provider. It is safe to call more than once.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	err := t.shutdownLogs(ctx)
	if t.meters != nil {
		if e := t.meters.Shutdown(ctx); e != nil && !errors.Is(e, sdkmetric.ErrReaderShutdown) {
			err = errors.Join(err, fmt.Errorf("telemetry: meter provider shutdown: %w", e))
		}
	}
	return err
}

func (t *Telemetry) shutdownLogs(ctx context.Context) error {
	if t.logs == nil {
		return nil
	}
	if err := t.logs.Shutdown(ctx); err != nil {
		return fmt.Errorf("telemetry: log provider shutdown: %w", err)
	}
	return nil
}
