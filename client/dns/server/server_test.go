package server

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.uber.org/goleak"

	"github.com/snowgate/snowgate/client/dns"
)

var sentinel = netip.MustParseAddr("100.100.111.1")

// fakeUpstream is a miekg/dns server on loopback: "big.test" TXT answers with ~3 kB, "slow.test" after 300 ms,
// "drop.test" never; everything else gets A 192.0.2.1.
func fakeUpstream(t *testing.T) netip.AddrPort {
	t.Helper()
	pc, ln, _ := listenUDPTCP(t) // retries: the TCP port may be taken by another socket
	h := mdns.HandlerFunc(func(w mdns.ResponseWriter, q *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(q)
		name := q.Question[0].Name
		switch {
		case name == "drop.test.":
			return
		case name == "slow.test.":
			time.Sleep(300 * time.Millisecond)
		case name == "big.test.":
			for i := 0; i < 12; i++ {
				m.Answer = append(m.Answer, &mdns.TXT{Hdr: mdns.RR_Header{Name: name, Rrtype: mdns.TypeTXT, Class: 1, Ttl: 60},
					Txt: []string{strings.Repeat(string(rune('a'+i)), 250)}})
			}
			_ = w.WriteMsg(m)
			return
		}
		m.Answer = []mdns.RR{&mdns.A{Hdr: mdns.RR_Header{Name: name, Rrtype: mdns.TypeA, Class: 1, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)}}
		_ = w.WriteMsg(m)
	})
	us := &mdns.Server{PacketConn: pc, Handler: h}
	ts := &mdns.Server{Listener: ln, Handler: h}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = us.ActivateAndServe() }()
	go func() { defer wg.Done(); _ = ts.ActivateAndServe() }()
	t.Cleanup(func() {
		_ = us.Shutdown()
		_ = ts.Shutdown()
		wg.Wait()
	})
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

type stub struct {
	srv     *Server
	udpAddr string
	tcpAddr string
	events  chan dns.NameAssigned
	metrics *sdkmetric.ManualReader // the resolver's metrics
}

// droppedAnswers returns the snowgate.client.dns.upstream.answers.dropped counters by reason, read through the
// stub's OpenTelemetry SDK reader.
func (st *stub) droppedAnswers(t *testing.T) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := st.metrics.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			d, ok := m.Data.(metricdata.Sum[int64])
			if !ok || m.Name != "snowgate.client.dns.upstream.answers.dropped" {
				continue
			}
			for _, p := range d.DataPoints {
				reason, _ := p.Attributes.Value("reason")
				got[reason.AsString()] = p.Value
			}
		}
	}
	return got
}

// startStub serves the stub on 127.0.0.1 with upstream as sentinel 100.100.111.1's resolver.
func startStub(t *testing.T, upstream netip.AddrPort) *stub {
	t.Helper()
	return startStubTimeout(t, upstream, time.Second)
}

// startStubTimeout is startStub with the given upstream timeout.
func startStubTimeout(t *testing.T, upstream netip.AddrPort, timeout time.Duration) *stub {
	t.Helper()
	return startStubListen(t, upstream, timeout, "127.0.0.1")
}

// startStubOn is startStub serving on the loopback address lo.
func startStubOn(t *testing.T, upstream netip.AddrPort, lo string) *stub {
	t.Helper()
	return startStubListen(t, upstream, time.Second, lo)
}

func startStubListen(t *testing.T, upstream netip.AddrPort, timeout time.Duration, lo string) *stub {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	r, err := dns.New(dns.Config{UpstreamDNS: []netip.AddrPort{upstream}, UpstreamTimeout: timeout, MeterProvider: mp})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.SetResources([]dns.Resource{{ID: "res", Address: "**.corp.test"}}, nil); err != nil {
		t.Fatal(err)
	}
	st := &stub{events: make(chan dns.NameAssigned, 16), metrics: reader}
	st.srv, err = New(Config{Resolver: r, OnEvent: func(e dns.NameAssigned) { st.events <- e }})
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", net.JoinHostPort(lo, "0"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(lo, "0"))
	if err != nil {
		t.Fatal(err)
	}
	st.udpAddr, st.tcpAddr = pc.LocalAddr().String(), ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = st.srv.Serve(ctx, r.Sentinels()[0].Addr, []net.PacketConn{pc}, ln) }()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = st.srv.Close()
	})
	return st
}

func exchange(t *testing.T, network, addr, name string, qtype uint16) *mdns.Msg {
	t.Helper()
	c := &mdns.Client{Net: network, Timeout: 3 * time.Second, UDPSize: 4096}
	q := new(mdns.Msg)
	q.SetQuestion(name, qtype)
	if network == "udp" {
		q.SetEdns0(4096, false)
	}
	m, _, err := c.Exchange(q, addr)
	if err != nil {
		t.Fatalf("%s %s: %v", network, name, err)
	}
	return m
}

func TestServeUDPAndTCP(t *testing.T) {
	st := startStub(t, fakeUpstream(t))
	for _, network := range []string{"udp", "tcp"} {
		addr := st.udpAddr
		if network == "tcp" {
			addr = st.tcpAddr
		}
		m := exchange(t, network, addr, "app.corp.test.", mdns.TypeA)
		if len(m.Answer) != 4 || m.Answer[0].Header().Ttl != 1 {
			t.Errorf("%s resource answer: %v", network, m)
		}
		m = exchange(t, network, addr, "example.org.", mdns.TypeA)
		if len(m.Answer) != 1 || m.Answer[0].(*mdns.A).A.String() != "192.0.2.1" {
			t.Errorf("%s forwarded answer: %v", network, m)
		}
		m = exchange(t, network, addr, "big.test.", mdns.TypeTXT)
		if network == "udp" && (!m.Truncated || len(m.Answer) != 0 || len(m.Question) != 1) {
			t.Errorf("udp big answer not truncated: %v", m)
		}
		if network == "tcp" && (m.Truncated || len(m.Answer) != 12) {
			t.Errorf("tcp big answer: truncated=%v answers=%d", m.Truncated, len(m.Answer))
		}
	}
	select {
	case e := <-st.events:
		if e.Name != "app.corp.test" || e.ResourceID != "res" || len(e.IPs) != 8 {
			t.Errorf("event %+v", e)
		}
	default:
		t.Error("no event")
	}
}

func TestUDPTimeoutIsSilentAndRefusedIsSERVFAIL(t *testing.T) {
	st := startStub(t, fakeUpstream(t))
	c := &mdns.Client{Net: "udp", Timeout: 1500 * time.Millisecond}
	q := new(mdns.Msg)
	q.SetQuestion("drop.test.", mdns.TypeA)
	if m, _, err := c.Exchange(q, st.udpAddr); err == nil {
		t.Errorf("got an answer for an upstream timeout: %v", m)
	}
	// A closed upstream port: ICMP port unreachable → connection refused → SERVFAIL.
	pc, _ := net.ListenPacket("udp", "127.0.0.1:0")
	dead := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	_ = pc.Close()
	st2 := startStub(t, dead)
	m := exchange(t, "udp", st2.udpAddr, "example.org.", mdns.TypeA)
	if m.Rcode != mdns.RcodeServerFailure {
		t.Errorf("rcode = %s, want SERVFAIL", mdns.RcodeToString[m.Rcode])
	}
	m = exchange(t, "tcp", st2.tcpAddr, "example.org.", mdns.TypeA)
	if m.Rcode != mdns.RcodeServerFailure {
		t.Errorf("tcp rcode = %s, want SERVFAIL", mdns.RcodeToString[m.Rcode])
	}
}

// pipeline writes several queries on one connection before reading, and returns the answers by id.
func pipeline(t *testing.T, c net.Conn, names ...string) (map[uint16]*mdns.Msg, []uint16) {
	t.Helper()
	ids := map[uint16]string{}
	for i, n := range names {
		q := new(mdns.Msg)
		q.SetQuestion(n, mdns.TypeA)
		q.Id = uint16(100 + i)
		b, _ := q.Pack()
		frame := binary.BigEndian.AppendUint16(nil, uint16(len(b)))
		if _, err := c.Write(append(frame, b...)); err != nil {
			t.Fatal(err)
		}
		ids[q.Id] = n
	}
	return pipelineRead(t, c, ids)
}

// pipelineRead reads one answer per entry of ids (DNS id → question name) and returns them by id.
func pipelineRead(t *testing.T, c net.Conn, ids map[uint16]string) (map[uint16]*mdns.Msg, []uint16) {
	t.Helper()
	got := map[uint16]*mdns.Msg{}
	var order []uint16
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for range ids {
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			t.Fatalf("reading answer: %v", err)
		}
		b := make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		m := new(mdns.Msg)
		if err := m.Unpack(b); err != nil {
			t.Fatal(err)
		}
		if len(m.Question) != 1 || ids[m.Id] != m.Question[0].Name {
			t.Fatalf("answer id %d for %v", m.Id, m.Question)
		}
		got[m.Id] = m
		order = append(order, m.Id)
	}
	return got, order
}

func TestTCPPipelinedOutOfOrder(t *testing.T) {
	st := startStub(t, fakeUpstream(t))
	c, err := net.Dial("tcp", st.tcpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, order := pipeline(t, c, "slow.test.", "a.corp.test.", "example.org.")
	if len(got) != 3 || len(got[101].Answer) != 4 || len(got[100].Answer) != 1 || len(got[102].Answer) != 1 {
		t.Errorf("answers: %v", got)
	}
	// The slow upstream answer (id 100, sent first) must not hold back the others.
	if order[2] != 100 {
		t.Errorf("answer order %v: the slow answer blocked the pipeline", order)
	}
}

func TestTCPLimitAndRoam(t *testing.T) {
	st := startStub(t, fakeUpstream(t))
	testLimitAndRoam(t, st.srv, func() (net.Conn, error) { return net.Dial("tcp", st.tcpAddr) }, st.udpAddr)
}

// testLimitAndRoam: 10 connections work, the 11th is reset, closing one frees a slot. Then Roam with a TCP
// and (when udpAddr is set) a UDP query in flight: the TCP one gets SERVFAIL, the UDP one is sent again and
// gets its answer, every application connection stays open and usable and still counts against the limit.
func testLimitAndRoam(t *testing.T, srv *Server, dial func() (net.Conn, error), udpAddr string) {
	t.Helper()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for i := 0; i < dns.MaxTCPConnsPerSentinel; i++ {
		c, err := dial()
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if got, _ := pipeline(t, c, "x.corp.test."); len(got) != 1 {
			t.Fatal("no answer")
		}
	}
	wantRefused := func(when string) {
		t.Helper()
		c11, err := dial()
		if err == nil {
			_ = c11.SetReadDeadline(time.Now().Add(3 * time.Second))
			_, _ = c11.Write([]byte{0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
			_, err = c11.Read(make([]byte, 10))
			_ = c11.Close()
		}
		if err == nil || isTimeout(err) {
			t.Fatalf("11th connection %s not reset: %v", when, err)
		}
		t.Logf("11th connection %s: %v", when, err)
	}
	wantRefused("before the roam")
	// Close one: a new one is accepted again.
	_ = conns[0].Close()
	var c net.Conn
	var err error
	deadline := time.Now().Add(3 * time.Second)
	for {
		if c, err = dial(); err != nil {
			t.Fatal(err)
		}
		if ok := tryQuery(c); ok {
			break
		}
		_ = c.Close()
		if time.Now().After(deadline) {
			t.Fatal("slot not freed after close")
		}
		time.Sleep(20 * time.Millisecond)
	}
	conns[0] = c
	// A TCP query in flight (slow upstream) and a UDP query in flight, then roam.
	slowQ := new(mdns.Msg)
	slowQ.SetQuestion("slow.test.", mdns.TypeA)
	b, _ := slowQ.Pack()
	_, _ = conns[1].Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...))
	udpDone := make(chan *mdns.Msg, 1)
	if udpAddr != "" {
		go func() {
			cl := &mdns.Client{Net: "udp", Timeout: 3 * time.Second}
			m, _, _ := cl.Exchange(slowQ, udpAddr)
			udpDone <- m
		}()
	}
	want := 1
	if udpAddr != "" {
		want = 2
	}
	waitInFlight(t, srv, want)
	srv.Roam()
	if got, _ := pipelineRead(t, conns[1], map[uint16]string{slowQ.Id: "slow.test."}); got[slowQ.Id].Rcode != mdns.RcodeServerFailure {
		t.Errorf("in-flight TCP query after roam: %v", got[slowQ.Id])
	}
	if udpAddr != "" {
		if m := <-udpDone; m == nil || m.Rcode != mdns.RcodeSuccess || len(m.Answer) != 1 {
			t.Errorf("in-flight UDP query after roam: %v, want its answer (resent after the roam)", m)
		}
	}
	// Every connection survives the roam: a forwarded and a local query on each.
	for i, c := range conns {
		got, _ := pipeline(t, c, "example.org.", "z.corp.test.")
		if len(got[100].Answer) != 1 || len(got[101].Answer) != 4 {
			t.Errorf("conn %d after roam: %v", i, got)
		}
	}
	wantRefused("after the roam")
}

// waitInFlight waits until the core has n forwarded queries in flight.
func waitInFlight(t *testing.T, srv *Server, n int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		srv.mu.Lock()
		got := srv.r.InFlight()
		srv.mu.Unlock()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d queries in flight, want %d", got, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func tryQuery(c net.Conn) bool {
	q := new(mdns.Msg)
	q.SetQuestion("y.corp.test.", mdns.TypeA)
	b, _ := q.Pack()
	if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...)); err != nil {
		return false
	}
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	var l [2]byte
	if _, err := io.ReadFull(c, l[:]); err != nil {
		return false
	}
	_, err := io.ReadFull(c, make([]byte, binary.BigEndian.Uint16(l[:])))
	return err == nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestServeUnknownSentinel(t *testing.T) {
	r, err := dns.New(dns.Config{UpstreamDNS: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:53")}})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Resolver: r})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if err := srv.Serve(t.Context(), netip.MustParseAddr("100.100.111.9"), nil, nil); !errors.Is(err, ErrUnknownSentinel) {
		t.Errorf("err = %v", err)
	}
}

// TestUpstreamThroughTunnel: an upstream inside a CIDR resource is dialled with TunnelDial.
func TestUpstreamThroughTunnel(t *testing.T) {
	up := fakeUpstream(t)
	r, err := dns.New(dns.Config{UpstreamDNS: []netip.AddrPort{up}, UpstreamTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	_ = r.SetResources(nil, []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")})
	var mu sync.Mutex
	var tunnelDials []string
	var d net.Dialer
	srv, err := New(Config{Resolver: r, TunnelDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		tunnelDials = append(tunnelDials, network+" "+addr)
		mu.Unlock()
		return d.DialContext(ctx, network, addr)
	}})
	if err != nil {
		t.Fatal(err)
	}
	pc, ln, _ := listenUDPTCP(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ctx, sentinel, []net.PacketConn{pc}, ln) }()
	defer func() { cancel(); <-done; _ = srv.Close() }()
	for _, network := range []string{"udp", "tcp"} {
		addr := pc.LocalAddr().String()
		if m := exchange(t, network, addr, "example.org.", mdns.TypeA); len(m.Answer) != 1 {
			t.Errorf("%s: %v", network, m)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(tunnelDials) != 2 || tunnelDials[0] != "udp "+up.String() || tunnelDials[1] != "tcp "+up.String() {
		t.Errorf("tunnel dials = %v", tunnelDials)
	}
}
