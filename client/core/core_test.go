package core

import (
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/snowgate/snowgate/client/dns"
	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/p2pcontrol"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/tunnel"
	"github.com/snowgate/snowgate/node"
)

var (
	lan      = netip.MustParseAddr("198.51.100.7")
	lanOther = netip.MustParseAddr("198.51.100.200")
)

// started returns a harness past init with the given resources.
func started(t *testing.T, rs ...portalapi.Resource) *harness {
	t.Helper()
	h := newHarness(t, Config{})
	h.c.HandlePortalState(tunnel.PortalJoined, h.now)
	h.portal(initMsg(rs...))
	h.actions = nil
	return h
}

// connect authorizes resource r through g and brings the connection up.
func connect(t *testing.T, h *harness, r string, g testGateway) {
	t.Helper()
	h.portal(g.flowCreated(r))
	h.establish(g.id)
}

func actionsOf[T tunnel.Action](as []tunnel.Action) []T {
	var out []T
	for _, a := range as {
		if x, ok := a.(T); ok {
			out = append(out, x)
		}
	}
	return out
}

func TestInitConfiguresInterfaceDNSRelaysRoutes(t *testing.T) {
	h := newHarness(t, Config{})
	h.portal(initMsg(cidrRes(rid(1), "198.51.100.0/24"), internetRes(rid(2))))
	ifs := actionsOf[tunnel.SetInterface](h.actions)
	if len(ifs) != 1 || ifs[0].IPv4 != clientV4 || ifs[0].IPv6 != clientV6 {
		t.Fatalf("SetInterface = %+v", ifs)
	}
	dnss := actionsOf[SetDNS](h.actions)
	if len(dnss) != 1 || !slices.Equal(dnss[0].Servers, []netip.Addr{sentV4}) {
		t.Fatalf("SetDNS = %+v, want the sentinel of the portal's upstream", dnss)
	}
	rels := actionsOf[tunnel.NodeRelays](h.actions)
	if len(rels) != 1 || len(rels[0].Add) != 1 || !rels[0].Add[0].Addr4.IsValid() || !rels[0].Add[0].Addr6.IsValid() {
		t.Fatalf("NodeRelays = %+v, want one merged dual-stack relay", rels)
	}
	routes := actionsOf[SetRoutes](h.actions)
	if len(routes) != 1 {
		t.Fatalf("SetRoutes = %+v", routes)
	}
	for _, want := range []string{"198.51.100.0/24", "100.96.0.0/11", "fd00:2021:1111:8000::/107", "100.100.111.0/24", "0.0.0.0/0", "::/0"} {
		if !slices.Contains(routes[0].Routes, netip.MustParsePrefix(want)) {
			t.Errorf("routes %v lack %s", routes[0].Routes, want)
		}
	}
	wantEx := []netip.Prefix{netip.MustParsePrefix("198.18.0.10/32"), netip.MustParsePrefix("2001:db8::10/128")}
	if !slices.Equal(routes[0].Excludes, wantEx) {
		t.Errorf("excludes = %v, want the relays %v", routes[0].Excludes, wantEx)
	}
	// Without the Internet resource: no default routes, no excludes.
	h.actions = nil
	h.portal(portalapi.ResourceDeleted(rid(2)))
	routes = actionsOf[SetRoutes](h.actions)
	if len(routes) != 1 || slices.Contains(routes[0].Routes, netip.MustParsePrefix("0.0.0.0/0")) || len(routes[0].Excludes) != 0 {
		t.Fatalf("after deleting the Internet resource: %+v", routes)
	}
}

func TestSystemResolversWhenPortalHasNone(t *testing.T) {
	sys := netip.MustParseAddrPort("203.0.113.53:53")
	h := newHarness(t, Config{SystemResolvers: []netip.AddrPort{sys}})
	m := initMsg()
	m.Interface.UpstreamDNS = nil
	h.portal(m)
	st := h.c.Status(h.now)
	if len(st.DNS.Sentinels) != 1 || st.DNS.Sentinels[0].Upstream != sys {
		t.Fatalf("sentinels = %+v, want the system resolver", st.DNS.Sentinels)
	}
}

func TestFlowBufferedUntilEstablishedThenSentInOrder(t *testing.T) {
	h := started(t, cidrRes(rid(1), "198.51.100.0/24"))
	g := gw(1)
	for i := range 3 {
		if v := h.tunIn(packet(clientV4, lan, ippacket.ProtoTCP, 443, uint32(i))); v != tunnel.Stop {
			t.Fatalf("packet %d: verdict %v before the flow", i, v)
		}
		h.advance(500 * time.Millisecond)
	}
	if got := h.createFlows(0); !slices.Equal(got, []string{rid(1)}) {
		t.Fatalf("create_flow = %v, want one for the resource", got)
	}
	cf := h.pushes[0].Payload.(portalapi.CreateFlow)
	if cf.ConnectedGatewayIDs == nil || len(cf.ConnectedGatewayIDs) != 0 {
		t.Fatalf("connected_gateway_ids = %#v, want an empty list", cf.ConnectedGatewayIDs)
	}
	h.actions = nil
	h.portal(g.flowCreated(rid(1)))
	ups := actionsOf[tunnel.NodeUpsert](h.actions)
	if len(ups) != 1 || ups[0].Params != g.params() {
		t.Fatalf("NodeUpsert = %+v, want %+v", ups, g.params())
	}
	wantAllowed := []netip.Prefix{netip.MustParsePrefix("100.64.1.1/32"), netip.MustParsePrefix("198.51.100.0/24"),
		netip.MustParsePrefix("fd00:2021:1111::1:1/128")}
	if !slices.Equal(ups[0].AllowedIPs, wantAllowed) {
		t.Fatalf("AllowedIPs = %v, want %v", ups[0].AllowedIPs, wantAllowed)
	}
	if len(h.out) != 0 {
		t.Fatalf("%d packets sent before the connection is up", len(h.out))
	}
	h.tunIn(packet(clientV4, lan, ippacket.ProtoTCP, 443, 3))
	h.establish(g.id)
	out := h.takeOut()
	if len(out) != 4 {
		t.Fatalf("%d packets sent on establishment, want 4", len(out))
	}
	for i, d := range out {
		if d.gw != g.id || d.passed || seqOf(d.pkt) != uint32(i) {
			t.Fatalf("packet %d: gateway %q passed %v seq %d", i, d.gw, d.passed, seqOf(d.pkt))
		}
	}
	if v := h.tunIn(packet(clientV4, lan, ippacket.ProtoTCP, 443, 4)); v != tunnel.Pass {
		t.Fatalf("verdict %v once the flow is up, want pass", v)
	}
	if out := h.takeOut(); len(out) != 1 || out[0].gw != g.id {
		t.Fatalf("passed packet routed to %+v", out)
	}
}

func TestCreateFlowResentEveryTwoSecondsThenTimesOut(t *testing.T) {
	h := started(t, cidrRes(rid(1), "198.51.100.0/24"))
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 53, 1))
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 53, 2))
	if n := len(h.createFlows(0)); n != 1 {
		t.Fatalf("%d create_flow after two packets, want 1", n)
	}
	h.advance(1900 * time.Millisecond)
	if n := len(h.createFlows(0)); n != 1 {
		t.Fatalf("%d create_flow after 1.9 s, want 1", n)
	}
	h.advance(200 * time.Millisecond)
	if n := len(h.createFlows(0)); n != 2 {
		t.Fatalf("%d create_flow after 2.1 s, want 2 (resent)", n)
	}
	h.advance(DefaultFlowTimeout)
	if n := len(h.createFlows(0)); n != 5 {
		t.Fatalf("%d create_flow in the flow's 10 s, want 5", n)
	}
	tun := h.takeTUN()
	if len(tun) != 2 {
		t.Fatalf("%d ICMP errors after the timeout, want 2", len(tun))
	}
	for i, pkt := range tun {
		typ, code, seq := icmpError(t, pkt)
		if !isUnreachable(true, typ, code) || seq != uint32(i+1) {
			t.Fatalf("answer %d: type %d code %d seq %d", i, typ, code, seq)
		}
	}
	if st := h.c.Status(h.now); len(st.PendingFlows) != 0 || st.Counters.Flows["timeout"] != 1 {
		t.Fatalf("status after timeout: %+v %+v", st.PendingFlows, st.Counters.Flows)
	}
	// A late answer is stale.
	h.portal(gw(1).flowCreated(rid(1)))
	if len(h.conns) != 0 {
		t.Fatalf("a flow_created nobody waits for created a connection")
	}
	// The next packet starts over.
	before := len(h.pushes)
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 53, 3))
	if n := len(h.createFlows(before)); n != 1 {
		t.Fatalf("%d create_flow for the next packet, want 1", n)
	}
}

func TestCreateFlowWaitsForPortal(t *testing.T) {
	h := started(t, cidrRes(rid(1), "198.51.100.0/24"))
	h.c.HandlePortalState(tunnel.PortalDisconnected, h.now)
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 53, 1))
	h.advance(3 * time.Second)
	if n := len(h.createFlows(0)); n != 0 {
		t.Fatalf("%d create_flow while the portal is away", n)
	}
	h.c.HandlePortalState(tunnel.PortalJoined, h.now)
	h.run()
	if n := len(h.createFlows(0)); n != 1 {
		t.Fatalf("%d create_flow after the portal came back, want 1", n)
	}
}

func TestFlowBufferLimit(t *testing.T) {
	h := started(t, cidrRes(rid(1), "198.51.100.0/24"))
	for i := range DefaultMaxFlowPackets + 2 {
		h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, uint32(i)))
	}
	connect(t, h, rid(1), gw(1))
	out := h.takeOut()
	if len(out) != DefaultMaxFlowPackets {
		t.Fatalf("%d packets sent, want %d", len(out), DefaultMaxFlowPackets)
	}
	if seqOf(out[0].pkt) != 2 || seqOf(out[len(out)-1].pkt) != uint32(DefaultMaxFlowPackets+1) {
		t.Fatalf("kept %d..%d, want the newest (2..%d)", seqOf(out[0].pkt), seqOf(out[len(out)-1].pkt), DefaultMaxFlowPackets+1)
	}
	if d := h.c.Status(h.now).Counters.Dropped["buffer_full"]; d != 2 {
		t.Fatalf("buffer_full = %d, want 2", d)
	}
}

func TestFlowCreationFailedAnswersICMP(t *testing.T) {
	for _, tc := range []struct {
		reason     portalapi.FailReason
		prohibited bool
	}{{portalapi.FailOffline, false}, {portalapi.FailForbidden, true}} {
		t.Run(string(tc.reason), func(t *testing.T) {
			h := started(t, cidrRes(rid(1), "2001:db8:1::/48"))
			dst := netip.MustParseAddr("2001:db8:1::9")
			h.tunIn(packet(clientV6, dst, ippacket.ProtoICMPv6, 0, 1))
			h.tunIn(packet(clientV6, dst, ippacket.ProtoUDP, 9, 2))
			h.portal(portalapi.FlowCreationFailed{ResourceID: rid(1), Reason: tc.reason})
			tun := h.takeTUN()
			if len(tun) != 2 {
				t.Fatalf("%d answers, want 2", len(tun))
			}
			for i, pkt := range tun {
				typ, code, seq := icmpError(t, pkt)
				ok := isUnreachable(false, typ, code)
				if tc.prohibited {
					ok = isProhibited(false, typ, code)
				}
				if !ok || seq != uint32(i+1) {
					t.Fatalf("answer %d: type %d code %d seq %d", i, typ, code, seq)
				}
			}
			if len(h.c.Status(h.now).PendingFlows) != 0 {
				t.Fatal("pending flow kept after flow_creation_failed")
			}
		})
	}
}

func TestSecondResourceOnSameGateway(t *testing.T) {
	h := started(t, cidrRes(rid(1), "198.51.100.0/25"), cidrRes(rid(2), "203.0.113.0/24"))
	g := gw(1)
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 1))
	connect(t, h, rid(1), g)
	h.tunIn(packet(clientV4, netip.MustParseAddr("203.0.113.5"), ippacket.ProtoUDP, 9, 2))
	h.actions = nil
	h.portal(g.flowCreated(rid(2)))
	ups := actionsOf[tunnel.NodeUpsert](h.actions)
	if len(ups) != 1 || ups[0].Params != g.params() {
		t.Fatalf("second NodeUpsert = %+v", ups)
	}
	if !slices.Contains(ups[0].AllowedIPs, netip.MustParsePrefix("203.0.113.0/24")) ||
		!slices.Contains(ups[0].AllowedIPs, netip.MustParsePrefix("198.51.100.0/25")) {
		t.Fatalf("AllowedIPs %v lack a resource", ups[0].AllowedIPs)
	}
	// The gateway is up already: the packet goes at once.
	if out := h.takeOut(); len(out) != 2 || seqOf(out[1].pkt) != 2 || out[1].gw != g.id {
		t.Fatalf("deliveries %+v", out)
	}
}

func TestOverlappingCIDRsMostSpecificWins(t *testing.T) {
	h := started(t, cidrRes(rid(1), "198.51.100.0/24"), cidrRes(rid(2), "198.51.100.0/28"))
	g1, g2 := gw(1), gw(2)
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 1)) // .7: the /28
	h.tunIn(packet(clientV4, lanOther, ippacket.ProtoUDP, 9, 2))
	if got := h.createFlows(0); !slices.Equal(got, []string{rid(2), rid(1)}) {
		t.Fatalf("create_flow = %v", got)
	}
	connect(t, h, rid(1), g1)
	connect(t, h, rid(2), g2)
	for _, d := range h.takeOut() {
		want := g1.id
		if seqOf(d.pkt) == 1 {
			want = g2.id
		}
		if d.gw != want {
			t.Fatalf("packet %d went to %s, want %s", seqOf(d.pkt), d.gw, want)
		}
	}
	// Removing the /28 routes .7 to the /24's gateway from the next packet on.
	h.portal(portalapi.ResourceDeleted(rid(2)))
	if slices.Contains(h.conns[g2.id].allowed, netip.MustParsePrefix("198.51.100.0/28")) {
		t.Fatalf("removed resource still in AllowedIPs %v", h.conns[g2.id].allowed)
	}
	if v := h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 3)); v != tunnel.Pass {
		t.Fatalf("verdict %v", v)
	}
	if out := h.takeOut(); len(out) != 1 || out[0].gw != g1.id {
		t.Fatalf("after removal: %+v", out)
	}
	if len(h.conns[g2.id].allowed) != 2 {
		t.Fatalf("gateway with nothing routed keeps only its tunnel addresses, got %v", h.conns[g2.id].allowed)
	}
}

func TestRemovedResourceRoutesNothing(t *testing.T) {
	h := started(t, cidrRes(rid(1), "198.51.100.0/24"), cidrRes(rid(2), "203.0.113.0/24"))
	connectOne := func() {
		h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 1))
		connect(t, h, rid(1), gw(1))
		h.takeOut()
	}
	connectOne()
	h.tunIn(packet(clientV4, netip.MustParseAddr("203.0.113.1"), ippacket.ProtoUDP, 9, 2)) // buffered
	h.portal(portalapi.ResourceDeleted(rid(1)))
	h.portal(portalapi.ResourceDeleted(rid(2)))
	if v := h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 3)); v != tunnel.Stop {
		t.Fatalf("packet to a removed resource: %v", v)
	}
	if out := h.takeOut(); len(out) != 0 {
		t.Fatalf("packets sent to removed resources: %+v", out)
	}
	tun := h.takeTUN()
	if len(tun) != 1 {
		t.Fatalf("%d answers, want 1 (the buffered packet of the removed resource)", len(tun))
	}
	if typ, code, seq := icmpError(t, tun[0]); !isUnreachable(true, typ, code) || seq != 2 {
		t.Fatalf("answer type %d code %d seq %d", typ, code, seq)
	}
	if st := h.c.Status(h.now); st.Counters.Dropped["no_resource"] != 1 {
		t.Fatalf("no_resource = %d", st.Counters.Dropped["no_resource"])
	}
}

func TestFilterDeniedAnsweredProhibited(t *testing.T) {
	h := started(t, cidrRes(rid(1), "198.51.100.0/24", portalapi.Filter{Protocol: portalapi.ProtocolTCP, PortRangeStart: 443, PortRangeEnd: 443}))
	if v := h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 53, 1)); v != tunnel.Stop {
		t.Fatalf("denied packet: %v", v)
	}
	tun := h.takeTUN()
	if len(tun) != 1 {
		t.Fatalf("%d answers", len(tun))
	}
	if typ, code, seq := icmpError(t, tun[0]); !isProhibited(true, typ, code) || seq != 1 {
		t.Fatalf("answer type %d code %d seq %d", typ, code, seq)
	}
	if n := len(h.createFlows(0)); n != 0 {
		t.Fatalf("denied packet requested a flow")
	}
	// Allowed traffic still gets a flow; a filter change applies to the next packet without dropping it.
	h.tunIn(packet(clientV4, lan, ippacket.ProtoTCP, 443, 2))
	connect(t, h, rid(1), gw(1))
	h.takeOut()
	h.portal(portalapi.ResourceCreatedOrUpdated{Resource: cidrRes(rid(1), "198.51.100.0/24")})
	if v := h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 53, 3)); v != tunnel.Pass {
		t.Fatalf("after the filter was lifted: %v", v)
	}
	if len(h.conns) != 1 {
		t.Fatalf("a filter change dropped the connection")
	}
}

func TestConnectionFailedAnswersAndRecreates(t *testing.T) {
	h := started(t, cidrRes(rid(1), "198.51.100.0/24"))
	g := gw(1)
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 1))
	h.portal(g.flowCreated(rid(1)))
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 2))
	h.actions = nil
	h.nodeEvent(node.Event{Kind: node.EventConnectionFailed, ConnectionID: g.id, Err: errors.New("ice failed")})
	if rm := actionsOf[tunnel.NodeRemove](h.actions); len(rm) != 1 || rm[0].ID != g.id {
		t.Fatalf("NodeRemove = %+v", rm)
	}
	tun := h.takeTUN()
	if len(tun) != 2 {
		t.Fatalf("%d answers, want 2", len(tun))
	}
	st := h.c.Status(h.now)
	if len(st.Gateways) != 0 || len(st.FailedGateways) != 1 || st.Counters.Flows["connection_failed"] != 1 {
		t.Fatalf("status %+v %+v %+v", st.Gateways, st.FailedGateways, st.Counters.Flows)
	}
	before := len(h.pushes)
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 3))
	if got := h.createFlows(before); !slices.Equal(got, []string{rid(1)}) {
		t.Fatalf("create_flow after failure = %v", got)
	}
}

func TestConnectTimeout(t *testing.T) {
	h := started(t, cidrRes(rid(1), "198.51.100.0/24"))
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 1))
	h.portal(gw(1).flowCreated(rid(1)))
	h.advance(DefaultConnectTimeout)
	if len(h.conns) != 0 || len(h.takeTUN()) != 1 {
		t.Fatalf("connection not dropped after ConnectTimeout")
	}
}

func TestNoRelaysReconnectsPortalAndRetries(t *testing.T) {
	h := started(t, cidrRes(rid(1), "198.51.100.0/24"))
	g := gw(1)
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 1))
	h.failUpsert = node.ErrNoRelays
	h.portal(g.flowCreated(rid(1)))
	if h.reconnects != 1 {
		t.Fatalf("%d portal reconnects, want 1", h.reconnects)
	}
	if len(h.conns) != 0 || len(h.tun) != 0 {
		t.Fatalf("connection %v or answers %d after ErrNoRelays", h.conns, len(h.tun))
	}
	st := h.c.Status(h.now)
	if len(st.PendingFlows) != 1 || st.PendingFlows[0].Buffered != 1 {
		t.Fatalf("flow not kept for a retry: %+v", st.PendingFlows)
	}
	// The portal comes back with fresh relays; the flow is requested again and succeeds.
	before := len(h.pushes)
	h.advance(time.Second)
	h.c.HandlePortalState(tunnel.PortalDisconnected, h.now)
	h.portal(initMsg(cidrRes(rid(1), "198.51.100.0/24")))
	if got := h.createFlows(before); !slices.Equal(got, []string{rid(1)}) {
		t.Fatalf("create_flow after the reconnect = %v", got)
	}
	connect(t, h, rid(1), g)
	if out := h.takeOut(); len(out) != 1 || seqOf(out[0].pkt) != 1 {
		t.Fatalf("buffered packet after the retry: %+v", out)
	}
	// The node losing its last relay reconnects too, at most once per interval.
	h.nodeEvent(node.Event{Kind: node.EventNoRelays})
	h.nodeEvent(node.Event{Kind: node.EventNoRelays})
	if h.reconnects != 1 {
		t.Fatalf("%d reconnects within the interval, want still 1", h.reconnects)
	}
	h.advance(DefaultReconnectInterval)
	h.nodeEvent(node.Event{Kind: node.EventNoRelays})
	if h.reconnects != 2 {
		t.Fatalf("%d reconnects, want 2", h.reconnects)
	}
	if len(h.conns) != 1 {
		t.Fatal("EventNoRelays touched the existing connection")
	}
}

func TestICECandidates(t *testing.T) {
	h := started(t, cidrRes(rid(1), "198.51.100.0/24"))
	g := gw(1)
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 1))
	h.portal(g.flowCreated(rid(1)))
	h.actions = nil
	h.portal(portalapi.GatewayIceCandidates{GatewayID: g.id, Candidates: []string{"c1", "c2"}})
	h.portal(portalapi.InvalidatedGatewayIceCandidates{GatewayID: g.id, Candidates: []string{"c1"}})
	adds := actionsOf[tunnel.NodeAddCandidate](h.actions)
	rms := actionsOf[tunnel.NodeRemoveCandidate](h.actions)
	if len(adds) != 2 || adds[1] != (tunnel.NodeAddCandidate{ID: g.id, Candidate: "c2"}) || len(rms) != 1 || rms[0].Candidate != "c1" {
		t.Fatalf("adds %+v removes %+v", adds, rms)
	}
	before := len(h.pushes)
	h.nodeEvent(node.Event{Kind: node.EventCandidateAdded, ConnectionID: g.id, Candidate: "l1"})
	h.nodeEvent(node.Event{Kind: node.EventCandidateInvalidated, ConnectionID: g.id, Candidate: "l0"})
	if len(h.pushes) != before+2 {
		t.Fatalf("%d pushes", len(h.pushes)-before)
	}
	b := h.pushes[before].Payload.(portalapi.BroadcastGatewayIceCandidates)
	inv := h.pushes[before+1].Payload.(portalapi.BroadcastInvalidatedGatewayIceCandidates)
	if !slices.Equal(b.GatewayIDs, []string{g.id}) || !slices.Equal(b.Candidates, []string{"l1"}) ||
		h.pushes[before].Event != "broadcast_ice_candidates" || !slices.Equal(inv.Candidates, []string{"l0"}) {
		t.Fatalf("pushes %+v", h.pushes[before:])
	}
	// Held while the portal is away; flushed, net of invalidations, when it is back.
	h.c.HandlePortalState(tunnel.PortalDisconnected, h.now)
	before = len(h.pushes)
	h.nodeEvent(node.Event{Kind: node.EventCandidateAdded, ConnectionID: g.id, Candidate: "l2"})
	h.nodeEvent(node.Event{Kind: node.EventCandidateAdded, ConnectionID: g.id, Candidate: "l3"})
	h.nodeEvent(node.Event{Kind: node.EventCandidateInvalidated, ConnectionID: g.id, Candidate: "l2"})
	if len(h.pushes) != before {
		t.Fatal("candidates pushed while the portal is away")
	}
	h.c.HandlePortalState(tunnel.PortalJoined, h.now)
	h.run()
	if len(h.pushes) != before+1 || !slices.Equal(h.pushes[before].Payload.(portalapi.BroadcastGatewayIceCandidates).Candidates, []string{"l3"}) {
		t.Fatalf("flushed %+v", h.pushes[before:])
	}
}

func TestPortalDisconnectedKeepsConnectionsAndDNS(t *testing.T) {
	h := started(t, cidrRes(rid(1), "198.51.100.0/24"), dnsRes(rid(2), "*.corp.test"))
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 1))
	connect(t, h, rid(1), gw(1))
	h.takeOut()
	v4a, _ := h.resolve("app.corp.test")
	h.c.HandlePortalState(tunnel.PortalDisconnected, h.now)
	if v := h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 2)); v != tunnel.Pass {
		t.Fatalf("verdict %v while the portal is away", v)
	}
	v4b, _ := h.resolve("app.corp.test")
	if !slices.Equal(v4a, v4b) || len(v4b) != 4 {
		t.Fatalf("known name while the portal is away: %v then %v", v4a, v4b)
	}
	if st := h.c.Status(h.now); st.Portal != "disconnected" {
		t.Fatalf("portal state %q", st.Portal)
	}
}

func TestRepeatedInitKeepsConnectionsAndProxyIPs(t *testing.T) {
	rs := []portalapi.Resource{cidrRes(rid(1), "198.51.100.0/24"), dnsRes(rid(2), "*.corp.test")}
	h := started(t, rs...)
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 1))
	connect(t, h, rid(1), gw(1))
	h.takeOut()
	v4a, v6a := h.resolve("app.corp.test")
	h.actions = nil
	h.c.HandlePortalState(tunnel.PortalDisconnected, h.now)
	h.portal(initMsg(rs...))
	if rm := actionsOf[tunnel.NodeRemove](h.actions); len(rm) != 0 {
		t.Fatalf("repeated init removed connections: %+v", rm)
	}
	if up := actionsOf[tunnel.NodeAllowedIPs](h.actions); len(up) != 0 {
		t.Fatalf("repeated init changed AllowedIPs: %+v", up)
	}
	if v := h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 2)); v != tunnel.Pass {
		t.Fatalf("verdict %v after repeated init", v)
	}
	v4b, v6b := h.resolve("app.corp.test")
	if !slices.Equal(v4a, v4b) || !slices.Equal(v6a, v6b) {
		t.Fatalf("proxy IPs changed: %v %v → %v %v", v4a, v6a, v4b, v6b)
	}
}

func TestDNSLocalAnswerRoutesName(t *testing.T) {
	h := started(t, dnsRes(rid(1), "*.corp.test"))
	h.tunIn(udpQueryPacket(t, clientV4, sentV4, "App.Corp.Test", mdns.TypeA, 7))
	tun := h.takeTUN()
	if len(tun) != 1 {
		t.Fatalf("%d packets, want 1 answer", len(tun))
	}
	from, to, m := dnsAnswer(t, tun[0])
	if from != netip.AddrPortFrom(sentV4, 53) || to != netip.AddrPortFrom(clientV4, 5353) || m.Id != 7 || len(m.Answer) != 4 {
		t.Fatalf("answer %v → %v: %v", from, to, m)
	}
	st := h.c.Status(h.now)
	if len(st.DNS.Names) != 1 || st.DNS.Names[0].Name != "app.corp.test" || st.DNS.Names[0].ResourceID != rid(1) ||
		len(st.DNS.Names[0].ProxyIPs) != 8 {
		t.Fatalf("names %+v", st.DNS.Names)
	}
	a := m.Answer[0].(*mdns.A)
	ip, _ := netip.AddrFromSlice(a.A.To4())
	if !dns.ProxyRangeV4.Contains(ip) {
		t.Fatalf("answer %v not a proxy IP", ip)
	}
	h.tunIn(packet(clientV4, ip, ippacket.ProtoTCP, 443, 1))
	if got := h.createFlows(0); !slices.Equal(got, []string{rid(1)}) {
		t.Fatalf("packet to the proxy IP: create_flow %v", got)
	}
	// A proxy IP no name holds is no resource, even with the Internet resource.
	h.portal(portalapi.ResourceCreatedOrUpdated{Resource: internetRes(rid(9))})
	before := len(h.pushes)
	h.tunIn(packet(clientV4, netip.MustParseAddr("100.96.200.1"), ippacket.ProtoTCP, 443, 2))
	if n := len(h.createFlows(before)); n != 0 {
		t.Fatal("an unassigned proxy IP went to the Internet resource")
	}
}

func TestDNSForwardAndResponse(t *testing.T) {
	h := started(t, dnsRes(rid(1), "*.corp.test"))
	h.tunIn(udpQueryPacket(t, clientV4, sentV4, "example.org", mdns.TypeA, 9))
	if len(h.forwards) != 1 || h.forwards[0].Upstream != upstream || h.forwards[0].Transport != dns.UDP || h.forwards[0].ThroughTunnel {
		t.Fatalf("forwards %+v", h.forwards)
	}
	f := h.forwards[0]
	resp := new(mdns.Msg)
	q := new(mdns.Msg)
	if err := q.Unpack(f.Query); err != nil {
		t.Fatal(err)
	}
	resp.SetReply(q)
	resp.Answer = []mdns.RR{&mdns.A{Hdr: mdns.RR_Header{Name: "example.org.", Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 60}, A: []byte{192, 0, 2, 1}}}
	b, _ := resp.Pack()
	h.c.HandleDNSResponse(f.ID, b, nil, h.now)
	h.run()
	tun := h.takeTUN()
	if len(tun) != 1 {
		t.Fatalf("%d packets after the response", len(tun))
	}
	if _, to, m := dnsAnswer(t, tun[0]); m.Id != 9 || len(m.Answer) != 1 || to.Port() != 5353 {
		t.Fatalf("answer %v", m)
	}
	// A UDP timeout is not answered; another error is SERVFAIL.
	h.tunIn(udpQueryPacket(t, clientV4, sentV4, "a.example.org", mdns.TypeA, 10))
	h.tunIn(udpQueryPacket(t, clientV4, sentV4, "b.example.org", mdns.TypeA, 11))
	h.c.HandleDNSResponse(h.forwards[1].ID, nil, dns.ErrUpstreamTimeout, h.now)
	h.c.HandleDNSResponse(h.forwards[2].ID, nil, errors.New("refused"), h.now)
	h.run()
	tun = h.takeTUN()
	if len(tun) != 1 {
		t.Fatalf("%d answers, want only the SERVFAIL", len(tun))
	}
	if _, _, m := dnsAnswer(t, tun[0]); m.Id != 11 || m.Rcode != mdns.RcodeServerFailure {
		t.Fatalf("answer %v", m)
	}
	// An unknown forward id is ignored.
	h.c.HandleDNSResponse(12345, b, nil, h.now)
	h.run()
	if len(h.takeTUN()) != 0 {
		t.Fatal("answer for an unknown forward delivered")
	}
}

func TestDNSOverTCPActions(t *testing.T) {
	h := started(t, dnsRes(rid(1), "*.corp.test"))
	syn := packet(clientV4, sentV4, ippacket.ProtoTCP, 53, 1)
	if v := h.tunIn(syn); v != tunnel.Stop {
		t.Fatalf("TCP to the sentinel: %v", v)
	}
	if len(h.tcpPackets) != 1 || !slices.Equal(h.tcpPackets[0], syn) {
		t.Fatalf("DNSTCPPacket %v", h.tcpPackets)
	}
	server := netip.AddrPortFrom(sentV4, 53)
	client := netip.AddrPortFrom(clientV4, appPort)
	for i := range dns.MaxTCPConnsPerSentinel {
		if err := h.c.HandleDNSTCPAccept(server, uint64(i+1), h.now); err != nil {
			t.Fatalf("accept %d: %v", i, err)
		}
	}
	if err := h.c.HandleDNSTCPAccept(server, 99, h.now); !errors.Is(err, dns.ErrTCPConnLimit) {
		t.Fatalf("accept beyond the limit: %v", err)
	}
	h.c.HandleDNSTCPQuery(1, client, server, dnsQuery(t, "x.corp.test", mdns.TypeAAAA, 5), h.now)
	h.run()
	if len(h.tcpReplies) != 1 || h.tcpReplies[0].Handle != 1 {
		t.Fatalf("TCP replies %+v", h.tcpReplies)
	}
	m := new(mdns.Msg)
	if err := m.Unpack(h.tcpReplies[0].Payload); err != nil || len(m.Answer) != 4 {
		t.Fatalf("TCP answer %v %v", m, err)
	}
	h.c.HandleDNSTCPQuery(2, client, server, dnsQuery(t, "example.org", mdns.TypeA, 6), h.now)
	h.run()
	if len(h.forwards) != 1 || h.forwards[0].Transport != dns.TCP || h.forwards[0].Source.Handle != 2 {
		t.Fatalf("TCP forward %+v", h.forwards)
	}
	h.c.HandleDNSTCPClose(2, h.now)
	h.run()
	if !slices.Equal(h.cancels, []dns.ForwardID{h.forwards[0].ID}) {
		t.Fatalf("cancels %v, want the closed connection's forward", h.cancels)
	}
	// Non-DNS traffic to a sentinel is dropped.
	if v := h.tunIn(packet(clientV4, sentV4, ippacket.ProtoUDP, 5353, 2)); v != tunnel.Stop || len(h.tun) != 0 {
		t.Fatalf("UDP to the sentinel's port 5353: %v", v)
	}
}

func TestDNSUpstreamInsideCIDRResource(t *testing.T) {
	h := newHarness(t, Config{})
	inner := netip.MustParseAddrPort("198.51.100.53:53")
	m := initMsg(cidrRes(rid(1), "198.51.100.0/24"))
	m.Interface.UpstreamDNS = []portalapi.DNSServer{{Protocol: portalapi.DNSProtocolIPPort, Address: inner}}
	h.portal(m)
	h.tunIn(udpQueryPacket(t, clientV4, sentV4, "example.org", mdns.TypeA, 3))
	if len(h.forwards) != 1 || !h.forwards[0].ThroughTunnel || h.forwards[0].Upstream != inner {
		t.Fatalf("forward %+v, want through the tunnel", h.forwards)
	}
	// The driver dials the upstream through the TUN device: its packets are ordinary resource traffic.
	q := h.forwards[0].Query
	buf := make([]byte, 28+len(q))
	n, _ := ippacket.BuildUDP(buf, netip.AddrPortFrom(clientV4, 33000), inner, q)
	if v := h.tunIn(buf[:n]); v != tunnel.Stop {
		t.Fatalf("query to the upstream before its flow: %v", v)
	}
	if got := h.createFlows(0); !slices.Equal(got, []string{rid(1)}) {
		t.Fatalf("create_flow %v", got)
	}
	connect(t, h, rid(1), gw(1))
	out := h.takeOut()
	if len(out) != 1 || out[0].gw != gw(1).id {
		t.Fatalf("query packet delivered %+v", out)
	}
	// Its answer comes back from the gateway and goes to the TUN device.
	ans := make([]byte, 28+len(q))
	n, _ = ippacket.BuildUDP(ans, inner, netip.AddrPortFrom(clientV4, 33000), q)
	if v := h.c.HandleNetworkInput(ans[:n], h.now); v != tunnel.Pass {
		t.Fatalf("answer from the tunnel: %v", v)
	}
}

func TestDNSResourceNAT(t *testing.T) {
	h := started(t, dnsRes(rid(1), "*.corp.test"))
	g := gw(1)
	v4, v6 := h.resolve("app.corp.test")
	h.tunIn(packet(clientV4, v4[0], ippacket.ProtoTCP, 443, 0))
	connect(t, h, rid(1), g)
	allowed := h.conns[g.id].allowed
	for _, ip := range append(slices.Clone(v4), v6...) {
		if !slices.Contains(allowed, netip.PrefixFrom(ip, ip.BitLen())) {
			t.Fatalf("AllowedIPs %v lack proxy IP %v", allowed, ip)
		}
	}
	out := h.takeOut()
	as := assignedIPs(t, out)
	if len(as) != 1 || as[0].Domain != "app.corp.test" || as[0].Resource != rid(1) || len(as[0].ProxyIPs) != 8 {
		t.Fatalf("AssignedIPs %+v", as)
	}
	if d := dataOnly(out); len(d) != 0 {
		t.Fatalf("%d data packets sent before the NAT is confirmed", len(d))
	}
	if out[0].gw != g.id {
		t.Fatalf("control packet routed to %q", out[0].gw)
	}
	for i := 1; i <= DefaultMaxNATPackets+1; i++ {
		if v := h.tunIn(packet(clientV4, v4[i%4], ippacket.ProtoTCP, 443, uint32(i))); v != tunnel.Stop {
			t.Fatalf("packet %d: %v while the NAT is pending", i, v)
		}
	}
	// Retransmitted until the gateway answers.
	h.advance(1500 * time.Millisecond)
	if as := assignedIPs(t, h.takeOut()); len(as) != 1 {
		t.Fatalf("%d retransmits after 1.5 s, want 1", len(as))
	}
	h.c.HandleNetworkInput(domainStatus(t, g, rid(1), "app.corp.test", true, as[0].Seq), h.now)
	h.run()
	out = dataOnly(h.takeOut())
	if len(out) != DefaultMaxNATPackets {
		t.Fatalf("%d packets released, want %d", len(out), DefaultMaxNATPackets)
	}
	for i, d := range out {
		if d.gw != g.id || seqOf(d.pkt) != uint32(i+2) {
			t.Fatalf("released %d: gw %q seq %d", i, d.gw, seqOf(d.pkt))
		}
	}
	if v := h.tunIn(packet(clientV4, v4[0], ippacket.ProtoTCP, 443, 101)); v != tunnel.Pass {
		t.Fatalf("verdict %v once confirmed", v)
	}
	if d := h.c.Status(h.now).Counters.Dropped["nat_buffer_full"]; d != 2 {
		t.Fatalf("nat_buffer_full = %d, want 2 (34 packets for a hold of 32)", d)
	}
}

func TestDNSResourceNATRefusedAndGaveUp(t *testing.T) {
	h := started(t, dnsRes(rid(1), "*.corp.test"))
	g := gw(1)
	v4, _ := h.resolve("a.corp.test")
	h.tunIn(packet(clientV4, v4[0], ippacket.ProtoTCP, 443, 1))
	connect(t, h, rid(1), g)
	as := assignedIPs(t, h.takeOut())
	h.c.HandleNetworkInput(domainStatus(t, g, rid(1), "a.corp.test", false, as[0].Seq), h.now)
	h.run()
	tun := h.takeTUN()
	if len(tun) != 1 {
		t.Fatalf("%d answers after Inactive", len(tun))
	}
	if typ, code, seq := icmpError(t, tun[0]); !isUnreachable(true, typ, code) || seq != 1 {
		t.Fatalf("type %d code %d seq %d", typ, code, seq)
	}
	// Within the retry interval: answered at once; after it: tried again.
	h.tunIn(packet(clientV4, v4[0], ippacket.ProtoTCP, 443, 2))
	if len(h.takeTUN()) != 1 || len(assignedIPs(t, h.takeOut())) != 0 {
		t.Fatal("refused name not answered at once")
	}
	h.advance(DefaultFlowRetryInterval)
	h.tunIn(packet(clientV4, v4[0], ippacket.ProtoTCP, 443, 3))
	if len(assignedIPs(t, h.takeOut())) != 1 {
		t.Fatal("refused name not tried again after the retry interval")
	}
	// No answer at all: the control client gives up, the held packet is answered.
	h.advance(2 * time.Minute)
	tun = h.takeTUN()
	if len(tun) != 1 {
		t.Fatalf("%d answers after giving up", len(tun))
	}
	if st := h.c.Status(h.now); st.Gateways[0].NAT["a.corp.test"] != "failed" {
		t.Fatalf("NAT state %v", st.Gateways[0].NAT)
	}
}

func TestGatewayGoodbyeDropsAndRecreates(t *testing.T) {
	h := started(t, cidrRes(rid(1), "198.51.100.0/24"))
	g := gw(1)
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 1))
	connect(t, h, rid(1), g)
	h.takeOut()
	bye, err := p2pcontrol.Encode(g.ipv6, clientV6, p2pcontrol.Goodbye{})
	if err != nil {
		t.Fatal(err)
	}
	h.actions = nil
	if v := h.c.HandleNetworkInput(bye, h.now); v != tunnel.Stop {
		t.Fatalf("goodbye: %v", v)
	}
	h.run()
	if rm := actionsOf[tunnel.NodeRemove](h.actions); len(rm) != 1 || rm[0].ID != g.id {
		t.Fatalf("NodeRemove %+v", rm)
	}
	before := len(h.pushes)
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 2))
	if got := h.createFlows(before); !slices.Equal(got, []string{rid(1)}) {
		t.Fatalf("create_flow after goodbye %v", got)
	}
	g2 := gw(2)
	connect(t, h, rid(1), g2)
	if out := h.takeOut(); len(out) != 1 || out[0].gw != g2.id {
		t.Fatalf("after goodbye, packets go to %+v", out)
	}
}

func TestRoam(t *testing.T) {
	h := started(t, cidrRes(rid(1), "198.51.100.0/24"), cidrRes(rid(2), "203.0.113.0/24"), dnsRes(rid(3), "*.corp.test"))
	g := gw(1)
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 1))
	connect(t, h, rid(1), g)
	h.takeOut()
	h.tunIn(udpQueryPacket(t, clientV4, sentV4, "example.org", mdns.TypeA, 1)) // forwarded, in flight
	v4a, _ := h.resolve("x.corp.test")
	h.tunIn(packet(clientV4, netip.MustParseAddr("203.0.113.9"), ippacket.ProtoUDP, 9, 2)) // pending flow
	h.actions = nil
	h.c.HandleRoam(h.now)
	h.run()
	kinds := []string{}
	for _, a := range h.actions {
		kinds = append(kinds, a.Kind())
	}
	for _, want := range []string{"node_reset", "dns_cancel", "dns_roam", "set_routes"} {
		if !slices.Contains(kinds, want) {
			t.Fatalf("roam actions %v lack %s", kinds, want)
		}
	}
	if !slices.Equal(h.cancels, []dns.ForwardID{h.forwards[0].ID}) {
		t.Fatalf("cancels %v", h.cancels)
	}
	st := h.c.Status(h.now)
	if len(st.Gateways) != 0 || st.Portal != "connecting" {
		t.Fatalf("after roam: gateways %+v portal %s", st.Gateways, st.Portal)
	}
	// A flow_created answering a create_flow of before the roam is ignored.
	h.portal(g.flowCreated(rid(2)))
	if len(h.conns) != 0 {
		t.Fatal("stale flow_created accepted after roam")
	}
	// Packets wait until the portal is back, then flows are requested with the new key.
	before := len(h.pushes)
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 3))
	if n := len(h.createFlows(before)); n != 0 {
		t.Fatal("create_flow before the portal came back")
	}
	h.portal(initMsg(cidrRes(rid(1), "198.51.100.0/24"), cidrRes(rid(2), "203.0.113.0/24"), dnsRes(rid(3), "*.corp.test")))
	if got := h.createFlows(before); !slices.Equal(got, []string{rid(1), rid(2)}) {
		t.Fatalf("create_flow after rejoin %v", got)
	}
	connect(t, h, rid(1), g)
	connect(t, h, rid(2), g)
	out := h.takeOut()
	if len(out) != 2 {
		t.Fatalf("%d packets after roam, want the 2 that waited", len(out))
	}
	v4b, _ := h.resolve("x.corp.test")
	if !slices.Equal(v4a, v4b) {
		t.Fatal("proxy IPs changed over a roam")
	}
}

func TestUpstreamChangeKeepsProxyIPs(t *testing.T) {
	h := started(t, dnsRes(rid(1), "*.corp.test"), dnsRes(rid(2), "**.other.test"))
	var before [][]netip.Addr
	names := []string{"a.corp.test", "b.other.test", "c.corp.test", "x.y.other.test"}
	for _, n := range names {
		v4, v6 := h.resolve(n)
		before = append(before, append(v4, v6...))
	}
	h.tunIn(udpQueryPacket(t, clientV4, sentV4, "example.org", mdns.TypeA, 1)) // in flight
	h.portal(portalapi.ResourceDeleted(rid(2)))                                // b.other.test's resource goes
	h.actions = nil
	newUp := netip.MustParseAddrPort("203.0.113.53:53")
	h.portal(portalapi.ConfigChanged{Interface: portalapi.Interface{IPv4: clientV4, IPv6: clientV6,
		UpstreamDNS: []portalapi.DNSServer{{Protocol: "ip_port", Address: newUp}, {Protocol: "ip_port", Address: netip.MustParseAddrPort("[2001:db8::53]:53")}}}})
	dnss := actionsOf[SetDNS](h.actions)
	if len(dnss) != 1 || len(dnss[0].Servers) != 2 {
		t.Fatalf("SetDNS %+v", dnss)
	}
	if len(h.cancels) != 1 {
		t.Fatalf("old resolver's forward not cancelled: %v", h.cancels)
	}
	h.portal(portalapi.ResourceCreatedOrUpdated{Resource: dnsRes(rid(2), "**.other.test")})
	for i, n := range names {
		v4, v6 := h.resolve(n)
		if got := append(v4, v6...); !slices.Equal(got, before[i]) {
			t.Fatalf("%s: proxy IPs %v, were %v", n, got, before[i])
		}
	}
	// A new name gets fresh IPs, not one of the old ones.
	v4, _ := h.resolve("new.corp.test")
	for _, b := range before {
		if slices.Contains(b, v4[0]) {
			t.Fatalf("new name got an old proxy IP %v", v4[0])
		}
	}
	// The old resolver's forward answer is dropped, and the new resolver forwards to the new upstream.
	h.c.HandleDNSResponse(h.forwards[0].ID, []byte{1, 2}, nil, h.now)
	h.run()
	h.tunIn(udpQueryPacket(t, clientV4, sentV4, "example.org", mdns.TypeA, 2))
	if f := h.forwards[len(h.forwards)-1]; f.Upstream != newUp || f.ID == h.forwards[0].ID {
		t.Fatalf("forward after the change %+v", f)
	}
}

func TestPacketFromForeignSourceDropped(t *testing.T) {
	h := started(t, cidrRes(rid(1), "198.51.100.0/24"))
	if v := h.tunIn(packet(netip.MustParseAddr("192.0.2.9"), lan, ippacket.ProtoUDP, 9, 1)); v != tunnel.Stop {
		t.Fatalf("verdict %v", v)
	}
	if n := len(h.createFlows(0)); n != 0 || h.c.Status(h.now).Counters.Dropped["source"] != 1 {
		t.Fatal("packet from a foreign source not dropped")
	}
	// Before init everything is dropped.
	h2 := newHarness(t, Config{})
	if v := h2.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 1)); v != tunnel.Stop {
		t.Fatalf("before init: %v", v)
	}
}

func TestInternetResource(t *testing.T) {
	h := started(t, internetRes(rid(1)), cidrRes(rid(2), "198.51.100.0/24"))
	gi, gc := gw(1), gw(2)
	pub := netip.MustParseAddr("198.18.5.5")
	h.tunIn(packet(clientV4, pub, ippacket.ProtoTCP, 443, 1))
	h.tunIn(packet(clientV4, lan, ippacket.ProtoTCP, 443, 2))
	if got := h.createFlows(0); !slices.Equal(got, []string{rid(1), rid(2)}) {
		t.Fatalf("create_flow %v", got)
	}
	connect(t, h, rid(1), gi)
	connect(t, h, rid(2), gc)
	for _, d := range h.takeOut() {
		want := gi.id
		if seqOf(d.pkt) == 2 {
			want = gc.id
		}
		if d.gw != want {
			t.Fatalf("packet %d to %s, want %s", seqOf(d.pkt), d.gw, want)
		}
	}
	if !slices.Contains(h.conns[gi.id].allowed, netip.MustParsePrefix("0.0.0.0/0")) {
		t.Fatalf("Internet gateway AllowedIPs %v", h.conns[gi.id].allowed)
	}
}

func TestShutdownSaysGoodbye(t *testing.T) {
	h := started(t, cidrRes(rid(1), "198.51.100.0/24"))
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 1))
	connect(t, h, rid(1), gw(1))
	h.takeOut()
	h.c.HandleShutdown(h.now)
	h.run()
	out := h.takeOut()
	if len(out) != 1 || !out[0].control || out[0].gw != gw(1).id {
		t.Fatalf("shutdown sent %+v", out)
	}
	p, err := p2pcontrol.Decode(out[0].pkt)
	if err != nil || p.Msg.Kind() != p2pcontrol.KindGoodbye {
		t.Fatalf("not a goodbye: %v %v", p, err)
	}
}

func TestStatusJSON(t *testing.T) {
	h := started(t, cidrRes(rid(1), "198.51.100.0/24"), dnsRes(rid(2), "*.corp.test"), internetRes(rid(3)))
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 1))
	connect(t, h, rid(1), gw(1))
	h.resolve("a.corp.test")
	h.tunIn(packet(clientV4, netip.MustParseAddr("198.18.0.1"), ippacket.ProtoUDP, 9, 2))
	st := h.c.Status(h.now)
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"portal", "interface", "resources", "gateways", "pending_flows", "dns", "counters"} {
		if _, ok := back[k]; !ok {
			t.Fatalf("status JSON lacks %q: %s", k, b)
		}
	}
	if st.Resources[0].Flow != "up" || st.Resources[0].Gateway != gw(1).id || st.Resources[2].Flow != "requested" {
		t.Fatalf("resources %+v", st.Resources)
	}
	if len(st.Gateways) != 1 || st.Gateways[0].State != "established" || !slices.Equal(st.Gateways[0].Resources, []string{rid(1)}) {
		t.Fatalf("gateways %+v", st.Gateways)
	}
	if len(st.PendingFlows) != 1 || st.PendingFlows[0].ResourceID != rid(3) {
		t.Fatalf("pending flows %+v", st.PendingFlows)
	}
	if st.Counters.Flows["requested"] != 2 || st.Counters.Flows["created"] != 1 || st.Counters.Tunneled != 1 {
		t.Fatalf("counters %+v", st.Counters)
	}
}

func TestICMPErrorsAreNotAnswered(t *testing.T) {
	h := started(t, cidrRes(rid(1), "198.51.100.0/24", portalapi.Filter{Protocol: portalapi.ProtocolTCP, PortRangeStart: 1, PortRangeEnd: 2}))
	// An ICMP error (type 3) to a resource that denies ICMP: no ICMP error in answer.
	inner := packet(lan, clientV4, ippacket.ProtoUDP, 9, 1)
	l4 := append([]byte{3, 3, 0, 0, 0, 0, 0, 0}, inner...)
	h.tunIn(ipPacket(clientV4, lan, ippacket.ProtoICMP, l4))
	if len(h.takeTUN()) != 0 || h.c.Status(h.now).Counters.Dropped["unanswerable"] != 1 {
		t.Fatal("an ICMP error was answered with an ICMP error")
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	if _, err := New(Config{FlowTimeout: -1}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("negative timeout: %v", err)
	}
	if _, err := New(Config{SystemResolvers: []netip.AddrPort{{}}}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("invalid resolver: %v", err)
	}
}

func TestPollTimeoutCached(t *testing.T) {
	h := started(t, cidrRes(rid(1), "198.51.100.0/24"))
	if _, ok := h.c.PollTimeout(); ok {
		t.Fatal("deadline with nothing pending")
	}
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 1))
	dl, ok := h.c.PollTimeout()
	if !ok || !dl.Equal(h.now.Add(DefaultFlowRetryInterval)) {
		t.Fatalf("deadline %v %v, want the resend", dl, ok)
	}
	connect(t, h, rid(1), gw(1))
	h.takeOut()
	if _, ok := h.c.PollTimeout(); ok {
		t.Fatal("deadline after the flow is up")
	}
	pkt := packet(clientV4, lan, ippacket.ProtoUDP, 9, 1)
	allocs := testing.AllocsPerRun(100, func() {
		if h.c.HandleTunInput(pkt, h.now) != tunnel.Pass {
			t.Fatal("not passed")
		}
		h.c.PollTimeout()
	})
	if allocs != 0 {
		t.Fatalf("the pass path allocates %.1f times per packet", allocs)
	}
}

func TestSetSystemResolvers(t *testing.T) {
	sys1 := netip.MustParseAddrPort("203.0.113.53:53")
	sys2 := netip.MustParseAddrPort("[2001:db8::53]:0")
	h := newHarness(t, Config{SystemResolvers: []netip.AddrPort{sys1}})
	m := initMsg(dnsRes(rid(1), "*.corp.test"))
	m.Interface.UpstreamDNS = nil
	h.portal(m)
	v4a, _ := h.resolve("a.corp.test")
	h.actions = nil
	h.c.SetSystemResolvers([]netip.AddrPort{sys1, sys2}, h.now)
	h.run()
	dnss := actionsOf[SetDNS](h.actions)
	if len(dnss) != 1 || len(dnss[0].Servers) != 2 {
		t.Fatalf("SetDNS %+v, want a sentinel per system resolver", dnss)
	}
	if st := h.c.Status(h.now); st.DNS.Sentinels[1].Upstream != netip.MustParseAddrPort("[2001:db8::53]:53") {
		t.Fatalf("sentinels %+v (port 0 means 53)", st.DNS.Sentinels)
	}
	if v4b, _ := h.resolve("a.corp.test"); !slices.Equal(v4a, v4b) {
		t.Fatalf("proxy IPs changed with the system resolvers: %v → %v", v4a, v4b)
	}
	// The portal's upstreams win over the system's.
	h.actions = nil
	h.portal(portalapi.ConfigChanged{Interface: initMsg().Interface})
	if st := h.c.Status(h.now); len(st.DNS.Sentinels) != 1 || st.DNS.Sentinels[0].Upstream != upstream {
		t.Fatalf("sentinels %+v, want the portal's upstream", st.DNS.Sentinels)
	}
	// No usable upstream at all: no DNS servers, queries dropped.
	bad := initMsg().Interface
	bad.UpstreamDNS = []portalapi.DNSServer{{Protocol: "ip_port", Address: netip.MustParseAddrPort("100.64.0.9:53")}}
	h.c.SetSystemResolvers(nil, h.now)
	h.actions = nil
	h.portal(portalapi.ConfigChanged{Interface: bad})
	if dnss := actionsOf[SetDNS](h.actions); len(dnss) != 1 || len(dnss[0].Servers) != 0 {
		t.Fatalf("SetDNS %+v, want no servers", dnss)
	}
	h.tunIn(udpQueryPacket(t, clientV4, sentV4, "a.corp.test", mdns.TypeA, 1))
	if len(h.takeTUN()) != 0 || h.c.Status(h.now).Counters.Dropped["sentinel"] != 1 {
		t.Fatal("query without a resolver not dropped")
	}
}

func TestGatewayReplacedByNewParameters(t *testing.T) {
	h := started(t, dnsRes(rid(1), "*.corp.test"), cidrRes(rid(2), "198.51.100.0/24"))
	g := gw(1)
	v4, _ := h.resolve("a.corp.test")
	h.tunIn(packet(clientV4, v4[0], ippacket.ProtoTCP, 443, 1))
	connect(t, h, rid(1), g)
	as := assignedIPs(t, h.takeOut())
	h.tunIn(packet(clientV4, v4[0], ippacket.ProtoTCP, 443, 2)) // held for the NAT
	// The gateway restarted: a new key in the next flow_created. The connection is replaced, everything
	// through it waits for the new one, and the NAT is set up again.
	g2 := g
	g2.key = node.Key{0xEE}
	h.tunIn(packet(clientV4, lan, ippacket.ProtoTCP, 443, 3))
	h.actions = nil
	h.portal(g2.flowCreated(rid(2)))
	if ups := actionsOf[tunnel.NodeUpsert](h.actions); len(ups) != 1 || ups[0].Params.RemoteKey != g2.key {
		t.Fatalf("upserts %+v", ups)
	}
	if st := h.c.Status(h.now); st.Gateways[0].State != "connecting" || st.Gateways[0].Buffered != 3 {
		t.Fatalf("gateway %+v, want connecting with 3 packets waiting", st.Gateways[0])
	}
	h.establish(g.id)
	out := h.takeOut()
	if got := assignedIPs(t, out); len(got) != 1 || got[0].Seq == as[0].Seq {
		t.Fatalf("NAT not set up again: %+v", got)
	}
	if d := dataOnly(out); len(d) != 1 || seqOf(d[0].pkt) != 3 {
		t.Fatalf("data %+v, want the CIDR packet (the DNS ones wait for the NAT)", d)
	}
}

func TestIPStackAndResourceChanges(t *testing.T) {
	r := dnsRes(rid(1), "*.corp.test")
	r.IPStack = portalapi.IPStackIPv4Only
	h := started(t, r)
	v4, v6 := h.resolve("a.corp.test")
	if len(v4) != 4 || len(v6) != 0 {
		t.Fatalf("ipv4_only: %v %v", v4, v6)
	}
	h.tunIn(packet(clientV4, v4[0], ippacket.ProtoTCP, 443, 1))
	connect(t, h, rid(1), gw(1))
	as := assignedIPs(t, h.takeOut())
	if len(as) != 1 || len(as[0].ProxyIPs) != 4 {
		t.Fatalf("AssignedIPs %+v, want the 4 IPv4 proxy IPs", as)
	}
	// Now dual stack: the resource's flow is dropped (its addressability changed), the name gets IPv6.
	r.IPStack = portalapi.IPStackDual
	h.actions = nil
	h.portal(portalapi.ResourceCreatedOrUpdated{Resource: r})
	if st := h.c.Status(h.now); st.Resources[0].Flow != "none" {
		t.Fatalf("flow %q after the ip_stack change", st.Resources[0].Flow)
	}
	v4b, v6b := h.resolve("a.corp.test")
	if !slices.Equal(v4, v4b) || len(v6b) != 4 {
		t.Fatalf("dual: %v %v", v4b, v6b)
	}
	// A rename keeps the flow.
	h.tunIn(packet(clientV4, v4[0], ippacket.ProtoTCP, 443, 2))
	h.portal(gw(1).flowCreated(rid(1)))
	r.Name = "renamed"
	h.portal(portalapi.ResourceCreatedOrUpdated{Resource: r})
	if st := h.c.Status(h.now); st.Resources[0].Flow != "up" || st.Resources[0].Name != "renamed" {
		t.Fatalf("after rename: %+v", st.Resources[0])
	}
	// Invalid resources are ignored.
	h.portal(portalapi.ResourceCreatedOrUpdated{Resource: cidrRes(rid(5), "not a prefix")})
	if len(h.c.Status(h.now).Resources) != 1 {
		t.Fatal("invalid resource accepted")
	}
}

func TestUpsertFailureOtherThanNoRelays(t *testing.T) {
	h := started(t, cidrRes(rid(1), "198.51.100.0/24"))
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 1))
	h.failUpsert = errors.New("wireguard peer: bad key")
	h.portal(gw(1).flowCreated(rid(1)))
	if h.reconnects != 0 {
		t.Fatal("portal reconnected for an error other than no relays")
	}
	tun := h.takeTUN()
	if len(tun) != 1 {
		t.Fatalf("%d answers", len(tun))
	}
	if typ, code, _ := icmpError(t, tun[0]); !isUnreachable(true, typ, code) {
		t.Fatalf("type %d code %d", typ, code)
	}
	// A failure report for an action that is no longer current is ignored.
	h.c.HandleActionFailed(tunnel.NodeUpsert{Params: gw(2).params()}, node.ErrNoRelays, h.now)
	h.run()
	if h.reconnects != 0 {
		t.Fatal("outdated failure acted upon")
	}
}

// A second ErrNoRelays within the reconnect interval (the relays the fresh init named refuse us too) must
// not turn into a create_flow loop: the flow waits FlowRetryInterval before it is requested again.
func TestNoRelaysTwiceDoesNotLoopCreateFlow(t *testing.T) {
	h := started(t, cidrRes(rid(1), "198.51.100.0/24"))
	g := gw(1)
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 1))
	h.failUpsert = node.ErrNoRelays
	h.portal(g.flowCreated(rid(1)))
	h.c.HandlePortalState(tunnel.PortalDisconnected, h.now)
	h.portal(initMsg(cidrRes(rid(1), "198.51.100.0/24")))
	before := len(h.pushes)
	h.failUpsert = node.ErrNoRelays
	h.portal(g.flowCreated(rid(1))) // fails again, within DefaultReconnectInterval: no reconnect
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 2))
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 3))
	if h.reconnects != 1 {
		t.Fatalf("%d reconnects, want 1", h.reconnects)
	}
	if got := h.createFlows(before); len(got) != 0 {
		t.Fatalf("create_flow pushed at once after the second ErrNoRelays: %v", got)
	}
	h.advance(DefaultFlowRetryInterval)
	h.c.HandleTimeout(h.now)
	h.run()
	if got := h.createFlows(before); !slices.Equal(got, []string{rid(1)}) {
		t.Fatalf("create_flow after the retry interval = %v, want one", got)
	}
	if st := h.c.Status(h.now); len(st.PendingFlows) != 1 || st.PendingFlows[0].Buffered != 3 {
		t.Fatalf("pending flows %+v, want one with 3 packets", st.PendingFlows)
	}
}

// A repeated init removes no relay, as Firezone's connlib (update_relays with nothing to remove): a restarted
// portal knows no relay until the relays register again, and a client that rejoins before them gets an init
// with fewer relays, or none. Dropping the missing ones would tear down working allocations (and the
// relayed connections on them) and make the node report no relays; relays_presence and the node's own
// liveness checks remove relays that are really gone.
func TestRepeatedInitKeepsRelaysItDoesNotName(t *testing.T) {
	h := newHarness(t, Config{})
	h.portal(initMsg(cidrRes(rid(1), "198.51.100.0/24")))
	h.c.HandlePortalState(tunnel.PortalDisconnected, h.now)
	h.c.HandlePortalState(tunnel.PortalJoined, h.now)
	h.actions = nil
	again := initMsg(cidrRes(rid(1), "198.51.100.0/24"))
	again.Relays = nil
	h.portal(again)
	for _, r := range actionsOf[tunnel.NodeRelays](h.actions) {
		if len(r.Remove) != 0 {
			t.Fatalf("init without relays removed %v", r.Remove)
		}
	}
	// The relay still counts as the client's: its address stays outside the tunnel under the Internet resource.
	h.actions = nil
	h.portal(portalapi.ResourceCreatedOrUpdated{Resource: internetRes(rid(2))})
	routes := actionsOf[SetRoutes](h.actions)
	if len(routes) == 0 || !slices.Contains(routes[len(routes)-1].Excludes, netip.MustParsePrefix("198.18.0.10/32")) {
		t.Fatalf("routes after the repeated init: %+v, want relay-1 excluded", routes)
	}
	// relays_presence still removes it.
	h.actions = nil
	h.portal(portalapi.RelaysPresence{DisconnectedIDs: []string{"relay-1"}})
	rels := actionsOf[tunnel.NodeRelays](h.actions)
	if len(rels) != 1 || !slices.Equal(rels[0].Remove, []string{"relay-1"}) {
		t.Fatalf("relays_presence: %+v", rels)
	}
}
