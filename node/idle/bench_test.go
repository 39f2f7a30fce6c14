package idle

import (
	"fmt"
	"testing"
	"time"
)

// simResult is what simulateIdle measured over its window.
type simResult struct {
	wakeups, spurious uint64 // Polls with / without work inside the window
	dues              int    // work items returned inside the window
}

// simulateIdle adds n connections (spread over the first IdleAfter, then silent) and relays node jobs,
// lets every connection go idle, then drives the Scheduler for d exactly like the node's single timer
// (sleep until NextWake, Poll, handle, repeat) and counts what happens in that window.
//
// With align, relay keepalives start on the keepalive grid (NextTick) and allocation refreshes are placed
// with AlignBefore, so they share the idle batch's wake-ups; without it each relay keepalive has a phase of
// its own (and no refreshes are scheduled, to keep the count predictable).
func simulateIdle(cfg Config, n, relays int, align bool, d time.Duration) simResult {
	s := New(cfg)
	cfg = s.Config()
	start := t0
	for i := range n {
		s.Add(fmt.Sprintf("c%03d", i), start.Add(time.Duration(i)*cfg.IdleAfter/time.Duration(max(n, 1))))
	}
	const refreshEvery = 5 * time.Minute
	for r := range relays {
		id := fmt.Sprintf("r%d", r)
		first := s.NextTick(start, cfg.KeepaliveInterval)
		if align {
			_ = s.Schedule(JobID{KindAllocationRefresh, id}, s.AlignBefore(start, start.Add(refreshEvery)))
		} else {
			first = first.Add(time.Duration(5+6*r) * time.Second)
		}
		_ = s.Every(JobID{KindRelayKeepalive, id}, first, cfg.KeepaliveInterval)
	}
	run := func(until time.Time) (res simResult) {
		for w, ok := s.NextWake(); ok && !w.After(until); w, ok = s.NextWake() {
			dues := s.Poll(w)
			if len(dues) == 0 {
				res.spurious++
				continue
			}
			res.wakeups++
			res.dues += len(dues)
			for _, due := range dues {
				if due.Job.Kind == KindAllocationRefresh { // refreshed: next one 5 min later, on the grid
					_ = s.Schedule(due.Job, s.AlignBefore(w, w.Add(refreshEvery)))
				}
			}
		}
		return res
	}
	warm := start.Add(2*cfg.IdleAfter + cfg.KeepaliveInterval)
	run(warm)
	return run(warm.Add(d))
}

// BenchmarkPoll100Idle measures one wake-up of a node with 100 idle connections: NextWake, then Poll
// returning the 100 NAT keepalives.
func BenchmarkPoll100Idle(b *testing.B) {
	s := New(Config{})
	for i := range 100 {
		s.Add(fmt.Sprintf("c%03d", i), t0.Add(time.Duration(i)*100*time.Millisecond))
	}
	drive(s, t0.Add(time.Minute))
	b.ReportAllocs()
	for b.Loop() {
		w, _ := s.NextWake()
		if len(s.Poll(w)) != 100 {
			b.Fatal("expected 100 keepalives")
		}
	}
}

// BenchmarkActivity measures the per-packet cost on an active connection.
func BenchmarkActivity(b *testing.B) {
	s := New(Config{})
	for i := range 100 {
		s.Add(fmt.Sprintf("c%03d", i), t0)
	}
	now := t0
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(time.Microsecond)
		s.Activity("c042", now)
	}
}

// BenchmarkIdleWakeupsPerMinute simulates one minute (after warm-up) of 100 idle connections and reports
// the node's wake-ups per minute, with and without relay jobs, and for comparison the wake-ups the same
// keepalives would cost with one timer per connection (each on its own phase).
func BenchmarkIdleWakeupsPerMinute(b *testing.B) {
	cases := []struct {
		name   string
		relays int
		align  bool
	}{
		{"idle100", 0, true},
		{"idle100+3relays-aligned", 3, true},
		{"idle100+3relays-own-phase", 3, false},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			var r simResult
			for b.Loop() {
				r = simulateIdle(Config{}, 100, c.relays, c.align, time.Minute)
			}
			b.ReportMetric(float64(r.wakeups), "wakeups/min")
			b.ReportMetric(float64(r.spurious), "spurious/min")
			b.ReportMetric(float64(r.dues), "dues/min")
		})
	}
	b.Run("idle100-per-connection-timers", func(b *testing.B) {
		var r simResult
		for b.Loop() {
			// The naive design: every connection's keepalive is its own timer on its own phase.
			s := New(Config{Epoch: t0, Slack: -1})
			for i := range 100 {
				_ = s.Every(JobID{KindUser, fmt.Sprintf("c%03d", i)},
					t0.Add(time.Duration(i)*250*time.Millisecond), 25*time.Second)
			}
			drive(s, t0.Add(time.Minute-1))
			r = simResult{wakeups: s.Wakeups(), spurious: s.Spurious()}
		}
		b.ReportMetric(float64(r.wakeups), "wakeups/min")
	})
}
