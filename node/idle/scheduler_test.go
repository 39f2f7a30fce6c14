package idle

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

var t0 = time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

func sec(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// fmtDue renders Poll's result as "kind/key@offset" strings relative to t0.
func fmtDue(ds []Due) []string {
	var out []string
	for _, d := range ds {
		out = append(out, fmt.Sprintf("%v@%v", d.Job, d.At.Sub(t0)))
	}
	return out
}

// step is one scripted input: an op at offset t from t0; for "poll", want is the expected result and
// wake the expected NextWake afterwards ("" = nothing due).
type step struct {
	t    time.Duration
	op   string // add, act, rm, poll, sched, every, cancel
	key  string
	want []string
	wake string
}

func runSteps(t *testing.T, cfg Config, steps []step) *Scheduler {
	t.Helper()
	cfg.Epoch = t0
	s := New(cfg)
	for i, st := range steps {
		now := at(st.t)
		switch st.op {
		case "add":
			s.Add(st.key, now)
		case "act":
			s.Activity(st.key, now)
		case "rm":
			s.Remove(st.key)
		case "sched": // key is relay id; due at now
			if err := s.Schedule(JobID{KindAllocationRefresh, st.key}, now); err != nil {
				t.Fatal(err)
			}
		case "every": // relay keepalive every 25 s from now
			if err := s.Every(JobID{KindRelayKeepalive, st.key}, now, 25*time.Second); err != nil {
				t.Fatal(err)
			}
		case "cancel":
			s.Cancel(JobID{KindRelayKeepalive, st.key})
		case "poll":
			got := fmtDue(s.Poll(now))
			if diff := cmp.Diff(st.want, got); diff != "" {
				t.Fatalf("step %d poll@%v (-want +got):\n%s", i, st.t, diff)
			}
			w, ok := s.NextWake()
			gotWake := ""
			if ok {
				gotWake = w.Sub(t0).String()
			}
			if gotWake != st.wake {
				t.Fatalf("step %d poll@%v: NextWake %q, want %q", i, st.t, gotWake, st.wake)
			}
		default:
			t.Fatalf("bad op %q", st.op)
		}
	}
	return s
}

func TestScripts(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		steps []step
	}{
		{
			name: "nothing tracked, nothing due",
			steps: []step{
				{t: 0, op: "poll", wake: ""},
				{t: time.Hour, op: "poll", wake: ""},
			},
		},
		{
			name: "one connection: active checks, went idle, shared keepalive tick",
			steps: []step{
				{t: 0, op: "add", key: "a"},
				{t: sec(5), op: "poll", want: []string{"active-check/a@5s"}, wake: "10s"},
				{t: sec(10), op: "poll", want: []string{"active-check/a@10s"}, wake: "15s"},
				{t: sec(15), op: "poll", want: []string{"active-check/a@15s"}, wake: "20s"},
				// idle at 20 s: the active tick at 20 s is dropped, the keepalive grid (25 s) takes over.
				{t: sec(20), op: "poll", want: []string{"went-idle/a@20s"}, wake: "25s"},
				{t: sec(25), op: "poll", want: []string{"nat-keepalive/a@25s"}, wake: "50s"},
				{t: sec(50), op: "poll", want: []string{"nat-keepalive/a@50s"}, wake: "1m15s"},
			},
		},
		{
			name: "activity postpones going idle; each packet is O(1) and lazily folded in",
			steps: []step{
				{t: 0, op: "add", key: "a"},
				{t: sec(3), op: "act", key: "a"},
				{t: sec(4), op: "act", key: "a"},
				{t: sec(5), op: "poll", want: []string{"active-check/a@5s"}, wake: "10s"},
				{t: sec(20), op: "poll", want: []string{"active-check/a@10s"}, wake: "24s"},
				// Slack 1 s: the active tick at 25 s is within reach, but the connection is idle by then.
				{t: sec(24), op: "poll", want: []string{"went-idle/a@24s"}, wake: "50s"},
				{t: sec(50), op: "poll", want: []string{"nat-keepalive/a@50s"}, wake: "1m15s"},
			},
		},
		{
			name: "packet on an idle connection reactivates it at once and leaves the keepalive batch",
			steps: []step{
				{t: 0, op: "add", key: "a"},
				{t: 0, op: "add", key: "b"},
				{t: sec(1), op: "act", key: "b"},
				{t: sec(5), op: "poll", want: []string{"active-check/a@5s", "active-check/b@5s"}, wake: "10s"},
				{t: sec(10), op: "poll", want: []string{"active-check/a@10s", "active-check/b@10s"}, wake: "15s"},
				{t: sec(15), op: "poll", want: []string{"active-check/a@15s", "active-check/b@15s"}, wake: "20s"},
				// Slack 1 s: b's deadline (21 s) rides the 20 s wake-up.
				{t: sec(20), op: "poll", want: []string{"went-idle/a@20s", "went-idle/b@21s"}, wake: "25s"},
				{t: sec(25), op: "poll", want: []string{"nat-keepalive/a@25s", "nat-keepalive/b@25s"}, wake: "50s"},
				{t: sec(30), op: "act", key: "b"},
				{t: sec(35), op: "poll", want: []string{"active-check/b@35s"}, wake: "40s"},
				{t: sec(50), op: "poll", want: []string{"went-idle/b@50s", "nat-keepalive/a@50s"}, wake: "1m15s"},
			},
		},
		{
			name: "node jobs coalesce with the keepalive tick; cancel; one-shot",
			steps: []step{
				{t: 0, op: "add", key: "a"},
				{t: sec(5), op: "every", key: "r1"}, // 5, 30, 55, ...: its own phase
				{t: sec(5), op: "poll", want: []string{"active-check/a@5s", "relay-keepalive/r1@5s"}, wake: "10s"},
				{t: sec(10), op: "poll", want: []string{"active-check/a@10s"}, wake: "15s"},
				{t: sec(15), op: "poll", want: []string{"active-check/a@15s"}, wake: "20s"},
				{t: sec(20), op: "poll", want: []string{"went-idle/a@20s"}, wake: "25s"},
				{t: sec(24.5), op: "sched", key: "r1"},
				{t: sec(24.5), op: "poll", want: []string{"allocation-refresh/r1@24.5s", "nat-keepalive/a@25s"}, wake: "30s"},
				{t: sec(30), op: "poll", want: []string{"relay-keepalive/r1@30s"}, wake: "50s"},
				{t: sec(30), op: "cancel", key: "r1"},
				{t: sec(49), op: "poll", want: []string{"nat-keepalive/a@50s"}, wake: "1m15s"},
			},
		},
		{
			name: "package doc timeline",
			steps: []step{
				{t: 0, op: "add", key: "a"},
				{t: 0, op: "add", key: "b"},
				{t: sec(3), op: "every", key: "r"},
				{t: sec(3), op: "poll", want: []string{"relay-keepalive/r@3s"}, wake: "5s"},
				{t: sec(5), op: "poll", want: []string{"active-check/a@5s", "active-check/b@5s"}, wake: "10s"},
				{t: sec(8), op: "act", key: "a"},
				{t: sec(10), op: "poll", want: []string{"active-check/a@10s", "active-check/b@10s"}, wake: "15s"},
				{t: sec(15), op: "poll", want: []string{"active-check/a@15s", "active-check/b@15s"}, wake: "20s"},
				{t: sec(20), op: "poll", want: []string{"went-idle/b@20s", "active-check/a@20s"}, wake: "25s"},
				{t: sec(25), op: "poll", want: []string{"nat-keepalive/b@25s", "active-check/a@25s"}, wake: "28s"},
				{t: sec(28), op: "poll", want: []string{"went-idle/a@28s", "relay-keepalive/r@28s"}, wake: "50s"},
				{t: sec(50), op: "poll", want: []string{"nat-keepalive/a@50s", "nat-keepalive/b@50s"}, wake: "53s"},
				{t: sec(53), op: "poll", want: []string{"relay-keepalive/r@53s"}, wake: "1m15s"},
				{t: sec(75), op: "poll", want: []string{"nat-keepalive/a@1m15s", "nat-keepalive/b@1m15s"}, wake: "1m18s"},
			},
		},
		{
			name: "removing connections drops their timers",
			steps: []step{
				{t: 0, op: "add", key: "a"},
				{t: 0, op: "add", key: "b"},
				{t: sec(1), op: "rm", key: "a"},
				{t: sec(5), op: "poll", want: []string{"active-check/b@5s"}, wake: "10s"},
				{t: sec(6), op: "rm", key: "b"},
				{t: sec(10), op: "poll", wake: ""},
			},
		},
		{
			name: "late driver: overdue work is returned once, periods are not replayed",
			steps: []step{
				{t: 0, op: "add", key: "a"},
				{t: sec(100), op: "poll", want: []string{"went-idle/a@20s"}, wake: "2m5s"},
				{t: sec(200), op: "poll", want: []string{"nat-keepalive/a@2m5s"}, wake: "3m45s"},
			},
		},
		{
			name: "no slack, no active checks",
			cfg:  Config{Slack: -1, ActiveInterval: -1},
			steps: []step{
				{t: 0, op: "add", key: "a"},
				{t: sec(1), op: "add", key: "b"},
				{t: sec(20), op: "poll", want: []string{"went-idle/a@20s"}, wake: "21s"},
				{t: sec(21), op: "poll", want: []string{"went-idle/b@21s"}, wake: "25s"},
				{t: sec(25), op: "poll", want: []string{"nat-keepalive/a@25s", "nat-keepalive/b@25s"}, wake: "50s"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { runSteps(t, tt.cfg, tt.steps) })
	}
}

func TestStateQueries(t *testing.T) {
	s := New(Config{Epoch: t0})
	if _, ok := s.State("x"); ok {
		t.Fatal("unknown connection has a state")
	}
	s.Add("a", at(0))
	s.Activity("a", at(sec(2)))
	if st, ok := s.State("a"); !ok || st != Active {
		t.Fatalf("State = %v %v, want active", st, ok)
	}
	if _, ok := s.IdleSince("a"); ok {
		t.Fatal("active connection has IdleSince")
	}
	for w, ok := s.NextWake(); ok && w.Before(at(sec(23))); w, ok = s.NextWake() {
		s.Poll(w)
	}
	if st, _ := s.State("a"); st != Idle {
		t.Fatalf("State = %v, want idle", st)
	}
	if since, ok := s.IdleSince("a"); !ok || !since.Equal(at(sec(22))) {
		t.Fatalf("IdleSince = %v %v, want 22s", since.Sub(t0), ok)
	}
	if last, ok := s.LastActivity("a"); !ok || !last.Equal(at(sec(2))) {
		t.Fatalf("LastActivity = %v %v", last, ok)
	}
	if a, i := s.Counts(); a != 0 || i != 1 {
		t.Fatalf("Counts = %d, %d", a, i)
	}
	s.Add("a", at(sec(30))) // re-adding is activity
	if st, _ := s.State("a"); st != Active {
		t.Fatalf("State after re-Add = %v", st)
	}
	if got := State(9).String() + Active.String() + Idle.String(); got != "State(9)activeidle" {
		t.Fatal(got)
	}
}

func TestJobErrorsAndHelpers(t *testing.T) {
	s := New(Config{Epoch: t0})
	for _, k := range []Kind{0, KindWentIdle, KindNATKeepalive, KindActiveCheck} {
		if err := s.Schedule(JobID{k, "x"}, t0); !errors.Is(err, ErrConnectionKind) {
			t.Errorf("Schedule(%v) = %v, want ErrConnectionKind", k, err)
		}
	}
	if err := s.Every(JobID{KindUser, "x"}, t0, 0); !errors.Is(err, ErrPeriod) {
		t.Errorf("Every(period 0) = %v", err)
	}
	if err := s.Schedule(JobID{KindUser + 1, "x"}, at(sec(3))); err != nil {
		t.Fatal(err)
	}
	if err := s.Schedule(JobID{KindUser + 1, "x"}, at(sec(7))); err != nil { // replaces
		t.Fatal(err)
	}
	if when, ok := s.Scheduled(JobID{KindUser + 1, "x"}); !ok || !when.Equal(at(sec(7))) {
		t.Fatalf("Scheduled = %v %v", when, ok)
	}
	if got := fmtDue(s.Poll(at(sec(7)))); !cmp.Equal(got, []string{"user+1/x@7s"}) {
		t.Fatalf("Poll = %v", got)
	}
	if s.Cancel(JobID{KindUser + 1, "x"}) {
		t.Fatal("one-shot job still registered after it ran")
	}
	if got := s.NextTick(at(sec(30)), 25*time.Second); !got.Equal(at(sec(50))) {
		t.Errorf("NextTick = %v", got.Sub(t0))
	}
	if got := s.NextTick(at(sec(-30)), 25*time.Second); !got.Equal(at(sec(-25))) {
		t.Errorf("NextTick before epoch = %v", got.Sub(t0))
	}
	if got := s.NextTick(at(sec(50)), 25*time.Second); !got.Equal(at(sec(75))) {
		t.Errorf("NextTick on a tick = %v", got.Sub(t0))
	}
	if got := s.AlignBefore(at(sec(10)), at(sec(290))); !got.Equal(at(sec(275))) {
		t.Errorf("AlignBefore = %v", got.Sub(t0))
	}
	if got := s.AlignBefore(at(sec(10)), at(sec(20))); !got.Equal(at(sec(20))) {
		t.Errorf("AlignBefore without a tick = %v", got.Sub(t0))
	}
	names := []string{KindAllocationRefresh.String(), KindChannelRefresh.String(), Kind(20).String()}
	if strings.Join(names, ",") != "allocation-refresh,channel-refresh,Kind(20)" {
		t.Errorf("kind names %v", names)
	}
}

func TestConfigNormalized(t *testing.T) {
	tests := []struct {
		in, want Config
	}{
		{Config{}, Config{IdleAfter: 20 * time.Second, KeepaliveInterval: 25 * time.Second,
			ActiveInterval: 5 * time.Second, Slack: time.Second}},
		{Config{Slack: -5, ActiveInterval: -1}, Config{IdleAfter: 20 * time.Second,
			KeepaliveInterval: 25 * time.Second, ActiveInterval: -1}},
		{Config{Slack: 10 * time.Second, KeepaliveInterval: 4 * time.Second, ActiveInterval: -1},
			Config{IdleAfter: 20 * time.Second, KeepaliveInterval: 4 * time.Second, ActiveInterval: -1,
				Slack: 2*time.Second - 1}},
	}
	for _, tt := range tests {
		got := New(tt.in).Config()
		got.Logger, got.MeterProvider = nil, nil
		if !cmp.Equal(got, tt.want) {
			t.Errorf("New(%+v).Config() = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

// TestHundredIdleOneWakeupPerPeriod is the acceptance test: 100 idle connections cost one wake-up per
// keepalive period, and that wake-up carries a keepalive for every one of them.
func TestHundredIdleOneWakeupPerPeriod(t *testing.T) {
	cfg := Config{IdleAfter: 20 * time.Second, KeepaliveInterval: 25 * time.Second}
	s := New(cfg)
	for i := range 100 {
		s.Add(fmt.Sprintf("c%03d", i), at(time.Duration(i)*173*time.Millisecond)) // spread over 17 s
	}
	drive(s, at(sec(60))) // all idle by 37.3 s
	if a, i := s.Counts(); a != 0 || i != 100 {
		t.Fatalf("Counts = %d active, %d idle", a, i)
	}
	before := s.Wakeups()
	for p := range 10 {
		w, ok := s.NextWake()
		if !ok {
			t.Fatal("nothing due with 100 idle connections")
		}
		got := s.Poll(w)
		if len(got) != 100 {
			t.Fatalf("period %d: %d dues, want 100", p, len(got))
		}
		for i, d := range got {
			if d.Job != (JobID{KindNATKeepalive, fmt.Sprintf("c%03d", i)}) || !d.At.Equal(w) {
				t.Fatalf("period %d: due %d = %v@%v", p, i, d.Job, d.At.Sub(t0))
			}
		}
		if next, _ := s.NextWake(); next.Sub(w) != 25*time.Second {
			t.Fatalf("period %d: next wake %v after this one, want 25s", p, next.Sub(w))
		}
	}
	if got := s.Wakeups() - before; got != 10 {
		t.Fatalf("%d wake-ups in 10 periods, want 10", got)
	}
	if s.Spurious() != 0 {
		t.Fatalf("%d spurious wake-ups", s.Spurious())
	}

	// One packet: that connection is active at once and out of the next keepalive batch.
	w, _ := s.NextWake()
	s.Activity("c042", w.Add(-10*time.Second))
	if st, _ := s.State("c042"); st != Active {
		t.Fatalf("State after packet = %v", st)
	}
	got := s.Poll(w)
	for _, d := range got {
		if d.Job.Key == "c042" && d.Job.Kind == KindNATKeepalive {
			t.Fatal("active connection got a NAT keepalive")
		}
	}
	if n := countKind(got, KindNATKeepalive); n != 99 {
		t.Fatalf("%d keepalives, want 99", n)
	}
}

// drive polls s at every NextWake up to until, as the node's timer would.
func drive(s *Scheduler, until time.Time) {
	for w, ok := s.NextWake(); ok && !w.After(until); w, ok = s.NextWake() {
		s.Poll(w)
	}
}

func countKind(ds []Due, k Kind) int {
	n := 0
	for _, d := range ds {
		if d.Job.Kind == k {
			n++
		}
	}
	return n
}

func TestIdleWakeupsPerMinute(t *testing.T) {
	tests := []struct {
		name   string
		relays int
		align  bool
		want   uint64
	}{
		{"100 idle connections", 0, true, 24},
		{"100 idle connections, 3 relays aligned", 3, true, 24},
		{"100 idle connections, 3 relays on their own phase", 3, false, 24 * 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := simulateIdle(Config{}, 100, tt.relays, tt.align, 10*time.Minute)
			if got.wakeups != tt.want {
				t.Fatalf("%d wake-ups in 10 min, want %d (%+v)", got.wakeups, tt.want, got)
			}
			if got.spurious != 0 {
				t.Fatalf("%d spurious wake-ups", got.spurious)
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	reader := metric.NewManualReader()
	s := New(Config{Epoch: t0, MeterProvider: metric.NewMeterProvider(metric.WithReader(reader))})
	s.Add("a", t0)
	s.Poll(at(sec(1)))   // nothing due: spurious
	s.Poll(at(sec(5)))   // active check
	s.Poll(at(sec(5.5))) // spurious
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				got[m.Name] += dp.Value
			}
		}
	}
	want := map[string]int64{"snowgate.node.wakeups": 1, "snowgate.node.wakeups.spurious": 2}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("metrics (-want +got):\n%s", diff)
	}
	if s.Wakeups() != 1 || s.Spurious() != 2 {
		t.Fatalf("Wakeups %d Spurious %d", s.Wakeups(), s.Spurious())
	}
}

// TestWokenConnectionStaysActive: with IdleAfter shorter than the default slack allows, a connection woken by
// Activity is not put back to idle by the very next Poll (its idle deadline must not fall inside the slack).
func TestWokenConnectionStaysActive(t *testing.T) {
	t0 := time.Unix(1000, 0)
	s := New(Config{IdleAfter: 400 * time.Millisecond, KeepaliveInterval: 800 * time.Millisecond, ActiveInterval: -1})
	s.Add("c", t0)
	s.Poll(t0.Add(400 * time.Millisecond))
	if st, _ := s.State("c"); st != Idle {
		t.Fatalf("state %v after IdleAfter, want Idle", st)
	}
	woke := t0.Add(2 * time.Second)
	s.Activity("c", woke)
	for _, d := range s.Poll(woke.Add(time.Millisecond)) {
		if d.Job.Kind == KindWentIdle {
			t.Fatalf("went idle 1 ms after being woken: %+v", d)
		}
	}
	if st, _ := s.State("c"); st != Active {
		t.Fatalf("state %v 1 ms after Activity, want Active", st)
	}
}
