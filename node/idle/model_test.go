package idle

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"pgregory.net/rapid"
)

// model is the Scheduler's specification written the simple way: maps and linear scans, exact deadlines
// recomputed from scratch, no heap, no lazy state.
type model struct {
	cfg           Config
	epoch         time.Time
	anchored      bool
	conns         map[string]*mconn
	jobs          map[JobID]*mjob
	nextActive    time.Time
	nextKeepalive time.Time
	wakeups       uint64
	spurious      uint64
}

type mconn struct {
	state           State
	last, idleSince time.Time
}

type mjob struct {
	at     time.Time
	period time.Duration
}

func newModel(cfg Config) *model {
	m := &model{cfg: cfg, conns: map[string]*mconn{}, jobs: map[JobID]*mjob{}}
	if !cfg.Epoch.IsZero() {
		m.epoch, m.anchored = cfg.Epoch, true
	}
	return m
}

func (m *model) anchor(now time.Time) {
	if !m.anchored {
		m.epoch, m.anchored = now, true
	}
}

// grid returns the first tick epoch + k*period strictly after t, by stepping.
func (m *model) grid(t time.Time, period time.Duration) time.Time {
	g := m.epoch.Add(t.Sub(m.epoch) / period * period) // within one period of t
	for g.After(t) {
		g = g.Add(-period)
	}
	for !g.After(t) {
		g = g.Add(period)
	}
	return g
}

func (m *model) count(st State) int {
	n := 0
	for _, c := range m.conns {
		if c.state == st {
			n++
		}
	}
	return n
}

func (m *model) activeChecks() bool { return m.cfg.ActiveInterval > 0 }

func (m *model) setActive(c *mconn, now time.Time) {
	c.state, c.idleSince = Active, time.Time{}
	if m.count(Active) == 1 && m.activeChecks() {
		m.nextActive = m.grid(now.Add(m.cfg.Slack), m.cfg.ActiveInterval)
	}
}

func (m *model) add(id string, now time.Time) {
	m.anchor(now)
	if _, ok := m.conns[id]; ok {
		m.activity(id, now)
		return
	}
	c := &mconn{last: now}
	m.conns[id] = c
	m.setActive(c, now)
}

func (m *model) activity(id string, now time.Time) {
	c, ok := m.conns[id]
	if !ok {
		return
	}
	if now.After(c.last) {
		c.last = now
	}
	if c.state == Idle {
		m.setActive(c, now)
	}
}

func (m *model) poll(now time.Time) []Due {
	limit := now.Add(m.cfg.Slack)
	var out []Due
	if m.count(Idle) > 0 && !m.nextKeepalive.After(limit) {
		for id, c := range m.conns {
			if c.state == Idle {
				out = append(out, Due{JobID{KindNATKeepalive, id}, m.nextKeepalive})
			}
		}
		m.nextKeepalive = m.grid(limit, m.cfg.KeepaliveInterval)
	}
	for id, c := range m.conns {
		if deadline := c.last.Add(m.cfg.IdleAfter); c.state == Active && !deadline.After(limit) {
			out = append(out, Due{JobID{KindWentIdle, id}, deadline})
			c.state, c.idleSince = Idle, deadline
			if m.count(Idle) == 1 {
				m.nextKeepalive = m.grid(limit, m.cfg.KeepaliveInterval)
			}
		}
	}
	for id, j := range m.jobs {
		if j.at.After(limit) {
			continue
		}
		out = append(out, Due{id, j.at})
		if j.period == 0 {
			delete(m.jobs, id)
			continue
		}
		for !j.at.After(limit) {
			j.at = j.at.Add(j.period)
		}
	}
	if m.count(Active) > 0 && m.activeChecks() && !m.nextActive.After(limit) {
		for id, c := range m.conns {
			if c.state == Active {
				out = append(out, Due{JobID{KindActiveCheck, id}, m.nextActive})
			}
		}
		m.nextActive = m.grid(limit, m.cfg.ActiveInterval)
	}
	if len(out) == 0 {
		m.spurious++
		return nil
	}
	m.wakeups++
	slices.SortFunc(out, compareDue)
	return out
}

func (m *model) nextWake() (time.Time, bool) {
	var ts []time.Time
	for _, c := range m.conns {
		if c.state == Active {
			ts = append(ts, c.last.Add(m.cfg.IdleAfter))
		}
	}
	for _, j := range m.jobs {
		ts = append(ts, j.at)
	}
	if m.count(Active) > 0 && m.activeChecks() {
		ts = append(ts, m.nextActive)
	}
	if m.count(Idle) > 0 {
		ts = append(ts, m.nextKeepalive)
	}
	if len(ts) == 0 {
		return time.Time{}, false
	}
	return slices.MinFunc(ts, time.Time.Compare), true
}

func ms(n int64) time.Duration { return time.Duration(n) * time.Millisecond }

// TestSchedulerModel drives the Scheduler and the model with the same random inputs and a fake clock, and
// checks that they agree on every Poll, NextWake and state, plus the timing promises: polling at NextWake
// returns work that is not late; polling before NextWake-Slack returns nothing; nothing is returned more
// than Slack early; no connection and no job means no wake-up at all.
func TestSchedulerModel(t *testing.T) {
	seen := map[Kind]int{} // what the runs exercised, checked at the end
	rapid.Check(t, func(t *rapid.T) {
		in := Config{
			IdleAfter:         ms(rapid.Int64Range(1000, 30000).Draw(t, "idleAfter")),
			KeepaliveInterval: ms(rapid.Int64Range(2000, 30000).Draw(t, "keepalive")),
			ActiveInterval:    ms(rapid.SampledFrom([]int64{-1, 1000, 2500, 5000, 9000}).Draw(t, "active")),
			Slack:             ms(rapid.SampledFrom([]int64{-1, 1, 500, 1000, 3000}).Draw(t, "slack")),
		}
		if rapid.Bool().Draw(t, "epoch") {
			in.Epoch = t0.Add(-ms(rapid.Int64Range(0, 100000).Draw(t, "epochOffset")))
		}
		// side is the node's lock-free per-connection "last packet" record, read through
		// Config.LastActivity when lockFree is drawn.
		side := map[string]time.Time{}
		lockFree := rapid.Bool().Draw(t, "lockFree")
		if lockFree {
			in.LastActivity = func(id string) time.Time { return side[id] }
		}
		s := New(in)
		m := newModel(s.Config())
		m.cfg.LastActivity = nil
		slack := s.Config().Slack
		now := t0
		ids := []string{"a", "b", "c", "d", "e"}
		keys := []string{"r0", "r1"}

		// poll polls both at now and checks they agree and nothing is more than Slack early.
		poll := func(t *rapid.T) []Due {
			got := s.Poll(now)
			want := m.poll(now)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("Poll(%v) (-model +scheduler):\n%s", now.Sub(t0), diff)
			}
			for _, d := range got {
				seen[d.Job.Kind]++
				if d.At.After(now.Add(slack)) {
					t.Fatalf("%v due at %v returned at %v: more than Slack %v early", d.Job, d.At, now, slack)
				}
			}
			return got
		}

		t.Repeat(map[string]func(*rapid.T){
			"add": func(t *rapid.T) {
				id := rapid.SampledFrom(ids).Draw(t, "id")
				s.Add(id, now)
				m.add(id, now)
			},
			"activity": func(t *rapid.T) {
				id := rapid.SampledFrom(ids).Draw(t, "id")
				s.Activity(id, now)
				m.activity(id, now)
				if st, ok := s.State(id); ok && st != Active {
					t.Fatalf("%s is %v right after a packet", id, st)
				}
			},
			"packet recorded lock-free": func(t *rapid.T) {
				id := rapid.SampledFrom(ids).Draw(t, "id")
				c, ok := m.conns[id]
				if !ok {
					t.Skip("unknown connection")
				}
				side[id] = now
				if !lockFree || c.state == Idle { // an idle connection is always woken with Activity
					s.Activity(id, now)
				}
				m.activity(id, now)
			},
			"remove": func(t *rapid.T) {
				id := rapid.SampledFrom(ids).Draw(t, "id")
				s.Remove(id)
				delete(m.conns, id)
			},
			"schedule": func(t *rapid.T) {
				id := JobID{rapid.SampledFrom(kinds).Draw(t, "kind"), rapid.SampledFrom(keys).Draw(t, "key")}
				when := now.Add(ms(rapid.Int64Range(0, 60000).Draw(t, "in")))
				if rapid.Bool().Draw(t, "aligned") {
					when = s.NextTick(now, s.Config().KeepaliveInterval)
					m.anchor(now)
					if want := m.grid(now, m.cfg.KeepaliveInterval); !when.Equal(want) {
						t.Fatalf("NextTick = %v, want %v", when, want)
					}
				}
				var period time.Duration
				if rapid.Bool().Draw(t, "periodic") {
					period = ms(rapid.Int64Range(1, 60000).Draw(t, "period"))
					if err := s.Every(id, when, period); err != nil {
						t.Fatal(err)
					}
				} else if err := s.Schedule(id, when); err != nil {
					t.Fatal(err)
				}
				m.jobs[id] = &mjob{at: when, period: period}
			},
			"cancel": func(t *rapid.T) {
				id := JobID{rapid.SampledFrom(kinds).Draw(t, "kind"), rapid.SampledFrom(keys).Draw(t, "key")}
				_, want := m.jobs[id]
				delete(m.jobs, id)
				if got := s.Cancel(id); got != want {
					t.Fatalf("Cancel(%v) = %v, want %v", id, got, want)
				}
			},
			"sleep until before NextWake-Slack: nothing due": func(t *rapid.T) {
				w, ok := s.NextWake()
				limit := now.Add(ms(rapid.Int64Range(0, 100000).Draw(t, "sleep")))
				if ok && w.Add(-slack-1).Before(limit) {
					limit = w.Add(-slack - 1)
				}
				if limit.Before(now) {
					t.Skip("next wake-up within Slack")
				}
				now = limit
				if got := poll(t); len(got) != 0 {
					t.Fatalf("Poll before NextWake-Slack returned %v", fmtDue(got))
				}
			},
			"wake at NextWake: work, not late": func(t *rapid.T) {
				w, ok := s.NextWake()
				if !ok {
					t.Skip("nothing due")
				}
				now = w
				got := poll(t)
				if len(got) == 0 {
					t.Fatal("Poll at NextWake returned nothing")
				}
				for _, d := range got {
					if d.At.Before(now) {
						t.Fatalf("%v due at %v returned late at %v", d.Job, d.At, now)
					}
				}
			},
			"wake within Slack before NextWake: work": func(t *rapid.T) {
				w, ok := s.NextWake()
				if !ok {
					t.Skip("nothing due")
				}
				early := ms(rapid.Int64Range(0, slack.Milliseconds()).Draw(t, "early"))
				if cand := w.Add(-early); cand.After(now) {
					now = cand
				}
				if got := poll(t); len(got) == 0 {
					t.Fatal("Poll within Slack of NextWake returned nothing")
				}
			},
			"oversleep": func(t *rapid.T) {
				now = now.Add(ms(rapid.Int64Range(0, 100000).Draw(t, "oversleep")))
				poll(t)
			},
			"": func(t *rapid.T) {
				got, gok := s.NextWake()
				want, wok := m.nextWake()
				if gok != wok || !got.Equal(want) {
					t.Fatalf("NextWake = %v %v, model %v %v", got, gok, want, wok)
				}
				if gok && got.Before(now) {
					t.Fatalf("NextWake %v is in the past (now %v)", got, now)
				}
				if !gok && (len(m.conns) > 0 || len(m.jobs) > 0) {
					t.Fatal("nothing due with connections or jobs")
				}
				for _, id := range ids {
					st, ok := s.State(id)
					mc, mok := m.conns[id]
					if ok != mok || (ok && st != mc.state) {
						t.Fatalf("State(%s) = %v %v, model %+v", id, st, ok, mc)
					}
					if since, ok := s.IdleSince(id); ok != (mok && mc.state == Idle) || (ok && !since.Equal(mc.idleSince)) {
						t.Fatalf("IdleSince(%s) = %v %v, model %+v", id, since, ok, mc)
					}
				}
				if a, i := s.Counts(); a != m.count(Active) || i != m.count(Idle) {
					t.Fatalf("Counts = %d %d, model %d %d", a, i, m.count(Active), m.count(Idle))
				}
				if s.Wakeups() != m.wakeups || s.Spurious() != m.spurious {
					t.Fatalf("Wakeups %d Spurious %d, model %d %d", s.Wakeups(), s.Spurious(), m.wakeups, m.spurious)
				}
			},
		})
	})
	t.Logf("due kinds returned: %v", seen)
	for _, k := range append([]Kind{KindWentIdle, KindNATKeepalive, KindActiveCheck}, kinds...) {
		if seen[k] == 0 {
			t.Errorf("no run returned a %v: the generators do not reach it", k)
		}
	}
}

var kinds = []Kind{KindAllocationRefresh, KindChannelRefresh, KindRelayKeepalive, KindUser}

// TestIdleBatchProperty: however n ≤ 100 connections are added and talk, once they are all idle every
// keepalive period costs exactly one wake-up, carrying a NAT keepalive for each of them; one packet takes a
// connection out of the batch at once.
func TestIdleBatchProperty(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.IntRange(1, 100).Draw(t, "n")
		s := New(Config{})
		k := s.Config().KeepaliveInterval
		for i := range n {
			s.Add(fmt.Sprint(i), t0.Add(ms(rapid.Int64Range(0, 60000).Draw(t, "added"))))
		}
		for range rapid.IntRange(0, 20).Draw(t, "packets") {
			id := fmt.Sprint(rapid.IntRange(0, n-1).Draw(t, "who"))
			s.Activity(id, t0.Add(ms(rapid.Int64Range(0, 60000).Draw(t, "when"))))
		}
		drive(s, t0.Add(2*time.Minute))
		if a, i := s.Counts(); a != 0 || i != n {
			t.Fatalf("Counts = %d active %d idle, want all %d idle", a, i, n)
		}
		periods := rapid.IntRange(1, 20).Draw(t, "periods")
		before := s.Wakeups()
		var prev time.Time
		for p := range periods {
			w, ok := s.NextWake()
			if !ok {
				t.Fatal("nothing due")
			}
			if p > 0 && w.Sub(prev) != k {
				t.Fatalf("keepalive ticks %v apart, want %v", w.Sub(prev), k)
			}
			prev = w
			if got := s.Poll(w); len(got) != n || countKind(got, KindNATKeepalive) != n {
				t.Fatalf("period %d: %d dues (%d keepalives), want %d keepalives", p, len(got),
					countKind(got, KindNATKeepalive), n)
			}
		}
		if got := s.Wakeups() - before; got != uint64(periods) {
			t.Fatalf("%d wake-ups for %d periods", got, periods)
		}
		who := fmt.Sprint(rapid.IntRange(0, n-1).Draw(t, "reactivate"))
		w, _ := s.NextWake()
		s.Activity(who, w.Add(-time.Second))
		if st, _ := s.State(who); st != Active {
			t.Fatalf("State after packet = %v", st)
		}
		for _, d := range s.Poll(w) {
			if d.Job.Key == who && d.Job.Kind == KindNATKeepalive {
				t.Fatal("reactivated connection still in the keepalive batch")
			}
		}
	})
}
