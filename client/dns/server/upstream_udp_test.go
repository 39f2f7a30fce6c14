package server

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// rawUpstream is a hand-driven upstream on loopback: the test reads each query and decides what to send back.
type rawUpstream struct {
	conn  *net.UDPConn
	other *net.UDPConn // a second socket on the same address, another port (an off-path spoofer's source)
}

func newRawUpstream(t *testing.T) *rawUpstream {
	t.Helper()
	ru := &rawUpstream{}
	for _, c := range []**net.UDPConn{&ru.conn, &ru.other} {
		var err error
		*c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = (*c).Close() })
	}
	return ru
}

func (ru *rawUpstream) addr() netip.AddrPort {
	return ru.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// readQuery returns the next query the stub sent and where from.
func (ru *rawUpstream) readQuery(t *testing.T) (*mdns.Msg, netip.AddrPort) {
	t.Helper()
	buf := make([]byte, 4096)
	_ = ru.conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, from, err := ru.conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("upstream: reading a query: %v", err)
	}
	m := new(mdns.Msg)
	if err := m.Unpack(buf[:n]); err != nil {
		t.Fatalf("upstream: query does not parse: %v", err)
	}
	return m, from
}

// reply builds an answer to q with one A record ip, then lets edit change it.
func reply(t *testing.T, q *mdns.Msg, ip byte, edit func(*mdns.Msg)) []byte {
	t.Helper()
	m := new(mdns.Msg)
	m.SetReply(q)
	m.Answer = []mdns.RR{&mdns.A{Hdr: mdns.RR_Header{Name: q.Question[0].Name, Rrtype: mdns.TypeA, Class: 1, Ttl: 60},
		A: net.IPv4(198, 51, 100, ip)}}
	if edit != nil {
		edit(m)
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestUpstreamUDPAnswerRules (RFC 5452): an answer is accepted only from the upstream's address and port with
// the outstanding query's id and question (name case-insensitively, type, class). A mismatching answer is
// dropped and counted by reason in the snowgate.client.dns.upstream.answers.dropped metric, and the real
// answer that follows still reaches the application. Before the question check, the "other name", "other
// type" and "other class" answers were delivered to the application; before the metric, drops were counted
// internally only, without a reason.
func TestUpstreamUDPAnswerRules(t *testing.T) {
	ru := newRawUpstream(t)
	st := startStub(t, ru.addr())
	cases := []struct {
		name     string
		spoof    func(q *mdns.Msg) []byte
		fromElse bool   // sent from another port of the upstream's address
		accepted bool   // the first answer is the one the application gets
		reason   string // the dropped-answers reason counted for the first answer ("": none)
	}{
		// The kernel drops this one: the stub's upstream sockets are connected.
		{"right answer from another port", func(q *mdns.Msg) []byte { return reply(t, q, 66, nil) }, true, false, ""},
		{"other id", func(q *mdns.Msg) []byte { return reply(t, q, 66, func(m *mdns.Msg) { m.Id++ }) }, false, false, "id"},
		{"other name", func(q *mdns.Msg) []byte {
			return reply(t, q, 66, func(m *mdns.Msg) { m.Question[0].Name = "evil.test." })
		}, false, false, "question"},
		{"other type", func(q *mdns.Msg) []byte {
			return reply(t, q, 66, func(m *mdns.Msg) { m.Question[0].Qtype = mdns.TypeAAAA })
		}, false, false, "question"},
		{"other class", func(q *mdns.Msg) []byte {
			return reply(t, q, 66, func(m *mdns.Msg) { m.Question[0].Qclass = mdns.ClassCHAOS })
		}, false, false, "question"},
		{"no question", func(q *mdns.Msg) []byte {
			return reply(t, q, 66, func(m *mdns.Msg) { m.Question = nil })
		}, false, false, "question"},
		{"header only", func(q *mdns.Msg) []byte { return reply(t, q, 66, nil)[:12] }, false, false, "question"},
		{"shorter than a header", func(q *mdns.Msg) []byte { return reply(t, q, 66, nil)[:11] }, false, false, "malformed"},
		{"name in other letter case", func(q *mdns.Msg) []byte {
			return reply(t, q, 66, func(m *mdns.Msg) { m.Question[0].Name = "BANK.Example.ORG." })
		}, false, true, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			app, err := net.Dial("udp", st.udpAddr)
			if err != nil {
				t.Fatal(err)
			}
			defer app.Close()
			q := new(mdns.Msg)
			q.SetQuestion("bank.example.org.", mdns.TypeA)
			q.Id = 4242
			qb, _ := q.Pack()
			if _, err := app.Write(qb); err != nil {
				t.Fatal(err)
			}
			up, from := ru.readQuery(t)
			before := st.droppedAnswers(t)
			spoofer := ru.conn
			if c.fromElse {
				spoofer = ru.other
			}
			if _, err := spoofer.WriteToUDPAddrPort(c.spoof(up), from); err != nil {
				t.Fatal(err)
			}
			if _, err := ru.conn.WriteToUDPAddrPort(reply(t, up, 7, nil), from); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4096)
			_ = app.SetReadDeadline(time.Now().Add(3 * time.Second))
			n, err := app.Read(buf)
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			m := new(mdns.Msg)
			if err := m.Unpack(buf[:n]); err != nil {
				t.Fatal(err)
			}
			want := net.IPv4(198, 51, 100, 7)
			if c.accepted {
				want = net.IPv4(198, 51, 100, 66)
			}
			if m.Id != 4242 || len(m.Answer) != 1 || !m.Answer[0].(*mdns.A).A.Equal(want) {
				t.Fatalf("application got %v, want id 4242 and A %v", m, want)
			}
			if c.reason != "" {
				after := st.droppedAnswers(t)
				for reason, v := range after {
					want := before[reason]
					if reason == c.reason {
						want++
					}
					if v != want {
						t.Errorf("dropped answers{reason=%s} went from %d to %d, want %d", reason, before[reason], v, want)
					}
				}
				if _, ok := after[c.reason]; !ok {
					t.Errorf("no dropped answers{reason=%s} exported (got %v)", c.reason, after)
				}
			}
			// Nothing else reaches the application (the second answer, if any, is a duplicate and dropped).
			_ = app.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			if _, err := app.Read(buf); err == nil {
				t.Error("application got a second answer")
			}
		})
	}
}

// TestUpstreamUDPSourcePortsAndIDs: queries leave from a pool of sockets with kernel-chosen random ports that
// are replaced after udpSockMaxQueries queries each, under random ids; retired sockets are closed once their
// answers are in. Before, every query left from one long-lived port.
func TestUpstreamUDPSourcePortsAndIDs(t *testing.T) {
	ru := newRawUpstream(t)
	st := startStub(t, ru.addr())
	app, err := net.Dial("udp", st.udpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	const n = udpPoolSize*udpSockMaxQueries + udpPoolSize
	ports := map[uint16]int{}
	ids := map[uint16]bool{}
	buf := make([]byte, 4096)
	for i := range n {
		q := new(mdns.Msg)
		q.SetQuestion("bank.example.org.", mdns.TypeA)
		q.Id = uint16(i)
		qb, _ := q.Pack()
		if _, err := app.Write(qb); err != nil {
			t.Fatal(err)
		}
		up, from := ru.readQuery(t)
		ports[from.Port()]++
		ids[up.Id] = true
		if _, err := ru.conn.WriteToUDPAddrPort(reply(t, up, 7, nil), from); err != nil {
			t.Fatal(err)
		}
		_ = app.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := app.Read(buf); err != nil {
			t.Fatalf("query %d: no answer: %v", i, err)
		}
	}
	if len(ports) < udpPoolSize+1 {
		t.Errorf("%d queries left from %d ports, want at least %d", n, len(ports), udpPoolSize+1)
	}
	for p, c := range ports {
		if c > udpSockMaxQueries {
			t.Errorf("port %d carried %d queries, more than %d", p, c, udpSockMaxQueries)
		}
	}
	// n random 16-bit ids: about n²/2¹⁷ ≈ 8 collisions expected; sequential or constant ids would be caught too.
	if len(ids) < n-40 {
		t.Errorf("%d queries used only %d distinct ids", n, len(ids))
	}
	st.srv.ex.umu.Lock()
	u := st.srv.ex.udpUps[ru.addr()]
	st.srv.ex.umu.Unlock()
	u.mu.Lock()
	open := len(u.all)
	u.mu.Unlock()
	if open > udpPoolSize {
		t.Errorf("%d sockets open to the upstream, want at most %d (retired ones closed)", open, udpPoolSize)
	}
}

// TestUpstreamUDPBurst: many queries at once (read, handled and forwarded in batches), answered by the
// upstream in reverse order with a spoofed copy (other question) before each real answer: every application
// socket gets exactly its own answer, with its own id. Over IPv4 and IPv6 loopback.
func TestUpstreamUDPBurst(t *testing.T) {
	for _, lo := range []string{"127.0.0.1", "::1"} {
		t.Run(lo, func(t *testing.T) {
			up, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(lo)})
			if err != nil {
				t.Skipf("no %s loopback: %v", lo, err)
			}
			defer up.Close()
			st := startStubOn(t, up.LocalAddr().(*net.UDPAddr).AddrPort(), lo)
			const n = 64
			apps := make([]net.Conn, n)
			for i := range apps {
				if apps[i], err = net.Dial("udp", st.udpAddr); err != nil {
					t.Fatal(err)
				}
				defer apps[i].Close()
			}
			for i, app := range apps {
				q := new(mdns.Msg)
				q.SetQuestion(fmt.Sprintf("n%d.example.org.", i), mdns.TypeA)
				q.Id = uint16(1000 + i)
				qb, _ := q.Pack()
				if _, err := app.Write(qb); err != nil {
					t.Fatal(err)
				}
			}
			type got struct {
				q    *mdns.Msg
				from netip.AddrPort
			}
			var queries []got
			buf := make([]byte, 4096)
			for range n {
				_ = up.SetReadDeadline(time.Now().Add(3 * time.Second))
				k, from, err := up.ReadFromUDPAddrPort(buf)
				if err != nil {
					t.Fatalf("upstream got %d of %d queries: %v", len(queries), n, err)
				}
				m := new(mdns.Msg)
				if err := m.Unpack(buf[:k]); err != nil {
					t.Fatal(err)
				}
				queries = append(queries, got{m, from})
			}
			for i := len(queries) - 1; i >= 0; i-- {
				g := queries[i]
				spoof := reply(t, g.q, 66, func(m *mdns.Msg) { m.Question[0].Name = "evil.test." })
				var idx int
				if _, err := fmt.Sscanf(g.q.Question[0].Name, "n%d.", &idx); err != nil {
					t.Fatal(err)
				}
				for _, b := range [][]byte{spoof, reply(t, g.q, byte(idx), nil)} {
					if _, err := up.WriteToUDPAddrPort(b, g.from); err != nil {
						t.Fatal(err)
					}
				}
			}
			for i, app := range apps {
				_ = app.SetReadDeadline(time.Now().Add(3 * time.Second))
				k, err := app.Read(buf)
				if err != nil {
					t.Fatalf("app %d: no answer: %v", i, err)
				}
				m := new(mdns.Msg)
				if err := m.Unpack(buf[:k]); err != nil {
					t.Fatal(err)
				}
				if m.Id != uint16(1000+i) || len(m.Answer) != 1 || !m.Answer[0].(*mdns.A).A.Equal(net.IPv4(198, 51, 100, byte(i))) {
					t.Errorf("app %d got %v", i, m)
				}
			}
			if got := st.droppedAnswers(t)["question"]; got != n {
				t.Errorf("%d answers counted as dropped for their question, want %d", got, n)
			}
		})
	}
}

// TestUpstreamUDPRetiredSocketsClosedOnTimeout: sockets retired while their queries are unanswered are closed
// once those queries time out, so an upstream that never answers does not pile up sockets.
func TestUpstreamUDPRetiredSocketsClosedOnTimeout(t *testing.T) {
	ru := newRawUpstream(t)
	st := startStubTimeout(t, ru.addr(), 200*time.Millisecond)
	app, err := net.Dial("udp", st.udpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	const n = udpPoolSize*udpSockMaxQueries + 1
	for i := range n {
		q := new(mdns.Msg)
		q.SetQuestion("silent.example.org.", mdns.TypeA)
		q.Id = uint16(i)
		qb, _ := q.Pack()
		if _, err := app.Write(qb); err != nil {
			t.Fatal(err)
		}
		ru.readQuery(t) // read, never answered
	}
	open := func() int {
		st.srv.ex.umu.Lock()
		u := st.srv.ex.udpUps[ru.addr()]
		st.srv.ex.umu.Unlock()
		u.mu.Lock()
		defer u.mu.Unlock()
		return len(u.all)
	}
	if got := open(); got <= udpPoolSize {
		t.Fatalf("%d sockets open while %d queries are unanswered, want more than %d", got, n, udpPoolSize)
	}
	deadline := time.Now().Add(5 * time.Second)
	for open() > udpPoolSize && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := open(); got > udpPoolSize {
		t.Errorf("%d sockets still open after every query timed out, want at most %d", got, udpPoolSize)
	}
}

// TestRoamResendsUDPQuery: a UDP query in flight when the network roams is sent again from a new socket (new
// local port) and its answer reaches the application, which sees nothing of the roam: no SERVFAIL (glibc's
// resolver would fail the lookup on it), no second answer. An answer to the query sent before the roam, on
// the abandoned socket, never reaches the application. Before, the roam answered the query SERVFAIL.
func TestRoamResendsUDPQuery(t *testing.T) {
	ru := newRawUpstream(t)
	st := startStubTimeout(t, ru.addr(), 10*time.Second)
	app, err := net.Dial("udp", st.udpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	q := new(mdns.Msg)
	q.SetQuestion("roam.example.org.", mdns.TypeA)
	q.Id = 4711
	qb, _ := q.Pack()
	if _, err := app.Write(qb); err != nil {
		t.Fatal(err)
	}
	before, fromBefore := ru.readQuery(t)
	waitInFlight(t, st.srv, 1)
	st.srv.Roam()
	after, fromAfter := ru.readQuery(t)
	if fromAfter.Port() == fromBefore.Port() || after.Question[0] != before.Question[0] {
		t.Fatalf("query after the roam %v from %s, before %v from %s: want the same question from a new port",
			after.Question, fromAfter, before.Question, fromBefore)
	}
	// The old socket is gone: an answer sent there is refused by the kernel or dropped, never delivered.
	_, _ = ru.conn.WriteToUDPAddrPort(reply(t, before, 66, nil), fromBefore)
	if _, err := ru.conn.WriteToUDPAddrPort(reply(t, after, 7, nil), fromAfter); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	_ = app.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, err := app.Read(buf)
	if err != nil {
		t.Fatalf("no answer after the roam: %v", err)
	}
	m := new(mdns.Msg)
	if err := m.Unpack(buf[:n]); err != nil {
		t.Fatal(err)
	}
	if m.Id != 4711 || m.Rcode != mdns.RcodeSuccess || len(m.Answer) != 1 || !m.Answer[0].(*mdns.A).A.Equal(net.IPv4(198, 51, 100, 7)) {
		t.Fatalf("application got %v, want the answer to the resent query", m)
	}
	_ = app.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := app.Read(buf); err == nil {
		t.Error("application got a second answer")
	}
}
