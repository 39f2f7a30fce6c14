package server

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// scriptedTCPUpstream is a loopback DNS-over-TCP upstream: "hang.test." is read and never answered,
// "close.test." makes it close the connection, every other name gets A 192.0.2.7. It reports the peer
// (the stub's local address) of every query it reads, and the error that ended every connection.
type scriptedTCPUpstream struct {
	addr    netip.AddrPort
	queries chan upstreamQuery
	ended   chan upstreamEnd
}

type upstreamQuery struct {
	from netip.AddrPort
	name string
}

type upstreamEnd struct {
	from netip.AddrPort
	err  error
}

func startScriptedTCPUpstream(t *testing.T) *scriptedTCPUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &scriptedTCPUpstream{
		addr:    ln.Addr().(*net.TCPAddr).AddrPort(),
		queries: make(chan upstreamQuery, 64),
		ended:   make(chan upstreamEnd, 64),
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				u.end(c, u.serve(c))
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return u
}

func (u *scriptedTCPUpstream) end(c net.Conn, err error) {
	_ = c.Close()
	u.ended <- upstreamEnd{from: c.RemoteAddr().(*net.TCPAddr).AddrPort(), err: err}
}

func (u *scriptedTCPUpstream) serve(c net.Conn) error {
	from := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	co := &mdns.Conn{Conn: c}
	for {
		q, err := co.ReadMsg()
		if err != nil {
			return err
		}
		name := q.Question[0].Name
		u.queries <- upstreamQuery{from: from, name: name}
		switch name {
		case "hang.test.":
			continue
		case "close.test.":
			return errors.New("closed by script")
		}
		m := new(mdns.Msg)
		m.SetReply(q)
		m.Answer = []mdns.RR{&mdns.A{Hdr: mdns.RR_Header{Name: name, Rrtype: mdns.TypeA, Class: 1, Ttl: 60}, A: net.IPv4(192, 0, 2, 7)}}
		if err := co.WriteMsg(m); err != nil {
			return err
		}
	}
}

func (u *scriptedTCPUpstream) nextQuery(t *testing.T) upstreamQuery {
	t.Helper()
	select {
	case q := <-u.queries:
		return q
	case <-time.After(3 * time.Second):
		t.Fatal("upstream got no query")
		return upstreamQuery{}
	}
}

// sendQuery writes one length-prefixed query for name with id on c.
func sendQuery(t *testing.T, c net.Conn, name string, id uint16) {
	t.Helper()
	q := new(mdns.Msg)
	q.SetQuestion(name, mdns.TypeA)
	q.Id = id
	b, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...)); err != nil {
		t.Fatalf("writing query %s: %v", name, err)
	}
}

// readAnswer reads one length-prefixed message from c; the connection must still be open.
func readAnswer(t *testing.T, c net.Conn) *mdns.Msg {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	var l [2]byte
	if _, err := io.ReadFull(c, l[:]); err != nil {
		t.Fatalf("reading answer: %v", err)
	}
	b := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("reading answer: %v", err)
	}
	m := new(mdns.Msg)
	if err := m.Unpack(b); err != nil {
		t.Fatal(err)
	}
	return m
}

func wantAnswer(t *testing.T, m *mdns.Msg, id uint16, name string, rcode int) {
	t.Helper()
	if m.Id != id || !m.Response || m.Rcode != rcode || len(m.Question) != 1 || m.Question[0].Name != name {
		t.Fatalf("got %v, want id %d %s %s", m, id, name, mdns.RcodeToString[rcode])
	}
	if rcode == mdns.RcodeSuccess && (len(m.Answer) != 1 || m.Answer[0].(*mdns.A).A.String() != "192.0.2.7") {
		t.Fatalf("answer %v", m)
	}
}

// TestRoamServfailsTCPQueryOnKeptConn: an application's TCP query whose upstream does not answer gets SERVFAIL
// on its own connection when the network roams; the upstream connection is torn down, the application's
// connection is kept and its next query goes out on a new upstream connection (new local port).
func TestRoamServfailsTCPQueryOnKeptConn(t *testing.T) {
	up := startScriptedTCPUpstream(t)
	st := startStubTimeout(t, up.addr, 10*time.Second)
	c, err := net.Dial("tcp", st.tcpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sendQuery(t, c, "hang.test.", 7)
	hung := up.nextQuery(t)
	waitInFlight(t, st.srv, 1)
	st.srv.Roam()
	wantAnswer(t, readAnswer(t, c), 7, "hang.test.", mdns.RcodeServerFailure)
	select {
	case e := <-up.ended:
		if e.from != hung.from {
			t.Errorf("upstream connection %s ended, want %s", e.from, hung.from)
		}
		if !errors.Is(e.err, syscall.ECONNRESET) {
			t.Errorf("old upstream connection ended with %v, want a reset", e.err)
		}
	case <-time.After(3 * time.Second):
		t.Error("the upstream TCP connection survived the roam")
	}
	sendQuery(t, c, "ok.test.", 8)
	wantAnswer(t, readAnswer(t, c), 8, "ok.test.", mdns.RcodeSuccess)
	if q := up.nextQuery(t); q.name != "ok.test." || q.from.Port() == hung.from.Port() {
		t.Errorf("query after roam %+v, sent before from %s: want a new local port", q, hung.from)
	}
}

// TestUpstreamTCPErrorServfailsOnKeptConn: an upstream that closes the connection mid-query, or refuses it,
// gives SERVFAIL on the application's connection, which stays usable.
func TestUpstreamTCPErrorServfailsOnKeptConn(t *testing.T) {
	t.Run("closed mid-query", func(t *testing.T) {
		up := startScriptedTCPUpstream(t)
		st := startStubTimeout(t, up.addr, 10*time.Second)
		c, err := net.Dial("tcp", st.tcpAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		sendQuery(t, c, "close.test.", 9)
		wantAnswer(t, readAnswer(t, c), 9, "close.test.", mdns.RcodeServerFailure)
		sendQuery(t, c, "ok.test.", 10)
		wantAnswer(t, readAnswer(t, c), 10, "ok.test.", mdns.RcodeSuccess)
	})
	t.Run("refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dead := ln.Addr().(*net.TCPAddr).AddrPort()
		_ = ln.Close()
		st := startStubTimeout(t, dead, 10*time.Second)
		c, err := net.Dial("tcp", st.tcpAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for id := uint16(11); id < 13; id++ {
			sendQuery(t, c, "ok.test.", id)
			wantAnswer(t, readAnswer(t, c), id, "ok.test.", mdns.RcodeServerFailure)
		}
		// A locally answered name on the same connection.
		sendQuery(t, c, "a.corp.test.", 13)
		if m := readAnswer(t, c); m.Id != 13 || len(m.Answer) != 4 {
			t.Errorf("local answer %v", m)
		}
	})
}

// TestTCPTimeoutComesFromTheCore: the core's deadline is the one upstream timeout. A TCP query whose upstream
// never answers gets SERVFAIL when the core expires it, and the Server then cancels the exchange: its
// upstream connection is closed and the Exchanger keeps nothing. (The Exchanger has no timers: before, the
// Server ran its own deadline table beside the core's.)
func TestTCPTimeoutComesFromTheCore(t *testing.T) {
	up := startScriptedTCPUpstream(t)
	st := startStubTimeout(t, up.addr, 300*time.Millisecond)
	c, err := net.Dial("tcp", st.tcpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	sendQuery(t, c, "hang.test.", 5)
	hung := up.nextQuery(t)
	wantAnswer(t, readAnswer(t, c), 5, "hang.test.", mdns.RcodeServerFailure)
	if el := time.Since(start); el < 300*time.Millisecond {
		t.Errorf("SERVFAIL after %v, before the 300 ms deadline", el)
	}
	select {
	case e := <-up.ended:
		if e.from != hung.from {
			t.Errorf("upstream connection %s ended, want %s", e.from, hung.from)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the expired query's upstream connection is still open")
	}
	st.srv.ex.mu.Lock()
	n := len(st.srv.ex.own)
	st.srv.ex.mu.Unlock()
	if n != 0 {
		t.Errorf("%d exchanges left in the Exchanger after the timeout", n)
	}
	// The connection still works.
	sendQuery(t, c, "ok.test.", 6)
	wantAnswer(t, readAnswer(t, c), 6, "ok.test.", mdns.RcodeSuccess)
}
