package telemetry

import (
	"io"
	"log/slog"
	"testing"
)

func benchLogger(b *testing.B, o Options) *slog.Logger {
	o.Output = io.Discard
	tel, err := setup(b.Context(), o, deps{getenv: func(string) string { return "" }})
	if err != nil {
		b.Fatal(err)
	}
	return tel.Logger
}

// BenchmarkInfoHuman measures one INFO line with four fields in the human format.
func BenchmarkInfoHuman(b *testing.B) {
	l := benchLogger(b, Options{Component: "node"})
	for b.Loop() {
		l.Info("connection established", "gateway", "7f3a", "path", "relay", "rtt_ms", 12, "ok", true)
	}
}

// BenchmarkInfoJSON is BenchmarkInfoHuman in the JSON format.
func BenchmarkInfoJSON(b *testing.B) {
	l := benchLogger(b, Options{Component: "node", LogFormat: FormatJSON})
	for b.Loop() {
		l.Info("connection established", "gateway", "7f3a", "path", "relay", "rtt_ms", 12, "ok", true)
	}
}

// BenchmarkTraceDisabled measures a per-packet trace call filtered out by the level (the hot path).
func BenchmarkTraceDisabled(b *testing.B) {
	l := Component(benchLogger(b, Options{Component: "node"}), "node")
	ctx := b.Context()
	for b.Loop() {
		l.Log(ctx, LevelTrace, "packet", "len", 1280)
	}
}

// BenchmarkPionDebugfDisabled measures pion's per-packet Debugf when filtered out.
func BenchmarkPionDebugfDisabled(b *testing.B) {
	p := PionLoggerFactory(benchLogger(b, Options{})).NewLogger("ice")
	for b.Loop() {
		p.Debugf("inbound STUN from %s", "198.51.100.1:3478")
	}
}
