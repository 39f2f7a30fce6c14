package telemetry

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/pion/logging"
)

// PionLoggerFactory adapts l for pion (ice, turn, stun, dtls). Each pion scope logs as component
// "pion/<scope>" (so "pion=debug" or "pion/ice=trace" directives apply). Mapping:
//
//	pion Trace, Debug → TRACE; pion Info, Warn, Error → DEBUG.
//
// pion logs per packet and per connectivity check, and reports remote or benign conditions as warnings and
// errors (a malformed datagram from the internet, a check on an agent that just closed, a junk packet at the
// TURN server): at INFO or above they would let anyone on the network flood an operator's logs. What matters
// is logged by our own code with context. ICE passwords that pion prints are redacted like every secret.
func PionLoggerFactory(l *slog.Logger) logging.LoggerFactory {
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	return pionFactory{l: l}
}

type pionFactory struct{ l *slog.Logger }

func (f pionFactory) NewLogger(scope string) logging.LeveledLogger {
	return &pionLogger{l: Component(f.l, "pion/"+scope)}
}

type pionLogger struct{ l *slog.Logger }

// Each method checks the level first (pion logs per packet), then takes its caller's PC so the record
// points at pion's call site.

func (p *pionLogger) on(level slog.Level) bool { return p.l.Enabled(context.Background(), level) }

func (p *pionLogger) Trace(msg string) {
	if p.on(LevelTrace) {
		LogAt(p.l, CallerPC(0), LevelTrace, msg)
	}
}
func (p *pionLogger) Tracef(format string, args ...any) {
	if p.on(LevelTrace) {
		LogAt(p.l, CallerPC(0), LevelTrace, fmt.Sprintf(format, args...))
	}
}
func (p *pionLogger) Debug(msg string) {
	if p.on(LevelTrace) {
		LogAt(p.l, CallerPC(0), LevelTrace, msg)
	}
}
func (p *pionLogger) Debugf(format string, args ...any) {
	if p.on(LevelTrace) {
		LogAt(p.l, CallerPC(0), LevelTrace, fmt.Sprintf(format, args...))
	}
}
func (p *pionLogger) Info(msg string)                   { p.debug(msg) }
func (p *pionLogger) Infof(format string, args ...any)  { p.debugf(format, args...) }
func (p *pionLogger) Warn(msg string)                   { p.debug(msg) }
func (p *pionLogger) Warnf(format string, args ...any)  { p.debugf(format, args...) }
func (p *pionLogger) Error(msg string)                  { p.debug(msg) }
func (p *pionLogger) Errorf(format string, args ...any) { p.debugf(format, args...) }

// debug and debugf log at DEBUG with the PC of their caller's caller (pion's call site).
func (p *pionLogger) debug(msg string) {
	if p.on(slog.LevelDebug) {
		LogAt(p.l, CallerPC(1), slog.LevelDebug, msg)
	}
}

func (p *pionLogger) debugf(format string, args ...any) {
	if p.on(slog.LevelDebug) {
		LogAt(p.l, CallerPC(1), slog.LevelDebug, fmt.Sprintf(format, args...))
	}
}
