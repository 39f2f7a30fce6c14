package core

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"pgregory.net/rapid"

	"github.com/snowgate/snowgate/internal/dnspattern"
	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/p2pcontrol"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/tunnel"
	"github.com/snowgate/snowgate/node"
)

// The reference model: resources as the portal has them, the portal's choice of gateway (the resource's
// site), and what the client must do with a packet — computed here independently of the core (its own
// longest-prefix match, pattern choice and filter semantics).

var (
	modelCIDRs = []string{
		"198.51.100.0/24", "198.51.100.0/25", "198.51.100.64/26", "198.51.100.7/32", "203.0.113.0/24",
		"2001:db8:1::/48", "2001:db8:1:2::/64",
	}
	modelPatterns = []string{"*.a.test", "**.a.test", "x.a.test", "?.b.test", "**.b.test"}
	modelNames    = []string{"x.a.test", "y.a.test", "p.q.a.test", "c.b.test", "cc.b.test", "z.other.test"}
	modelDsts     = []string{
		"198.51.100.7", "198.51.100.70", "198.51.100.130", "203.0.113.9", "198.18.1.1",
		"2001:db8:1::5", "2001:db8:1:2::5", "2001:db8:9::1",
	}
	modelFilters = [][]portalapi.Filter{
		nil,
		{{Protocol: portalapi.ProtocolTCP, PortRangeStart: 443, PortRangeEnd: 443}},
		{{Protocol: portalapi.ProtocolUDP, PortRangeStart: 53, PortRangeEnd: 53}, {Protocol: portalapi.ProtocolICMP}},
	}
	modelUpstreams = []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:53"), netip.MustParseAddrPort("203.0.113.153:53")}
	modelGateways  = []testGateway{gw(1), gw(2), gw(3)}
)

type mres struct {
	id      string
	kind    portalapi.ResourceType
	prefix  netip.Prefix
	pat     dnspattern.Pattern
	filters []portalapi.Filter
	gw      int
}

func (r *mres) portal() portalapi.Resource {
	pr := portalapi.Resource{Type: r.kind, ID: r.id, Name: "r" + r.id[len(r.id)-2:], Filters: r.filters,
		Sites: []portalapi.Site{{ID: modelGateways[r.gw].id + "-site"}}}
	switch r.kind {
	case portalapi.ResourceCIDR:
		pr.Address = r.prefix.String()
	case portalapi.ResourceDNS:
		pr.Address = r.pat.String()
	}
	return pr
}

// natRequest is an AssignedIPs a gateway received and has not answered.
type natRequest struct {
	gw  testGateway
	msg p2pcontrol.AssignedIPs
}

type model struct {
	t *rapid.T
	h *harness

	resources map[string]*mres
	upstream  int

	// The portal: create_flow not answered yet (resource ids, in order), and what it has seen.
	outstanding []string
	seenPushes  int
	// lastCreate is when create_flow was last pushed for a resource, since the last event that legitimately
	// restarts its flow (an answer, a failure, a removal, a roam).
	lastCreate map[string]time.Time
	portalUp   bool

	// The gateways: AssignedIPs not answered yet.
	natReqs   []natRequest
	seenOut   int
	delivered map[uint32]string // seq → gateway
	lastSeq   map[netip.Addr]uint32
	seq       uint32
	dataSent  int

	// DNS: proxy IPs first answered per name and type.
	answers map[string][]netip.Addr
}

func newModel(t *rapid.T) *model {
	h := newHarness(t, Config{})
	m := &model{t: t, h: h, resources: make(map[string]*mres), lastCreate: make(map[string]time.Time),
		delivered: make(map[uint32]string), lastSeq: make(map[netip.Addr]uint32), answers: make(map[string][]netip.Addr)}
	m.reconnectPortal()
	return m
}

func (m *model) initMsg() portalapi.ClientInit {
	var rs []portalapi.Resource
	for _, id := range sortedKeys(m.resources) {
		rs = append(rs, m.resources[id].portal())
	}
	msg := initMsg(rs...)
	msg.Interface.UpstreamDNS = []portalapi.DNSServer{{Protocol: portalapi.DNSProtocolIPPort, Address: modelUpstreams[m.upstream]}}
	return msg
}

// reconnectPortal is the portal session going down and coming back with a new init.
func (m *model) reconnectPortal() {
	m.h.c.HandlePortalState(tunnel.PortalDisconnected, m.h.now)
	m.outstanding = nil
	m.forgetFlows() // the old session's requests are no longer in flight
	m.portalUp = true
	m.h.c.HandlePortalState(tunnel.PortalJoined, m.h.now)
	m.h.portal(m.initMsg())
}

// --- the model's routing ---

// matchName is the most specific DNS pattern holding name (exact first, lowest id among equals).
func (m *model) matchName(name string) *mres {
	var best *mres
	for _, id := range sortedKeys(m.resources) {
		r := m.resources[id]
		if r.kind != portalapi.ResourceDNS || !r.pat.Match(name) {
			continue
		}
		if best == nil || r.pat.MoreSpecificThan(best.pat) && r.pat.String() != best.pat.String() {
			best = r
		}
	}
	return best
}

// nameOf returns the name a proxy IP was answered for.
func (m *model) nameOf(ip netip.Addr) (string, bool) {
	for name, ips := range m.answers {
		if slices.Contains(ips, ip) {
			return name[:len(name)-2], true
		}
	}
	return "", false
}

func inReserved(a netip.Addr) bool {
	return slices.ContainsFunc(internetExcludes, func(p netip.Prefix) bool { return p.Contains(a) })
}

// resourceFor is the resource a packet to dst belongs to (nil: none).
func (m *model) resourceFor(dst netip.Addr) *mres {
	if name, ok := m.nameOf(dst); ok {
		return m.matchName(name)
	}
	if inReserved(dst) {
		return nil
	}
	var best *mres
	for _, id := range sortedKeys(m.resources) {
		r := m.resources[id]
		if r.kind == portalapi.ResourceCIDR && r.prefix.Contains(dst) && (best == nil || r.prefix.Bits() > best.prefix.Bits()) {
			best = r
		}
	}
	if best != nil {
		return best
	}
	for _, id := range sortedKeys(m.resources) {
		if r := m.resources[id]; r.kind == portalapi.ResourceInternet {
			return r
		}
	}
	return nil
}

func filtersAllow(fs []portalapi.Filter, proto ippacket.Protocol, port uint16) bool {
	if len(fs) == 0 {
		return true
	}
	for _, f := range fs {
		switch {
		case f.Protocol == portalapi.ProtocolICMP && (proto == ippacket.ProtoICMP || proto == ippacket.ProtoICMPv6):
			return true
		case f.Protocol == portalapi.ProtocolTCP && proto == ippacket.ProtoTCP,
			f.Protocol == portalapi.ProtocolUDP && proto == ippacket.ProtoUDP:
			if f.PortRangeStart <= port && port <= f.PortRangeEnd {
				return true
			}
		}
	}
	return false
}

// allowed applies the filters: a DNS resource's own; for a CIDR resource, any CIDR or Internet resource
// containing its prefix may allow the packet (the Internet resource allows everything).
func (m *model) allowed(r *mres, proto ippacket.Protocol, port uint16) bool {
	switch r.kind {
	case portalapi.ResourceDNS:
		return filtersAllow(r.filters, proto, port)
	case portalapi.ResourceInternet:
		return true
	}
	for _, o := range m.resources {
		switch {
		case o.kind == portalapi.ResourceInternet:
			return true
		case o.kind == portalapi.ResourceCIDR && o.prefix.Bits() <= r.prefix.Bits() && o.prefix.Contains(r.prefix.Addr()):
			if filtersAllow(o.filters, proto, port) {
				return true
			}
		}
	}
	return false
}

// --- driving ---

// observe processes what the core did since the last call: portal pushes, control packets, deliveries;
// and checks the invariants.
func (m *model) observe() {
	t, h := m.t, m.h
	t.Helper()
	if h.reconnects > 0 {
		h.reconnects = 0
		m.reconnectPortal()
	}
	for i := m.seenPushes; i < len(h.pushes); i++ {
		cf, ok := h.pushes[i].Payload.(portalapi.CreateFlow)
		if !ok {
			continue
		}
		if !m.portalUp {
			t.Fatalf("create_flow for %s while the portal is away", cf.ResourceID)
		}
		if last, ok := m.lastCreate[cf.ResourceID]; ok && h.pushTimes[i].Sub(last) < DefaultFlowRetryInterval {
			t.Fatalf("create_flow for %s %v after the previous one (at most one in flight)", cf.ResourceID, h.pushTimes[i].Sub(last))
		}
		m.lastCreate[cf.ResourceID] = h.pushTimes[i]
		if !slices.Contains(m.outstanding, cf.ResourceID) {
			m.outstanding = append(m.outstanding, cf.ResourceID)
		}
	}
	m.seenPushes = len(h.pushes)
	if len(h.ambiguous) > 0 {
		t.Fatalf("destinations %v held by two gateways' AllowedIPs with the same prefix length", h.ambiguous)
	}
	for _, d := range h.out[m.seenOut:] {
		p, _ := ippacket.Parse(d.pkt)
		if !h.established[d.gw] {
			t.Fatalf("packet to %v sent to gateway %q whose connection is not established", p.Dst(), d.gw)
		}
		if d.control {
			cp, err := p2pcontrol.Decode(d.pkt)
			if err != nil {
				t.Fatalf("control packet: %v", err)
			}
			g := m.gatewayByIPv6(p.Dst())
			if g == nil || g.id != d.gw {
				t.Fatalf("control packet to %v went to %q", p.Dst(), d.gw)
			}
			if a, ok := cp.Msg.(p2pcontrol.AssignedIPs); ok {
				m.natReqs = append(m.natReqs, natRequest{gw: *g, msg: a})
			}
			continue
		}
		seq := seqOf(d.pkt)
		r := m.resourceFor(p.Dst())
		if r == nil {
			t.Fatalf("packet %d to %v sent to %q: no resource covers it", seq, p.Dst(), d.gw)
		}
		_, port, _ := p.Ports()
		if !m.allowed(r, p.Protocol(), port) {
			t.Fatalf("packet %d to %v sent though the filters of %s deny it", seq, p.Dst(), r.id)
		}
		if want := modelGateways[r.gw].id; d.gw != want {
			t.Fatalf("packet %d to %v (resource %s) went to %q, want %q", seq, p.Dst(), r.id, d.gw, want)
		}
		if prev, dup := m.delivered[seq]; dup {
			t.Fatalf("packet %d delivered twice (%s, %s)", seq, prev, d.gw)
		}
		m.delivered[seq] = d.gw
		if last := m.lastSeq[p.Dst()]; seq < last {
			t.Fatalf("packet %d to %v delivered after packet %d", seq, p.Dst(), last)
		}
		m.lastSeq[p.Dst()] = seq
	}
	m.seenOut = len(h.out)
	m.checkAccounting()
	// The AllowedIPs kept (incrementally) equal what the core would compute from scratch, and are what
	// the node has.
	for id, g := range h.c.gateways {
		if g.allowedDirty {
			continue
		}
		if want := h.c.allowedFor(g); !slices.Equal(want, g.allowed) {
			t.Fatalf("gateway %s: AllowedIPs %v, recomputed %v", id, g.allowed, want)
		}
		if fc := h.conns[id]; fc != nil && !slices.Equal(fc.allowed, g.allowed) {
			t.Fatalf("gateway %s: the node has AllowedIPs %v, the core thinks %v", id, fc.allowed, g.allowed)
		}
	}
}

// checkAccounting: every data packet is delivered, answered, dropped (counted) or still waiting.
func (m *model) checkAccounting() {
	st := m.h.c.Status(m.h.now)
	waiting := 0
	for _, g := range st.Gateways {
		waiting += g.Buffered
	}
	for _, f := range st.PendingFlows {
		waiting += f.Buffered
	}
	dropped := uint64(0)
	for reason, n := range st.Counters.Dropped {
		if reason != "no_gateway" && reason != "sentinel" && reason != "dns_unavailable" {
			dropped += n
		}
	}
	answered := st.Counters.ICMP["prohibited"] + st.Counters.ICMP["unreachable"]
	if int(st.Counters.Tunneled) != len(m.delivered) {
		m.t.Fatalf("core counted %d packets tunneled, %d reached wireguard-go", st.Counters.Tunneled, len(m.delivered))
	}
	if got := uint64(len(m.delivered)) + answered + dropped + uint64(waiting); got != uint64(m.dataSent) {
		m.t.Fatalf("%d data packets sent, %d delivered + %d answered + %d dropped + %d waiting = %d",
			m.dataSent, len(m.delivered), answered, dropped, waiting, got)
	}
}

func (m *model) gatewayByIPv6(a netip.Addr) *testGateway {
	for i := range modelGateways {
		if modelGateways[i].ipv6 == a {
			return &modelGateways[i]
		}
	}
	return nil
}

// send sends a data packet and checks the immediate verdict. It returns its sequence number.
func (m *model) send(dst netip.Addr, proto ippacket.Protocol, port uint16) uint32 {
	h := m.h
	m.seq++
	src := clientV4
	if dst.Is6() {
		src = clientV6
	}
	before := len(h.pushes)
	tunBefore := len(h.tun)
	v := h.tunIn(packet(src, dst, proto, port, m.seq))
	m.dataSent++
	r := m.resourceFor(dst)
	switch {
	case r == nil:
		if v != tunnel.Stop || len(h.createFlows(before)) != 0 {
			m.t.Fatalf("packet to %v (no resource): verdict %v, create_flow %v", dst, v, h.createFlows(before))
		}
	case !m.allowed(r, proto, port):
		if v != tunnel.Stop || len(h.tun) != tunBefore+1 || len(h.createFlows(before)) != 0 {
			m.t.Fatalf("packet to %v denied by %s: verdict %v, %d answers", dst, r.id, v, len(h.tun)-tunBefore)
		}
		typ, code, seq := icmpError(m.t, h.tun[tunBefore])
		if !isProhibited(dst.Is4(), typ, code) || seq != m.seq {
			m.t.Fatalf("denied packet answered type %d code %d seq %d", typ, code, seq)
		}
	}
	m.observe()
	return m.seq
}

// resolve queries name through the core and checks that its proxy IPs never change.
func (m *model) resolve(name string, qtype uint16) []netip.Addr {
	h := m.h
	before := len(h.tun)
	fwd := len(h.forwards)
	h.tunIn(udpQueryPacket(m.t, clientV4, sentV4, name, qtype, 1))
	r := m.matchName(name)
	if r == nil {
		if len(h.tun) != before || len(h.forwards) != fwd+1 {
			m.t.Fatalf("query for %s (no resource): %d answers, %d forwards", name, len(h.tun)-before, len(h.forwards)-fwd)
		}
		m.observe()
		return nil
	}
	if len(h.tun) != before+1 {
		m.t.Fatalf("query for %s: %d answers, want 1 local", name, len(h.tun)-before)
	}
	_, _, msg := dnsAnswer(m.t, h.tun[before])
	var ips []netip.Addr
	for _, rr := range msg.Answer {
		switch rr := rr.(type) {
		case *mdns.A:
			a, _ := netip.AddrFromSlice(rr.A.To4())
			ips = append(ips, a)
		case *mdns.AAAA:
			a, _ := netip.AddrFromSlice(rr.AAAA)
			ips = append(ips, a)
		}
	}
	if len(ips) != 4 {
		m.t.Fatalf("query for %s type %d: %d records", name, qtype, len(ips))
	}
	key := fmt.Sprintf("%s/%d", name, qtype%10)
	if prev, ok := m.answers[key]; ok && !slices.Equal(prev, ips) {
		m.t.Fatalf("proxy IPs of %s changed: %v → %v", name, prev, ips)
	}
	m.answers[key] = ips
	m.observe()
	return ips
}

// answerPortal answers the oldest outstanding create_flow.
func (m *model) answerPortal(ok bool, reason portalapi.FailReason) {
	if len(m.outstanding) == 0 || !m.portalUp {
		return
	}
	id := m.outstanding[0]
	m.outstanding = m.outstanding[1:]
	delete(m.lastCreate, id)
	r := m.resources[id]
	if r == nil {
		m.h.portal(portalapi.FlowCreationFailed{ResourceID: id, Reason: portalapi.FailNotFound})
	} else if ok {
		m.h.portal(modelGateways[r.gw].flowCreated(id))
	} else {
		m.h.portal(portalapi.FlowCreationFailed{ResourceID: id, Reason: reason})
	}
	m.observe()
}

// answerNAT answers the oldest AssignedIPs.
func (m *model) answerNAT(active bool) {
	if len(m.natReqs) == 0 {
		return
	}
	req := m.natReqs[0]
	m.natReqs = m.natReqs[1:]
	if !m.h.established[req.gw.id] {
		return
	}
	m.h.c.HandleNetworkInput(domainStatus(m.t, req.gw, req.msg.Resource, req.msg.Domain, active, req.msg.Seq), m.h.now)
	m.h.run()
	m.observe()
}

// forgetFlowsOf forgets the create_flow timing of the resources whose flows a gateway event ends.
func (m *model) forgetFlows() { clear(m.lastCreate) }

// settle drives everything to rest: flows answered, connections up, NATs confirmed. It fails if packets
// keep waiting.
func (m *model) settle() {
	h := m.h
	if !m.portalUp {
		m.reconnectPortal()
		m.observe()
	}
	for round := 0; round < 100; round++ {
		progress := false
		for len(m.outstanding) > 0 {
			m.answerPortal(true, "")
			progress = true
		}
		for _, id := range sortedKeys(h.conns) {
			if !h.established[id] {
				h.establish(id)
				m.observe()
				progress = true
			}
		}
		for len(m.natReqs) > 0 {
			m.answerNAT(true)
			progress = true
		}
		h.advance(100 * time.Millisecond)
		m.observe()
		if !progress && m.waiting() == 0 {
			break
		}
	}
	st := h.c.Status(h.now)
	for _, g := range st.Gateways {
		if g.Buffered != 0 {
			m.t.Fatalf("after settling, %d packets still wait on gateway %s (%+v)", g.Buffered, g.ID, g)
		}
	}
	if len(st.PendingFlows) != 0 {
		m.t.Fatalf("after settling, flows still pending: %+v", st.PendingFlows)
	}
}

// waiting counts the packets and flows still waiting in the core.
func (m *model) waiting() int {
	st := m.h.c.Status(m.h.now)
	n := len(st.PendingFlows)
	for _, g := range st.Gateways {
		n += g.Buffered
	}
	return n
}

// probe checks that every resource is reachable once everything settled.
func (m *model) probe() {
	for _, id := range sortedKeys(m.resources) {
		r := m.resources[id]
		var dst netip.Addr
		switch r.kind {
		case portalapi.ResourceCIDR:
			for _, s := range modelDsts {
				if a := netip.MustParseAddr(s); m.resourceFor(a) == r {
					dst = a
					break
				}
			}
		case portalapi.ResourceInternet:
			if a := netip.MustParseAddr("198.18.1.1"); m.resourceFor(a) == r {
				dst = a
			}
		case portalapi.ResourceDNS:
			for _, n := range modelNames {
				if m.matchName(n) == r {
					dst = m.resolve(n, mdns.TypeA)[0]
					break
				}
			}
		}
		if !dst.IsValid() {
			continue
		}
		m.h.advance(DefaultFlowRetryInterval) // past any NAT refusal's retry interval
		m.observe()
		proto, port := ippacket.ProtoTCP, uint16(443)
		if !m.allowed(r, proto, port) {
			proto, port = ippacket.ProtoUDP, 53
		}
		seq := m.send(dst, proto, port)
		m.settle()
		if _, ok := m.delivered[seq]; !ok {
			m.t.Fatalf("probe %d to %v (resource %s) not delivered after settling", seq, dst, id)
		}
	}
}

func TestClientStateMachine(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		m := newModel(rt)
		ids := rapid.SampledFrom([]string{rid(1), rid(2), rid(3), rid(4), rid(5), rid(6)})
		rt.Repeat(map[string]func(*rapid.T){
			"add or change resource": func(rt *rapid.T) {
				id := ids.Draw(rt, "id")
				r := &mres{id: id, gw: rapid.IntRange(0, len(modelGateways)-1).Draw(rt, "gw"),
					filters: rapid.SampledFrom(modelFilters).Draw(rt, "filters")}
				switch rapid.IntRange(0, 4).Draw(rt, "kind") {
				case 0, 1:
					r.kind, r.prefix = portalapi.ResourceCIDR, netip.MustParsePrefix(rapid.SampledFrom(modelCIDRs).Draw(rt, "cidr"))
				case 2, 3:
					r.kind = portalapi.ResourceDNS
					r.pat, _ = dnspattern.Parse(rapid.SampledFrom(modelPatterns).Draw(rt, "pattern"))
				default:
					r.kind, r.filters = portalapi.ResourceInternet, nil
				}
				if old := m.resources[id]; old != nil && (old.kind != r.kind || old.prefix != r.prefix ||
					old.pat.String() != r.pat.String() || old.gw != r.gw) {
					delete(m.lastCreate, id) // the flow is dropped
				}
				m.resources[id] = r
				m.h.portal(portalapi.ResourceCreatedOrUpdated{Resource: r.portal()})
				m.observe()
			},
			"remove resource": func(rt *rapid.T) {
				id := ids.Draw(rt, "id")
				delete(m.resources, id)
				delete(m.lastCreate, id)
				m.h.portal(portalapi.ResourceDeleted(id))
				m.observe()
			},
			"send packet": func(rt *rapid.T) {
				var dst netip.Addr
				if len(m.answers) > 0 && rapid.Bool().Draw(rt, "to proxy IP") {
					keys := sortedKeys(m.answers)
					ips := m.answers[rapid.SampledFrom(keys).Draw(rt, "name")]
					dst = rapid.SampledFrom(ips).Draw(rt, "ip")
				} else {
					dst = netip.MustParseAddr(rapid.SampledFrom(modelDsts).Draw(rt, "dst"))
				}
				proto := rapid.SampledFrom([]ippacket.Protocol{ippacket.ProtoTCP, ippacket.ProtoUDP, ippacket.ProtoICMP}).Draw(rt, "proto")
				port := rapid.SampledFrom([]uint16{53, 443, 8080}).Draw(rt, "port")
				n := rapid.IntRange(1, 3).Draw(rt, "count")
				for range n {
					m.send(dst, proto, port)
				}
			},
			"dns query": func(rt *rapid.T) {
				m.resolve(rapid.SampledFrom(modelNames).Draw(rt, "name"), rapid.SampledFrom([]uint16{mdns.TypeA, mdns.TypeAAAA}).Draw(rt, "type"))
			},
			"portal answers": func(rt *rapid.T) {
				ok := rapid.IntRange(0, 3).Draw(rt, "ok") > 0
				m.answerPortal(ok, rapid.SampledFrom([]portalapi.FailReason{portalapi.FailOffline, portalapi.FailForbidden}).Draw(rt, "reason"))
			},
			"connection established": func(rt *rapid.T) {
				g := rapid.SampledFrom(modelGateways).Draw(rt, "gw")
				if m.h.conns[g.id] != nil {
					m.h.establish(g.id)
					m.observe()
				}
			},
			"connection failed": func(rt *rapid.T) {
				g := rapid.SampledFrom(modelGateways).Draw(rt, "gw")
				if m.h.conns[g.id] != nil {
					m.forgetFlows()
					m.h.nodeEvent(node.Event{Kind: node.EventConnectionFailed, ConnectionID: g.id})
					m.observe()
				}
			},
			"gateway goodbye": func(rt *rapid.T) {
				g := rapid.SampledFrom(modelGateways).Draw(rt, "gw")
				if m.h.established[g.id] {
					bye, _ := p2pcontrol.Encode(g.ipv6, clientV6, p2pcontrol.Goodbye{})
					m.forgetFlows()
					m.h.c.HandleNetworkInput(bye, m.h.now)
					m.h.run()
					m.observe()
				}
			},
			"gateway answers NAT": func(rt *rapid.T) {
				m.answerNAT(rapid.IntRange(0, 3).Draw(rt, "active") > 0)
			},
			"relay loss": func(rt *rapid.T) {
				m.h.failUpsert = node.ErrNoRelays
				m.forgetFlows()
			},
			"node lost its relays": func(rt *rapid.T) {
				m.h.nodeEvent(node.Event{Kind: node.EventNoRelays})
				m.observe()
			},
			"portal down": func(rt *rapid.T) {
				m.portalUp = false
				m.h.c.HandlePortalState(tunnel.PortalDisconnected, m.h.now)
				m.h.run()
			},
			"portal reconnect": func(rt *rapid.T) {
				m.reconnectPortal()
				m.observe()
			},
			"roam": func(rt *rapid.T) {
				m.forgetFlows()
				m.portalUp = false
				m.outstanding = nil
				m.natReqs = nil
				m.h.c.HandleRoam(m.h.now)
				m.h.run()
				m.observe()
				if rapid.Bool().Draw(rt, "portal back") {
					m.reconnectPortal()
					m.observe()
				}
			},
			"change upstream": func(rt *rapid.T) {
				m.upstream = 1 - m.upstream
				msg := m.initMsg()
				m.h.portal(portalapi.ConfigChanged{Interface: msg.Interface})
				m.observe()
			},
			"time passes": func(rt *rapid.T) {
				d := rapid.SampledFrom([]time.Duration{100 * time.Millisecond, time.Second, 2500 * time.Millisecond, 11 * time.Second}).Draw(rt, "d")
				m.h.advance(d)
				m.observe()
			},
			"settle and probe": func(rt *rapid.T) {
				m.settle()
				m.probe()
			},
			"": func(rt *rapid.T) {
				m.observe()
			},
		})
		// Whatever happened, everything works once the world settles.
		m.settle()
		m.probe()
	})
}
