package server

import (
	"net"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/snowgate/snowgate/client/dns"
)

// TestAppTCPCloseCancelsUpstreamExchange: when an application closes its DNS-over-TCP connection, the
// upstream exchanges of its queries in flight end at once (their upstream TCP connections are closed) instead
// of running on until an answer or their deadline; an identical query on another application connection keeps
// its own exchange, and that connection keeps working. Before, the upstream connection stayed open until the
// deadline (30 s here).
func TestAppTCPCloseCancelsUpstreamExchange(t *testing.T) {
	up := startScriptedTCPUpstream(t)
	st := startStubTimeout(t, up.addr, 30*time.Second)
	dial := func() net.Conn {
		c, err := net.Dial("tcp", st.tcpAddr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	c1, c2 := dial(), dial()
	sendQuery(t, c1, "hang.test.", 7)
	hung1 := up.nextQuery(t)
	sendQuery(t, c2, "hang.test.", 7) // the same query on another connection
	hung2 := up.nextQuery(t)
	waitInFlight(t, st.srv, 2)

	start := time.Now()
	_ = c1.Close()
	select {
	case e := <-up.ended:
		if e.from != hung1.from {
			t.Fatalf("upstream connection %s ended, want %s (the closed application's)", e.from, hung1.from)
		}
		t.Logf("upstream connection closed %v after the application's, with %v", time.Since(start), e.err)
	case <-time.After(3 * time.Second):
		t.Fatal("the upstream exchange of the closed application connection is still open after 3 s")
	}
	st.srv.mu.Lock()
	inFlight := st.srv.r.InFlight()
	st.srv.mu.Unlock()
	st.srv.ex.mu.Lock()
	exchanges := len(st.srv.ex.own)
	st.srv.ex.mu.Unlock()
	if inFlight != 1 || exchanges != 1 {
		t.Errorf("after the close: %d queries in flight, %d exchanges, want 1 and 1", inFlight, exchanges)
	}

	// The other connection's exchange is untouched and the connection still answers.
	sendQuery(t, c2, "ok.test.", 8)
	wantAnswer(t, readAnswer(t, c2), 8, "ok.test.", mdns.RcodeSuccess)
	if q := up.nextQuery(t); q.name != "ok.test." {
		t.Errorf("upstream query %+v, want ok.test.", q)
	}
	select {
	case e := <-up.ended:
		if e.from == hung2.from {
			t.Fatalf("the other connection's upstream exchange ended too: %v", e.err)
		}
	default:
	}
	_ = c2.Close()
	deadline := time.After(3 * time.Second)
	for {
		select {
		case e := <-up.ended:
			if e.from == hung2.from {
				return
			}
		case <-deadline:
			t.Fatal("the second application's upstream exchange is still open after its close")
		}
	}
}

// TestCancelForwardsForgetsUDPPending: cancelling a forward pending on an upstream UDP socket forgets it there,
// so its answer is dropped (counted with reason "id") and never reaches the application.
func TestCancelForwardsForgetsUDPPending(t *testing.T) {
	ru := newRawUpstream(t)
	st := startStubTimeout(t, ru.addr(), 30*time.Second)
	app, err := net.Dial("udp", st.udpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	q := new(mdns.Msg)
	q.SetQuestion("cancel.example.org.", mdns.TypeA)
	qb, _ := q.Pack()
	if _, err := app.Write(qb); err != nil {
		t.Fatal(err)
	}
	up, from := ru.readQuery(t)
	pending := func() []dns.ForwardID {
		st.srv.ex.umu.Lock()
		u := st.srv.ex.udpUps[ru.addr()]
		st.srv.ex.umu.Unlock()
		u.mu.Lock()
		defer u.mu.Unlock()
		var ids []dns.ForwardID
		for sk := range u.all {
			for _, pq := range sk.pending {
				ids = append(ids, pq.fwd)
			}
		}
		return ids
	}
	ids := pending()
	if len(ids) != 1 {
		t.Fatalf("pending UDP forwards %v, want one", ids)
	}
	before := st.droppedAnswers(t)["id"]
	st.srv.ex.Cancel(ids...)
	if ids := pending(); len(ids) != 0 {
		t.Fatalf("pending UDP forwards after cancel: %v", ids)
	}
	if _, err := ru.conn.WriteToUDPAddrPort(reply(t, up, 7, nil), from); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for st.droppedAnswers(t)["id"] == before {
		if time.Now().After(deadline) {
			t.Fatal("the cancelled query's answer was not dropped")
		}
		time.Sleep(5 * time.Millisecond)
	}
	_ = app.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := app.Read(make([]byte, 512)); err == nil {
		t.Error("the application got the cancelled query's answer")
	}
}
