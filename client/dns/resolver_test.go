package dns

import (
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

var (
	up1       = netip.MustParseAddrPort("192.0.2.53:53")
	up2       = netip.MustParseAddrPort("198.51.100.53:53")
	up6       = netip.MustParseAddrPort("[2001:db8::53]:53")
	sent1     = netip.MustParseAddr("100.100.111.1")
	sent2     = netip.MustParseAddr("100.100.111.2")
	sent6     = netip.MustParseAddr("fd00:2021:1111:8000:100:100:111:1")
	appClient = netip.MustParseAddrPort("100.64.0.2:40000")
	t0        = time.Unix(1_800_000_000, 0)
)

// tb is what the helpers need; both *testing.T and *rapid.T provide it.
type tb interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
}

func newTestResolver(t tb) *Resolver {
	t.Helper()
	r, err := New(Config{UpstreamDNS: []netip.AddrPort{up1, up2, up6}})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func udpSrc(s netip.Addr) Source {
	return Source{Transport: UDP, Client: appClient, Server: netip.AddrPortFrom(s, 53)}
}

func query(t tb, name string, qtype uint16, id uint16) []byte {
	t.Helper()
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), qtype)
	m.Id = id
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func unpack(t tb, b []byte) *mdns.Msg {
	t.Helper()
	m := new(mdns.Msg)
	if err := m.Unpack(b); err != nil {
		t.Fatalf("unpack reply: %v (% x)", err, b)
	}
	return m
}

func TestConfigUpstreams(t *testing.T) {
	r, err := New(Config{SystemResolvConf: strings.NewReader("# c\nsearch x\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\noptions ndots:1\nnameserver 198.51.100.1\n")})
	if err != nil {
		t.Fatal(err)
	}
	got := r.Sentinels()
	want := []Sentinel{
		{sent1, netip.MustParseAddrPort("192.0.2.1:53")},
		{sent6, netip.MustParseAddrPort("[fe80::1]:53")},
		{sent2, netip.MustParseAddrPort("198.51.100.1:53")},
	}
	if len(got) != len(want) {
		t.Fatalf("sentinels = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("sentinel %d = %v, want %v", i, got[i], want[i])
		}
	}
	// The portal's list wins over resolv.conf.
	r, err = New(Config{UpstreamDNS: []netip.AddrPort{up2}, SystemResolvConf: strings.NewReader("nameserver 192.0.2.1\n")})
	if err != nil || r.Sentinels()[0].Upstream != up2 || len(r.Sentinels()) != 1 {
		t.Fatalf("portal upstreams not preferred: %v %v", r.Sentinels(), err)
	}
	if _, err := New(Config{}); !errors.Is(err, ErrNoUpstreams) {
		t.Errorf("no upstreams: err = %v", err)
	}
}

// TestConfigSkipsReservedUpstreams: an upstream in a reserved range (or on the stub itself) is skipped with a
// WARN carrying the typed error, which Skipped keeps for the caller to report; the other upstreams are used
// and get the sentinels in order as if the skipped one were not there. Only when none is left does New fail,
// with ErrNoUpstreams wrapping the reasons. Before, one reserved upstream made New refuse the whole
// configuration.
func TestConfigSkipsReservedUpstreams(t *testing.T) {
	cases := []struct {
		up, rng string
	}{
		{"100.64.0.1:53", "tunnel"},
		{"100.95.255.255:53", "tunnel"},
		{"[fd00:2021:1111::1]:53", "tunnel"},
		{"100.96.0.1:53", "proxy"},
		{"[fd00:2021:1111:8000::7]:53", "proxy"},
		{"100.100.111.1:53", "sentinel"},
		{"[fd00:2021:1111:8000:100:100:111:2]:53", "sentinel"},
		{"127.0.0.53:53", "stub listen address"},
		{"0.0.0.0:53", "unspecified"},
	}
	for _, c := range cases {
		var logs strings.Builder
		bad := netip.MustParseAddrPort(c.up)
		r, err := New(Config{UpstreamDNS: []netip.AddrPort{bad, up1, up2},
			StubAddrs: []netip.Addr{netip.MustParseAddr("127.0.0.53")},
			Logger:    slog.New(slog.NewTextHandler(&logs, nil))})
		if err != nil {
			t.Errorf("upstream %s: New = %v, want the reserved upstream skipped", c.up, err)
			continue
		}
		if got := r.Sentinels(); len(got) != 2 || got[0] != (Sentinel{sent1, up1}) || got[1] != (Sentinel{sent2, up2}) {
			t.Errorf("upstream %s: sentinels %v, want %s and %s on .1 and .2", c.up, got, up1, up2)
		}
		sk := r.Skipped()
		var re *ReservedUpstreamError
		if len(sk) != 1 || !errors.Is(sk[0], ErrReservedUpstream) || !errors.As(sk[0], &re) || re.RangeName != c.rng || re.Upstream != bad {
			t.Errorf("upstream %s: Skipped() = %v, want one %s ReservedUpstreamError", c.up, sk, c.rng)
		}
		if out := logs.String(); strings.Count(out, "level=WARN") != 1 || !strings.Contains(out, "error=") ||
			!strings.Contains(out, c.up) || !strings.Contains(out, c.rng) {
			t.Errorf("upstream %s: log %q, want one WARN with the error", c.up, out)
		}
	}
	// Nothing left: ErrNoUpstreams, wrapping why.
	_, err := New(Config{UpstreamDNS: []netip.AddrPort{netip.MustParseAddrPort("100.64.0.1:53")}})
	if !errors.Is(err, ErrNoUpstreams) || !errors.Is(err, ErrReservedUpstream) {
		t.Errorf("only a reserved upstream: err = %v, want ErrNoUpstreams and ErrReservedUpstream", err)
	}
	if _, err := New(Config{SystemResolvConf: strings.NewReader("nameserver 100.100.111.1\n")}); !errors.Is(err, ErrNoUpstreams) || !errors.Is(err, ErrReservedUpstream) {
		t.Errorf("resolv.conf sentinel upstream: err = %v", err)
	}
	// 100.128.0.1 is just outside the /11s: allowed.
	r, err := New(Config{UpstreamDNS: []netip.AddrPort{netip.MustParseAddrPort("100.128.0.1:53")}})
	if err != nil || len(r.Skipped()) != 0 {
		t.Errorf("100.128.0.1: %v, skipped %v", err, r.Skipped())
	}
}

func TestResourceAnswers(t *testing.T) {
	r := newTestResolver(t)
	if err := r.SetResources([]Resource{
		{ID: "r1", Address: "app.example.com"},
		{ID: "r4", Address: "v4.example.com", IPStack: IPv4Only},
		{ID: "r6", Address: "v6.example.com", IPStack: IPv6Only},
	}, nil); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		qtype   uint16
		answers int
		rtype   uint16
	}{
		{"app.example.com", mdns.TypeA, 4, mdns.TypeA},
		{"APP.example.com", mdns.TypeAAAA, 4, mdns.TypeAAAA},
		{"app.example.com", mdns.TypeHTTPS, 0, 0},
		{"app.example.com", mdns.TypeSVCB, 0, 0},
		{"app.example.com", mdns.TypeMX, 0, 0},
		{"app.example.com", mdns.TypeCNAME, 0, 0},
		{"v4.example.com", mdns.TypeA, 4, mdns.TypeA},
		{"v4.example.com", mdns.TypeAAAA, 0, 0},
		{"v6.example.com", mdns.TypeA, 0, 0},
		{"v6.example.com", mdns.TypeAAAA, 4, mdns.TypeAAAA},
	}
	for _, c := range cases {
		b, ok := r.HandleQuery(udpSrc(sent1), query(t, c.name, c.qtype, 7), t0, nil)
		if !ok {
			t.Fatalf("%s %s: not answered locally", c.name, mdns.TypeToString[c.qtype])
		}
		m := unpack(t, b)
		if m.Rcode != mdns.RcodeSuccess || !m.Response || m.Id != 7 || len(m.Answer) != c.answers || len(m.Question) != 1 {
			t.Errorf("%s %s: reply %v", c.name, mdns.TypeToString[c.qtype], m)
			continue
		}
		for _, rr := range m.Answer {
			h := rr.Header()
			if h.Rrtype != c.rtype || h.Ttl != 1 || !strings.EqualFold(h.Name, mdns.Fqdn(c.name)) {
				t.Errorf("%s: bad record %v", c.name, rr)
			}
			var ip netip.Addr
			switch v := rr.(type) {
			case *mdns.A:
				ip, _ = netip.AddrFromSlice(v.A.To4())
				if !ProxyRangeV4.Contains(ip) {
					t.Errorf("A %v outside proxy range", ip)
				}
			case *mdns.AAAA:
				ip, _ = netip.AddrFromSlice(v.AAAA)
				if !ProxyRangeV6.Contains(ip) {
					t.Errorf("AAAA %v outside proxy range", ip)
				}
			}
		}
	}
	if _, ok := r.PollForward(); ok {
		t.Error("a resource query was forwarded")
	}
	// One event per name, listing only the families of its ip_stack.
	events := map[string]NameAssigned{}
	for e, ok := r.PollEvent(); ok; e, ok = r.PollEvent() {
		if _, dup := events[e.Name]; dup {
			t.Errorf("second event for %s", e.Name)
		}
		events[e.Name] = e
	}
	if len(events) != 3 || len(events["app.example.com"].IPs) != 8 || len(events["v4.example.com"].IPs) != 4 ||
		!events["v4.example.com"].IPs[0].Is4() || !events["v6.example.com"].IPs[0].Is6() || events["v6.example.com"].ResourceID != "r6" {
		t.Errorf("events = %+v", events)
	}
}

// TestSRVAndTXTForResourcesAreEmpty: like every non-address type for a resource name, SRV and TXT get
// NOERROR with no answers and are never forwarded to the upstream (which would leak the name).
func TestSRVAndTXTForResourcesAreEmpty(t *testing.T) {
	r := newTestResolver(t)
	_ = r.SetResources([]Resource{{ID: "r", Address: "**.example.com"}}, nil)
	for _, qt := range []uint16{mdns.TypeSRV, mdns.TypeTXT} {
		b, ok := r.HandleQuery(udpSrc(sent1), query(t, "a.example.com", qt, 1), t0, nil)
		if !ok {
			t.Fatalf("%s not answered locally", mdns.TypeToString[qt])
		}
		if m := unpack(t, b); m.Rcode != mdns.RcodeSuccess || len(m.Answer) != 0 {
			t.Errorf("%s: rcode %d, %d answers; want NOERROR, none", mdns.TypeToString[qt], m.Rcode, len(m.Answer))
		}
		if f, ok := r.PollForward(); ok {
			t.Errorf("%s forwarded: %+v", mdns.TypeToString[qt], f)
		}
	}
}

func TestPTR(t *testing.T) {
	r := newTestResolver(t)
	_ = r.SetResources([]Resource{{ID: "r", Address: "*.example.com"}}, nil)
	b, _ := r.HandleQuery(udpSrc(sent1), query(t, "db.example.com", mdns.TypeA, 1), t0, nil)
	a4 := unpack(t, b).Answer[2].(*mdns.A).A
	b, _ = r.HandleQuery(udpSrc(sent1), query(t, "db.example.com", mdns.TypeAAAA, 2), t0, nil)
	a6 := unpack(t, b).Answer[3].(*mdns.AAAA).AAAA
	for _, ip := range []string{a4.String(), a6.String()} {
		rev, _ := mdns.ReverseAddr(ip)
		b, ok := r.HandleQuery(udpSrc(sent1), query(t, rev, mdns.TypePTR, 3), t0, nil)
		if !ok {
			t.Fatalf("PTR %s forwarded", ip)
		}
		m := unpack(t, b)
		if len(m.Answer) != 1 || m.Answer[0].(*mdns.PTR).Ptr != "db.example.com." || m.Answer[0].Header().Ttl != 1 {
			t.Errorf("PTR %s: %v", ip, m)
		}
	}
	// An unassigned proxy IP: NXDOMAIN, never leaked upstream.
	b, ok := r.HandleQuery(udpSrc(sent1), query(t, "77.77.120.100.in-addr.arpa", mdns.TypePTR, 4), t0, nil)
	if !ok || unpack(t, b).Rcode != mdns.RcodeNameError {
		t.Errorf("unassigned proxy PTR: ok=%v", ok)
	}
	// Other addresses are forwarded.
	if _, ok := r.HandleQuery(udpSrc(sent1), query(t, "1.2.0.192.in-addr.arpa", mdns.TypePTR, 5), t0, nil); ok {
		t.Error("PTR for a non-proxy IP answered locally")
	}
}

func TestStableProxyIPsAcrossResourceChanges(t *testing.T) {
	r := newTestResolver(t)
	_ = r.SetResources([]Resource{{ID: "r1", Address: "**.example.com"}}, nil)
	b, _ := r.HandleQuery(udpSrc(sent1), query(t, "x.example.com", mdns.TypeA, 1), t0, nil)
	first := unpack(t, b).Answer
	r.PollEvent()
	_ = r.SetResources([]Resource{{ID: "r2", Address: "x.example.com"}}, nil)
	b, _ = r.HandleQuery(udpSrc(sent1), query(t, "x.example.com", mdns.TypeA, 1), t0, nil)
	second := unpack(t, b).Answer
	for i := range first {
		if first[i].String() != second[i].String() {
			t.Errorf("IP %d changed: %v → %v", i, first[i], second[i])
		}
	}
	if e, ok := r.PollEvent(); !ok || e.ResourceID != "r2" {
		t.Errorf("resource change not reported: %+v", e)
	}
	// No longer a resource: forwarded.
	_ = r.SetResources(nil, nil)
	if _, ok := r.HandleQuery(udpSrc(sent1), query(t, "x.example.com", mdns.TypeA, 1), t0, nil); ok {
		t.Error("non-resource answered locally")
	}
}

func TestForwardAndAnswer(t *testing.T) {
	r := newTestResolver(t)
	_ = r.SetResources(nil, []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")})
	q := query(t, "example.org", mdns.TypeA, 42)
	if _, ok := r.HandleQuery(udpSrc(sent1), q, t0, nil); ok {
		t.Fatal("answered locally")
	}
	f, ok := r.PollForward()
	if !ok || f.Upstream != up1 || f.Transport != UDP || f.ThroughTunnel || string(f.Query) != string(q) || !f.Deadline.Equal(t0.Add(5*time.Second)) {
		t.Fatalf("forward = %+v", f)
	}
	// Upstream 2 is inside a CIDR resource: through the tunnel.
	r.HandleQuery(udpSrc(sent2), q, t0, nil)
	f2, _ := r.PollForward()
	if f2.Upstream != up2 || !f2.ThroughTunnel {
		t.Errorf("forward 2 = %+v", f2)
	}
	resp := new(mdns.Msg)
	_ = resp.Unpack(q)
	resp.Response = true
	resp.Answer = []mdns.RR{&mdns.A{Hdr: mdns.RR_Header{Name: "example.org.", Rrtype: mdns.TypeA, Class: 1, Ttl: 60}, A: []byte{192, 0, 2, 9}}}
	rb, _ := resp.Pack()
	r.HandleUpstreamResponse(f.ID, rb, t0)
	rep, ok := r.PollReply()
	if !ok || rep.To != udpSrc(sent1) || string(rep.Payload) != string(rb) {
		t.Fatalf("reply = %+v, %v", rep, ok)
	}
	// A second response for the same forward is ignored.
	r.HandleUpstreamResponse(f.ID, rb, t0)
	if _, ok := r.PollReply(); ok {
		t.Error("duplicate response delivered")
	}
}

func TestSERVFAILAndSilence(t *testing.T) {
	for _, c := range []struct {
		name      string
		transport Transport
		err       error
		want      int // -1: no reply
	}{
		{"udp refused", UDP, errors.New("connection refused"), mdns.RcodeServerFailure},
		{"udp timeout", UDP, ErrUpstreamTimeout, -1},
		{"tcp timeout", TCP, ErrUpstreamTimeout, mdns.RcodeServerFailure},
		{"tcp reset", TCP, errors.New("connection reset"), mdns.RcodeServerFailure},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newTestResolver(t)
			src := udpSrc(sent1)
			src.Transport = c.transport
			r.HandleQuery(src, query(t, "example.org", mdns.TypeA, 9), t0, nil)
			f, _ := r.PollForward()
			r.HandleUpstreamError(f.ID, c.err, t0)
			rep, ok := r.PollReply()
			if c.want < 0 {
				if ok {
					t.Fatalf("got a reply on timeout: %v", rep)
				}
				return
			}
			if !ok {
				t.Fatal("no reply")
			}
			m := unpack(t, rep.Payload)
			if m.Rcode != c.want || m.Id != 9 || len(m.Question) != 1 || m.Question[0].Name != "example.org." {
				t.Errorf("reply %v", m)
			}
		})
	}
	t.Run("deadline via HandleTimeout", func(t *testing.T) {
		r := newTestResolver(t)
		r.HandleQuery(udpSrc(sent1), query(t, "a.org", mdns.TypeA, 1), t0, nil)
		tcp := udpSrc(sent1)
		tcp.Transport = TCP
		r.HandleQuery(tcp, query(t, "b.org", mdns.TypeA, 2), t0, nil)
		if d, ok := r.PollTimeout(); !ok || !d.Equal(t0.Add(5*time.Second)) {
			t.Fatalf("PollTimeout = %v %v", d, ok)
		}
		r.HandleTimeout(t0.Add(4 * time.Second))
		if r.InFlight() != 2 {
			t.Fatal("expired early")
		}
		r.HandleTimeout(t0.Add(5 * time.Second))
		rep, ok := r.PollReply()
		if !ok || rep.To.Transport != TCP || unpack(t, rep.Payload).Rcode != mdns.RcodeServerFailure {
			t.Errorf("tcp timeout reply = %v %v", rep, ok)
		}
		if _, ok := r.PollReply(); ok || r.InFlight() != 0 {
			t.Error("udp timeout answered")
		}
	})
	t.Run("malformed upstream answer", func(t *testing.T) {
		r := newTestResolver(t)
		r.HandleQuery(udpSrc(sent1), query(t, "a.org", mdns.TypeA, 5), t0, nil)
		f, _ := r.PollForward()
		r.HandleUpstreamResponse(f.ID, []byte{0, 5, 0x80}, t0)
		rep, _ := r.PollReply()
		if m := unpack(t, rep.Payload); m.Rcode != mdns.RcodeServerFailure || m.Id != 5 {
			t.Errorf("reply %v", m)
		}
	})
	t.Run("query to a sentinel without upstream", func(t *testing.T) {
		r := newTestResolver(t)
		b, ok := r.HandleQuery(udpSrc(netip.MustParseAddr("100.100.111.99")), query(t, "a.org", mdns.TypeA, 5), t0, nil)
		if !ok || unpack(t, b).Rcode != mdns.RcodeServerFailure {
			t.Error("want SERVFAIL")
		}
	})
}

func TestSameIDToTwoUpstreams(t *testing.T) {
	r := newTestResolver(t)
	srcA := udpSrc(sent1)
	srcB := udpSrc(sent2)
	srcB.Client = netip.MustParseAddrPort("100.64.0.2:40001")
	r.HandleQuery(srcA, query(t, "a.org", mdns.TypeA, 77), t0, nil)
	r.HandleQuery(srcB, query(t, "b.org", mdns.TypeA, 77), t0, nil)
	fa, _ := r.PollForward()
	fb, _ := r.PollForward()
	answer := func(f Forward, ip byte) []byte {
		m := new(mdns.Msg)
		_ = m.Unpack(f.Query)
		m.Response = true
		m.Answer = []mdns.RR{&mdns.A{Hdr: mdns.RR_Header{Name: m.Question[0].Name, Rrtype: 1, Class: 1}, A: []byte{192, 0, 2, ip}}}
		b, _ := m.Pack()
		return b
	}
	// Delivered by (upstream, id) as the tunnel path does, in reverse order.
	if !r.HandleUpstreamPacket(up2, answer(fb, 2), t0) || !r.HandleUpstreamPacket(up1, answer(fa, 1), t0) {
		t.Fatal("response not matched")
	}
	got := map[Source]string{}
	for rep, ok := r.PollReply(); ok; rep, ok = r.PollReply() {
		got[rep.To] = unpack(t, rep.Payload).Question[0].Name
	}
	if got[srcA] != "a.org." || got[srcB] != "b.org." {
		t.Errorf("replies = %v", got)
	}
	// A retry with the same id to the same upstream is a second forward; both answers reach the app.
	r.HandleQuery(srcA, query(t, "a.org", mdns.TypeA, 78), t0, nil)
	r.HandleQuery(srcA, query(t, "a.org", mdns.TypeA, 78), t0.Add(time.Second), nil)
	f1, _ := r.PollForward()
	f2, _ := r.PollForward()
	if f1.ID == f2.ID {
		t.Fatal("retry shares a forward id")
	}
	if !r.HandleUpstreamPacket(up1, answer(f1, 1), t0) || !r.HandleUpstreamPacket(up1, answer(f2, 1), t0) {
		t.Error("retry's answer treated as unknown")
	}
	if r.HandleUpstreamPacket(up1, answer(f2, 1), t0) {
		t.Error("third answer matched")
	}
}

func TestMalformedQueries(t *testing.T) {
	r := newTestResolver(t)
	if _, ok := r.HandleQuery(udpSrc(sent1), []byte{1, 2, 3}, t0, nil); ok {
		t.Error("answered a short packet")
	}
	resp := query(t, "a.org", mdns.TypeA, 1)
	resp[2] |= 0x80
	if _, ok := r.HandleQuery(udpSrc(sent1), resp, t0, nil); ok {
		t.Error("answered a response")
	}
	two := new(mdns.Msg)
	two.Question = []mdns.Question{{Name: "a.", Qtype: 1, Qclass: 1}, {Name: "b.", Qtype: 1, Qclass: 1}}
	b, _ := two.Pack()
	out, ok := r.HandleQuery(udpSrc(sent1), b, t0, nil)
	if !ok || unpack(t, out).Rcode != mdns.RcodeFormatError {
		t.Error("two questions: want FORMERR")
	}
	up := query(t, "a.org", mdns.TypeA, 1)
	up[2] |= 5 << 3 // opcode UPDATE
	out, ok = r.HandleQuery(udpSrc(sent1), up, t0, nil)
	if !ok || unpack(t, out).Rcode != mdns.RcodeNotImplemented {
		t.Error("UPDATE: want NOTIMP")
	}
	if got := r.counts[outNotImp].Load(); got != 1 {
		t.Errorf("notimp outcome counted %d times, want 1", got)
	}
	if got := r.counts[outFormErr].Load(); got != 1 {
		t.Errorf("formerr outcome counted %d times, want 1", got)
	}
}

func TestEDNSEchoed(t *testing.T) {
	r := newTestResolver(t)
	_ = r.SetResources([]Resource{{ID: "r", Address: "a.example.com"}}, nil)
	m := new(mdns.Msg)
	m.SetQuestion("a.example.com.", mdns.TypeA)
	m.SetEdns0(4096, true)
	b, _ := m.Pack()
	out, ok := r.HandleQuery(udpSrc(sent1), b, t0, nil)
	if !ok {
		t.Fatal("not answered")
	}
	rep := unpack(t, out)
	if o := rep.IsEdns0(); o == nil || o.UDPSize() != MaxUDPPayload || len(rep.Answer) != 4 {
		t.Errorf("reply %v", rep)
	}
}

// TestLocalAnswerNoAllocs: the local-answer path allocates nothing once the name is known.
func TestLocalAnswerNoAllocs(t *testing.T) {
	r := newTestResolver(t)
	_ = r.SetResources([]Resource{{ID: "r", Address: "**.example.com"}}, nil)
	q := query(t, "app.example.com", mdns.TypeA, 1)
	buf := make([]byte, 0, 512)
	r.HandleQuery(udpSrc(sent1), q, t0, buf)
	allocs := testing.AllocsPerRun(100, func() { r.HandleQuery(udpSrc(sent1), q, t0, buf[:0]) })
	if allocs != 0 {
		t.Errorf("allocs per local answer = %v", allocs)
	}
}

// TestNoResourcesMatchedLogsOnce: one debug record per unmatched query, listing all patterns.
func TestNoResourcesMatchedLogsOnce(t *testing.T) {
	var buf strings.Builder
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r, err := New(Config{UpstreamDNS: []netip.AddrPort{up1}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	_ = r.SetResources([]Resource{{ID: "a", Address: "*.a.test"}, {ID: "b", Address: "**.b.test"}, {ID: "c", Address: "c.test"}}, nil)
	r.HandleQuery(udpSrc(sent1), query(t, "example.org", mdns.TypeA, 1), t0, nil)
	out := buf.String()
	if strings.Count(out, "no resources matched") != 1 || !strings.Contains(out, "*.a.test") || !strings.Contains(out, "**.b.test") || !strings.Contains(out, "c.test") {
		t.Errorf("log:\n%s", out)
	}
}

// TestRoamAnswersInFlightTCPAndKeepsConns: a roam abandons every upstream exchange; TCP queries in flight are
// answered SERVFAIL on the application's own connection, which stays open (and keeps counting against the
// per-sentinel limit): the next query on it is forwarded afresh and its answer goes to the same connection.
// UDP queries in flight are not answered: they are forwarded again (see TestRoamResendsUDPQueries).
func TestRoamAnswersInFlightTCPAndKeepsConns(t *testing.T) {
	r := newTestResolver(t)
	for h := uint64(1); h <= MaxTCPConnsPerSentinel; h++ {
		if err := r.HandleTCPAccept(sent1, h); err != nil {
			t.Fatal(err)
		}
	}
	tcp := Source{Transport: TCP, Client: appClient, Server: netip.AddrPortFrom(sent1, 53), Handle: 3}
	r.HandleQuery(tcp, query(t, "hang.org", mdns.TypeA, 31), t0, nil)
	r.HandleQuery(udpSrc(sent2), query(t, "u.org", mdns.TypeA, 32), t0, nil)
	ftcp, _ := r.PollForward()
	fudp, _ := r.PollForward()
	if ftcp.Transport != TCP || fudp.Transport != UDP {
		t.Fatalf("forwards %+v %+v", ftcp, fudp)
	}
	res := r.Roam(t0.Add(time.Second))
	if len(res.Cancelled) != 2 || res.Cancelled[0] != ftcp.ID || res.Cancelled[1] != fudp.ID {
		t.Errorf("cancelled = %v, want [%d %d]", res.Cancelled, ftcp.ID, fudp.ID)
	}
	got := map[Source]*mdns.Msg{}
	for rep, ok := r.PollReply(); ok; rep, ok = r.PollReply() {
		got[rep.To] = unpack(t, rep.Payload)
	}
	if m := got[tcp]; m == nil || m.Rcode != mdns.RcodeServerFailure || m.Id != 31 || m.Question[0].Name != "hang.org." {
		t.Errorf("in-flight TCP query after roam: %v (all replies %v)", m, got)
	}
	if m := got[udpSrc(sent2)]; m != nil {
		t.Errorf("in-flight UDP query answered by the roam: %v", m)
	}
	if r.InFlight() != 1 {
		t.Errorf("%d in flight after roam, want 1 (the UDP query, resent)", r.InFlight())
	}
	if f, ok := r.PollForward(); !ok || f.Transport != UDP || f.Source != udpSrc(sent2) {
		t.Errorf("forward after roam = %+v %v, want the UDP query resent", f, ok)
	}
	// The abandoned exchange's late answer or error changes nothing.
	r.HandleUpstreamError(ftcp.ID, errors.New("connection reset"), t0.Add(time.Second))
	r.HandleUpstreamError(fudp.ID, errors.New("socket closed"), t0.Add(time.Second))
	if rep, ok := r.PollReply(); ok {
		t.Errorf("reply for an abandoned exchange: %+v", rep)
	}
	// The application's connections survive the roam and still count against the limit.
	if n := r.TCPConns(sent1); n != MaxTCPConnsPerSentinel {
		t.Errorf("%d connections after roam, want %d", n, MaxTCPConnsPerSentinel)
	}
	if err := r.HandleTCPAccept(sent1, 99); !errors.Is(err, ErrTCPConnLimit) {
		t.Errorf("accept over the limit after roam: %v", err)
	}
	// The next query on the same connection goes to a new upstream exchange and is answered there.
	r.HandleQuery(tcp, query(t, "next.org", mdns.TypeA, 33), t0.Add(2*time.Second), nil)
	f2, ok := r.PollForward()
	if !ok || f2.Transport != TCP || f2.Source != tcp {
		t.Fatalf("forward after roam = %+v %v", f2, ok)
	}
	resp := unpack(t, f2.Query)
	resp.Response = true
	rb, _ := resp.Pack()
	r.HandleUpstreamResponse(f2.ID, rb, t0.Add(2*time.Second))
	if rep, ok := r.PollReply(); !ok || rep.To != tcp || unpack(t, rep.Payload).Id != 33 {
		t.Errorf("answer after roam = %+v %v", rep, ok)
	}
}

// TestRoamResendsUDPQueries: a roam sends every UDP query in flight again, as a new forward (new ID, same
// query, source and upstream) that the driver performs on its new sockets, instead of answering it SERVFAIL:
// glibc's resolver fails the lookup on a SERVFAIL, and the application must not notice the roam. The resent
// forward keeps the query's original deadline (the application's own retry timer runs from when it asked);
// one whose deadline passed is dropped silently, as its timeout would have. The answer to the new forward
// reaches the application with its id; a late result for the abandoned one changes nothing. Before, the roam
// answered UDP queries SERVFAIL.
func TestRoamResendsUDPQueries(t *testing.T) {
	r := newTestResolver(t) // upstream timeout 5 s
	src1, src2 := udpSrc(sent1), udpSrc(sent6)
	src1.Client = netip.MustParseAddrPort("100.64.0.2:40001")
	q1, q2, q3 := query(t, "one.org", mdns.TypeA, 41), query(t, "two.org", mdns.TypeAAAA, 42), query(t, "old.org", mdns.TypeA, 43)
	r.HandleQuery(udpSrc(sent1), q3, t0, nil)
	r.HandleQuery(src1, q1, t0.Add(3*time.Second), nil)
	r.HandleQuery(src2, q2, t0.Add(4*time.Second), nil)
	var old []Forward
	for f, ok := r.PollForward(); ok; f, ok = r.PollForward() {
		old = append(old, f)
	}
	if len(old) != 3 {
		t.Fatalf("%d forwards", len(old))
	}
	now := t0.Add(5*time.Second + time.Millisecond) // q3's deadline has passed, HandleTimeout not yet run
	res := r.Roam(now)
	if len(res.Cancelled) != 3 {
		t.Errorf("cancelled %v, want all three forwards", res.Cancelled)
	}
	if rep, ok := r.PollReply(); ok {
		t.Fatalf("roam answered a UDP query: %+v", rep)
	}
	var resent []Forward
	for f, ok := r.PollForward(); ok; f, ok = r.PollForward() {
		resent = append(resent, f)
	}
	if len(resent) != 2 {
		t.Fatalf("resent %d forwards, want 2 (q3 expired): %+v", len(resent), resent)
	}
	for i, want := range []struct {
		old Forward
		q   []byte
	}{{old[1], q1}, {old[2], q2}} {
		f := resent[i]
		if f.ID == want.old.ID || f.Source != want.old.Source || f.Upstream != want.old.Upstream || f.Transport != UDP ||
			string(f.Query) != string(want.q) || !f.Deadline.Equal(want.old.Deadline) {
			t.Errorf("resent %+v, want %+v under a new ID with the same deadline", f, want.old)
		}
	}
	if r.InFlight() != 2 {
		t.Errorf("%d in flight, want 2", r.InFlight())
	}
	// A late error for the abandoned forward is ignored; the new forward's answer reaches the application.
	r.HandleUpstreamError(old[1].ID, errors.New("socket closed by the roam"), now)
	r.HandleUpstreamResponse(resent[0].ID, answerTo(t, q1, nil), now)
	rep, ok := r.PollReply()
	if !ok || rep.To != src1 || unpack(t, rep.Payload).Id != 41 || unpack(t, rep.Payload).Rcode != mdns.RcodeSuccess {
		t.Fatalf("reply = %+v %v, want q1's answer", rep, ok)
	}
	if rep, ok := r.PollReply(); ok {
		t.Errorf("second reply %+v", rep)
	}
	// The resent forward times out at the original deadline (silently, UDP).
	if d, ok := r.PollTimeout(); !ok || !d.Equal(old[2].Deadline) {
		t.Errorf("PollTimeout = %v %v, want %v", d, ok, old[2].Deadline)
	}
	r.HandleTimeout(old[2].Deadline)
	if r.InFlight() != 0 {
		t.Errorf("%d in flight after the deadline", r.InFlight())
	}
	if rep, ok := r.PollReply(); ok {
		t.Errorf("reply after a UDP timeout: %+v", rep)
	}
}
