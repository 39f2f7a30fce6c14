package telemetry

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	otellog "go.opentelemetry.io/otel/log"
)

// Error-telemetry tuning.
const (
	// TelemetrySampleRate is the fraction of TargetTelemetry events at LevelTrace (or below) exported.
	TelemetrySampleRate = 0.01
	// breadcrumbCap bounds the INFO breadcrumbs kept for the next exported event.
	breadcrumbCap = 50
)

// Attribute keys of exported events besides the exception.* semantic conventions.
const (
	keyExceptionType    = "exception.type"
	keyExceptionMessage = "exception.message"
	keyExceptionChain   = "exception.chain"
	keyBreadcrumbs      = "breadcrumbs"
	keySampleRate       = "sample_rate"
)

// exporter turns log records into OpenTelemetry log events (see the package doc for the mapping).
type exporter struct {
	logger   otellog.Logger
	warnErrs []error

	mu     sync.Mutex
	random func() float64 // guarded by mu; uniform in [0,1)
	crumbs []string       // ring of rendered INFO lines, guarded by mu
	next   int            // next slot in crumbs once full
}

func newExporter(l otellog.Logger, random func() float64, warnErrs []error) *exporter {
	return &exporter{logger: l, random: random, warnErrs: warnErrs}
}

// handle classifies one record (already past the handler's Enabled check).
func (e *exporter) handle(ctx context.Context, component string, r slog.Record, msg string, fs []field, err error) {
	switch {
	case component == TargetTelemetry && r.Level <= LevelTrace:
		e.mu.Lock()
		keep := e.random() < TelemetrySampleRate
		e.mu.Unlock()
		if keep {
			e.emit(ctx, component, r, msg, fs, otellog.SeverityInfo, nil, attribute.Float64(keySampleRate, TelemetrySampleRate))
		}
	case r.Level >= slog.LevelError:
		if err != nil && isWarning(err, e.warnErrs) {
			e.emit(ctx, component, r, msg, fs, otellog.SeverityWarn, chainAttr(fs, err))
			return
		}
		e.emit(ctx, component, r, msg, fs, otellog.SeverityError, exceptionAttrs(msg, err))
	case r.Level >= slog.LevelWarn:
		e.emit(ctx, component, r, msg, fs, otellog.SeverityWarn, chainAttr(fs, err))
	case r.Level >= slog.LevelInfo:
		line := string(appendHuman(nil, component, r.Time, r.Level, msg, fs))
		line = line[:len(line)-1]
		e.mu.Lock()
		if len(e.crumbs) < breadcrumbCap {
			e.crumbs = append(e.crumbs, line)
		} else {
			e.crumbs[e.next] = line
			e.next = (e.next + 1) % breadcrumbCap
		}
		e.mu.Unlock()
	}
}

// chainAttr gives a warning the error.chain of its error value when the record does not carry one already
// (an error logged as a plain attribute rather than with Err), so that warnings keep the chain too.
func chainAttr(fs []field, err error) []attribute.KeyValue {
	if err == nil {
		return nil
	}
	for _, f := range fs {
		if f.key == KeyErrorChain {
			return nil
		}
	}
	chain := errorChain(err)
	for i := range chain {
		chain[i] = scrubText(chain[i])
	}
	return []attribute.KeyValue{attribute.StringSlice(KeyErrorChain, chain)}
}

// exceptionAttrs describes err (or, without an error, the message) with the exception semantic conventions.
func exceptionAttrs(msg string, err error) []attribute.KeyValue {
	if err == nil {
		return []attribute.KeyValue{
			attribute.String(keyExceptionType, "error"),
			attribute.String(keyExceptionMessage, msg),
		}
	}
	chain := errorChain(err)
	for i := range chain {
		chain[i] = scrubText(chain[i])
	}
	return []attribute.KeyValue{
		attribute.String(keyExceptionType, errorType(err)),
		attribute.String(keyExceptionMessage, scrubText(err.Error())),
		attribute.StringSlice(keyExceptionChain, chain),
	}
}

// takeBreadcrumbs returns the buffered INFO lines, oldest first, and empties the buffer.
func (e *exporter) takeBreadcrumbs() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.crumbs) == 0 {
		return nil
	}
	out := make([]string, 0, len(e.crumbs))
	out = append(out, e.crumbs[e.next:]...)
	out = append(out, e.crumbs[:e.next]...)
	e.crumbs, e.next = nil, 0
	return out
}

func (e *exporter) emit(ctx context.Context, component string, r slog.Record, msg string, fs []field,
	sev otellog.Severity, extra []attribute.KeyValue, more ...attribute.KeyValue) {
	var rec otellog.Record
	ts := r.Time
	if ts.IsZero() {
		ts = time.Now()
	}
	rec.SetTimestamp(ts)
	rec.SetObservedTimestamp(time.Now())
	rec.SetSeverity(sev)
	rec.SetSeverityText(severityText(sev))
	rec.SetBody(attribute.StringValue(msg))
	attrs := make([]attribute.KeyValue, 0, len(fs)+len(extra)+len(more)+6)
	attrs = append(attrs, attribute.String(KeyComponent, component))
	attrs = append(attrs, attribute.String("log.level", levelName(r.Level)))
	if r.PC != 0 {
		fr, _ := runtime.CallersFrames([]uintptr{r.PC}).Next()
		attrs = append(attrs,
			attribute.String("code.function.name", fr.Function),
			attribute.String("code.file.path", fr.File),
			attribute.Int("code.line.number", fr.Line))
	}
	for _, f := range fs {
		attrs = append(attrs, otelAttr(f))
	}
	attrs = append(attrs, extra...)
	attrs = append(attrs, more...)
	if bc := e.takeBreadcrumbs(); bc != nil {
		attrs = append(attrs, attribute.StringSlice(keyBreadcrumbs, bc))
	}
	rec.AddAttributes(attrs...)
	e.logger.Emit(ctx, rec)
}

func severityText(s otellog.Severity) string {
	switch s {
	case otellog.SeverityError:
		return "ERROR"
	case otellog.SeverityWarn:
		return "WARN"
	case otellog.SeverityInfo:
		return "INFO"
	}
	return s.String()
}

// otelAttr converts one (already redacted) field to an OpenTelemetry attribute.
func otelAttr(f field) attribute.KeyValue {
	v := f.val
	switch v.Kind() {
	case slog.KindString:
		return attribute.String(f.key, scrubText(v.String()))
	case slog.KindInt64:
		return attribute.Int64(f.key, v.Int64())
	case slog.KindUint64:
		return attribute.Int64(f.key, int64(v.Uint64()))
	case slog.KindFloat64:
		return attribute.Float64(f.key, v.Float64())
	case slog.KindBool:
		return attribute.Bool(f.key, v.Bool())
	case slog.KindDuration:
		return attribute.String(f.key, v.Duration().String())
	case slog.KindTime:
		return attribute.String(f.key, v.Time().UTC().Format(time.RFC3339Nano))
	}
	switch x := v.Any().(type) {
	case error:
		return attribute.String(f.key, scrubText(x.Error()))
	case []string:
		s := make([]string, len(x))
		for i := range x {
			s[i] = scrubText(x[i])
		}
		return attribute.StringSlice(f.key, s)
	case fmt.Stringer:
		return attribute.String(f.key, scrubText(x.String()))
	}
	return attribute.String(f.key, scrubText(fmt.Sprintf("%+v", v.Any())))
}
