package relay

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/pion/logging"
)

// levelTrace is below slog's Debug; pion's per-packet trace/debug chatter goes there.
const levelTrace = slog.LevelDebug - 4

// pionLoggerFactory adapts pion's logger to slog. Everything pion's server logs
// at info, warn or error is triggered by a single (possibly hostile) datagram
// (unknown attributes, refused peers, data without permission), so it is
// demoted to debug: a flood of bad packets must not become a flood of logs.
// The relay counts those conditions in metrics instead.
type pionLoggerFactory struct{ log *slog.Logger }

// NewLogger implements logging.LoggerFactory.
func (f pionLoggerFactory) NewLogger(scope string) logging.LeveledLogger {
	return pionLogger{log: f.log.With("pion", scope)}
}

type pionLogger struct{ log *slog.Logger }

func (l pionLogger) emit(level slog.Level, msg string) {
	l.log.Log(context.Background(), level, msg)
}

func (l pionLogger) emitf(level slog.Level, format string, args ...any) {
	if !l.log.Enabled(context.Background(), level) {
		return
	}
	l.log.Log(context.Background(), level, fmt.Sprintf(format, args...))
}

func (l pionLogger) Trace(msg string)                  { l.emit(levelTrace, msg) }
func (l pionLogger) Tracef(format string, args ...any) { l.emitf(levelTrace, format, args...) }
func (l pionLogger) Debug(msg string)                  { l.emit(levelTrace, msg) }
func (l pionLogger) Debugf(format string, args ...any) { l.emitf(levelTrace, format, args...) }
func (l pionLogger) Info(msg string)                   { l.emit(slog.LevelDebug, msg) }
func (l pionLogger) Infof(format string, args ...any)  { l.emitf(slog.LevelDebug, format, args...) }
func (l pionLogger) Warn(msg string)                   { l.emit(slog.LevelDebug, msg) }
func (l pionLogger) Warnf(format string, args ...any)  { l.emitf(slog.LevelDebug, format, args...) }
func (l pionLogger) Error(msg string)                  { l.emit(slog.LevelDebug, msg) }
func (l pionLogger) Errorf(format string, args ...any) { l.emitf(slog.LevelDebug, format, args...) }
