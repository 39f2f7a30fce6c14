package core_test

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"pgregory.net/rapid"

	"github.com/snowgate/snowgate/gateway/core"
	"github.com/snowgate/snowgate/gateway/nat"
	"github.com/snowgate/snowgate/internal/p2pcontrol"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/tunnel"
	"github.com/snowgate/snowgate/node"
)

// The state-machine test drives the core with portal messages, control packets, resolutions, time and
// packets, and checks every action and verdict against a naive model that knows nothing of filter tables,
// p2pcontrol or the NAT table's structures: which resources a client holds, their filters, which proxy IPs
// each client set up for which resource, and the NAT sessions its forwarded packets opened.

type mKind int

const (
	mCIDR mKind = iota
	mInternet
	mDNS
)

type mResource struct {
	kind    mKind
	prefix  netip.Prefix // CIDR
	pattern string       // DNS
	matches func(domain string) bool
}

var (
	mResources = []mResource{
		{kind: mCIDR, prefix: netip.MustParsePrefix("198.51.100.0/24")},
		{kind: mCIDR, prefix: netip.MustParsePrefix("198.51.100.128/25")}, // overlaps the first
		{kind: mCIDR, prefix: netip.MustParsePrefix("2001:db8:1::/64")},
		{kind: mInternet},
		{kind: mDNS, pattern: "*.a.example", matches: func(d string) bool { return d == "x.a.example" }},
		{kind: mDNS, pattern: "**.a.example", matches: func(d string) bool {
			return d == "x.a.example" || d == "deep.x.a.example" || d == "a.example"
		}},
		{kind: mDNS, pattern: "app.b.example", matches: func(d string) bool { return d == "app.b.example" }},
	}
	mFilters = [][]portalapi.Filter{
		nil,
		{icmpF()},
		{tcpF(80, 80)},
		{tcpF(1, 1000), udpF(53, 53)},
		{udpF(5000, 6000), icmpF()},
	}
	mDomains   = []string{"x.a.example", "deep.x.a.example", "a.example", "app.b.example", "x.c.example"}
	mProxySets = [][]netip.Addr{proxies8(1), proxies8(11), proxies4(1), proxies8(21)}
	mReals     = []netip.Addr{
		netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2"),
		netip.MustParseAddr("2001:db8:ff::1"), netip.MustParseAddr("2001:db8:ff::2"),
	}
	// Destinations besides the proxy IPs: resources, the Internet, an address the Internet resource
	// excludes, another client, the gateway.
	mDsts = []netip.Addr{
		netip.MustParseAddr("198.51.100.10"), netip.MustParseAddr("198.51.100.200"), netip.MustParseAddr("2001:db8:1::5"),
		netip.MustParseAddr("198.18.3.3"), netip.MustParseAddr("2001:db8:9::9"), netip.MustParseAddr("192.0.2.200"),
		netip.MustParseAddr("100.64.1.2"), gwV4, gwV6, netip.MustParseAddr("100.96.9.9"),
	}
	mPorts    = []uint16{53, 80, 443, 5000}
	mExcluded = netip.MustParsePrefix("192.0.2.0/24") // Config.InternetExcludes of the test
	mUnknown  = []netip.Addr{netip.MustParseAddr("100.64.1.99"), netip.MustParseAddr("fd00:2021:1111::99")}
)

const (
	pUDP = iota
	pTCP
	pEcho
	pICMPError
	pGRE
	numProtos
)

type mAuth struct {
	filters []portalapi.Filter
	expires time.Time
}

type mNAT struct {
	res    int
	domain string
	reals  []netip.Addr
}

type sessKey struct {
	proto uint8
	port  uint16
	proxy netip.Addr
}

type mSession struct {
	real netip.Addr
	last time.Time
	ttl  time.Duration
}

type mEntry struct {
	res     int
	proxies []netip.Addr
	seq     uint64
	done    bool
	status  p2pcontrol.NatStatus
}

type mClient struct {
	tc       testClient
	auths    map[int]*mAuth
	proxies  map[netip.Addr]*mNAT
	sessions map[sessKey]*mSession
	p2p      map[string]*mEntry
	seq      uint64
	// departAt is when the connection of a client told Goodbye is removed (zero: not departing).
	departAt time.Time
}

func (c *mClient) present() bool { return len(c.auths) > 0 }

func (c *mClient) reset() {
	c.auths = map[int]*mAuth{}
	c.proxies = map[netip.Addr]*mNAT{}
	c.sessions = map[sessKey]*mSession{}
	c.p2p = map[string]*mEntry{}
}

type wantStatus struct {
	dst    netip.Addr
	domain string
	status p2pcontrol.NatStatus
	seq    uint64
}

func (w wantStatus) String() string {
	return fmt.Sprintf("%s to %v: %v seq %d", w.domain, w.dst, w.status, w.seq)
}

type wantICMP struct {
	prohibited bool
	src, dst   netip.Addr
}

func (w wantICMP) String() string {
	kind := "unreachable"
	if w.prohibited {
		kind = "prohibited"
	}
	return fmt.Sprintf("%s %v→%v", kind, w.src, w.dst)
}

// expect collects the actions a transition must produce.
type expect struct {
	upserts  []node.ConnectionParams
	answers  []string
	removes  []string
	goodbyes []netip.Addr
	statuses []wantStatus
	resolves []core.ResolveName
	icmp     []wantICMP
}

type coreModel struct {
	h       *harness
	clients []*mClient
	filters []int // the portal's current filter choice per resource
	pending []core.ResolveName
	refs    int
}

func (m *coreModel) now() time.Time { return m.h.now }

// liveFilters returns the filters of c's live authorisation of resource r.
func (m *coreModel) auth(c *mClient, r int) *mAuth {
	a := c.auths[r]
	if a == nil || (!a.expires.IsZero() && !m.now().Before(a.expires)) {
		return nil
	}
	return a
}

// applyExpiry ends the authorisations whose time has come, as the core does at its next call, and removes
// the connections of departed clients whose grace is over (the settle after every transition runs the
// due timeout).
func (m *coreModel) applyExpiry(e *expect) {
	for _, c := range m.clients {
		if !c.departAt.IsZero() && !m.now().Before(c.departAt) {
			e.removes = append(e.removes, c.tc.id)
			c.departAt = time.Time{}
		}
		for r, a := range c.auths {
			if !a.expires.IsZero() && !m.now().Before(a.expires) {
				m.revoke(c, r, e)
			}
		}
	}
}

// revoke removes c's authorisation of r, the NAT of r's domains and, with the last one, the client.
func (m *coreModel) revoke(c *mClient, r int, e *expect) {
	if _, ok := c.auths[r]; !ok {
		return
	}
	delete(c.auths, r)
	domains := map[string]bool{}
	for p, n := range c.proxies {
		if n.res == r {
			domains[n.domain] = true
			delete(c.proxies, p)
			m.dropSessions(c, p)
		}
	}
	for d := range domains {
		delete(c.p2p, d)
	}
	if !c.present() {
		e.goodbyes = append(e.goodbyes, c.tc.v6)
		c.departAt = m.now().Add(5 * time.Second) // goodbyeGrace
		c.reset()
	}
}

func (m *coreModel) dropSessions(c *mClient, proxy netip.Addr) {
	for k := range c.sessions {
		if k.proxy == proxy {
			delete(c.sessions, k)
		}
	}
}

// filtersAllow is Firezone's filter semantics, written out.
func filtersAllow(fs []portalapi.Filter, v6 bool, proto uint8, port uint16, portsOK bool) bool {
	if len(fs) == 0 {
		return true
	}
	for _, f := range fs {
		switch f.Protocol {
		case portalapi.ProtocolICMP:
			if (!v6 && proto == 1) || (v6 && proto == 58) {
				return true
			}
		case portalapi.ProtocolTCP, portalapi.ProtocolUDP:
			want := uint8(6)
			if f.Protocol == portalapi.ProtocolUDP {
				want = 17
			}
			if proto == want && portsOK && f.PortRangeStart <= port && port <= f.PortRangeEnd {
				return true
			}
		}
	}
	return false
}

type mVerdict int

const (
	vNoResource mVerdict = iota
	vAllow
	vDenied
)

// verdict decides a packet of c to (or, reverse, from) addr by the resources c holds.
func (m *coreModel) verdict(c *mClient, addr netip.Addr, proto uint8, port uint16) mVerdict {
	allow := func(fs []portalapi.Filter) bool { return filtersAllow(fs, addr.Is6(), proto, port, true) }
	if n := c.proxies[addr]; n != nil {
		// A DNS resource's proxy IP: its filters only.
		if a := m.auth(c, n.res); a != nil {
			if allow(a.filters) {
				return vAllow
			}
			return vDenied
		}
	}
	covered, allowed := false, false
	for r, res := range mResources {
		a := m.auth(c, r)
		if a == nil {
			continue
		}
		switch {
		case res.kind == mCIDR && res.prefix.Contains(addr):
			covered = true
			allowed = allowed || allow(a.filters)
		case res.kind == mInternet && !m.excluded(addr):
			covered, allowed = true, true
		}
	}
	switch {
	case !covered:
		return vNoResource
	case allowed:
		return vAllow
	}
	return vDenied
}

func (m *coreModel) excluded(a netip.Addr) bool {
	return mExcluded.Contains(a) || containedInAny(nat.DefaultProxyPrefixes(), a) || containedInAny(core.DefaultTunnelPrefixes(), a)
}

func containedInAny(ps []netip.Prefix, a netip.Addr) bool {
	return slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Contains(a) })
}

func (m *coreModel) hasInternet(c *mClient) bool {
	for r, res := range mResources {
		if res.kind == mInternet && m.auth(c, r) != nil {
			return true
		}
	}
	return false
}

// check compares the actions of a transition with what the model expects.
func (m *coreModel) check(t *rapid.T, as []tunnel.Action, e *expect) {
	var got expect
	for _, a := range as {
		switch a := a.(type) {
		case tunnel.NodeUpsert:
			got.upserts = append(got.upserts, a.Params)
			c := m.clientByID(a.Params.ID)
			want := []netip.Prefix{netip.PrefixFrom(c.tc.v4, 32), netip.PrefixFrom(c.tc.v6, 128)}
			if !slices.Equal(a.AllowedIPs, want) {
				t.Fatalf("upsert allowed IPs %v, want %v", a.AllowedIPs, want)
			}
		case tunnel.PortalPush:
			fa, ok := a.Payload.(portalapi.FlowAuthorized)
			if !ok {
				t.Fatalf("unexpected push %+v", a)
			}
			got.answers = append(got.answers, fa.Ref)
		case tunnel.NodeRemove:
			got.removes = append(got.removes, a.ID)
		case core.ResolveName:
			got.resolves = append(got.resolves, a)
		case tunnel.SendToTunnel:
			for _, pkt := range a.Packets {
				if p2pcontrol.IsControl(pkt) {
					p, err := p2pcontrol.Decode(pkt)
					if err != nil || p.Src != gwV6 {
						t.Fatalf("control packet %+v: %v", p, err)
					}
					switch msg := p.Msg.(type) {
					case p2pcontrol.Goodbye:
						got.goodbyes = append(got.goodbyes, p.Dst)
					case p2pcontrol.DomainStatus:
						got.statuses = append(got.statuses, wantStatus{p.Dst, msg.Domain, msg.Status, msg.Seq})
					default:
						t.Fatalf("control message %+v", msg)
					}
					continue
				}
				info := inspect(t, pkt)
				if !info.checksumsOK {
					t.Fatalf("ICMP reply with a bad checksum: %+v", info)
				}
				switch {
				case info.isProhibited():
					got.icmp = append(got.icmp, wantICMP{true, info.src, info.dst})
				case info.isUnreachable():
					got.icmp = append(got.icmp, wantICMP{false, info.src, info.dst})
				default:
					t.Fatalf("unexpected packet to the tunnel %+v", info)
				}
			}
		default:
			t.Fatalf("unexpected action %T %+v", a, a)
		}
	}
	eq := func(what string, a, b any) {
		if fmt.Sprint(a) != fmt.Sprint(b) {
			t.Fatalf("%s: got %v, want %v", what, a, b)
		}
	}
	slices.Sort(got.removes)
	slices.Sort(e.removes)
	slices.SortFunc(got.goodbyes, netip.Addr.Compare)
	slices.SortFunc(e.goodbyes, netip.Addr.Compare)
	eq("upserts", got.upserts, e.upserts)
	eq("flow_authorized", got.answers, e.answers)
	eq("removed connections", got.removes, e.removes)
	eq("goodbyes", got.goodbyes, e.goodbyes)
	eq("domain statuses", got.statuses, e.statuses)
	eq("resolutions", got.resolves, e.resolves)
	eq("ICMP replies", got.icmp, e.icmp)
	m.pending = append(m.pending, got.resolves...)
}

func (m *coreModel) clientByID(id string) *mClient {
	for _, c := range m.clients {
		if c.tc.id == id {
			return c
		}
	}
	panic(id)
}

func TestCoreStateMachine(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		h := newHarness(t, core.Config{InternetExcludes: []netip.Prefix{mExcluded}})
		h.initGateway(relayA)
		m := &coreModel{h: h, filters: make([]int, len(mResources))}
		for i := 1; i <= 3; i++ {
			c := &mClient{tc: mkClient(i)}
			c.reset()
			m.clients = append(m.clients, c)
		}
		// Start from clients that hold a DNS resource and another one, and have some NAT set up.
		for _, c := range m.clients {
			m.authorizeOne(rt, c, rapid.IntRange(4, 6).Draw(rt, "initial DNS resource"))
			m.authorizeOne(rt, c, rapid.IntRange(0, len(mResources)-1).Draw(rt, "initial resource"))
		}
		for range rapid.IntRange(1, 4).Draw(rt, "initial NAT set-ups") {
			m.assignResolved(rt)
		}
		rt.Repeat(map[string]func(*rapid.T){
			"authorize": m.authorize,
			"reject":    m.reject,
			"advance":   m.advance,
			"update":    m.update,
			"assign":    m.assign,
			"resolve":   m.resolve,
			"setup":     m.assignResolved,
			"send":      m.send,
			"send more": m.send,
			"tun":       m.tunPacket,
			"goodbye":   m.goodbye,
			"": func(t *rapid.T) {
				// The NAT table holds exactly the model's translations, and the gauge agrees.
				n := 0
				for _, c := range m.clients {
					n += len(c.proxies)
				}
				if st := m.h.g.Status(m.now()); st.NAT.Translations != n {
					t.Fatalf("NAT table has %d translations, the model %d", st.NAT.Translations, n)
				}
				if g := m.h.metric("snowgate.gateway.nat.translations"); g != int64(n) {
					t.Fatalf("translations gauge %d, the model %d", g, n)
				}
				// Timers are armed for every live expiry.
				at, ok := m.h.g.PollTimeout()
				for _, c := range m.clients {
					for _, a := range c.auths {
						if !a.expires.IsZero() && (!ok || at.After(a.expires)) {
							t.Fatalf("PollTimeout %v %v misses an expiry at %v", at, ok, a.expires)
						}
					}
				}
			},
		})
	})
}

func (m *coreModel) authorize(t *rapid.T) {
	m.authorizeOne(t, rapid.SampledFrom(m.clients).Draw(t, "client"), rapid.IntRange(0, len(mResources)-1).Draw(t, "resource"))
}

func (m *coreModel) authorizeOne(t *rapid.T, c *mClient, r int) {
	f := rapid.IntRange(0, len(mFilters)-1).Draw(t, "filters")
	var expires time.Time
	if k := rapid.SampledFrom([]int{0, 0, 0, 5, 30, 120}).Draw(t, "expires in"); k > 0 {
		expires = time.Unix(m.now().Unix()+int64(k), 0)
	}
	e := &expect{}
	c.departAt = time.Time{} // authorised again: the core keeps (or replaces) the connection
	m.applyExpiry(e)
	c.departAt = time.Time{}
	m.refs++
	ref := fmt.Sprintf("ref-%d", m.refs)
	res := m.resource(r, f)
	c.auths[r] = &mAuth{filters: mFilters[f], expires: expires}
	e.upserts = append(e.upserts, c.tc.params())
	e.answers = append(e.answers, ref)
	m.check(t, m.h.msg(c.tc.authorize(ref, res, expires)), e)
}

func (m *coreModel) resource(r, f int) portalapi.Resource {
	switch res := mResources[r]; res.kind {
	case mCIDR:
		return cidrRes(r+1, res.prefix.String(), mFilters[f]...)
	case mDNS:
		return dnsRes(r+1, res.pattern, mFilters[f]...)
	}
	return internetRes(r + 1)
}

func (m *coreModel) reject(t *rapid.T) {
	c := rapid.SampledFrom(m.clients).Draw(t, "client")
	r := rapid.IntRange(0, len(mResources)-1).Draw(t, "resource")
	e := &expect{}
	m.applyExpiry(e)
	m.revoke(c, r, e)
	m.check(t, m.h.msg(portalapi.RejectAccess{ClientID: c.tc.id, ResourceID: rid(r + 1)}), e)
}

func (m *coreModel) advance(t *rapid.T) {
	m.h.now = m.h.now.Add(time.Duration(rapid.SampledFrom([]int{1, 5, 25, 61, 130}).Draw(t, "seconds")) * time.Second)
	if rapid.Bool().Draw(t, "timer fires") {
		e := &expect{}
		m.applyExpiry(e)
		m.h.g.HandleTimeout(m.h.now)
		m.check(t, m.h.settle(), e)
	}
}

func (m *coreModel) update(t *rapid.T) {
	r := rapid.IntRange(0, len(mResources)-1).Draw(t, "resource")
	f := rapid.IntRange(0, len(mFilters)-1).Draw(t, "filters")
	e := &expect{}
	m.applyExpiry(e)
	for _, c := range m.clients {
		if a := c.auths[r]; a != nil {
			a.filters = mFilters[f]
		}
	}
	m.check(t, m.h.msg(portalapi.ResourceUpdated{Resource: m.resource(r, f)}), e)
}

func (m *coreModel) assign(t *rapid.T) {
	c := m.someClient(t)
	r := rapid.SampledFrom([]int{4, 5, 6, 0}).Draw(t, "resource")
	domain := rapid.SampledFrom(mDomains).Draw(t, "domain")
	if rapid.IntRange(0, 2).Draw(t, "fitting") > 0 {
		// Mostly ask for what the client may have, so that NAT gets set up.
		var fits [][2]int
		for r := range mResources {
			for d, dom := range mDomains {
				if m.authorizedFor(c, r, dom) {
					fits = append(fits, [2]int{r, d})
				}
			}
		}
		if len(fits) > 0 {
			f := rapid.SampledFrom(fits).Draw(t, "fit")
			r, domain = f[0], mDomains[f[1]]
		}
	}
	proxies := rapid.SampledFrom(mProxySets).Draw(t, "proxies")
	e := &expect{}
	m.applyExpiry(e)
	c.seq++
	a := p2pcontrol.AssignedIPs{Resource: rid(r + 1), Domain: domain, ProxyIPs: proxies, Seq: c.seq}
	if c.present() {
		m.expectAssigned(c, r, a, e)
	}
	v := m.h.g.HandleNetworkInput(control(t, c.tc.v6, a), m.now())
	if v != tunnel.Stop {
		t.Fatal("control packet passed")
	}
	m.check(t, m.h.settle(), e)
}

// expectAssigned is p2pcontrol's idempotence and the core's authorisation check, written out.
func (m *coreModel) expectAssigned(c *mClient, r int, a p2pcontrol.AssignedIPs, e *expect) {
	en := c.p2p[a.Domain]
	if en != nil && en.res == r && slices.Equal(en.proxies, a.ProxyIPs) {
		if !en.done {
			en.seq = max(en.seq, a.Seq)
			return
		}
		if a.Seq <= en.seq {
			e.statuses = append(e.statuses, wantStatus{c.tc.v6, a.Domain, en.status, a.Seq})
			return
		}
	}
	en = &mEntry{res: r, proxies: a.ProxyIPs, seq: a.Seq}
	c.p2p[a.Domain] = en
	if m.authorizedFor(c, r, a.Domain) {
		e.resolves = append(e.resolves, core.ResolveName{ClientID: c.tc.id, Domain: a.Domain, Assignment: a})
		return
	}
	en.done, en.status = true, p2pcontrol.NatInactive
	e.statuses = append(e.statuses, wantStatus{c.tc.v6, a.Domain, p2pcontrol.NatInactive, en.seq})
}

func (m *coreModel) authorizedFor(c *mClient, r int, domain string) bool {
	res := mResources[r]
	return m.auth(c, r) != nil && res.kind == mDNS && res.matches(domain)
}

// assignResolved is assign followed by a successful resolution of what it asked.
func (m *coreModel) assignResolved(t *rapid.T) {
	n := len(m.pending)
	m.assign(t)
	if len(m.pending) > n {
		m.resolveOne(t, len(m.pending)-1, false)
	}
}

func (m *coreModel) resolve(t *rapid.T) {
	if len(m.pending) == 0 {
		t.Skip("nothing to resolve")
	}
	m.resolveOne(t, rapid.IntRange(0, len(m.pending)-1).Draw(t, "which"), true)
}

func (m *coreModel) resolveOne(t *rapid.T, i int, mayFail bool) {
	rn := m.pending[i]
	m.pending = slices.Delete(m.pending, i, i+1)
	var err error
	var addrs []netip.Addr
	if mayFail && rapid.IntRange(0, 5).Draw(t, "fails") == 0 {
		err = fmt.Errorf("no such host")
	} else {
		addrs = rapid.SliceOfDistinct(rapid.SampledFrom(mReals), netip.Addr.String).Draw(t, "addrs")
		if rapid.IntRange(0, 4).Draw(t, "both families") > 0 {
			addrs = []netip.Addr{rapid.SampledFrom(mReals[:2]).Draw(t, "a"), rapid.SampledFrom(mReals[2:]).Draw(t, "aaaa")}
		}
	}
	e := &expect{}
	m.applyExpiry(e)
	c := m.clientByID(rn.ClientID)
	a := rn.Assignment
	r := slices.IndexFunc(mResources, func(mResource) bool { return false })
	for i := range mResources {
		if rid(i+1) == a.Resource {
			r = i
		}
	}
	if en := c.p2p[a.Domain]; c.present() && en != nil && en.res == r && slices.Equal(en.proxies, a.ProxyIPs) {
		status := p2pcontrol.NatInactive
		if err == nil && m.authorizedFor(c, r, a.Domain) {
			status = p2pcontrol.NatActive
			for _, p := range a.ProxyIPs {
				old := c.proxies[p]
				n := &mNAT{res: r, domain: a.Domain}
				for _, real := range addrs {
					if real.Is4() == p.Is4() {
						n.reals = append(n.reals, real)
					}
				}
				if old != nil && (old.res != r || old.domain != a.Domain) {
					m.dropSessions(c, p)
				}
				c.proxies[p] = n
			}
		}
		if !en.done || en.status != status {
			e.statuses = append(e.statuses, wantStatus{c.tc.v6, a.Domain, status, en.seq})
		}
		en.done, en.status = true, status
	}
	m.h.g.HandleResolved(rn.ClientID, a, addrs, err, m.now())
	m.check(t, m.h.settle(), e)
}

func (m *coreModel) goodbye(t *rapid.T) {
	c := rapid.SampledFrom(m.clients).Draw(t, "client")
	e := &expect{}
	m.applyExpiry(e)
	if c.present() {
		e.removes = append(e.removes, c.tc.id)
		c.reset()
	}
	m.h.g.HandleNetworkInput(control(t, c.tc.v6, p2pcontrol.Goodbye{}), m.now())
	m.check(t, m.h.settle(), e)
}

// buildPacket builds a packet of kind proto.
func buildPacket(src, dst netip.Addr, proto int, sport, dport uint16) []byte {
	switch proto {
	case pUDP:
		return udpPkt(netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport), []byte("payload"))
	case pTCP:
		return tcpPkt(netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport), header.TCPFlagSyn, nil)
	case pEcho:
		return echo(src, dst, sport, false)
	case pICMPError:
		quoted := udpPkt(netip.AddrPortFrom(dst, dport), netip.AddrPortFrom(src, sport), nil)
		if src.Is4() {
			return icmpPkt(src, dst, 3, 3, 0, quoted)
		}
		return icmpPkt(src, dst, 1, 4, 0, quoted)
	}
	return ipWrap(src, dst, 47, []byte("greeting"))
}

func ipProto(proto int, v6 bool) uint8 {
	switch proto {
	case pUDP:
		return 17
	case pTCP:
		return 6
	case pEcho, pICMPError:
		if v6 {
			return 58
		}
		return 1
	}
	return 47
}

// someClient draws a client, mostly one with resources.
func (m *coreModel) someClient(t *rapid.T) *mClient {
	var present []*mClient
	for _, c := range m.clients {
		if c.present() {
			present = append(present, c)
		}
	}
	if len(present) > 0 && rapid.IntRange(0, 4).Draw(t, "any client") > 0 {
		return rapid.SampledFrom(present).Draw(t, "present client")
	}
	return rapid.SampledFrom(m.clients).Draw(t, "client")
}

func (m *coreModel) send(t *rapid.T) {
	c := m.someClient(t)
	var dst netip.Addr
	owned := slices.SortedFunc(maps.Keys(c.proxies), netip.Addr.Compare)
	switch rapid.IntRange(0, 5).Draw(t, "destination kind") {
	case 0, 1:
		if len(owned) > 0 {
			dst = rapid.SampledFrom(owned).Draw(t, "owned proxy")
			break
		}
		fallthrough
	case 2:
		dst = rapid.SampledFrom(slices.Concat(mProxySets...)).Draw(t, "proxy")
	default:
		dst = rapid.SampledFrom(mDsts).Draw(t, "dst")
	}
	src := c.tc.v4
	if dst.Is6() {
		src = c.tc.v6
	}
	if rapid.IntRange(0, 9).Draw(t, "spoofed") == 0 {
		src = mUnknown[0]
		if dst.Is6() {
			src = mUnknown[1]
		}
	}
	proto := rapid.IntRange(0, numProtos-1).Draw(t, "proto")
	sport := rapid.SampledFrom([]uint16{40000, 40001, 53}).Draw(t, "sport")
	dport := rapid.SampledFrom(mPorts).Draw(t, "dport")
	pkt := buildPacket(src, dst, proto, sport, dport)
	orig := inspect(t, pkt)

	e := &expect{}
	m.applyExpiry(e)
	want, natted := m.expectSend(c, src, dst, proto, sport, dport, e)
	v := m.h.g.HandleNetworkInput(pkt, m.now())
	m.check(t, m.h.settle(), e)
	if v != want {
		t.Fatalf("verdict %v, want %v", v, want)
	}
	if v != tunnel.Pass {
		return
	}
	out := inspect(t, pkt)
	if !out.checksumsOK {
		t.Fatalf("forwarded packet with bad checksums: %+v", out)
	}
	if natted == nil {
		if out != orig {
			t.Fatalf("packet changed without NAT: %+v → %+v", orig, out)
		}
	} else {
		sess := c.sessions[*natted]
		if sess == nil {
			reals := c.proxies[dst].reals
			if !slices.Contains(reals, out.dst) {
				t.Fatalf("translated to %v, want one of %v", out.dst, reals)
			}
			ttl := nat.UDPTTL
			switch proto {
			case pTCP:
				ttl = nat.TCPTTL
			case pEcho:
				ttl = nat.ICMPTTL
			}
			sess = &mSession{real: out.dst, ttl: ttl}
			c.sessions[*natted] = sess
		} else if out.dst != sess.real {
			t.Fatalf("session to %v now goes to %v", sess.real, out.dst)
		}
		sess.last = m.now()
	}
	// The resource answers at once: the reply must come back translated exactly.
	var reply []byte
	switch proto {
	case pUDP:
		reply = udpPkt(netip.AddrPortFrom(out.dst, out.dport), netip.AddrPortFrom(out.src, out.sport), []byte("answer"))
	case pTCP:
		reply = tcpPkt(netip.AddrPortFrom(out.dst, out.dport), netip.AddrPortFrom(out.src, out.sport), header.TCPFlagSyn|header.TCPFlagAck, nil)
	case pEcho:
		reply = echo(out.dst, out.src, out.echoID, true)
	default:
		reply = ipWrap(out.dst, out.src, 47, []byte("greeting"))
	}
	rv := m.h.g.HandleTunInput(reply, m.now())
	m.check(t, m.h.settle(), &expect{})
	if rv != tunnel.Pass {
		t.Fatalf("reply to a forwarded packet stopped: %+v", inspect(t, reply))
	}
	back := inspect(t, reply)
	if !back.checksumsOK || back.src != orig.dst || back.dst != orig.src ||
		(proto == pUDP || proto == pTCP) && (back.sport != orig.dport || back.dport != orig.sport) ||
		proto == pEcho && back.echoID != orig.echoID {
		t.Fatalf("reply %+v does not reverse %+v", back, orig)
	}
}

// expectSend returns the verdict of a client's packet and fills in the ICMP replies; natted is the
// session key when the packet goes through the NAT.
func (m *coreModel) expectSend(c *mClient, src, dst netip.Addr, proto int, sport, dport uint16, e *expect) (tunnel.Verdict, *sessKey) {
	switch {
	case !c.present() || (src != c.tc.v4 && src != c.tc.v6):
		return tunnel.Stop, nil
	case proto == pICMPError:
		return tunnel.Stop, nil
	case containedInAny(core.DefaultTunnelPrefixes(), dst):
		return tunnel.Stop, nil
	}
	ip := ipProto(proto, dst.Is6())
	port := dport
	if proto != pUDP && proto != pTCP {
		port = 0
	}
	isProxy := containedInAny(nat.DefaultProxyPrefixes(), dst)
	switch m.verdict(c, dst, ip, port) {
	case vDenied:
		e.icmp = append(e.icmp, wantICMP{true, dst, src})
		return tunnel.Stop, nil
	case vNoResource:
		if m.hasInternet(c) && !isProxy && m.excluded(dst) {
			e.icmp = append(e.icmp, wantICMP{false, dst, src})
		}
		return tunnel.Stop, nil
	}
	if !isProxy {
		return tunnel.Pass, nil
	}
	if proto == pGRE {
		return tunnel.Stop, nil // the NAT translates TCP, UDP and echo only
	}
	key := sessKey{ip, sport, dst}
	if s := c.sessions[key]; s != nil && m.now().Before(s.last.Add(s.ttl)) {
		return tunnel.Pass, &key
	}
	delete(c.sessions, key)
	n := c.proxies[dst]
	if n == nil || len(n.reals) == 0 {
		e.icmp = append(e.icmp, wantICMP{false, dst, src})
		return tunnel.Stop, nil
	}
	return tunnel.Pass, &key
}

func (m *coreModel) tunPacket(t *rapid.T) {
	c := m.someClient(t)
	v6 := rapid.Bool().Draw(t, "ipv6")
	var src netip.Addr
	var pool []netip.Addr
	for _, a := range slices.Concat(mDsts[:6], mProxySets[0]) {
		if a.Is6() == v6 {
			pool = append(pool, a)
		}
	}
	src = rapid.SampledFrom(pool).Draw(t, "src")
	dst := c.tc.v4
	if v6 {
		dst = c.tc.v6
	}
	if rapid.IntRange(0, 9).Draw(t, "to no client") == 0 {
		dst = mUnknown[0]
		if v6 {
			dst = mUnknown[1]
		}
	}
	proto := rapid.IntRange(0, numProtos-1).Draw(t, "proto")
	sport := rapid.SampledFrom(mPorts).Draw(t, "sport")
	pkt := buildPacket(src, dst, proto, sport, 41000)
	if proto == pEcho {
		pkt = echo(src, dst, 7, true)
	}
	e := &expect{}
	m.applyExpiry(e)
	want := tunnel.Stop
	if c.present() && (dst == c.tc.v4 || dst == c.tc.v6) {
		port := sport
		if proto != pUDP && proto != pTCP {
			port = 0
		}
		if proto == pICMPError || m.verdict(c, src, ipProto(proto, v6), port) == vAllow {
			want = tunnel.Pass
		}
	}
	before := slices.Clone(pkt)
	v := m.h.g.HandleTunInput(pkt, m.now())
	m.check(t, m.h.settle(), e)
	if v != want {
		t.Fatalf("TUN packet %+v: verdict %v, want %v", inspect(t, before), v, want)
	}
	if v == tunnel.Pass && !slices.Equal(pkt, before) && proto != pICMPError {
		t.Fatalf("a packet that is no NAT reply was rewritten: %+v → %+v", inspect(t, before), inspect(t, pkt))
	}
}
