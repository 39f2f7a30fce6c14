package tunnel

import (
	"context"
	"encoding/json"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/node"
	"github.com/snowgate/snowgate/node/nodetest"
)

var (
	t0      = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	local   = netip.MustParseAddrPort("127.0.0.1:40000")
	remote  = netip.MustParseAddrPort("127.0.0.1:50000")
	relayed = node.ConnStats{ID: "gw", Path: node.PathRelay, RelayID: "r1", LocalAddr: local, RemoteAddr: remote,
		RTT: 1500 * time.Microsecond, RxBytes: 10, TxBytes: 20, Established: true}
)

func TestConnectionReports(t *testing.T) {
	stats := []node.ConnStats{
		{ID: "z", Path: node.PathHost, LocalAddr: netip.MustParseAddrPort("[::ffff:127.0.0.1]:1"), RemoteAddr: remote, Established: true, Idle: true},
		relayed,
		{ID: "a", Path: node.PathRelay, RelayID: "r9", LocalAddr: local, RxBytes: 5}, // not established (any more)
		{ID: "s", Path: node.PathServerReflexive, RelayID: "r1", Established: true},
	}
	got := ConnectionReports(stats)
	want := []portalapi.ConnectionReport{
		{PeerID: "a", Path: portalapi.PathNone, RxBytes: 5},
		{PeerID: "gw", Path: portalapi.PathRelay, RelayID: "r1", Local: local, Remote: remote, RTTMillis: 1.5, RxBytes: 10, TxBytes: 20},
		{PeerID: "s", Path: portalapi.PathSrflx},
		{PeerID: "z", Path: portalapi.PathHost, Local: netip.MustParseAddrPort("127.0.0.1:1"), Remote: remote, Idle: true},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("reports\n got %+v\nwant %+v", got, want)
	}
	if err := (portalapi.ReportConnections{Connections: got}).Validate(); err != nil {
		t.Fatalf("the portal would refuse the report: %v", err)
	}
}

// repStep runs the reporter's timers up to now and, if a check is due, answers it with stats; it returns
// the pushed report (ok false: none).
func repStep(t *testing.T, r *reporter, now time.Time, stats []node.ConnStats) (portalapi.ReportConnections, bool) {
	t.Helper()
	r.timeout(now)
	if !r.pollCheck() {
		return portalapi.ReportConnections{}, false
	}
	return r.handleStats(stats, now)
}

func TestReporterSchedule(t *testing.T) {
	r := newReporter(DefaultReportInterval)
	// Away from the portal: events and traffic plan nothing.
	r.changed(t0)
	r.packets(t0)
	if d, ok := r.pollTimeout(); ok {
		t.Fatalf("check planned while the portal is away: %v", d)
	}
	// Joined with no connections: a check, nothing to push, no timer left.
	r.portalState(true, t0)
	if d, ok := r.pollTimeout(); !ok || !d.Equal(t0) {
		t.Fatalf("after joining: deadline %v %v, want now", d, ok)
	}
	if _, ok := repStep(t, &r, t0, nil); ok {
		t.Fatal("an empty report was pushed on the first join")
	}
	if d, ok := r.pollTimeout(); ok {
		t.Fatalf("idle with no connections, a check is planned at %v", d)
	}

	// A connection is established: checked at once (but not within reportMinGap of the last check).
	now := t0.Add(100 * time.Millisecond)
	r.changed(now)
	if d, _ := r.pollTimeout(); !d.Equal(t0.Add(reportMinGap)) {
		t.Fatalf("event right after a check: deadline %v, want %v", d, t0.Add(reportMinGap))
	}
	if _, ok := repStep(t, &r, now, []node.ConnStats{relayed}); ok {
		t.Fatal("checked before the deadline")
	}
	now = t0.Add(reportMinGap)
	rep, ok := repStep(t, &r, now, []node.ConnStats{relayed})
	if !ok || len(rep.Connections) != 1 || rep.Connections[0].RelayID != "r1" {
		t.Fatalf("report after establishment: %+v %v", rep, ok)
	}
	// A change is checked again one interval later; unchanged, the connection (not idle) gets one settle check.
	if d, _ := r.pollTimeout(); !d.Equal(now.Add(DefaultReportInterval)) {
		t.Fatalf("deadline after a change %v", d)
	}
	now = now.Add(DefaultReportInterval)
	if _, ok := repStep(t, &r, now, []node.ConnStats{relayed}); ok {
		t.Fatal("an unchanged picture was pushed again")
	}
	if d, _ := r.pollTimeout(); !d.Equal(now.Add(reportSettle)) {
		t.Fatalf("settle deadline %v, want %v", d, now.Add(reportSettle))
	}
	// Traffic brings the check forward to one interval after the last; many packets, one check.
	traffic := now.Add(time.Second)
	for i := range 100 {
		r.packets(traffic.Add(time.Duration(i) * time.Millisecond))
	}
	if d, _ := r.pollTimeout(); !d.Equal(now.Add(DefaultReportInterval)) {
		t.Fatalf("deadline with traffic %v", d)
	}
	busy := relayed
	busy.RxBytes, busy.TxBytes = 5000, 6000
	now = now.Add(DefaultReportInterval)
	if rep, ok := repStep(t, &r, now, []node.ConnStats{busy}); !ok || rep.Connections[0].RxBytes != 5000 {
		t.Fatalf("report of the traffic: %+v %v", rep, ok)
	}
	// Quiet again: one check finds nothing new, the settle check sees the connection idle, then nothing.
	now = now.Add(DefaultReportInterval)
	if _, ok := repStep(t, &r, now, []node.ConnStats{busy}); ok {
		t.Fatal("pushed without a change")
	}
	d, ok := r.pollTimeout()
	if !ok || !d.Equal(now.Add(reportSettle)) {
		t.Fatalf("settle deadline %v %v", d, ok)
	}
	idle := busy
	idle.Idle = true
	now = d
	if rep, ok := repStep(t, &r, now, []node.ConnStats{idle}); !ok || !rep.Connections[0].Idle {
		t.Fatalf("idle not reported: %+v %v", rep, ok)
	}
	now = now.Add(DefaultReportInterval)
	if _, ok := repStep(t, &r, now, []node.ConnStats{idle}); ok {
		t.Fatal("pushed without a change")
	}
	if d, ok := r.pollTimeout(); ok {
		t.Fatalf("every connection idle, yet a check is planned at %v", d)
	}

	// The portal goes away: nothing is planned; back, the unchanged picture is sent again.
	r.portalState(false, now)
	r.changed(now)
	if _, ok := r.pollTimeout(); ok {
		t.Fatal("check planned while the portal is away")
	}
	now = now.Add(time.Minute)
	r.portalState(true, now)
	if rep, ok := repStep(t, &r, now, []node.ConnStats{idle}); !ok || len(rep.Connections) != 1 {
		t.Fatalf("rejoin: %+v %v", rep, ok)
	}
	// The connection is removed: an empty report says so.
	now = now.Add(time.Second)
	r.changed(now)
	if rep, ok := repStep(t, &r, now, nil); !ok || rep.Connections == nil || len(rep.Connections) != 0 {
		t.Fatalf("removal: %+v %v", rep, ok)
	}
}

func TestReporterCheckInFlight(t *testing.T) {
	r := newReporter(DefaultReportInterval)
	r.portalState(true, t0)
	r.timeout(t0)
	if !r.pollCheck() {
		t.Fatal("no check after joining")
	}
	// An event while the driver reads the stats plans another check, which waits for the first.
	r.changed(t0)
	if _, ok := r.pollTimeout(); ok {
		t.Fatal("a second check planned while the first is out")
	}
	r.timeout(t0.Add(time.Second))
	if r.pollCheck() {
		t.Fatal("two checks out at once")
	}
	r.handleStats(nil, t0.Add(time.Second))
	if d, ok := r.pollTimeout(); !ok || d.After(t0.Add(time.Second)) {
		t.Fatalf("the event during the check was lost: %v %v", d, ok)
	}
}

// pushRecorder is a PortalClient that keeps the payloads of report_connections.
type pushRecorder struct {
	events  chan phoenix.Event
	mu      sync.Mutex
	reports []portalapi.ReportConnections
	other   []string
}

func (p *pushRecorder) Connect(context.Context, string) error { return nil }
func (p *pushRecorder) Join(string, any)                      {}
func (p *pushRecorder) Reconnect()                            {}
func (p *pushRecorder) Events() <-chan phoenix.Event          { return p.events }
func (p *pushRecorder) Push(_, event string, payload any) (phoenix.Ref, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if r, ok := payload.(portalapi.ReportConnections); ok && event == portalapi.EventReportConnections {
		// What goes on the wire: it must pass the portal's validation.
		b, _ := json.Marshal(r)
		var back portalapi.ReportConnections
		if err := json.Unmarshal(b, &back); err != nil || back.Validate() != nil {
			p.other = append(p.other, "invalid report")
		}
		p.reports = append(p.reports, back)
		return phoenix.Ref{}, nil
	}
	p.other = append(p.other, event)
	return phoenix.Ref{}, nil
}

func (p *pushRecorder) Reports() []portalapi.ReportConnections {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.reports)
}

// countingNode counts the driver's Stats calls (its checks).
type countingNode struct {
	*nodetest.Fake
	stats atomic.Int32
}

func (n *countingNode) Stats() []node.ConnStats {
	n.stats.Add(1)
	return n.Fake.Stats()
}

// TestDriverReportsConnections runs a driver on the fake node in a synctest bubble: reports follow the
// connection's life (created, established, traffic, gone) and stop while the portal is away and while
// nothing happens.
func TestDriverReportsConnections(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		core := &recCore{}
		fake := &countingNode{Fake: nodetest.NewFake()}
		portal := &pushRecorder{events: make(chan phoenix.Event, 16)}
		d, err := NewDriver(DriverConfig{Core: core, Topic: portalapi.TopicClient, Decode: portalapi.DecodeClientIngress})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- d.Run(ctx, fake, portal, &fakeInj{}) }()
		defer func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}()
		last := func() portalapi.ReportConnections {
			t.Helper()
			rs := portal.Reports()
			if len(rs) == 0 {
				t.Fatal("no report pushed")
			}
			return rs[len(rs)-1]
		}

		portal.events <- phoenix.Event{Kind: phoenix.EventJoined, Topic: "client"}
		time.Sleep(time.Second)
		synctest.Wait()
		if n := len(portal.Reports()); n != 0 {
			t.Fatalf("%d reports with no connection", n)
		}
		// init makes the core create connection "gw": reported without a path.
		payload, _ := json.Marshal(portalapi.ClientInit{})
		portal.events <- phoenix.Event{Kind: phoenix.EventMessage, Topic: "client", Event: "init", Payload: payload}
		time.Sleep(time.Second)
		synctest.Wait()
		if r := last(); len(r.Connections) != 1 || r.Connections[0].PeerID != "gw" || r.Connections[0].Path != portalapi.PathNone {
			t.Fatalf("report of the new connection %+v", r)
		}
		// Established through relay r1.
		fake.SetStats("gw", relayed)
		if err := fake.Establish("gw", node.PathRelay, local, remote); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if r := last(); r.Connections[0].Path != portalapi.PathRelay || r.Connections[0].RelayID != "r1" || r.Connections[0].Remote != remote {
			t.Fatalf("report of the established connection %+v", r)
		}

		// Nothing happens for ten minutes: at most the settle check, no push.
		n, checks := len(portal.Reports()), fake.stats.Load()
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		if got := len(portal.Reports()); got != n {
			t.Fatalf("%d reports pushed while nothing changed", got-n)
		}
		if c := fake.stats.Load() - checks; c > 2 {
			t.Fatalf("%d checks in ten idle minutes, want at most 2 (one interval, one settle)", c)
		}

		// Traffic for 20 s: the figures are reported every interval, not per packet.
		n = len(portal.Reports())
		start := time.Now()
		for i := range 200 {
			busy := relayed
			busy.RxBytes = uint64(100 * (i + 1))
			fake.SetStats("gw", busy)
			keep := []bool{true}
			d.Inbound([][]byte{{0x45}}, keep)
			time.Sleep(100 * time.Millisecond)
		}
		elapsed := time.Since(start)
		synctest.Wait()
		pushed := len(portal.Reports()) - n
		if max := int(elapsed/DefaultReportInterval) + 1; pushed < 3 || pushed > max {
			t.Fatalf("%d reports during %v of traffic, want 3..%d", pushed, elapsed, max)
		}

		// The portal goes away: a failure is not pushed; back, the current picture is.
		portal.events <- phoenix.Event{Kind: phoenix.EventDisconnected}
		time.Sleep(time.Second)
		synctest.Wait()
		n = len(portal.Reports())
		fake.SetStats("gw", node.ConnStats{})
		if err := fake.Fail("gw", nil); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := len(portal.Reports()); got != n {
			t.Fatalf("%d reports pushed while the portal was away", got-n)
		}
		portal.events <- phoenix.Event{Kind: phoenix.EventJoined, Topic: "client"}
		time.Sleep(time.Second)
		synctest.Wait()
		if r := last(); len(portal.Reports()) != n+1 || r.Connections[0].Path != portalapi.PathNone {
			t.Fatalf("report after rejoining: %+v (%d new)", r, len(portal.Reports())-n)
		}

		// The core removes the connection: an empty report.
		d.Do(func(time.Time) { core.actions = append(core.actions, NodeRemove{ID: "gw"}) })
		time.Sleep(time.Second)
		synctest.Wait()
		if r := last(); r.Connections == nil || len(r.Connections) != 0 {
			t.Fatalf("report after removal %+v", r)
		}
		portal.mu.Lock()
		defer portal.mu.Unlock()
		if !slices.Equal(portal.other, []string{"flow_authorized"}) { // the init's answer (recCore)
			t.Fatalf("other pushes: %v", portal.other)
		}
	})
}

func TestDriverReportsOff(t *testing.T) {
	d, err := NewDriver(DriverConfig{Core: &recCore{}, Topic: "client", Decode: portalapi.DecodeClientIngress, ReportInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	if d.rc != nil {
		t.Fatal("reports on with a negative interval")
	}
}
