package dns

import (
	"errors"
	"maps"
	"net/netip"
	"slices"
	"testing"

	mdns "github.com/miekg/dns"
)

// TestTCPCloseCancelsItsForwards: closing an application's DNS-over-TCP connection lists the forwards of its
// queries in flight for the driver to cancel, drops its forwards not yet handed out, and leaves every other
// query alone, identical queries on another connection or over UDP included (the core never shares a forward
// between queries). Before, HandleTCPClose forgot the queries without telling the driver, whose upstream
// exchanges ran on until an answer or their deadline.
func TestTCPCloseCancelsItsForwards(t *testing.T) {
	r := newTestResolver(t)
	for h := uint64(1); h <= 2; h++ {
		if err := r.HandleTCPAccept(sent1, h); err != nil {
			t.Fatal(err)
		}
	}
	conn := func(h uint64) Source {
		return Source{Transport: TCP, Client: appClient, Server: netip.AddrPortFrom(sent1, 53), Handle: h}
	}
	send := func(src Source, name string, id uint16) Forward {
		t.Helper()
		if _, ok := r.HandleQuery(src, query(t, name, mdns.TypeA, id), t0, nil); ok {
			t.Fatalf("%s answered locally", name)
		}
		f, ok := r.PollForward()
		if !ok {
			t.Fatalf("%s not forwarded", name)
		}
		return f
	}
	f1 := send(conn(1), "hang.org", 5)
	f2 := send(conn(1), "other.org", 6)
	f3 := send(conn(2), "hang.org", 5) // the same query on another connection
	f4 := send(udpSrc(sent1), "hang.org", 5)
	if ids := []ForwardID{f1.ID, f2.ID, f3.ID, f4.ID}; len(slices.Compact(slices.Sorted(slices.Values(ids)))) != 4 {
		t.Fatalf("identical queries share a forward: %v", ids)
	}
	// A query on connection 1 whose forward the driver has not taken yet.
	if _, ok := r.HandleQuery(conn(1), query(t, "queued.org", mdns.TypeA, 7), t0, nil); ok {
		t.Fatal("queued.org answered locally")
	}
	droppedBefore := r.counts[outDropped].Load()

	res := r.HandleTCPClose(1)
	if want := []ForwardID{f1.ID, f2.ID}; !slices.Equal(res.Cancelled, want) {
		t.Errorf("cancelled %v, want %v", res.Cancelled, want)
	}
	if f, ok := r.PollForward(); ok {
		t.Errorf("forward for the closed connection still handed out: %+v", f)
	}
	if rep, ok := r.PollReply(); ok {
		t.Errorf("reply after close: %+v", rep)
	}
	if n := r.InFlight(); n != 2 {
		t.Errorf("%d in flight after close, want 2", n)
	}
	if got := r.counts[outDropped].Load() - droppedBefore; got != 3 {
		t.Errorf("%d queries counted dropped on close, want 3", got)
	}
	if n := r.TCPConns(sent1); n != 1 {
		t.Errorf("%d connections after close, want 1", n)
	}

	// The cancelled exchanges' late results change nothing.
	r.HandleUpstreamResponse(f1.ID, answerTo(t, f1.Query, nil), t0)
	r.HandleUpstreamError(f2.ID, errors.New("cancelled"), t0)
	if rep, ok := r.PollReply(); ok {
		t.Errorf("reply for a cancelled forward: %+v", rep)
	}
	// The identical queries still get their answers.
	r.HandleUpstreamResponse(f3.ID, answerTo(t, f3.Query, nil), t0)
	if !r.HandleUpstreamPacket(up1, answerTo(t, f4.Query, nil), t0) {
		t.Error("UDP answer for the identical query did not match")
	}
	got := map[Source]uint16{}
	for rep, ok := r.PollReply(); ok; rep, ok = r.PollReply() {
		got[rep.To] = unpack(t, rep.Payload).Id
	}
	if want := map[Source]uint16{conn(2): 5, udpSrc(sent1): 5}; !maps.Equal(got, want) {
		t.Errorf("replies %v, want %v", got, want)
	}

	// Closing again, or an unknown connection, cancels nothing.
	if res := r.HandleTCPClose(1); len(res.Cancelled) != 0 {
		t.Errorf("second close cancelled %v", res.Cancelled)
	}
	if res := r.HandleTCPClose(42); len(res.Cancelled) != 0 {
		t.Errorf("close of an unknown connection cancelled %v", res.Cancelled)
	}
}
