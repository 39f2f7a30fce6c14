package telemetry

import (
	"context"
	"log/slog"
	"time"
)

// DefaultStatsInterval is StatsLoop's interval when none is given.
const DefaultStatsInterval = 5 * time.Minute

// StatsLoop logs one INFO line "stats" with the attributes returned by stats every interval (≤ 0 →
// DefaultStatsInterval) until ctx is done. It blocks; run it in a goroutine the daemon owns. Records carry
// the call site of StatsLoop's caller. Daemons log at most one such line every few minutes, never per packet.
func StatsLoop(ctx context.Context, l *slog.Logger, interval time.Duration, stats func() []slog.Attr) {
	if l == nil || stats == nil {
		<-ctx.Done()
		return
	}
	if interval <= 0 {
		interval = DefaultStatsInterval
	}
	pc := CallerPC(0)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		h := l.Handler()
		if !h.Enabled(ctx, slog.LevelInfo) {
			continue
		}
		r := slog.NewRecord(time.Now(), slog.LevelInfo, "stats", pc)
		r.AddAttrs(stats()...)
		_ = h.Handle(ctx, r)
	}
}
