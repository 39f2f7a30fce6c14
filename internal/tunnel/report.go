package tunnel

import (
	"cmp"
	"slices"
	"time"

	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/node"
)

// Connection reports: both daemons tell the portal which path each of their connections takes
// (portalapi.ReportConnections, pushed as report_connections), so that the portal's page shows the truth
// rather than its guess. The driver wraps every core in a reportingCore, whose sans-IO reporter decides when
// to look at the node's statistics:
//
//   - at once (at most every reportMinGap) when a connection's state or path may have changed: a node event
//     (established, failed, a candidate invalidated by a lost relay, no relays left) or a node call of the
//     core (a connection created, removed, the node reset);
//   - while packets flow, at most every report interval (bytes and RTT change);
//   - after a check that found a change, once more an interval later, until a check finds nothing new;
//     then, while an established connection is not idle yet, once more after reportSettle (it goes idle
//     after 20 s without traffic, which no event announces);
//   - on every join of the portal channel (the portal forgets a peer's report when it leaves).
//
// A check reads the node's statistics (a node call, so the driver makes it outside the core's lock) and
// pushes a report only if it differs from the last one the portal got. Nothing is checked or pushed while
// the portal is away, and an idle daemon has no report timer at all.

// DefaultReportInterval is the shortest period of reports while a connection's traffic changes them.
const DefaultReportInterval = 5 * time.Second

const (
	// reportMinGap is the shortest time between two checks, so that a burst of node events (many
	// connections at once) makes a few reports, not one per event.
	reportMinGap = 250 * time.Millisecond
	// reportSettle is the delay of the check that sees established connections go idle (node: 20 s).
	reportSettle = 25 * time.Second
)

// checkConnections asks the driver to read the node's statistics and give them to the reporter
// (reportingCore.handleStats), which pushes a report if they changed.
type checkConnections struct{}

// Kind returns "check_connections".
func (checkConnections) Kind() string { return "check_connections" }

// reporter decides when to check the node's connections and what to push: see above. It is sans-IO.
type reporter struct {
	interval, settle, minGap time.Duration

	joined bool
	// sent is the report the portal holds (nil: none since the channel was joined).
	sent []portalapi.ConnectionReport
	// traffic: packets flowed since the last check became due.
	traffic bool
	// settleDone: the settle check after the latest change is scheduled or done.
	settleDone bool
	lastCheck  time.Time
	// deadline is the next check (zero: none); due says it passed and the check action is next; checking
	// that the action is out with the driver.
	deadline time.Time
	due      bool
	checking bool
}

func newReporter(interval time.Duration) reporter {
	return reporter{interval: interval, settle: reportSettle, minGap: reportMinGap}
}

// schedule asks for a check at t (or earlier, if one is planned already). Nothing is planned while the
// portal is away.
func (r *reporter) schedule(t time.Time) {
	if !r.joined {
		return
	}
	if r.deadline.IsZero() || t.Before(r.deadline) {
		r.deadline = t
	}
}

// changed notes that a connection's state or path may have changed: check soon.
func (r *reporter) changed(now time.Time) {
	r.schedule(later(now, r.lastCheck.Add(r.minGap)))
}

// packets notes traffic: check within an interval of the last check.
func (r *reporter) packets(now time.Time) {
	if r.traffic || !r.joined {
		return
	}
	r.traffic = true
	r.schedule(later(now, r.lastCheck.Add(r.interval)))
}

// portalState follows the portal channel: joined, the portal holds nothing of ours yet, so the current
// picture is sent; away, nothing is checked until the next join.
func (r *reporter) portalState(joined bool, now time.Time) {
	r.joined = joined
	r.sent = nil
	r.deadline, r.due, r.traffic = time.Time{}, false, false
	if joined {
		r.changed(now)
	}
}

// pollTimeout returns the planned check, unless one is out with the driver.
func (r *reporter) pollTimeout() (time.Time, bool) {
	if r.deadline.IsZero() || r.checking || r.due {
		return time.Time{}, false
	}
	return r.deadline, true
}

// timeout makes the check due once its deadline passed.
func (r *reporter) timeout(now time.Time) {
	if r.deadline.IsZero() || r.checking || r.due || now.Before(r.deadline) {
		return
	}
	r.deadline, r.due, r.traffic = time.Time{}, true, false
}

// pollCheck returns true once per due check; the driver must then call handleStats.
func (r *reporter) pollCheck() bool {
	if !r.due {
		return false
	}
	r.due, r.checking = false, true
	return true
}

// handleStats takes a check's result and returns the report to push (ok false: nothing to push).
func (r *reporter) handleStats(stats []node.ConnStats, now time.Time) (portalapi.ReportConnections, bool) {
	r.checking = false
	r.lastCheck = now
	if !r.joined {
		return portalapi.ReportConnections{}, false
	}
	reps := ConnectionReports(stats)
	if slices.Equal(reps, r.sent) || len(reps) == 0 && r.sent == nil {
		if !r.settleDone && anyActive(reps) {
			r.settleDone = true
			r.schedule(now.Add(r.settle))
		}
		return portalapi.ReportConnections{}, false
	}
	r.sent = reps
	r.settleDone = false
	r.schedule(now.Add(r.interval))
	return portalapi.ReportConnections{Connections: slices.Clone(reps)}, true
}

// later returns the later of two times.
func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// anyActive reports whether an established connection is not idle yet.
func anyActive(reps []portalapi.ConnectionReport) bool {
	return slices.ContainsFunc(reps, func(c portalapi.ConnectionReport) bool { return c.Path != portalapi.PathNone && !c.Idle })
}

// ConnectionReports turns the node's statistics into the connections of a report, sorted by peer. A
// connection that is not established has path "none" and no addresses.
func ConnectionReports(stats []node.ConnStats) []portalapi.ConnectionReport {
	out := make([]portalapi.ConnectionReport, 0, len(stats))
	for _, s := range stats {
		c := portalapi.ConnectionReport{
			PeerID: s.ID, Path: portalapi.PathNone,
			RTTMillis: float64(s.RTT.Microseconds()) / 1000, RxBytes: s.RxBytes, TxBytes: s.TxBytes, Idle: s.Idle,
		}
		if s.Established {
			switch s.Path {
			case node.PathHost:
				c.Path = portalapi.PathHost
			case node.PathServerReflexive:
				c.Path = portalapi.PathSrflx
			case node.PathRelay:
				c.Path, c.RelayID = portalapi.PathRelay, s.RelayID
			}
			if s.LocalAddr.IsValid() {
				c.Local = netipUnmap(s.LocalAddr)
			}
			if s.RemoteAddr.IsValid() {
				c.Remote = netipUnmap(s.RemoteAddr)
			}
		}
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b portalapi.ConnectionReport) int { return cmp.Compare(a.PeerID, b.PeerID) })
	return out
}

// reportingCore is the core the driver runs: the daemon's core, plus the reporter fed with what passes
// by (portal state, node events, packets, the core's node calls).
type reportingCore struct {
	Core
	rep     reporter
	now     time.Time // the latest time given to the core (PollAction has none)
	pending []Action  // the reporter's pushes
}

func (c *reportingCore) HandlePortalState(s PortalState, now time.Time) {
	c.now = now
	c.Core.HandlePortalState(s, now)
	c.rep.portalState(s == PortalJoined, now)
}

func (c *reportingCore) HandlePortalMessage(msg portalapi.Message, now time.Time) {
	c.now = now
	c.Core.HandlePortalMessage(msg, now)
}

func (c *reportingCore) HandleNodeEvent(ev node.Event, now time.Time) {
	c.now = now
	c.Core.HandleNodeEvent(ev, now)
	switch ev.Kind {
	case node.EventConnectionEstablished, node.EventConnectionFailed, node.EventCandidateInvalidated, node.EventNoRelays:
		c.rep.changed(now)
	}
}

func (c *reportingCore) HandleActionFailed(a Action, err error, now time.Time) {
	c.now = now
	c.Core.HandleActionFailed(a, err, now)
}

func (c *reportingCore) HandleTunInput(pkt []byte, now time.Time) Verdict {
	c.now = now
	c.rep.packets(now)
	return c.Core.HandleTunInput(pkt, now)
}

func (c *reportingCore) HandleNetworkInput(pkt []byte, now time.Time) Verdict {
	c.now = now
	c.rep.packets(now)
	return c.Core.HandleNetworkInput(pkt, now)
}

func (c *reportingCore) HandleTimeout(now time.Time) {
	c.now = now
	c.Core.HandleTimeout(now)
	c.rep.timeout(now)
}

func (c *reportingCore) PollTimeout() (time.Time, bool) {
	t, ok := c.Core.PollTimeout()
	if rt, rok := c.rep.pollTimeout(); rok && (!ok || rt.Before(t)) {
		return rt, true
	}
	return t, ok
}

// PollAction passes the core's actions on, noting those that change the node's connections, then the
// reporter's pushes and checks.
func (c *reportingCore) PollAction() (Action, bool) {
	if a, ok := c.Core.PollAction(); ok {
		switch a.(type) {
		case NodeUpsert, NodeRemove, NodeReset:
			c.rep.changed(c.now)
		}
		return a, true
	}
	if len(c.pending) > 0 {
		a := c.pending[0]
		c.pending = c.pending[1:]
		return a, true
	}
	if c.rep.pollCheck() {
		return checkConnections{}, true
	}
	return nil, false
}

// handleStats gives the reporter a check's result (the driver calls it, with the core's lock held).
func (c *reportingCore) handleStats(stats []node.ConnStats, now time.Time) {
	c.now = now
	if r, ok := c.rep.handleStats(stats, now); ok {
		c.pending = append(c.pending, PortalPush{Event: portalapi.EventReportConnections, Payload: r})
	}
}
