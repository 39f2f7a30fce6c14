package telemetry

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// Log formats accepted in Options.LogFormat.
const (
	FormatHuman = "human"
	FormatJSON  = "json"
)

// KeyComponent is the JSON key of the component ("node", "client/dns").
const KeyComponent = "component"

// sink is the state shared by a handler and all handlers derived from it.
type sink struct {
	mu     sync.Mutex // serialises writes to w
	w      io.Writer
	json   bool
	levels Directives
	export *exporter // nil: error telemetry off
}

// handler is the slog.Handler behind every logger made by this package. Derived handlers (WithAttrs,
// WithGroup, Component) share the sink.
type handler struct {
	s         *sink
	component string
	min       slog.Level // lowest level worth handling (log or export)
	logMin    slog.Level // lowest level written to the output
	goas      []groupOrAttrs
}

// groupOrAttrs is one WithGroup or WithAttrs step.
type groupOrAttrs struct {
	group string
	attrs []slog.Attr
}

func newHandler(s *sink, component string) *handler {
	h := &handler{s: s}
	h.setComponent(component)
	return h
}

func (h *handler) setComponent(c string) {
	h.component = strings.Trim(c, "/")
	h.logMin = h.s.levels.Level(h.component)
	h.min = h.logMin
	if h.s.export != nil {
		em := slog.LevelInfo
		if h.component == TargetTelemetry {
			em = slog.Level(-1 << 30) // every level of the telemetry target reaches the exporter
		}
		h.min = min(h.min, em)
	}
}

// Enabled implements slog.Handler.
func (h *handler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.min }

// WithAttrs implements slog.Handler.
func (h *handler) WithAttrs(as []slog.Attr) slog.Handler {
	if len(as) == 0 {
		return h
	}
	h2 := *h
	h2.goas = append(h.goas[:len(h.goas):len(h.goas)], groupOrAttrs{attrs: as})
	return &h2
}

// WithGroup implements slog.Handler.
func (h *handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	h2 := *h
	h2.goas = append(h.goas[:len(h.goas):len(h.goas)], groupOrAttrs{group: name})
	return &h2
}

func (h *handler) withComponent(name string) *handler {
	h2 := *h
	h2.setComponent(name)
	return &h2
}

// field is one flattened, redacted attribute.
type field struct {
	key string
	val slog.Value
}

// fields flattens the handler's attributes and the record's into dotted keys, resolving LogValuers and
// redacting secrets. The first error value found is returned as well.
func (h *handler) fields(r slog.Record) ([]field, error) {
	var out []field
	var firstErr error
	var add func(prefix string, a slog.Attr)
	add = func(prefix string, a slog.Attr) {
		a.Value = a.Value.Resolve()
		key := a.Key
		if prefix != "" && key != "" {
			key = prefix + "." + key
		} else if key == "" {
			key = prefix
		}
		if a.Value.Kind() == slog.KindGroup {
			if key != "" && isSecretKey(key) {
				out = append(out, field{key, slog.StringValue(Redacted)})
				return
			}
			for _, g := range a.Value.Group() {
				add(key, g)
			}
			return
		}
		if key == "" {
			return
		}
		if key != "" && isSecretKey(key) {
			out = append(out, field{key, slog.StringValue(Redacted)})
			return
		}
		if e, ok := a.Value.Any().(error); ok && a.Value.Kind() == slog.KindAny && firstErr == nil {
			firstErr = e
		}
		out = append(out, field{key, a.Value})
	}
	prefix := ""
	for _, g := range h.goas {
		if g.group != "" {
			if prefix == "" {
				prefix = g.group
			} else {
				prefix += "." + g.group
			}
			continue
		}
		for _, a := range g.attrs {
			add(prefix, a)
		}
	}
	r.Attrs(func(a slog.Attr) bool {
		add(prefix, a)
		return true
	})
	return out, firstErr
}

// Handle implements slog.Handler.
func (h *handler) Handle(ctx context.Context, r slog.Record) error {
	fs, err := h.fields(r)
	msg := scrubText(r.Message)
	if h.s.export != nil {
		h.s.export.handle(ctx, h.component, r, msg, fs, err)
	}
	if r.Level < h.logMin {
		return nil
	}
	buf := make([]byte, 0, 256)
	if h.s.json {
		buf = appendJSON(buf, h.component, r, msg, fs)
	} else {
		buf = appendHuman(buf, h.component, r.Time, r.Level, msg, fs)
	}
	h.s.mu.Lock()
	defer h.s.mu.Unlock()
	_, werr := h.s.w.Write(buf)
	return werr
}

const timeFormat = "2006-01-02T15:04:05.000Z07:00"

// appendHuman renders `2026-11-27T10:00:00.000Z INFO node: message k=v k2="v 2"`.
func appendHuman(buf []byte, component string, t time.Time, l slog.Level, msg string, fs []field) []byte {
	if !t.IsZero() {
		buf = t.UTC().AppendFormat(buf, timeFormat)
		buf = append(buf, ' ')
	}
	buf = append(buf, levelName(l)...)
	buf = append(buf, ' ')
	if component != "" {
		buf = append(buf, component...)
		buf = append(buf, ": "...)
	}
	buf = append(buf, msg...)
	for _, f := range fs {
		buf = append(buf, ' ')
		buf = append(buf, f.key...)
		buf = append(buf, '=')
		buf = appendHumanValue(buf, f.val)
	}
	return append(buf, '\n')
}

func appendHumanValue(buf []byte, v slog.Value) []byte {
	switch v.Kind() {
	case slog.KindString:
		return appendMaybeQuoted(buf, scrubText(v.String()))
	case slog.KindTime:
		return v.Time().UTC().AppendFormat(buf, timeFormat)
	case slog.KindDuration, slog.KindInt64, slog.KindUint64, slog.KindFloat64, slog.KindBool:
		return append(buf, v.String()...)
	}
	switch x := v.Any().(type) {
	case error:
		return appendMaybeQuoted(buf, scrubText(x.Error()))
	case []string:
		buf = append(buf, '[')
		for i, s := range x {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = strconv.AppendQuote(buf, scrubText(s))
		}
		return append(buf, ']')
	case fmt.Stringer:
		return appendMaybeQuoted(buf, scrubText(x.String()))
	}
	return appendMaybeQuoted(buf, scrubText(fmt.Sprintf("%+v", v.Any())))
}

func appendMaybeQuoted(buf []byte, s string) []byte {
	if needsQuote(s) {
		return strconv.AppendQuote(buf, s)
	}
	return append(buf, s...)
}

func needsQuote(s string) bool {
	if s == "" {
		return true
	}
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if b <= ' ' || b == '=' || b == '"' || b == '\\' || b == 0x7f {
				return true
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError || unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return true
		}
		i += size
	}
	return false
}

// appendJSON renders one flat JSON object: time, level, component, msg, source, then the fields with
// dotted keys (groups are flattened).
func appendJSON(buf []byte, component string, r slog.Record, msg string, fs []field) []byte {
	buf = append(buf, '{')
	if !r.Time.IsZero() {
		buf = append(buf, `"time":`...)
		buf = strconv.AppendQuote(buf, r.Time.UTC().Format(time.RFC3339Nano))
		buf = append(buf, ',')
	}
	buf = append(buf, `"level":`...)
	buf = strconv.AppendQuote(buf, levelName(r.Level))
	if component != "" {
		buf = append(buf, `,"component":`...)
		buf = appendJSONString(buf, component)
	}
	buf = append(buf, `,"msg":`...)
	buf = appendJSONString(buf, msg)
	if src := source(r.PC); src != "" {
		buf = append(buf, `,"source":`...)
		buf = appendJSONString(buf, src)
	}
	for _, f := range fs {
		buf = append(buf, ',')
		buf = appendJSONString(buf, f.key)
		buf = append(buf, ':')
		buf = appendJSONValue(buf, f.val)
	}
	return append(buf, "}\n"...)
}

func appendJSONString(buf []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= utf8.RuneSelf || c == '"' || c == '\\' {
			b, _ := json.Marshal(s) // a string always marshals
			return append(buf, b...)
		}
	}
	buf = append(buf, '"')
	buf = append(buf, s...)
	return append(buf, '"')
}

func appendJSONValue(buf []byte, v slog.Value) []byte {
	switch v.Kind() {
	case slog.KindString:
		return appendJSONString(buf, scrubText(v.String()))
	case slog.KindInt64:
		return strconv.AppendInt(buf, v.Int64(), 10)
	case slog.KindUint64:
		return strconv.AppendUint(buf, v.Uint64(), 10)
	case slog.KindFloat64:
		b, err := json.Marshal(v.Float64())
		if err != nil { // NaN, Inf
			return appendJSONString(buf, v.String())
		}
		return append(buf, b...)
	case slog.KindBool:
		return strconv.AppendBool(buf, v.Bool())
	case slog.KindDuration:
		return appendJSONString(buf, v.Duration().String())
	case slog.KindTime:
		return appendJSONString(buf, v.Time().UTC().Format(time.RFC3339Nano))
	}
	switch x := v.Any().(type) {
	case error:
		return appendJSONString(buf, scrubText(x.Error()))
	case []string:
		buf = append(buf, '[')
		for i, s := range x {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = appendJSONString(buf, scrubText(s))
		}
		return append(buf, ']')
	case fmt.Stringer:
		return appendJSONString(buf, scrubText(x.String()))
	case json.Marshaler:
		if b, err := x.MarshalJSON(); err == nil && json.Valid(b) {
			return append(buf, b...)
		}
	}
	return appendJSONString(buf, scrubText(fmt.Sprintf("%+v", v.Any())))
}

// source returns "dir/file.go:line" for a record's PC, or "".
func source(pc uintptr) string {
	if pc == 0 {
		return ""
	}
	fr, _ := runtime.CallersFrames([]uintptr{pc}).Next()
	if fr.File == "" {
		return ""
	}
	return filepath.Base(filepath.Dir(fr.File)) + "/" + filepath.Base(fr.File) + ":" + strconv.Itoa(fr.Line)
}

// Component returns a logger for a sub-component whose level is set by the directive for name (see
// ParseDirectives). Names are absolute paths such as "node" or "client/dns", not relative to l's component.
// The component is printed before the message ("INFO node: …") and as "component" in JSON. For a logger not
// made by this package, it adds a "component" attribute instead.
func Component(l *slog.Logger, name string) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	if h, ok := l.Handler().(*handler); ok {
		return slog.New(h.withComponent(name))
	}
	return l.With(slog.String(KeyComponent, name))
}

// LogAt logs msg at level through l's handler with the call site pc (see CallerPC), so that a record written
// by a log adapter (pion, wireguard-go) carries its caller's position instead of the adapter's.
func LogAt(l *slog.Logger, pc uintptr, level slog.Level, msg string) {
	ctx := context.Background()
	h := l.Handler()
	if !h.Enabled(ctx, level) {
		return
	}
	r := slog.NewRecord(time.Now(), level, msg, pc)
	_ = h.Handle(ctx, r)
}

// CallerPC returns the PC of the caller skip frames above the function calling CallerPC
// (skip=0: the caller of the function that calls CallerPC), for LogAt.
func CallerPC(skip int) uintptr {
	var pcs [1]uintptr
	// runtime.Callers, CallerPC, the function calling CallerPC, then its caller.
	if runtime.Callers(3+skip, pcs[:]) == 0 {
		return 0
	}
	return pcs[0]
}
