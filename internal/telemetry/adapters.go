package telemetry

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/pion/logging"
	"golang.zx2c4.com/wireguard/device"
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
		logAt(p.l, callerPC(0), LevelTrace, msg)
	}
}
func (p *pionLogger) Tracef(format string, args ...any) {
	if p.on(LevelTrace) {
		logAt(p.l, callerPC(0), LevelTrace, fmt.Sprintf(format, args...))
	}
}
func (p *pionLogger) Debug(msg string) {
	if p.on(LevelTrace) {
		logAt(p.l, callerPC(0), LevelTrace, msg)
	}
}
func (p *pionLogger) Debugf(format string, args ...any) {
	if p.on(LevelTrace) {
		logAt(p.l, callerPC(0), LevelTrace, fmt.Sprintf(format, args...))
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
		logAt(p.l, callerPC(1), slog.LevelDebug, msg)
	}
}

func (p *pionLogger) debugf(format string, args ...any) {
	if p.on(slog.LevelDebug) {
		logAt(p.l, callerPC(1), slog.LevelDebug, fmt.Sprintf(format, args...))
	}
}

// WireGuardLogger adapts l for wireguard-go as component "wireguard". Verbosef → DEBUG. Errorf → WARN:
// wireguard-go reports per-peer and per-packet failures there (failed handshake sends, bad packets), which
// telemetry should count but which need no human; failures of the device itself (bind, TUN) surface as errors
// returned to our code, which logs them at ERROR with context.
func WireGuardLogger(l *slog.Logger) *device.Logger {
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	l = Component(l, "wireguard")
	return &device.Logger{
		Verbosef: func(format string, args ...any) {
			if l.Enabled(context.Background(), slog.LevelDebug) {
				logAt(l, callerPC(0), slog.LevelDebug, fmt.Sprintf(format, args...))
			}
		},
		Errorf: func(format string, args ...any) {
			if l.Enabled(context.Background(), slog.LevelWarn) {
				logAt(l, callerPC(0), slog.LevelWarn, fmt.Sprintf(format, args...))
			}
		},
	}
}
