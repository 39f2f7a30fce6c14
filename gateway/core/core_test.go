package core_test

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/snowgate/snowgate/gateway/core"
	"github.com/snowgate/snowgate/internal/p2pcontrol"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/tunnel"
	"github.com/snowgate/snowgate/node"
)

var (
	res1 = netip.MustParseAddrPort("198.51.100.10:443")
	res2 = netip.MustParseAddrPort("203.0.113.5:22")
)

// authorized returns a harness after init with client c authorised for rs.
func authorized(t *testing.T, c testClient, rs ...portalapi.Resource) *harness {
	t.Helper()
	h := newHarness(t, core.Config{})
	h.initGateway(relayA)
	for i, r := range rs {
		as := h.msg(c.authorize(fmt.Sprintf("ref-%d", i), r, time.Time{}))
		if len(pushes(as, portalapi.EventFlowAuthorized)) != 1 {
			t.Fatalf("authorize %s: actions %v", r.ID, as)
		}
	}
	return h
}

func TestInitRelaysAndRepeatedInitKeepsClients(t *testing.T) {
	h := newHarness(t, core.Config{})
	as := h.initGateway(relayA, relayB)
	rel := ofKind[tunnel.NodeRelays](as)
	if len(rel) != 1 || len(rel[0].Remove) != 0 || len(rel[0].Add) != 2 {
		t.Fatalf("first init: %+v", as)
	}
	c := mkClient(1)
	h.msg(c.authorize("r1", cidrRes(1, "198.51.100.0/24"), time.Time{}))
	// The portal comes back with only relay B (a restarted portal names only the relays registered again so
	// far): B is added again and A is kept, as in Firezone's connlib; the client is kept.
	h.g.HandlePortalState(tunnel.PortalDisconnected, h.now)
	as = h.initGateway(relayB)
	rel = ofKind[tunnel.NodeRelays](as)
	if len(rel) != 1 || len(rel[0].Remove) != 0 || len(rel[0].Add) != 1 || rel[0].Add[0].ID != "relay-b" {
		t.Fatalf("second init: %+v", rel)
	}
	// Nor does an init without relays remove any.
	h.g.HandlePortalState(tunnel.PortalDisconnected, h.now)
	as = h.initGateway()
	if rel = ofKind[tunnel.NodeRelays](as); len(rel) > 1 || len(rel) == 1 && len(rel[0].Remove) != 0 {
		t.Fatalf("init without relays: %+v", rel)
	}
	if len(ofKind[tunnel.NodeRemove](as)) != 0 {
		t.Fatalf("repeated init removed a connection: %v", as)
	}
	if v, _ := h.net(udpPkt(netip.AddrPortFrom(c.v4, 5000), res1, nil)); v != tunnel.Pass {
		t.Fatal("client's traffic stopped after a repeated init")
	}
	// relays_presence: removal by id, addition merged.
	as = h.msg(portalapi.RelaysPresence{DisconnectedIDs: []string{"relay-b"}, Connected: []portalapi.Relay{relayA}})
	rel = ofKind[tunnel.NodeRelays](as)
	if len(rel) != 1 || !slices.Equal(rel[0].Remove, []string{"relay-b"}) || len(rel[0].Add) != 1 || rel[0].Add[0].ID != "relay-a" {
		t.Fatalf("relays_presence: %+v", rel)
	}
}

func TestAuthorizeFlowUpsertsAndAnswers(t *testing.T) {
	h := newHarness(t, core.Config{})
	h.initGateway(relayA)
	c := mkClient(1)
	h.g.HandlePortalMessage(c.authorize("ref-1", cidrRes(1, "198.51.100.0/24"), time.Time{}), h.now)
	// The answer waits for the upsert to be carried out.
	first := h.poll()
	ups := ofKind[tunnel.NodeUpsert](first)
	if len(ups) != 1 || len(pushes(first, portalapi.EventFlowAuthorized)) != 0 {
		t.Fatalf("first batch: %+v", first)
	}
	if ups[0].Params != c.params() {
		t.Fatalf("params %+v, want %+v", ups[0].Params, c.params())
	}
	wantAllowed := []netip.Prefix{netip.PrefixFrom(c.v4, 32), netip.PrefixFrom(c.v6, 128)}
	if !slices.Equal(ups[0].AllowedIPs, wantAllowed) {
		t.Fatalf("allowed IPs %v, want %v", ups[0].AllowedIPs, wantAllowed)
	}
	// It travels in the upsert's Then: pushed once the connection exists.
	ans := pushes(ups[0].Then, portalapi.EventFlowAuthorized)
	if len(ans) != 1 || ans[0].(portalapi.FlowAuthorized).Ref != "ref-1" {
		t.Fatalf("answer %+v", ans)
	}
}

func TestAuthorizeFlowIdempotent(t *testing.T) {
	c := mkClient(1)
	h := authorized(t, c, cidrRes(1, "198.51.100.0/24"))
	before := h.g.Status(h.now)
	as := h.msg(c.authorize("ref-again", cidrRes(1, "198.51.100.0/24"), time.Time{}))
	ups := ofKind[tunnel.NodeUpsert](as)
	if len(ups) != 1 || ups[0].Params != c.params() {
		t.Fatalf("second authorize_flow: %+v", as)
	}
	if len(ofKind[tunnel.NodeRemove](as)) != 0 || len(tunnelPackets(as)) != 0 {
		t.Fatalf("second authorize_flow disturbed the connection: %+v", as)
	}
	ans := pushes(as, portalapi.EventFlowAuthorized)
	if len(ans) != 1 || ans[0].(portalapi.FlowAuthorized).Ref != "ref-again" {
		t.Fatalf("answer %+v", ans)
	}
	after := h.g.Status(h.now)
	if len(after.Clients) != 1 || after.Flows != before.Flows {
		t.Fatalf("state changed: %+v → %+v", before, after)
	}
}

func TestAuthorizeFlowBadInputNotAnswered(t *testing.T) {
	h := newHarness(t, core.Config{})
	c := mkClient(1)
	// Before init.
	if as := h.msg(c.authorize("r", cidrRes(1, "198.51.100.0/24"), time.Time{})); len(as) != 0 {
		t.Fatalf("before init: %v", as)
	}
	h.initGateway(relayA)
	bad := []func(*portalapi.AuthorizeFlow){
		func(m *portalapi.AuthorizeFlow) { m.Client.PublicKey = "not base64" },
		func(m *portalapi.AuthorizeFlow) { m.Client.PublicKey = node.Key{}.String() },
		func(m *portalapi.AuthorizeFlow) { m.Client.PresharedKey = "AAAA" },
		func(m *portalapi.AuthorizeFlow) { m.Client.IPv4 = netip.Addr{} },
		func(m *portalapi.AuthorizeFlow) { m.Client.IPv6 = c.v4 },
		func(m *portalapi.AuthorizeFlow) { m.Client.ID = "" },
		func(m *portalapi.AuthorizeFlow) { m.Resource.Address = "not a cidr" },
		func(m *portalapi.AuthorizeFlow) { m.Resource.Filters = []portalapi.Filter{{Protocol: "sctp"}} },
		func(m *portalapi.AuthorizeFlow) { m.ClientIceCredentials.Password = "" },
		func(m *portalapi.AuthorizeFlow) { m.ExpiresAt = -1 },
		func(m *portalapi.AuthorizeFlow) { m.ExpiresAt = t0.Unix() }, // expired on arrival
	}
	for i, mut := range bad {
		m := c.authorize("r", cidrRes(1, "198.51.100.0/24"), time.Time{})
		mut(&m)
		if as := h.msg(m); len(as) != 0 {
			t.Errorf("bad message %d: actions %v", i, as)
		}
	}
	if st := h.g.Status(h.now); len(st.Clients) != 0 {
		t.Fatalf("bad messages left clients: %+v", st.Clients)
	}
}

func TestSpoofedSourceDroppedAndCounted(t *testing.T) {
	c := mkClient(1)
	h := authorized(t, c, cidrRes(1, "198.51.100.0/24"))
	spoofed := netip.MustParseAddr("100.64.9.9")
	for _, pkt := range [][]byte{
		udpPkt(netip.AddrPortFrom(spoofed, 5000), res1, nil),
		tcpPkt(netip.MustParseAddrPort("[fd00:2021:1111::9:9]:5000"), netip.MustParseAddrPort("[2001:db8::1]:80"), header.TCPFlagSyn, nil),
	} {
		v, as := h.net(pkt)
		if v != tunnel.Stop || len(as) != 0 {
			t.Fatalf("spoofed packet: %v %v", v, as)
		}
	}
	if n := h.metric("snowgate.gateway.packets.dropped{spoofed_source}"); n != 2 {
		t.Fatalf("spoofed_source = %d, want 2", n)
	}
	if n := h.metric("snowgate.gateway.packets.forwarded{to_resource}"); n != 0 {
		t.Fatalf("forwarded = %d", n)
	}
}

func TestUnauthorizedDestinationDroppedAndCounted(t *testing.T) {
	c := mkClient(1)
	h := authorized(t, c, cidrRes(1, "198.51.100.0/24"))
	v, as := h.net(udpPkt(netip.AddrPortFrom(c.v4, 5000), res2, nil))
	if v != tunnel.Stop || len(as) != 0 {
		t.Fatalf("unauthorised destination: %v %v", v, as)
	}
	// Another client's tunnel address is never a resource.
	v, _ = h.net(udpPkt(netip.AddrPortFrom(c.v4, 5000), netip.MustParseAddrPort("100.64.1.2:80"), nil))
	if v != tunnel.Stop {
		t.Fatal("packet to another client passed")
	}
	m := h.metrics()
	if m["snowgate.gateway.packets.dropped{unauthorized_destination}"] != 1 || m["snowgate.gateway.packets.dropped{peer_destination}"] != 1 {
		t.Fatalf("metrics %v", m)
	}
}

func TestFilterDeniedAnsweredProhibited(t *testing.T) {
	c := mkClient(1)
	h := authorized(t, c, cidrRes(1, "198.51.100.0/24", tcpF(443, 443)))
	if v, _ := h.net(tcpPkt(netip.AddrPortFrom(c.v4, 5000), res1, header.TCPFlagSyn, nil)); v != tunnel.Pass {
		t.Fatal("allowed packet stopped")
	}
	v, as := h.net(udpPkt(netip.AddrPortFrom(c.v4, 5000), res1, nil))
	pkts := tunnelPackets(as)
	if v != tunnel.Stop || len(pkts) != 1 {
		t.Fatalf("denied packet: %v %v", v, as)
	}
	info := inspect(t, pkts[0])
	if !info.isProhibited() || info.src != res1.Addr() || info.dst != c.v4 || !info.checksumsOK {
		t.Fatalf("reply %+v", info)
	}
	if n := h.metric("snowgate.gateway.packets.filtered"); n != 1 {
		t.Fatalf("filtered = %d", n)
	}
}

func TestICMPErrorFromClientDropped(t *testing.T) {
	c := mkClient(1)
	h := authorized(t, c, cidrRes(1, "198.51.100.0/24"))
	quoted := udpPkt(res1, netip.AddrPortFrom(c.v4, 5000), nil)
	v, as := h.net(icmpPkt(c.v4, res1.Addr(), 3, 3, 0, quoted))
	if v != tunnel.Stop || len(as) != 0 || h.metric("snowgate.gateway.packets.dropped{icmp_error}") != 1 {
		t.Fatalf("ICMP error from client: %v %v", v, as)
	}
}

func TestRejectAccessCutsOpenConnection(t *testing.T) {
	c := mkClient(1)
	h := authorized(t, c, cidrRes(1, "198.51.100.0/24"), cidrRes(2, "203.0.113.0/24"))
	to1 := udpPkt(netip.AddrPortFrom(c.v4, 5000), res1, nil)
	to2 := udpPkt(netip.AddrPortFrom(c.v4, 5000), res2, nil)
	if v, _ := h.net(slices.Clone(to1)); v != tunnel.Pass {
		t.Fatal("before reject: stopped")
	}
	as := h.msg(portalapi.RejectAccess{ClientID: c.id, ResourceID: rid(1)})
	if len(as) != 0 {
		t.Fatalf("reject of one of two resources: %v", as)
	}
	if v, _ := h.net(slices.Clone(to1)); v != tunnel.Stop {
		t.Fatal("packet to the rejected resource passed")
	}
	if v, _ := h.net(slices.Clone(to2)); v != tunnel.Pass {
		t.Fatal("packet to the other resource stopped")
	}
	// The last resource: the client is removed and told goodbye; its connection goes a little later (see
	// TestGoodbyeLeavesBeforeTheConnectionGoes).
	as = h.msg(portalapi.RejectAccess{ClientID: c.id, ResourceID: rid(2)})
	if gb := goodbyes(t, tunnelPackets(as)); !slices.Equal(gb, []netip.Addr{c.v6}) {
		t.Fatalf("goodbyes %v", gb)
	}
	if v, _ := h.net(slices.Clone(to2)); v != tunnel.Stop {
		t.Fatal("packet of a removed client passed")
	}
	// Replies towards it are dropped too.
	if v, _ := h.tun(udpPkt(res2, netip.AddrPortFrom(c.v4, 5000), nil)); v != tunnel.Stop {
		t.Fatal("packet towards a removed client passed")
	}
}

func TestExpiryCutsAccessAtOnce(t *testing.T) {
	c := mkClient(1)
	h := newHarness(t, core.Config{})
	h.initGateway(relayA)
	exp := h.now.Add(30 * time.Second)
	h.msg(c.authorize("r1", cidrRes(1, "198.51.100.0/24"), exp))
	h.msg(c.authorize("r2", cidrRes(2, "203.0.113.0/24"), time.Time{}))
	if at, ok := h.g.PollTimeout(); !ok || !at.Equal(exp) {
		t.Fatalf("PollTimeout %v %v, want %v", at, ok, exp)
	}
	h.now = exp.Add(-time.Second)
	if v, _ := h.net(udpPkt(netip.AddrPortFrom(c.v4, 5000), res1, nil)); v != tunnel.Pass {
		t.Fatal("before expiry: stopped")
	}
	// The timer has not fired yet (the driver is late): the packet is stopped all the same.
	h.now = exp
	if v := h.g.HandleNetworkInput(udpPkt(netip.AddrPortFrom(c.v4, 5000), res1, nil), h.now); v != tunnel.Stop {
		t.Fatal("packet at the expiry passed")
	}
	if v, _ := h.net(udpPkt(netip.AddrPortFrom(c.v4, 5000), res2, nil)); v != tunnel.Pass {
		t.Fatal("unexpired resource stopped")
	}
	// A re-authorisation with a later expiry moves it.
	h.msg(c.authorize("r3", cidrRes(1, "198.51.100.0/24"), exp.Add(time.Hour)))
	h.now = exp.Add(time.Minute)
	if v, _ := h.net(udpPkt(netip.AddrPortFrom(c.v4, 5000), res1, nil)); v != tunnel.Pass {
		t.Fatal("re-authorised resource stopped")
	}
	if at, ok := h.g.PollTimeout(); !ok || !at.Equal(exp.Add(time.Hour)) {
		t.Fatalf("PollTimeout %v %v after re-authorisation", at, ok)
	}
}

func TestNoRelaysReconnectsAndDoesNotAnswer(t *testing.T) {
	h := newHarness(t, core.Config{})
	h.initGateway()
	c := mkClient(1)
	h.g.HandlePortalMessage(c.authorize("ref-1", cidrRes(1, "198.51.100.0/24"), time.Time{}), h.now)
	as := h.poll()
	ups := ofKind[tunnel.NodeUpsert](as)
	if len(ups) != 1 || len(pushes(as, portalapi.EventFlowAuthorized)) != 0 {
		t.Fatalf("actions %v", as)
	}
	h.g.HandleActionFailed(ups[0], fmt.Errorf("upsert connection %s: %w", c.id, node.ErrNoRelays), h.now)
	as = h.settle()
	if rc := ofKind[tunnel.PortalReconnect](as); len(rc) != 1 {
		t.Fatalf("no PortalReconnect: %v", as)
	}
	if len(pushes(as, portalapi.EventFlowAuthorized)) != 0 {
		t.Fatalf("flow_authorized for a connection that could not be created: %v", as)
	}
	if st := h.g.Status(h.now); len(st.Clients) != 0 {
		t.Fatalf("state after the failure: %+v", st)
	}
	if v, _ := h.net(udpPkt(netip.AddrPortFrom(c.v4, 5000), res1, nil)); v != tunnel.Stop {
		t.Fatal("traffic of a flow whose connection failed passed")
	}
	// The node losing its last relay asks for the reconnect too, but only once until the next init.
	h.g.HandleNodeEvent(node.Event{Kind: node.EventNoRelays}, h.now)
	if as := h.settle(); len(ofKind[tunnel.PortalReconnect](as)) != 0 {
		t.Fatalf("second reconnect before init: %v", as)
	}
	h.initGateway(relayA)
	h.g.HandleNodeEvent(node.Event{Kind: node.EventNoRelays}, h.now)
	if as := h.settle(); len(ofKind[tunnel.PortalReconnect](as)) != 1 {
		t.Fatalf("no reconnect after a new init: %v", as)
	}
	// After the reconnect the portal authorises again and it works.
	as = h.msg(c.authorize("ref-2", cidrRes(1, "198.51.100.0/24"), time.Time{}))
	if len(pushes(as, portalapi.EventFlowAuthorized)) != 1 {
		t.Fatalf("after recovery: %v", as)
	}
}

func TestRoamedClientRebuilt(t *testing.T) {
	c := mkClient(1)
	h := authorized(t, c, dnsRes(1, "*.a.example"), cidrRes(2, "198.51.100.0/24"))
	setupDNS(t, h, c, 1, "x.a.example", proxies8(1), []netip.Addr{netip.MustParseAddr("198.18.0.7")})
	roamed := c
	var priv node.Key
	priv[0] = 0x77
	roamed.key = priv.PublicKey()
	as := h.msg(roamed.authorize("ref-roam", cidrRes(2, "198.51.100.0/24"), time.Time{}))
	ups := ofKind[tunnel.NodeUpsert](as)
	if len(ups) != 1 || ups[0].Params.RemoteKey != roamed.key || len(pushes(as, portalapi.EventFlowAuthorized)) != 1 {
		t.Fatalf("roam: %v", as)
	}
	st := h.g.Status(h.now)
	if len(st.Clients) != 1 || len(st.Clients[0].Resources) != 1 || len(st.Clients[0].NAT) != 0 {
		t.Fatalf("state after roaming: %+v", st.Clients)
	}
	if v, _ := h.net(udpPkt(netip.AddrPortFrom(c.v4, 5000), netip.AddrPortFrom(proxies4(1)[0], 53), nil)); v != tunnel.Stop {
		t.Fatal("old NAT survived the roam")
	}
}

// setupDNS sends an AssignedIPs for domain under resource n and resolves it to addrs; it checks the
// Active answer.
func setupDNS(t *testing.T, h *harness, c testClient, n int, domain string, proxies, addrs []netip.Addr) {
	t.Helper()
	v, as := h.net(control(t, c.v6, p2pcontrol.AssignedIPs{Resource: rid(n), Domain: domain, ProxyIPs: proxies, Seq: 1}))
	rs := ofKind[core.ResolveName](as)
	if v != tunnel.Stop || len(rs) != 1 || rs[0].ClientID != c.id || rs[0].Domain != domain {
		t.Fatalf("AssignedIPs: %v %v", v, as)
	}
	h.g.HandleResolved(rs[0].ClientID, rs[0].Assignment, addrs, nil, h.now)
	st := domainStatuses(t, tunnelPackets(h.settle()))[c.v6]
	if len(st) != 1 || st[0].Status != p2pcontrol.NatActive || st[0].Domain != domain || st[0].Seq != 1 {
		t.Fatalf("DomainStatus %+v", st)
	}
}

func TestDNSResourceNAT(t *testing.T) {
	c := mkClient(1)
	h := authorized(t, c, dnsRes(1, "**.a.example", udpF(53, 53), icmpF()), cidrRes(2, "198.18.0.0/24"))
	real4 := netip.MustParseAddr("198.18.0.7")
	prox := proxies8(1)
	setupDNS(t, h, c, 1, "deep.x.a.example", prox, []netip.Addr{real4}) // no AAAA
	src := netip.AddrPortFrom(c.v4, 40000)
	pkt := udpPkt(src, netip.AddrPortFrom(prox[0], 53), []byte("query"))
	if v, _ := h.net(pkt); v != tunnel.Pass {
		t.Fatal("NAT packet stopped")
	}
	out := inspect(t, pkt)
	if out.dst != real4 || out.dport != 53 || !out.checksumsOK {
		t.Fatalf("translated %+v", out)
	}
	reply := udpPkt(netip.AddrPortFrom(real4, 53), netip.AddrPortFrom(c.v4, out.sport), []byte("answer"))
	if v, _ := h.tun(reply); v != tunnel.Pass {
		t.Fatal("reply stopped")
	}
	in := inspect(t, reply)
	if in.src != prox[0] || in.sport != 53 || in.dport != src.Port() || !in.checksumsOK {
		t.Fatalf("reply translated %+v", in)
	}
	// The DNS resource's filters apply to the proxy IP even though a CIDR resource covers the real IP
	// with no filter (seed #6806): TCP to the proxy IP is denied.
	v, as := h.net(tcpPkt(src, netip.AddrPortFrom(prox[1], 80), header.TCPFlagSyn, nil))
	if pk := tunnelPackets(as); v != tunnel.Stop || len(pk) != 1 || !inspect(t, pk[0]).isProhibited() {
		t.Fatalf("TCP to the proxy IP: %v %v", v, as)
	}
	// No AAAA: the IPv6 proxy IPs answer ICMP unreachable.
	v, as = h.net(udpPkt(netip.AddrPortFrom(c.v6, 40000), netip.AddrPortFrom(prox[4], 53), nil))
	if pk := tunnelPackets(as); v != tunnel.Stop || len(pk) != 1 || !inspect(t, pk[0]).isUnreachable() || inspect(t, pk[0]).dst != c.v6 {
		t.Fatalf("IPv6 proxy without AAAA: %v %v", v, as)
	}
	// A proxy IP the client never assigned is no resource.
	if v, as := h.net(udpPkt(src, netip.AddrPortFrom(netip.MustParseAddr("100.96.9.9"), 53), nil)); v != tunnel.Stop || len(as) != 0 {
		t.Fatalf("unassigned proxy IP: %v %v", v, as)
	}
	// Revoking the DNS resource removes its NAT at once.
	h.msg(portalapi.RejectAccess{ClientID: c.id, ResourceID: rid(1)})
	if v, _ := h.net(udpPkt(src, netip.AddrPortFrom(prox[0], 53), nil)); v != tunnel.Stop {
		t.Fatal("NAT packet after revocation passed")
	}
	if st := h.g.Status(h.now); len(st.Clients[0].NAT) != 0 || st.NAT.Translations != 0 {
		t.Fatalf("NAT after revocation: %+v", st)
	}
}

func TestAssignedIPsOutsideResourcesRefusedAndCounted(t *testing.T) {
	c := mkClient(1)
	h := authorized(t, c, dnsRes(1, "*.a.example"), cidrRes(2, "198.51.100.0/24"))
	cases := []p2pcontrol.AssignedIPs{
		{Resource: rid(1), Domain: "x.b.example", ProxyIPs: proxies4(1), Seq: 1},      // outside the pattern
		{Resource: rid(1), Domain: "deep.x.a.example", ProxyIPs: proxies4(1), Seq: 2}, // "*" is one label
		{Resource: rid(3), Domain: "x.a.example", ProxyIPs: proxies4(5), Seq: 3},      // not authorised
		{Resource: rid(2), Domain: "x.a.example", ProxyIPs: proxies4(9), Seq: 4},      // not a DNS resource
	}
	for _, a := range cases {
		v, as := h.net(control(t, c.v6, a))
		if v != tunnel.Stop || len(ofKind[core.ResolveName](as)) != 0 {
			t.Fatalf("%+v: %v %v", a, v, as)
		}
		st := domainStatuses(t, tunnelPackets(as))[c.v6]
		if len(st) != 1 || st[0].Status != p2pcontrol.NatInactive || st[0].Domain != a.Domain || st[0].Seq != a.Seq {
			t.Fatalf("%+v: answer %+v", a, st)
		}
	}
	if n := h.metric("snowgate.gateway.nat.assignments{unauthorized}"); n != int64(len(cases)) {
		t.Fatalf("unauthorized assignments = %d", n)
	}
}

func TestControlPacketsFromOutsideRefusedAndCounted(t *testing.T) {
	c := mkClient(1)
	h := authorized(t, c, dnsRes(1, "*.a.example"))
	a := p2pcontrol.AssignedIPs{Resource: rid(1), Domain: "x.a.example", ProxyIPs: proxies4(1), Seq: 1}
	// From an address that is no client's.
	if v, as := h.net(control(t, netip.MustParseAddr("fd00:2021:1111::9:9"), a)); v != tunnel.Stop || len(as) != 0 {
		t.Fatalf("unknown source: %v %v", v, as)
	}
	// To another address than the gateway's.
	pkt, _ := p2pcontrol.Encode(c.v6, netip.MustParseAddr("fd00:2021:1111::2"), a)
	if v, as := h.net(pkt); v != tunnel.Stop || len(as) != 0 {
		t.Fatalf("wrong destination: %v %v", v, as)
	}
	// Broken: payload cut.
	good := control(t, c.v6, a)
	if v, as := h.net(good[:len(good)-5]); v != tunnel.Stop || len(as) != 0 {
		t.Fatalf("truncated: %v %v", v, as)
	}
	// A DomainStatus is the gateway's to send.
	if v, as := h.net(control(t, c.v6, p2pcontrol.DomainStatus{Resource: rid(1), Domain: "x.a.example"})); v != tunnel.Stop || len(as) != 0 {
		t.Fatalf("DomainStatus from client: %v %v", v, as)
	}
	// From the TUN device (a host behind the gateway forging one).
	if v, _ := h.tun(good); v != tunnel.Stop {
		t.Fatal("control packet from the TUN passed")
	}
	m := h.metrics()
	for _, r := range []string{"control_source", "control_destination", "control_malformed", "control_from_tun"} {
		want := int64(1)
		if r == "control_malformed" {
			want = 2
		}
		if got := m["snowgate.gateway.packets.dropped{"+r+"}"]; got != want {
			t.Errorf("dropped{%s} = %d, want %d", r, got, want)
		}
	}
	// Before init there is no tunnel address: control packets are dropped.
	h2 := newHarness(t, core.Config{})
	if v, _ := h2.net(good); v != tunnel.Stop || h2.metric("snowgate.gateway.packets.dropped{not_initialized}") != 1 {
		t.Fatal("control packet before init")
	}
}

func TestResolutionFailureAndStaleResults(t *testing.T) {
	c := mkClient(1)
	h := authorized(t, c, dnsRes(1, "*.a.example"))
	a1 := p2pcontrol.AssignedIPs{Resource: rid(1), Domain: "x.a.example", ProxyIPs: proxies4(1), Seq: 1}
	_, as := h.net(control(t, c.v6, a1))
	rs1 := ofKind[core.ResolveName](as)
	// The client re-numbers before the answer: the first resolution is stale.
	a2 := a1
	a2.ProxyIPs, a2.Seq = proxies4(11), 2
	_, as = h.net(control(t, c.v6, a2))
	rs2 := ofKind[core.ResolveName](as)
	if len(rs1) != 1 || len(rs2) != 1 {
		t.Fatalf("resolutions %v %v", rs1, rs2)
	}
	h.g.HandleResolved(c.id, rs1[0].Assignment, []netip.Addr{netip.MustParseAddr("198.18.0.1")}, nil, h.now)
	if as := h.settle(); len(as) != 0 {
		t.Fatalf("stale resolution answered: %v", as)
	}
	// The current one fails to resolve (reported as a failed action): Inactive.
	h.g.HandleActionFailed(rs2[0], errors.New("no such host"), h.now)
	st := domainStatuses(t, tunnelPackets(h.settle()))[c.v6]
	if len(st) != 1 || st[0].Status != p2pcontrol.NatInactive || st[0].Seq != 2 {
		t.Fatalf("answer %+v", st)
	}
	if n := h.metric("snowgate.gateway.nat.assignments{resolve_failed}"); n != 1 {
		t.Fatalf("resolve_failed = %d", n)
	}
	// Access revoked while resolving: Inactive, no NAT.
	h.msg(c.authorize("r2", dnsRes(2, "*.b.example"), time.Time{}))
	a3 := p2pcontrol.AssignedIPs{Resource: rid(1), Domain: "y.a.example", ProxyIPs: proxies4(21), Seq: 3}
	_, as = h.net(control(t, c.v6, a3))
	rs3 := ofKind[core.ResolveName](as)
	h.msg(portalapi.RejectAccess{ClientID: c.id, ResourceID: rid(1)})
	h.g.HandleResolved(c.id, rs3[0].Assignment, []netip.Addr{netip.MustParseAddr("198.18.0.1")}, nil, h.now)
	h.settle()
	if v, _ := h.net(udpPkt(netip.AddrPortFrom(c.v4, 1), netip.AddrPortFrom(proxies4(21)[0], 53), nil)); v != tunnel.Stop {
		t.Fatal("NAT set up after revocation")
	}
}

func TestReResolutionWithHigherSeq(t *testing.T) {
	c := mkClient(1)
	h := authorized(t, c, dnsRes(1, "*.a.example"))
	prox := proxies4(1)
	setupDNS(t, h, c, 1, "x.a.example", prox, []netip.Addr{netip.MustParseAddr("198.18.0.1")})
	// A retransmit (same seq) is answered at once without resolving again.
	_, as := h.net(control(t, c.v6, p2pcontrol.AssignedIPs{Resource: rid(1), Domain: "x.a.example", ProxyIPs: prox, Seq: 1}))
	if len(ofKind[core.ResolveName](as)) != 0 || len(domainStatuses(t, tunnelPackets(as))[c.v6]) != 1 {
		t.Fatalf("retransmit: %v", as)
	}
	// A higher seq re-resolves; the new address is used by new flows.
	_, as = h.net(control(t, c.v6, p2pcontrol.AssignedIPs{Resource: rid(1), Domain: "x.a.example", ProxyIPs: prox, Seq: 2}))
	rs := ofKind[core.ResolveName](as)
	if len(rs) != 1 {
		t.Fatalf("higher seq: %v", as)
	}
	h.g.HandleResolved(c.id, rs[0].Assignment, []netip.Addr{netip.MustParseAddr("198.18.0.2")}, nil, h.now)
	h.settle()
	pkt := udpPkt(netip.AddrPortFrom(c.v4, 1000), netip.AddrPortFrom(prox[0], 53), nil)
	if v, _ := h.net(pkt); v != tunnel.Pass || inspect(t, pkt).dst != netip.MustParseAddr("198.18.0.2") {
		t.Fatalf("after re-resolution: %+v", inspect(t, pkt))
	}
}

func TestResourceUpdatedAppliesFilters(t *testing.T) {
	c1, c2 := mkClient(1), mkClient(2)
	h := authorized(t, c1, cidrRes(1, "198.51.100.0/24"))
	h.msg(c2.authorize("r", cidrRes(1, "198.51.100.0/24"), time.Time{}))
	h.msg(portalapi.ResourceUpdated{Resource: cidrRes(1, "198.51.100.0/24", tcpF(443, 443))})
	for _, c := range []testClient{c1, c2} {
		if v, _ := h.net(udpPkt(netip.AddrPortFrom(c.v4, 5000), res1, nil)); v != tunnel.Stop {
			t.Fatalf("%s: UDP passed after the update", c.id)
		}
		if v, _ := h.net(tcpPkt(netip.AddrPortFrom(c.v4, 5000), res1, header.TCPFlagSyn, nil)); v != tunnel.Pass {
			t.Fatalf("%s: TCP 443 stopped after the update", c.id)
		}
	}
	// A new address applies too.
	h.msg(portalapi.ResourceUpdated{Resource: cidrRes(1, "203.0.113.0/24")})
	if v, _ := h.net(udpPkt(netip.AddrPortFrom(c1.v4, 5000), res2, nil)); v != tunnel.Pass {
		t.Fatal("new address stopped")
	}
	if v, _ := h.net(udpPkt(netip.AddrPortFrom(c1.v4, 5000), res1, nil)); v != tunnel.Stop {
		t.Fatal("old address passed")
	}
	// A DNS resource's new pattern drops the NAT of names outside it.
	h.msg(c1.authorize("r", dnsRes(5, "*.a.example"), time.Time{}))
	setupDNS(t, h, c1, 5, "x.a.example", proxies4(1), []netip.Addr{netip.MustParseAddr("198.18.0.1")})
	h.msg(portalapi.ResourceUpdated{Resource: dnsRes(5, "*.b.example")})
	if v, _ := h.net(udpPkt(netip.AddrPortFrom(c1.v4, 1), netip.AddrPortFrom(proxies4(1)[0], 53), nil)); v != tunnel.Stop {
		t.Fatal("NAT of a name outside the new pattern survived")
	}
}

func TestTunInputReverseChecks(t *testing.T) {
	c := mkClient(1)
	h := authorized(t, c, cidrRes(1, "198.51.100.0/24", tcpF(443, 443)))
	// A reply from the resource's allowed port passes.
	if v, _ := h.tun(tcpPkt(res1, netip.AddrPortFrom(c.v4, 5000), header.TCPFlagAck, nil)); v != tunnel.Pass {
		t.Fatal("reply stopped")
	}
	// From another port of the resource, or from no resource: dropped.
	if v, _ := h.tun(tcpPkt(netip.AddrPortFrom(res1.Addr(), 80), netip.AddrPortFrom(c.v4, 5000), header.TCPFlagSyn, nil)); v != tunnel.Stop {
		t.Fatal("unsolicited packet from a filtered port passed")
	}
	if v, _ := h.tun(udpPkt(res2, netip.AddrPortFrom(c.v4, 5000), nil)); v != tunnel.Stop {
		t.Fatal("packet from no resource passed")
	}
	// ICMP errors towards the client pass.
	quoted := tcpPkt(netip.AddrPortFrom(c.v4, 5000), netip.AddrPortFrom(res2.Addr(), 80), header.TCPFlagSyn, nil)
	if v, _ := h.tun(icmpPkt(netip.MustParseAddr("192.0.2.1"), c.v4, 3, 1, 0, quoted)); v != tunnel.Pass {
		t.Fatal("ICMP error towards the client stopped")
	}
	// To no client.
	if v, _ := h.tun(udpPkt(res1, netip.MustParseAddrPort("100.64.7.7:1"), nil)); v != tunnel.Stop {
		t.Fatal("packet to no client passed")
	}
	m := h.metrics()
	if m["snowgate.gateway.packets.dropped{unauthorized_source}"] != 2 || m["snowgate.gateway.packets.dropped{unknown_client}"] != 1 ||
		m["snowgate.gateway.packets.forwarded{to_client}"] != 2 {
		t.Fatalf("metrics %v", m)
	}
}

func TestInternetResource(t *testing.T) {
	c := mkClient(1)
	h := authorized(t, c, internetRes(1))
	if v, _ := h.net(udpPkt(netip.AddrPortFrom(c.v4, 5000), netip.MustParseAddrPort("198.18.5.5:53"), nil)); v != tunnel.Pass {
		t.Fatal("internet packet stopped")
	}
	// The gateway's LAN is not the Internet: answered network unreachable, as Firezone does.
	v, as := h.net(udpPkt(netip.AddrPortFrom(c.v4, 5000), netip.MustParseAddrPort("169.254.1.1:53"), nil))
	if pk := tunnelPackets(as); v != tunnel.Stop || len(pk) != 1 || !inspect(t, pk[0]).isUnreachable() {
		t.Fatalf("private address: %v %v", v, as)
	}
	// Unless a CIDR resource covers it.
	h.msg(c.authorize("r2", cidrRes(2, "169.254.1.0/24"), time.Time{}))
	if v, _ := h.net(udpPkt(netip.AddrPortFrom(c.v4, 5000), netip.MustParseAddrPort("169.254.1.1:53"), nil)); v != tunnel.Pass {
		t.Fatal("CIDR resource under the Internet resource stopped")
	}
}

func TestRequestConnectionOldProtocol(t *testing.T) {
	h := newHarness(t, core.Config{})
	h.initGateway(relayA)
	c := mkClient(1)
	clientCreds := portalapi.IceCredentials{Username: "olduf", Password: "old-client-password-123456"}
	req := portalapi.RequestConnection{
		Resource: cidrRes(1, "198.51.100.0/24"),
		Client: portalapi.RequestClient{
			ID:      c.id,
			Payload: portalapi.ClientPayload{IceParameters: clientCreds},
			Peer:    portalapi.Peer{PublicKey: c.key.String(), PresharedKey: c.psk.String(), IPv4: c.v4, IPv6: c.v6},
		},
		Ref: "old-ref",
	}
	as := h.msg(req)
	ups := ofKind[tunnel.NodeUpsert](as)
	ready := pushes(as, portalapi.EventConnectionReady)
	if len(ups) != 1 || len(ready) != 1 {
		t.Fatalf("actions %v", as)
	}
	p := ups[0].Params
	if p.Remote != (node.Credentials{Ufrag: clientCreds.Username, Password: clientCreds.Password}) || p.RemoteKey != c.key ||
		p.PresharedKey != c.psk || p.Role != node.RoleControlled {
		t.Fatalf("params %+v", p)
	}
	if len(p.Local.Ufrag) < 4 || len(p.Local.Password) < 22 {
		t.Fatalf("local credentials too short: %+v", p.Local)
	}
	cr := ready[0].(portalapi.ConnectionReady)
	acc := cr.GatewayPayload.ConnectionAccepted
	if cr.Ref != "old-ref" || acc == nil || acc.IceParameters != (portalapi.IceCredentials{Username: p.Local.Ufrag, Password: p.Local.Password}) ||
		acc.DomainResponse != nil {
		t.Fatalf("connection_ready %+v", cr)
	}
	// Non-idempotent: the same request again makes a new connection with new credentials.
	as = h.msg(req)
	ups2 := ofKind[tunnel.NodeUpsert](as)
	if len(ups2) != 1 || ups2[0].Params.Local == p.Local {
		t.Fatalf("second request_connection: %v", as)
	}
	if v, _ := h.net(udpPkt(netip.AddrPortFrom(c.v4, 5000), res1, nil)); v != tunnel.Pass {
		t.Fatal("old-protocol flow stopped")
	}
}

func TestAllowAccessWithDomainInstallsNAT(t *testing.T) {
	h := newHarness(t, core.Config{})
	h.initGateway(relayA)
	c := mkClient(1)
	h.msg(portalapi.RequestConnection{
		Resource: cidrRes(1, "198.51.100.0/24"),
		Client: portalapi.RequestClient{
			ID:      c.id,
			Payload: portalapi.ClientPayload{IceParameters: portalapi.IceCredentials{Username: "olduf", Password: "old-client-password-123456"}},
			Peer:    portalapi.Peer{PublicKey: c.key.String(), PresharedKey: c.psk.String(), IPv4: c.v4, IPv6: c.v6},
		},
		Ref: "old-ref",
	})
	prox := []netip.Addr{netip.MustParseAddr("100.96.0.50"), netip.MustParseAddr("fd00:2021:1111:8000::50")}
	as := h.msg(portalapi.AllowAccess{
		ClientID: c.id, Resource: dnsRes(2, "app.b.example"), Ref: "aa",
		Payload: &portalapi.ResolveRequest{Name: "App.B.Example.", ProxyIPs: prox}, ClientIPv4: c.v4, ClientIPv6: c.v6,
	})
	rs := ofKind[core.ResolveName](as)
	if len(rs) != 1 || rs[0].Domain != "app.b.example" || len(ofKind[tunnel.PortalPush](as)) != 0 {
		t.Fatalf("allow_access: %v", as)
	}
	real := netip.MustParseAddr("2001:db8:5::5")
	h.g.HandleResolved(rs[0].ClientID, rs[0].Assignment, []netip.Addr{real, netip.MustParseAddr("198.18.0.9")}, nil, h.now)
	if as := h.settle(); len(as) != 0 {
		t.Fatalf("old-protocol NAT answered: %v", as)
	}
	pkt := tcpPkt(netip.AddrPortFrom(c.v6, 3333), netip.AddrPortFrom(prox[1], 443), header.TCPFlagSyn, nil)
	if v, _ := h.net(pkt); v != tunnel.Pass || inspect(t, pkt).dst != real {
		t.Fatalf("NAT not installed: %+v", inspect(t, pkt))
	}
	// allow_access for an unknown client, or with other addresses, does nothing.
	if as := h.msg(portalapi.AllowAccess{ClientID: "nobody", Resource: cidrRes(3, "203.0.113.0/24")}); len(as) != 0 {
		t.Fatalf("unknown client: %v", as)
	}
	h.msg(portalapi.AllowAccess{ClientID: c.id, Resource: cidrRes(3, "203.0.113.0/24"), ClientIPv4: netip.MustParseAddr("100.64.9.9")})
	if v, _ := h.net(udpPkt(netip.AddrPortFrom(c.v4, 5000), res2, nil)); v != tunnel.Stop {
		t.Fatal("allow_access with wrong addresses applied")
	}
}

func TestShutdownSaysGoodbyeToEveryClient(t *testing.T) {
	h := newHarness(t, core.Config{})
	h.initGateway(relayA)
	var want []netip.Addr
	for i := 1; i <= 3; i++ {
		c := mkClient(i)
		h.msg(c.authorize("r", cidrRes(1, "198.51.100.0/24"), time.Time{}))
		want = append(want, c.v6)
	}
	h.g.Shutdown(h.now)
	got := goodbyes(t, tunnelPackets(h.settle()))
	slices.SortFunc(got, netip.Addr.Compare)
	if !slices.Equal(got, want) {
		t.Fatalf("goodbyes to %v, want one to each of %v", got, want)
	}
}

func TestClientGoodbyeRemovesClient(t *testing.T) {
	c := mkClient(1)
	h := authorized(t, c, cidrRes(1, "198.51.100.0/24"))
	_, as := h.net(control(t, c.v6, p2pcontrol.Goodbye{}))
	if rm := ofKind[tunnel.NodeRemove](as); len(rm) != 1 || rm[0].ID != c.id {
		t.Fatalf("goodbye: %v", as)
	}
	if st := h.g.Status(h.now); len(st.Clients) != 0 {
		t.Fatalf("clients %+v", st.Clients)
	}
}

func TestCandidates(t *testing.T) {
	c := mkClient(1)
	h := authorized(t, c, cidrRes(1, "198.51.100.0/24"))
	as := h.msg(portalapi.ClientIceCandidates{ClientID: c.id, Candidates: []string{"c1", "c2"}})
	if add := ofKind[tunnel.NodeAddCandidate](as); len(add) != 2 || add[1] != (tunnel.NodeAddCandidate{ID: c.id, Candidate: "c2"}) {
		t.Fatalf("add: %v", as)
	}
	as = h.msg(portalapi.InvalidatedClientIceCandidates{ClientID: c.id, Candidates: []string{"c1"}})
	if rm := ofKind[tunnel.NodeRemoveCandidate](as); len(rm) != 1 || rm[0] != (tunnel.NodeRemoveCandidate{ID: c.id, Candidate: "c1"}) {
		t.Fatalf("remove: %v", as)
	}
	h.g.HandleNodeEvent(node.Event{Kind: node.EventCandidateAdded, ConnectionID: c.id, Candidate: "g1"}, h.now)
	got := pushes(h.settle(), portalapi.EventBroadcastIceCandidates)
	if len(got) != 1 || !slices.Equal(got[0].(portalapi.BroadcastClientIceCandidates).ClientIDs, []string{c.id}) {
		t.Fatalf("broadcast %v", got)
	}
	// While the portal is away candidates are held, and signalled once it is back.
	h.g.HandlePortalState(tunnel.PortalDisconnected, h.now)
	for _, ev := range []node.Event{
		{Kind: node.EventCandidateAdded, ConnectionID: c.id, Candidate: "g2"},
		{Kind: node.EventCandidateAdded, ConnectionID: c.id, Candidate: "g3"},
		{Kind: node.EventCandidateInvalidated, ConnectionID: c.id, Candidate: "g3"},
		{Kind: node.EventCandidateInvalidated, ConnectionID: c.id, Candidate: "g1"},
	} {
		h.g.HandleNodeEvent(ev, h.now)
	}
	if as := h.settle(); len(as) != 0 {
		t.Fatalf("pushed while the portal is away: %v", as)
	}
	h.g.HandlePortalState(tunnel.PortalJoined, h.now)
	as = h.settle()
	add := pushes(as, portalapi.EventBroadcastIceCandidates)
	inv := pushes(as, portalapi.EventBroadcastInvalidatedIceCandidates)
	if len(add) != 1 || !slices.Equal(add[0].(portalapi.BroadcastClientIceCandidates).Candidates, []string{"g2"}) ||
		len(inv) != 1 || !slices.Equal(inv[0].(portalapi.BroadcastInvalidatedClientIceCandidates).Candidates, []string{"g3", "g1"}) {
		t.Fatalf("held candidates: %v", as)
	}
}

func TestStatus(t *testing.T) {
	c := mkClient(1)
	h := authorized(t, c, dnsRes(1, "*.a.example", tcpF(80, 80)))
	h.msg(c.authorize("r", cidrRes(2, "198.51.100.0/24"), h.now.Add(time.Hour)))
	setupDNS(t, h, c, 1, "x.a.example", proxies4(1), []netip.Addr{netip.MustParseAddr("198.18.0.1")})
	st := h.g.Status(h.now)
	if st.TunnelIPv6 != gwV6 || !st.PortalJoined || len(st.Relays) != 1 || st.Flows != 2 || len(st.Clients) != 1 {
		t.Fatalf("status %+v", st)
	}
	cs := st.Clients[0]
	if cs.ID != c.id || len(cs.Resources) != 2 || cs.Resources[0].Filters != "tcp:80" || cs.Resources[1].ExpiresAt == nil ||
		len(cs.NAT) != 4 || cs.NAT[0].RealIP != netip.MustParseAddr("198.18.0.1") || cs.NAT[0].Domain != "x.a.example" {
		t.Fatalf("client status %+v", cs)
	}
	if st.NAT.Translations != 4 || h.metric("snowgate.gateway.nat.translations") != 4 || h.metric("snowgate.gateway.clients") != 1 ||
		h.metric("snowgate.gateway.authorizations") != 2 {
		t.Fatalf("NAT %+v metrics %v", st.NAT, h.metrics())
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	if _, err := core.New(core.Config{MaxClients: -1}); !errors.Is(err, core.ErrInvalidConfig) {
		t.Fatalf("err %v", err)
	}
	if _, err := core.New(core.Config{TunnelPrefixes: []netip.Prefix{{}}}); !errors.Is(err, core.ErrInvalidConfig) {
		t.Fatalf("err %v", err)
	}
}

// Found by the whole-tunnel simulation (internal/tunnelsim): the Goodbye of a client whose last resource
// was revoked went out as SendToTunnel with the NodeRemove right behind it; the driver removed the
// WireGuard peer before wireguard-go had taken the Goodbye, so it was never sent and the client kept a
// connection to a gateway that had forgotten it. The connection now goes goodbyeGrace later, and not at
// all if the client is authorised again meanwhile.
func TestGoodbyeLeavesBeforeTheConnectionGoes(t *testing.T) {
	c := mkClient(1)
	h := authorized(t, c, cidrRes(1, "198.51.100.0/24"))
	as := h.msg(portalapi.RejectAccess{ClientID: c.id, ResourceID: rid(1)})
	if gb := goodbyes(t, tunnelPackets(as)); !slices.Equal(gb, []netip.Addr{c.v6}) {
		t.Fatalf("goodbyes %v", gb)
	}
	if rm := ofKind[tunnel.NodeRemove](as); len(rm) != 0 {
		t.Fatalf("connection removed together with its Goodbye: %v", as)
	}
	at, ok := h.g.PollTimeout()
	if !ok || at.Sub(h.now) <= 0 || at.Sub(h.now) > 10*time.Second {
		t.Fatalf("removal not scheduled: %v %v", at, ok)
	}
	h.now = at
	if rm := ofKind[tunnel.NodeRemove](h.settle()); len(rm) != 1 || rm[0].ID != c.id {
		t.Fatalf("connection not removed after the grace: %v", rm)
	}

	// Authorised again before the grace ends: the connection stays.
	h.msg(c.authorize("again", cidrRes(1, "198.51.100.0/24"), time.Time{}))
	h.msg(portalapi.RejectAccess{ClientID: c.id, ResourceID: rid(1)})
	as = h.msg(c.authorize("back", cidrRes(1, "198.51.100.0/24"), time.Time{}))
	if ups := ofKind[tunnel.NodeUpsert](as); len(ups) != 1 {
		t.Fatalf("re-authorisation: %v", as)
	}
	h.now = h.now.Add(time.Minute)
	h.g.HandleTimeout(h.now)
	if rm := ofKind[tunnel.NodeRemove](h.settle()); len(rm) != 0 {
		t.Fatalf("connection of a client authorised again removed: %v", rm)
	}
}
