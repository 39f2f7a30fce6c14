package server

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/snowgate/snowgate/client/dns"
)

// resultSink collects an Exchanger's results and dropped-answer reports.
type resultSink struct {
	mu      sync.Mutex
	results []Result
	dropped []dns.AnswerDropReason
	got     chan struct{}
}

func newResultSink() *resultSink { return &resultSink{got: make(chan struct{}, 1024)} }

func (rs *resultSink) done(results []Result) {
	rs.mu.Lock()
	for _, r := range results {
		r.Response = slices.Clone(r.Response) // only valid during the call
		rs.results = append(rs.results, r)
	}
	rs.mu.Unlock()
	rs.got <- struct{}{}
}

func (rs *resultSink) drop(r dns.AnswerDropReason) {
	rs.mu.Lock()
	rs.dropped = append(rs.dropped, r)
	rs.mu.Unlock()
}

// next waits for the next Result.
func (rs *resultSink) next(t *testing.T) Result {
	t.Helper()
	deadline := time.After(3 * time.Second)
	for {
		rs.mu.Lock()
		if len(rs.results) > 0 {
			r := rs.results[0]
			rs.results = rs.results[1:]
			rs.mu.Unlock()
			return r
		}
		rs.mu.Unlock()
		select {
		case <-rs.got:
		case <-deadline:
			t.Fatal("no result from the exchanger")
		}
	}
}

func (rs *resultSink) pending() int {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return len(rs.results)
}

func newTestExchanger(t *testing.T, cfg ExchangerConfig) (*Exchanger, *resultSink) {
	t.Helper()
	rs := newResultSink()
	cfg.Done, cfg.OnDropped = rs.done, rs.drop
	ex, err := NewExchanger(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ex.Close() })
	return ex, rs
}

// forwardTo builds a forward of an A query for name with DNS id qid.
func forwardTo(t *testing.T, id dns.ForwardID, up netip.AddrPort, tr dns.Transport, name string, qid uint16) dns.Forward {
	t.Helper()
	q := new(mdns.Msg)
	q.SetQuestion(name, mdns.TypeA)
	q.Id = qid
	b, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return dns.Forward{ID: id, Upstream: up, Transport: tr, Query: b, Deadline: time.Now().Add(time.Minute)}
}

// TestExchangerUDP: the Exchanger used on its own, as a daemon owning the resolver would. Two UDP forwards
// to one upstream leave from the pool under random ids; an answer comes back as the forward's Result with the
// application's id; a cancelled forward gets no Result and its answer is dropped (reported as "id").
func TestExchangerUDP(t *testing.T) {
	ru := newRawUpstream(t)
	ex, rs := newTestExchanger(t, ExchangerConfig{})
	ex.Exchange(forwardTo(t, 1, ru.addr(), dns.UDP, "one.example.org.", 101), forwardTo(t, 2, ru.addr(), dns.UDP, "two.example.org.", 102))
	q1, from1 := ru.readQuery(t)
	q2, from2 := ru.readQuery(t)
	if q1.Question[0].Name != "one.example.org." {
		q1, q2, from1, from2 = q2, q1, from2, from1
	}
	if q1.Id == 101 && q2.Id == 102 {
		t.Errorf("queries left under the applications' ids")
	}
	ex.Cancel(2)
	for _, a := range []struct {
		q    *mdns.Msg
		from netip.AddrPort
	}{{q2, from2}, {q1, from1}} {
		if _, err := ru.conn.WriteToUDPAddrPort(reply(t, a.q, 7, nil), a.from); err != nil {
			t.Fatal(err)
		}
	}
	r := rs.next(t)
	m := new(mdns.Msg)
	if r.ID != 1 || r.Err != nil || m.Unpack(r.Response) != nil || m.Id != 101 || len(m.Answer) != 1 {
		t.Fatalf("result %+v (%v), want forward 1's answer under id 101", r, m)
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		rs.mu.Lock()
		dropped := slices.Clone(rs.dropped)
		rs.mu.Unlock()
		if slices.Equal(dropped, []dns.AnswerDropReason{dns.DropUnknownID}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dropped answers %v, want the cancelled forward's as \"id\"", dropped)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := rs.pending(); n != 0 {
		t.Errorf("%d more results, want none for the cancelled forward", n)
	}
}

// TestExchangerTCPRoam: a TCP forward runs over a connection of its own; Roam resets it (RST) and delivers no
// Result; the next forward leaves from a new local port and gets its Result. An upstream that closes the
// connection mid-query gives an error Result.
func TestExchangerTCPRoam(t *testing.T) {
	up := startScriptedTCPUpstream(t)
	ex, rs := newTestExchanger(t, ExchangerConfig{})
	ex.Exchange(forwardTo(t, 1, up.addr, dns.TCP, "hang.test.", 1))
	hung := up.nextQuery(t)
	ex.Roam()
	select {
	case e := <-up.ended:
		if e.from != hung.from || !errors.Is(e.err, syscall.ECONNRESET) {
			t.Errorf("upstream connection %s ended with %v, want %s reset", e.from, e.err, hung.from)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the upstream TCP connection survived the roam")
	}
	ex.Exchange(forwardTo(t, 2, up.addr, dns.TCP, "ok.test.", 2))
	if q := up.nextQuery(t); q.from.Port() == hung.from.Port() {
		t.Errorf("query after the roam from the old port %d", q.from.Port())
	}
	r := rs.next(t)
	m := new(mdns.Msg)
	if r.ID != 2 || r.Err != nil || m.Unpack(r.Response) != nil || m.Id != 2 {
		t.Fatalf("result %+v, want forward 2's answer", r)
	}
	ex.Exchange(forwardTo(t, 3, up.addr, dns.TCP, "close.test.", 3))
	if r := rs.next(t); r.ID != 3 || r.Err == nil {
		t.Errorf("result %+v, want forward 3 failed", r)
	}
	if n := rs.pending(); n != 0 {
		t.Errorf("%d more results (the roamed forward must get none)", n)
	}
}

// TestExchangerResultsNeverFromCaller: Done is never called from within Exchange, also when a forward fails
// at once (here: the dial fails), so a caller may hold the lock Done takes while it hands forwards over.
// Close ends everything; later forwards get no Result.
func TestExchangerResultsNeverFromCaller(t *testing.T) {
	var mu sync.Mutex // the daemon's core lock
	errDial := errors.New("no route to the upstream")
	results := make(chan Result, 8)
	ex, err := NewExchanger(ExchangerConfig{
		Dial: func(context.Context, string, string) (net.Conn, error) { return nil, errDial },
		Done: func(rs []Result) {
			mu.Lock()
			defer mu.Unlock()
			for _, r := range rs {
				results <- r
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	up := netip.MustParseAddrPort("192.0.2.53:53")
	mu.Lock()
	ex.Exchange(forwardTo(t, 1, up, dns.UDP, "a.test.", 1), forwardTo(t, 2, up, dns.TCP, "b.test.", 2))
	mu.Unlock()
	got := map[dns.ForwardID]error{}
	for range 2 {
		select {
		case r := <-results:
			got[r.ID] = r.Err
		case <-time.After(3 * time.Second):
			t.Fatalf("results %v, want two", got)
		}
	}
	if !errors.Is(got[1], errDial) || !errors.Is(got[2], errDial) {
		t.Errorf("results %v, want both failing with the dial error", got)
	}
	if err := ex.Close(); err != nil {
		t.Fatal(err)
	}
	ex.Exchange(forwardTo(t, 3, up, dns.UDP, "c.test.", 3))
	select {
	case r := <-results:
		t.Errorf("result after Close: %+v", r)
	case <-time.After(50 * time.Millisecond):
	}
	if _, err := NewExchanger(ExchangerConfig{}); err == nil {
		t.Error("NewExchanger without Done succeeded")
	}
}
