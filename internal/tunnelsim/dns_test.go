package tunnelsim

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	mdns "github.com/miekg/dns"
	"pgregory.net/rapid"

	clcore "github.com/snowgate/snowgate/client/core"
	"github.com/snowgate/snowgate/client/dns"
	"github.com/snowgate/snowgate/internal/ippacket"
	ipt "github.com/snowgate/snowgate/internal/ippacket/ippackettest"
)

// DNS in the simulation.
//
// The account's upstream resolvers are upstreamOut, on the internet (outside the tunnel: the client's
// driver would dial it on the physical network; here the exchange is answered in place), and upstreamIn,
// a host inside CIDR resource upstreamRes: while the client may reach that resource, the stub resolver
// forwards through the tunnel and the query travels as an ordinary UDP packet from the client's TUN through
// a gateway to the resource network, where the upstream answers; otherwise the query goes to the physical
// network, where nothing answers (the resource is private).
//
// Each upstream answers every A query with its marker address (markerOutside, markerTunnel), so that the
// model can tell which way an answer came, and AAAA queries with no records.
//
// DNS resources: dnsPatterns, two exact names and a wildcard that covers one of them (the most specific
// pattern the client may reach wins). The gateways resolve names with gatewayHosts, the resource
// network's hosts (app.sim.test has two, b.svc.sim.test's lies inside CIDR resource 1, whose filters must
// not apply to it); a name missing there does not resolve.
var (
	upstreamOut = netip.MustParseAddrPort("198.18.53.53:53")
	upstreamIn  = netip.MustParseAddrPort("203.0.113.153:53")

	markerOutside = netip.MustParseAddr("192.0.2.1")
	markerTunnel  = netip.MustParseAddr("192.0.2.2")

	dnsPatterns = map[int]string{numCIDR: "app.sim.test", numCIDR + 1: "*.svc.sim.test", numCIDR + 2: "a.svc.sim.test"}

	gatewayHosts = map[string][]netip.Addr{
		"app.sim.test":   {netip.MustParseAddr("203.0.113.10"), netip.MustParseAddr("203.0.113.11")},
		"a.svc.sim.test": {netip.MustParseAddr("203.0.113.20")},
		"b.svc.sim.test": {cidrHost(1).Next().Next().Next().Next().Next()},
	}

	// dnsNames are the names applications look up: resource names (c.svc.sim.test does not resolve at the
	// gateways), and names no pattern matches (a wildcard covers exactly one label).
	dnsNames = []string{"app.sim.test", "a.svc.sim.test", "b.svc.sim.test", "c.svc.sim.test",
		"deep.a.svc.sim.test", "svc.sim.test", "www.example.test"}
)

// upstreamRes is the CIDR resource upstreamIn lies in.
var upstreamRes = resourceOf(upstreamIn.Addr())

// nameResources returns the DNS resources whose patterns match name, the most specific first.
func nameResources(name string) []int {
	var out []int
	if name == "app.sim.test" {
		out = append(out, numCIDR)
	}
	if name == "a.svc.sim.test" {
		out = append(out, numCIDR+2)
	}
	if strings.HasSuffix(name, ".svc.sim.test") && strings.Count(name, ".") == 3 {
		out = append(out, numCIDR+1)
	}
	return out
}

// nameOwner returns the resource name routes to: the most specific matching resource the client may
// reach (-1: none).
func nameOwner(m *model, name string) int {
	for _, r := range nameResources(name) {
		if m.visible(r) {
			return r
		}
	}
	return -1
}

// realFor returns the host a probe to proxy IP ip of name must reach: the gateway's NAT gives the sorted
// proxy IPs of a family the sorted real IPs in turn (invalid: the name does not resolve).
func realFor(name string, ip netip.Addr, proxies []netip.Addr) netip.Addr {
	var reals []netip.Addr
	for _, a := range gatewayHosts[name] {
		if a.Is4() == ip.Is4() {
			reals = append(reals, a)
		}
	}
	i := slices.Index(proxies, ip)
	if len(reals) == 0 || i < 0 {
		return netip.Addr{}
	}
	return reals[i%len(reals)]
}

// upstreamAnswer is an upstream's answer to query: marker for A, no records for AAAA (nil: not a query).
func upstreamAnswer(query []byte, marker netip.Addr) []byte {
	var q mdns.Msg
	if err := q.Unpack(query); err != nil || q.Response || len(q.Question) != 1 {
		return nil
	}
	var a mdns.Msg
	a.SetReply(&q)
	if q.Question[0].Qtype == mdns.TypeA {
		a.Answer = []mdns.RR{&mdns.A{
			Hdr: mdns.RR_Header{Name: q.Question[0].Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 60},
			A:   marker.AsSlice(),
		}}
	}
	b, err := a.Pack()
	if err != nil {
		return nil
	}
	return b
}

// gatewayResolve is a gateway host's resolver.
func gatewayResolve(name string) ([]netip.Addr, error) {
	if as, ok := gatewayHosts[name]; ok {
		return slices.Clone(as), nil
	}
	return nil, fmt.Errorf("lookup %s: no such host", name)
}

// dnsQuery is one query an application sent to a sentinel, and the stub resolver's answers.
type dnsQuery struct {
	port     uint16
	name     string
	qtype    uint16
	id       uint16
	sentinel netip.Addr
	answers  []*mdns.Msg
}

// setDNS records the client's sentinels (SetDNS): one per upstream, in the account's order.
func (s *sim) setDNS(a clcore.SetDNS) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sentinels = slices.Clone(a.Servers)
}

// forward carries out a DNSForward as the client's driver would: through the tunnel (a UDP packet from the
// client's TUN, a probe like any other), to the internet resolver (answered in place), or to the private
// upstream outside the tunnel (nothing answers; the resolver's deadline ends it).
func (s *sim) forward(dm *daemon, f dns.Forward) {
	s.mu.Lock()
	viaTunnel := s.m.visible(upstreamRes)
	switch {
	case f.Transport != dns.UDP:
		s.violateLocked("forward over %v, but applications only query over UDP", f.Transport)
	case f.Upstream != upstreamOut && f.Upstream != upstreamIn:
		s.violateLocked("forward to %v, no upstream of the account", f.Upstream)
	case f.ThroughTunnel != (f.Upstream == upstreamIn && viaTunnel):
		s.violateLocked("forward to %v through the tunnel %v; upstream's resource reachable %v", f.Upstream, f.ThroughTunnel, viaTunnel)
	}
	var pr *probe
	if f.ThroughTunnel {
		pr = &probe{id: s.nextProbe, to: target{res: upstreamRes, dst: upstreamIn.Addr(), real: upstreamIn.Addr()},
			kind: probeUDP53, query: slices.Clone(f.Query), fwd: f.ID}
		s.nextProbe++
		s.probes[pr.id] = pr
	}
	s.mu.Unlock()
	switch {
	case pr != nil:
		// The exchanger's socket sends through the TUN device; not from the driver's goroutine, which
		// must go on serving the tunnel.
		pkt := pr.packet()
		dm.readers.Go(func() { dm.write(pkt) })
	case f.Upstream == upstreamOut:
		ans := upstreamAnswer(f.Query, markerOutside)
		dm.d.Driver.Do(func(now time.Time) { s.clientCore.HandleDNSResponse(f.ID, ans, nil, now) })
	}
}

// stubAnswered takes a packet from a sentinel to an application: the stub resolver's answer.
func (s *sim) stubAnswered(p ippacket.Packet) {
	sp, dp, err := p.Ports()
	payload, perr := p.UDPPayload()
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.Protocol() != ippacket.ProtoUDP || err != nil || perr != nil {
		s.violateLocked("a sentinel sent the client a packet that is no UDP answer: %v", p.Src())
		return
	}
	q := s.queries[dp]
	if q == nil {
		s.violateLocked("sentinel %v answered port %d, which sent no query", p.Src(), dp)
		return
	}
	if p.Src() != q.sentinel || sp != 53 {
		s.violateLocked("the answer to a query for %s sent to %v:53 came from %v:%d", q.name, q.sentinel, p.Src(), sp)
		return
	}
	var m mdns.Msg
	if err := m.Unpack(payload); err != nil {
		s.violateLocked("the stub resolver's answer to %s does not parse: %v", q.name, err)
		return
	}
	if !m.Response || m.Id != q.id || len(m.Question) != 1 || !strings.EqualFold(m.Question[0].Name, mdns.Fqdn(q.name)) ||
		m.Question[0].Qtype != q.qtype {
		s.violateLocked("the stub resolver's answer to %s (id %d) is for another question: %v", q.name, q.id, m.Question)
		return
	}
	q.answers = append(q.answers, &m)
}

// query sends a DNS query for name from an application to sentinel.
func (s *sim) query(name string, qtype uint16, sentinel netip.Addr) *dnsQuery {
	var m mdns.Msg
	m.SetQuestion(mdns.Fqdn(name), qtype)
	s.mu.Lock()
	q := &dnsQuery{port: 50000 + s.nextQuery%15000, name: name, qtype: qtype, sentinel: sentinel}
	s.nextQuery++
	q.id = uint16(s.nextQuery)
	m.Id = q.id
	s.queries[q.port] = q
	s.mu.Unlock()
	b, err := m.Pack()
	if err != nil {
		s.fatalf("query: %v", err)
	}
	s.client.write(ipt.UDP(netip.AddrPortFrom(clientV4, q.port), netip.AddrPortFrom(sentinel, 53), b))
	return q
}

// answersOf returns q's answers so far.
func (s *sim) answersOf(q *dnsQuery) []*mdns.Msg {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(q.answers)
}

// addrsOf returns the addresses of an answer's A and AAAA records.
func addrsOf(m *mdns.Msg) []netip.Addr {
	var out []netip.Addr
	for _, rr := range m.Answer {
		switch rr := rr.(type) {
		case *mdns.A:
			a, _ := netip.AddrFromSlice(rr.A.To4())
			out = append(out, a)
		case *mdns.AAAA:
			a, _ := netip.AddrFromSlice(rr.AAAA)
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// dnsQueryAction: an application looks a name up through one of the sentinels. A name of a DNS resource
// the client may reach is answered by the stub resolver with proxy IPs, the same ones every time within
// the client's session ("proxy IPs are stable") and no other name's; the application then sends a probe
// to one of them, which must come out of a gateway at the host the gateway resolved the name to. Any other
// name goes to the sentinel's upstream, whose answer must come the way the model says.
func (s *sim) dnsQueryAction(t *rapid.T) {
	s.mu.Lock()
	sentinels := slices.Clone(s.sentinels)
	m := s.m
	s.mu.Unlock()
	// Mostly names the client may reach (traffic is what the invariants are about).
	var reachable []string
	for _, n := range dnsNames {
		if nameOwner(&m, n) >= 0 {
			reachable = append(reachable, n)
		}
	}
	var name string
	if len(reachable) > 0 && rapid.IntRange(0, 3).Draw(t, "any_name") < 3 {
		name = rapid.SampledFrom(reachable).Draw(t, "reachable_name")
	} else {
		name = rapid.SampledFrom(dnsNames).Draw(t, "name")
	}
	qtype := rapid.SampledFrom([]uint16{mdns.TypeA, mdns.TypeA, mdns.TypeAAAA}).Draw(t, "qtype")
	up := rapid.IntRange(0, 1).Draw(t, "upstream")
	if len(sentinels) != 2 {
		t.Fatalf("the client's sentinels are %v, want one for each of the 2 upstreams", sentinels)
	}
	res := nameOwner(&m, name)
	s.note("application looks up %s %s through sentinel %v (upstream %v)", name, mdns.TypeToString[qtype], sentinels[up],
		[]netip.AddrPort{upstreamOut, upstreamIn}[up])
	if res >= 0 {
		s.resolveLocal(t, name, qtype, res, sentinels[up])
		return
	}
	s.resolveUpstream(name, qtype, up, sentinels[up], m)
	matches := nameResources(name)
	if len(matches) == 0 {
		return
	}
	res = matches[0]
	// A name of a resource the client may not reach (any more): proxy IPs it had go nowhere.
	s.mu.Lock()
	old := s.proxyIPs[name+"/"+mdns.TypeToString[qtype]]
	s.mu.Unlock()
	if len(old) > 0 {
		ip := rapid.SampledFrom(old).Draw(t, "stale_proxy_ip")
		k := rapid.SampledFrom(probeKinds).Draw(t, "kind")
		s.note("ping %s's old proxy IP %v (%s)", name, ip, k)
		s.ping(target{res: res, dst: ip, real: realFor(name, ip, old), name: name}, k)
	}
}

// resolveLocal checks the stub resolver's answer for a resource name and pings one of its proxy IPs.
func (s *sim) resolveLocal(t *rapid.T, name string, qtype uint16, res int, sentinel netip.Addr) {
	q := s.query(name, qtype, sentinel)
	if !s.waitFor(time.Second, func() bool { return len(s.answersOf(q)) > 0 }) {
		t.Fatalf("no answer from the stub resolver for %s within 1 s", name)
	}
	ans := s.answersOf(q)
	if len(ans) != 1 || ans[0].Rcode != mdns.RcodeSuccess {
		t.Fatalf("stub resolver's answers for %s: %v", name, ans)
	}
	ips := addrsOf(ans[0])
	rng := dns.ProxyRangeV4
	if qtype == mdns.TypeAAAA {
		rng = dns.ProxyRangeV6
	}
	if len(ips) != 4 || !slices.ContainsFunc(ips, rng.Contains) || slices.ContainsFunc(ips, func(a netip.Addr) bool { return !rng.Contains(a) }) {
		t.Fatalf("stub resolver answered %s with %v, want 4 proxy IPs in %v", name, ips, rng)
	}
	key := name + "/" + mdns.TypeToString[qtype]
	s.mu.Lock()
	old, seen := s.proxyIPs[key]
	var clash string
	for _, ip := range ips {
		if o, ok := s.proxyOwner[ip]; ok && o != name {
			clash = o
		}
	}
	if !seen && clash == "" {
		s.proxyIPs[key] = ips
		for _, ip := range ips {
			s.proxyOwner[ip] = name
		}
	}
	s.mu.Unlock()
	if seen && !slices.Equal(old, ips) {
		t.Fatalf("proxy IPs of %s changed: %v, earlier %v", name, ips, old)
	}
	if clash != "" {
		t.Fatalf("proxy IPs of %s %v overlap those of %s", name, ips, clash)
	}
	s.stats.count("dns-local")
	ip := rapid.SampledFrom(ips).Draw(t, "proxy_ip")
	k := rapid.SampledFrom(probeKinds).Draw(t, "kind")
	s.note("ping %s at %v (%s)", name, ip, k)
	s.ping(target{res: res, dst: ip, real: realFor(name, ip, ips), name: name}, k)
}

// resolveUpstream checks the way a query for a name that is no resource's goes: to the internet resolver,
// or to the one inside upstreamRes, through the tunnel or (while the client may not reach that resource)
// to the physical network, where nothing answers.
func (s *sim) resolveUpstream(name string, qtype uint16, up int, sentinel netip.Addr, m model) {
	// check fails on an answer that did not come from where it must; it returns the successful ones.
	check := func(q *dnsQuery, marker netip.Addr, servfailOK bool) int {
		ok := 0
		for _, a := range s.answersOf(q) {
			switch {
			case a.Rcode == mdns.RcodeServerFailure && servfailOK:
			case a.Rcode != mdns.RcodeSuccess:
				s.fatalf("query for %s answered %s", name, mdns.RcodeToString[a.Rcode])
			case qtype == mdns.TypeA && !slices.Equal(addrsOf(a), []netip.Addr{marker}):
				s.fatalf("query for %s answered %v, want %v (the upstream's answer)", name, addrsOf(a), marker)
			case qtype == mdns.TypeAAAA && len(a.Answer) != 0:
				s.fatalf("query for %s AAAA answered %v, want no records", name, a.Answer)
			default:
				ok++
			}
		}
		return ok
	}
	switch {
	case up == 0:
		q := s.query(name, qtype, sentinel)
		if !s.waitFor(time.Second, func() bool { return len(s.answersOf(q)) > 0 }) {
			s.fatalf("query for %s to the internet resolver not answered within 1 s", name)
		}
		if check(q, markerOutside, false) != 1 {
			s.fatalf("query for %s: answers %v, want exactly one", name, s.answersOf(q))
		}
		s.stats.count("dns-upstream")
	case !m.visible(upstreamRes):
		q := s.query(name, qtype, sentinel)
		s.advance(6 * time.Second) // past the stub's upstream timeout
		if n := len(s.answersOf(q)); n != 0 {
			s.fatalf("query for %s to a private upstream the client may not reach: %d answers, want none", name, n)
		}
		s.stats.count("dns-upstream-unreachable")
	case !m.allows(upstreamRes, probeUDP53):
		// The client answers the forward ICMP prohibited: the exchange fails, the application gets SERVFAIL.
		q := s.query(name, qtype, sentinel)
		if !s.waitFor(2*time.Second, func() bool { return len(s.answersOf(q)) > 0 }) {
			s.fatalf("query for %s to an upstream the resource's filters deny: no answer within 2 s", name)
		}
		if a := s.answersOf(q); len(a) != 1 || a[0].Rcode != mdns.RcodeServerFailure {
			s.fatalf("query for %s to an upstream the resource's filters deny: %v, want SERVFAIL", name, a)
		}
		s.stats.count("dns-upstream-filtered")
	default:
		// Through the tunnel: the application retries every second (each query a new one).
		start := time.Now()
		var sent []*dnsQuery
		answered := func() bool {
			return slices.ContainsFunc(sent, func(q *dnsQuery) bool {
				return slices.ContainsFunc(s.answersOf(q), func(a *mdns.Msg) bool { return a.Rcode == mdns.RcodeSuccess })
			})
		}
		for !answered() && time.Since(start) < pingWindow {
			sent = append(sent, s.query(name, qtype, sentinel))
			s.waitFor(pingInterval, answered)
		}
		for _, q := range sent {
			check(q, markerTunnel, true)
		}
		switch {
		case answered():
			s.note("upstream inside resource %d answered after %v (%d queries)", upstreamRes, time.Since(start).Round(time.Millisecond), len(sent))
			s.stats.count("dns-upstream-tunnel")
		case m.siteUp(upstreamRes) && m.pathCertain(upstreamRes):
			s.fatalf("query for %s to the upstream inside resource %d not answered within %v although a path exists", name, upstreamRes, pingWindow)
		default:
			s.stats.count("dns-upstream-tunnel-no-path")
		}
	}
}
