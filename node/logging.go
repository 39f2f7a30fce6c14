package node

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"strings"

	"github.com/pion/logging"
	"golang.zx2c4.com/wireguard/device"
)

// slogPionFactory maps pion's loggers onto slog. Every pion level goes to
// debug (trace below it): pion reports benign conditions as errors (e.g. a
// check for an agent that was just closed), and the node logs what matters
// itself.
type slogPionFactory struct{ log *slog.Logger }

func (f slogPionFactory) NewLogger(scope string) logging.LeveledLogger {
	return slogPion{log: f.log.With("scope", scope)}
}

type slogPion struct{ log *slog.Logger }

func (l slogPion) logf(level slog.Level, format string, args ...any) {
	if !l.log.Enabled(context.Background(), level) {
		return
	}
	l.log.Log(context.Background(), level, redactPion(fmt.Sprintf(format, args...)))
}

// pionSecret matches the ICE passwords pion puts in some debug messages.
var pionSecret = regexp.MustCompile(`(?i)(pwd|password)(["']?\s*[:=]\s*)("[^"]*"|\S+)`)

// redactPion removes ICE passwords from pion's log messages.
func redactPion(msg string) string {
	if !strings.Contains(strings.ToLower(msg), "pwd") && !strings.Contains(strings.ToLower(msg), "password") {
		return msg
	}
	return pionSecret.ReplaceAllString(msg, "${1}${2}[redacted]")
}

func (l slogPion) Trace(msg string)                  { l.logf(slog.LevelDebug-4, "%s", msg) }
func (l slogPion) Tracef(format string, args ...any) { l.logf(slog.LevelDebug-4, format, args...) }
func (l slogPion) Debug(msg string)                  { l.logf(slog.LevelDebug, "%s", msg) }
func (l slogPion) Debugf(format string, args ...any) { l.logf(slog.LevelDebug, format, args...) }
func (l slogPion) Info(msg string)                   { l.logf(slog.LevelDebug, "%s", msg) }
func (l slogPion) Infof(format string, args ...any)  { l.logf(slog.LevelDebug, format, args...) }
func (l slogPion) Warn(msg string)                   { l.logf(slog.LevelDebug, "%s", msg) }
func (l slogPion) Warnf(format string, args ...any)  { l.logf(slog.LevelDebug, format, args...) }
func (l slogPion) Error(msg string)                  { l.logf(slog.LevelDebug, "%s", msg) }
func (l slogPion) Errorf(format string, args ...any) { l.logf(slog.LevelDebug, format, args...) }

// wireGuardLogger maps wireguard-go's logger onto slog (verbose → debug).
func wireGuardLogger(log *slog.Logger) *device.Logger {
	return &device.Logger{
		Verbosef: func(format string, args ...any) {
			if log.Enabled(context.Background(), slog.LevelDebug) {
				log.Debug(fmt.Sprintf(format, args...))
			}
		},
		Errorf: func(format string, args ...any) {
			log.Warn(fmt.Sprintf(format, args...))
		},
	}
}
