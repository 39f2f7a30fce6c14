package idle

import (
	"cmp"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// Defaults applied by New to zero Config fields.
const (
	// DefaultIdleAfter is Firezone's threshold: idle after 20 s without a packet.
	DefaultIdleAfter = 20 * time.Second
	// DefaultKeepaliveInterval is Firezone's idle STUN interval (25 s since firezone#9570).
	DefaultKeepaliveInterval = 25 * time.Second
	// DefaultActiveInterval is the period of the active connections' path check.
	DefaultActiveInterval = 5 * time.Second
	// DefaultSlack is how early work may run to share a wake-up.
	DefaultSlack = time.Second
)

// Errors returned by Schedule and Every.
var (
	// ErrConnectionKind: the kind belongs to connections (KindWentIdle..KindActiveCheck) or is zero; node
	// jobs use KindAllocationRefresh and above.
	ErrConnectionKind = errors.New("idle: kind is reserved for connection timers")
	// ErrPeriod: a periodic job needs a positive period.
	ErrPeriod = errors.New("idle: period must be positive")
)

// Config configures a Scheduler. Zero fields take the defaults.
type Config struct {
	// IdleAfter is how long a connection stays Active without Activity (default 20 s).
	IdleAfter time.Duration
	// KeepaliveInterval is the period of the shared NAT keepalive tick of idle connections (default 25 s).
	KeepaliveInterval time.Duration
	// ActiveInterval is the period of the shared KindActiveCheck tick of active connections (default 5 s);
	// negative disables active checks.
	ActiveInterval time.Duration
	// Slack is how early work may run so that it shares a wake-up with earlier work (default 1 s; negative
	// means none). It is clamped below half the shortest of the tick periods and IdleAfter.
	Slack time.Duration
	// Epoch anchors the tick grids (Epoch + k*period); zero means the first now passed to Add, NextTick or
	// AlignBefore.
	Epoch time.Time
	// LastActivity, if set, lets the data path record packets without calling Activity (e.g. in an atomic
	// per connection, with no lock): the Scheduler asks it for an active connection's latest packet time
	// before letting that connection go idle, from NextWake and Poll only. It must be cheap, must not call
	// the Scheduler, and may return the zero time. A packet on an IDLE connection must still be reported
	// with Activity, at once.
	LastActivity func(id string) time.Time
	// Logger receives debug logs of state changes; nil discards.
	Logger *slog.Logger
	// MeterProvider provides the wake-up counters; nil means no metrics.
	MeterProvider metric.MeterProvider
}

func (c Config) normalized() Config {
	if c.IdleAfter <= 0 {
		c.IdleAfter = DefaultIdleAfter
	}
	if c.KeepaliveInterval <= 0 {
		c.KeepaliveInterval = DefaultKeepaliveInterval
	}
	if c.ActiveInterval == 0 {
		c.ActiveInterval = DefaultActiveInterval
	}
	switch {
	case c.Slack == 0:
		c.Slack = DefaultSlack
	case c.Slack < 0:
		c.Slack = 0
	}
	// The idle deadline counts too: a connection woken by Activity must stay active for at least half of
	// IdleAfter, not go idle again at the next wake-up because its deadline fell inside the slack.
	shortest := min(c.KeepaliveInterval, c.IdleAfter)
	if c.ActiveInterval > 0 && c.ActiveInterval < shortest {
		shortest = c.ActiveInterval
	}
	if c.Slack >= shortest/2 {
		c.Slack = shortest/2 - 1
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.MeterProvider == nil {
		c.MeterProvider = noop.NewMeterProvider()
	}
	return c
}

type conn struct {
	id        string
	state     State
	last      time.Time // latest Activity (or Add)
	idleSince time.Time // last+IdleAfter when it went idle; zero while active
	deadline  *entry    // idle deadline in the heap while active
}

// Scheduler is the sans-IO idle-aware timer core. Create it with New. It is not safe for concurrent use.
type Scheduler struct {
	cfg      Config
	log      *slog.Logger
	epoch    time.Time
	anchored bool

	conns         map[string]*conn
	active, idle  int       // connections per state
	nextActive    time.Time // next active-check tick; valid while active > 0
	nextKeepalive time.Time // next NAT keepalive tick; valid while idle > 0

	timers timerHeap
	jobs   map[JobID]*entry

	wakeups, spurious   uint64
	mWakeups, mSpurious metric.Int64Counter
}

// New returns a Scheduler with no connections and no jobs: NextWake reports nothing due.
func New(cfg Config) *Scheduler {
	cfg = cfg.normalized()
	s := &Scheduler{
		cfg:   cfg,
		log:   cfg.Logger,
		conns: make(map[string]*conn),
		jobs:  make(map[JobID]*entry),
	}
	if !cfg.Epoch.IsZero() {
		s.epoch, s.anchored = cfg.Epoch, true
	}
	meter := cfg.MeterProvider.Meter("github.com/snowgate/snowgate/node/idle")
	var err error
	if s.mWakeups, err = meter.Int64Counter("snowgate.node.wakeups", metric.WithUnit("{wakeup}"),
		metric.WithDescription("Timer wake-ups of the node that found work due")); err != nil {
		s.log.Warn("idle: wake-up counter unavailable", "error", err)
		s.mWakeups = noop.Int64Counter{}
	}
	if s.mSpurious, err = meter.Int64Counter("snowgate.node.wakeups.spurious", metric.WithUnit("{wakeup}"),
		metric.WithDescription("Timer wake-ups of the node that found nothing due")); err != nil {
		s.log.Warn("idle: spurious wake-up counter unavailable", "error", err)
		s.mSpurious = noop.Int64Counter{}
	}
	return s
}

// Config returns the effective configuration (defaults applied, Slack clamped).
func (s *Scheduler) Config() Config { return s.cfg }

func (s *Scheduler) anchor(now time.Time) {
	if !s.anchored {
		s.epoch, s.anchored = now, true
	}
}

// tickAfter returns the first grid point Epoch + k*period strictly after t.
func (s *Scheduler) tickAfter(t time.Time, period time.Duration) time.Time {
	d := t.Sub(s.epoch)
	k := d / period
	if d < 0 && d%period != 0 {
		k--
	}
	return s.epoch.Add((k + 1) * period)
}

// Add starts tracking connection id as Active at now. Adding a known id counts as Activity.
func (s *Scheduler) Add(id string, now time.Time) {
	s.anchor(now)
	if _, ok := s.conns[id]; ok {
		s.Activity(id, now)
		return
	}
	c := &conn{id: id, last: now}
	s.conns[id] = c
	s.activate(c, now)
}

// Activity records a packet (or an upsert) on connection id at now: an idle connection is Active again
// at once and leaves the keepalive batch. On an active connection it only stores the time. Unknown ids are
// ignored.
func (s *Scheduler) Activity(id string, now time.Time) {
	c, ok := s.conns[id]
	if !ok {
		return
	}
	if now.After(c.last) {
		c.last = now
	}
	if c.state == Idle {
		s.idle--
		s.activate(c, now)
		s.log.Debug("connection active", "connection", id)
	}
}

// activate puts c (new or idle) into the active batch with its idle deadline.
func (s *Scheduler) activate(c *conn, now time.Time) {
	c.state, c.idleSince = Active, time.Time{}
	s.active++
	if s.active == 1 && s.cfg.ActiveInterval > 0 {
		s.nextActive = s.tickAfter(now.Add(s.cfg.Slack), s.cfg.ActiveInterval)
	}
	c.deadline = &entry{at: c.last.Add(s.cfg.IdleAfter), id: JobID{KindWentIdle, c.id}, c: c}
	heap.Push(&s.timers, c.deadline)
}

// Remove stops tracking connection id and drops all its timers. Unknown ids are ignored.
func (s *Scheduler) Remove(id string) {
	c, ok := s.conns[id]
	if !ok {
		return
	}
	delete(s.conns, id)
	if c.state == Idle {
		s.idle--
		return
	}
	s.active--
	heap.Remove(&s.timers, c.deadline.index)
	c.deadline = nil
}

// Schedule registers the one-shot node job id, due at at, replacing any job with the same id.
func (s *Scheduler) Schedule(id JobID, at time.Time) error {
	return s.schedule(id, at, 0)
}

// Every registers the periodic node job id, first due at first and then every period after the time it
// was due (missed periods are skipped), replacing any job with the same id.
func (s *Scheduler) Every(id JobID, first time.Time, period time.Duration) error {
	if period <= 0 {
		return fmt.Errorf("every %v (%v): %w", id, period, ErrPeriod)
	}
	return s.schedule(id, first, period)
}

func (s *Scheduler) schedule(id JobID, at time.Time, period time.Duration) error {
	if id.Kind == 0 || id.Kind.Connection() {
		return fmt.Errorf("schedule %v: %w", id, ErrConnectionKind)
	}
	if e, ok := s.jobs[id]; ok {
		e.at, e.period = at, period
		heap.Fix(&s.timers, e.index)
		return nil
	}
	e := &entry{at: at, id: id, period: period}
	s.jobs[id] = e
	heap.Push(&s.timers, e)
	return nil
}

// Cancel drops node job id and reports whether it existed.
func (s *Scheduler) Cancel(id JobID) bool {
	e, ok := s.jobs[id]
	if !ok {
		return false
	}
	delete(s.jobs, id)
	heap.Remove(&s.timers, e.index)
	return true
}

// Scheduled returns when node job id is next due, or false if no such job is registered.
func (s *Scheduler) Scheduled(id JobID) (time.Time, bool) {
	e, ok := s.jobs[id]
	if !ok {
		return time.Time{}, false
	}
	return e.at, true
}

// NextTick returns the first tick of the grid with the given period strictly after now. Use it with
// period KeepaliveInterval as the first due time of relay keepalives so they share the idle batch's
// wake-ups. A non-positive period returns now.
func (s *Scheduler) NextTick(now time.Time, period time.Duration) time.Time {
	s.anchor(now)
	if period <= 0 {
		return now
	}
	return s.tickAfter(now, period)
}

// AlignBefore returns the latest keepalive tick in (now, deadline], or deadline if there is none: the
// time to schedule a refresh that must happen by deadline without a wake-up of its own.
func (s *Scheduler) AlignBefore(now, deadline time.Time) time.Time {
	s.anchor(now)
	k := s.cfg.KeepaliveInterval
	g := s.tickAfter(deadline, k).Add(-k) // latest tick <= deadline
	if g.After(now) {
		return g
	}
	return deadline
}

// fixTop makes the heap's first entry exact: idle deadlines are stored lazily (Activity and
// Config.LastActivity only move conn.last), so an entry's at may be earlier than its connection's real
// deadline, never later.
func (s *Scheduler) fixTop() {
	for len(s.timers) > 0 {
		e := s.timers[0]
		if e.c == nil {
			return
		}
		if f := s.cfg.LastActivity; f != nil {
			if t := f(e.c.id); t.After(e.c.last) {
				e.c.last = t
			}
		}
		real := e.c.last.Add(s.cfg.IdleAfter)
		if !real.After(e.at) {
			return
		}
		e.at = real
		heap.Fix(&s.timers, 0)
	}
}

// NextWake returns the earliest instant anything is due, or false when nothing is: then the node must
// not wake for this Scheduler at all. It may reorder internal state but changes no outcome.
func (s *Scheduler) NextWake() (time.Time, bool) {
	s.fixTop()
	var next time.Time
	ok := false
	consider := func(t time.Time) {
		if !ok || t.Before(next) {
			next, ok = t, true
		}
	}
	if len(s.timers) > 0 {
		consider(s.timers[0].at)
	}
	if s.active > 0 && s.cfg.ActiveInterval > 0 {
		consider(s.nextActive)
	}
	if s.idle > 0 {
		consider(s.nextKeepalive)
	}
	return next, ok
}

// Poll returns every piece of work due at or before now+Slack, sorted by due time, kind and key, and
// advances the timers past it. Within one Poll: the NAT keepalive batch covers the connections idle when
// Poll starts; then connections whose idle deadline passed go idle (KindWentIdle); then the active-check
// batch covers the connections still active.
func (s *Scheduler) Poll(now time.Time) []Due {
	limit := now.Add(s.cfg.Slack)
	var out []Due

	if s.idle > 0 && !s.nextKeepalive.After(limit) {
		out = make([]Due, 0, s.idle+1)
		for _, c := range s.conns {
			if c.state == Idle {
				out = append(out, Due{JobID{KindNATKeepalive, c.id}, s.nextKeepalive})
			}
		}
		s.nextKeepalive = s.tickAfter(limit, s.cfg.KeepaliveInterval)
	}

	for s.fixTop(); len(s.timers) > 0 && !s.timers[0].at.After(limit); s.fixTop() {
		e := s.timers[0]
		out = append(out, Due{e.id, e.at})
		switch {
		case e.c != nil:
			heap.Pop(&s.timers)
			s.toIdle(e.c, limit)
		case e.period > 0:
			n := limit.Sub(e.at)/e.period + 1
			e.at = e.at.Add(n * e.period)
			heap.Fix(&s.timers, 0)
		default:
			heap.Pop(&s.timers)
			delete(s.jobs, e.id)
		}
	}

	if s.active > 0 && s.cfg.ActiveInterval > 0 && !s.nextActive.After(limit) {
		for _, c := range s.conns {
			if c.state == Active {
				out = append(out, Due{JobID{KindActiveCheck, c.id}, s.nextActive})
			}
		}
		s.nextActive = s.tickAfter(limit, s.cfg.ActiveInterval)
	}

	if len(out) == 0 {
		s.spurious++
		s.mSpurious.Add(context.Background(), 1)
		return nil
	}
	s.wakeups++
	s.mWakeups.Add(context.Background(), 1)
	slices.SortFunc(out, compareDue)
	return out
}

func (s *Scheduler) toIdle(c *conn, limit time.Time) {
	c.deadline = nil
	c.state, c.idleSince = Idle, c.last.Add(s.cfg.IdleAfter)
	s.active--
	s.idle++
	if s.idle == 1 {
		s.nextKeepalive = s.tickAfter(limit, s.cfg.KeepaliveInterval)
	}
	s.log.Debug("connection idle", "connection", c.id)
}

func compareDue(a, b Due) int {
	if c := a.At.Compare(b.At); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Job.Kind, b.Job.Kind); c != 0 {
		return c
	}
	return strings.Compare(a.Job.Key, b.Job.Key)
}

// Wakeups returns how many Polls returned work: the node's timer wake-ups that were needed.
func (s *Scheduler) Wakeups() uint64 { return s.wakeups }

// Spurious returns how many Polls returned nothing (the driver woke for nothing, e.g. too early).
func (s *Scheduler) Spurious() uint64 { return s.spurious }

// State returns connection id's state, or false if it is unknown.
func (s *Scheduler) State(id string) (State, bool) {
	c, ok := s.conns[id]
	if !ok {
		return 0, false
	}
	return c.state, true
}

// IdleSince returns when connection id went idle (its last activity plus IdleAfter), or false if it is
// unknown or active.
func (s *Scheduler) IdleSince(id string) (time.Time, bool) {
	c, ok := s.conns[id]
	if !ok || c.state != Idle {
		return time.Time{}, false
	}
	return c.idleSince, true
}

// LastActivity returns the latest Activity (or Add) time of connection id known to the Scheduler, or
// false if it is unknown. With Config.LastActivity set it may lag behind until the connection's idle
// deadline is checked.
func (s *Scheduler) LastActivity(id string) (time.Time, bool) {
	c, ok := s.conns[id]
	if !ok {
		return time.Time{}, false
	}
	return c.last, true
}

// Counts returns how many connections are active and idle.
func (s *Scheduler) Counts() (active, idle int) { return s.active, s.idle }
