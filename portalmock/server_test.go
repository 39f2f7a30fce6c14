package portalmock

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/portalapi"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestClientInit(t *testing.T) {
	s := startServer(t, nil)
	pk := newKey(t)
	c := connectPeer(t, s, "client", DefaultClientToken1, pk)
	init := expectAs[portalapi.ClientInit](c, portalapi.EventInit)
	if got, want := init.Interface.IPv4, netip.MustParseAddr("100.64.0.1"); got != want {
		t.Errorf("ipv4 = %v, want %v", got, want)
	}
	if got, want := init.Interface.IPv6, netip.MustParseAddr("fd00:2021:1111::1"); got != want {
		t.Errorf("ipv6 = %v, want %v", got, want)
	}
	wantDNS := []portalapi.DNSServer{
		{Protocol: "ip_port", Address: netip.MustParseAddrPort("1.1.1.1:53")},
		{Protocol: "ip_port", Address: netip.MustParseAddrPort("[2606:4700:4700::1111]:53")},
	}
	if !slices.Equal(init.Interface.UpstreamDNS, wantDNS) {
		t.Errorf("upstream_dns = %v, want %v", init.Interface.UpstreamDNS, wantDNS)
	}
	var ids []string
	for _, r := range init.Resources {
		ids = append(ids, r.ID)
		if err := r.Validate(); err != nil {
			t.Errorf("resource %s: %v", r.ID, err)
		}
		if len(r.Sites) != 1 || r.Sites[0] != (portalapi.Site{ID: siteDev, Name: "dev-site"}) {
			t.Errorf("resource %s sites = %v", r.ID, r.Sites)
		}
	}
	if want := []string{resCIDR, resDNS, resHost, resInet, resDemo}; !slices.Equal(ids, want) {
		t.Errorf("resources = %v, want %v", ids, want)
	}
	dns := init.Resources[1]
	wantFilters := []portalapi.Filter{{Protocol: "tcp", PortRangeStart: 80, PortRangeEnd: 443}, {Protocol: "udp", PortRangeStart: 53, PortRangeEnd: 53}, {Protocol: "icmp"}}
	if dns.Type != portalapi.ResourceDNS || dns.Address != "**.lab.test" || !slices.Equal(dns.Filters, wantFilters) {
		t.Errorf("dns resource = %+v", dns)
	}
	if len(init.Relays) != 0 {
		t.Errorf("relays = %v, want none", init.Relays)
	}

	// client-2 has no policy for the internet resource.
	c2 := connectPeer(t, s, "client", DefaultClientToken2, newKey(t))
	init2 := expectAs[portalapi.ClientInit](c2, portalapi.EventInit)
	if len(init2.Resources) != 4 || init2.Interface.IPv4 != netip.MustParseAddr("100.64.0.2") {
		t.Errorf("client-2 init = %+v", init2)
	}
}

func TestGatewayInit(t *testing.T) {
	s := startServer(t, nil)
	connectRelay(t, s, "secret-1", "198.18.0.1", "2001:db8::1")
	pk := newKey(t)
	g := connectPeer(t, s, "gateway", DefaultGatewayToken1, pk)
	init := expectAs[portalapi.GatewayInit](g, portalapi.EventInit)
	if init.Interface.IPv4 != netip.MustParseAddr("100.64.0.3") || init.Interface.IPv6 != netip.MustParseAddr("fd00:2021:1111::3") {
		t.Errorf("interface = %+v", init.Interface)
	}
	if !init.Config.IPv4MasqueradeEnabled || !init.Config.IPv6MasqueradeEnabled || init.AccountSlug != "dev" {
		t.Errorf("init = %+v", init)
	}
	user, pass := portalapi.RelayCredentials("secret-1", pk, portalapi.GatewayRelayExpiry)
	id := portalapi.RelayID("secret-1")
	want := []portalapi.Relay{
		{ID: id, Type: "turn", Addr: netip.MustParseAddrPort("198.18.0.1:3478"), Username: user, Password: pass, ExpiresAt: 2145916800},
		{ID: id, Type: "turn", Addr: netip.MustParseAddrPort("[2001:db8::1]:3478"), Username: user, Password: pass, ExpiresAt: 2145916800},
	}
	if !slices.Equal(init.Relays, want) {
		t.Errorf("relays = %+v\nwant %+v", init.Relays, want)
	}
}

func TestRelayPresence(t *testing.T) {
	f := DefaultFile()
	f.Accounts[0].Clients[0].ExpiresAt = "2030-01-02T03:04:05Z"
	s := startServer(t, f)
	cpk, gpk := newKey(t), newKey(t)
	c := connectPeer(t, s, "client", DefaultClientToken1, cpk)
	expectAs[portalapi.ClientInit](c, portalapi.EventInit)
	g := connectPeer(t, s, "gateway", DefaultGatewayToken1, gpk)
	expectAs[portalapi.GatewayInit](g, portalapi.EventInit)

	clientExpiry := int64(1893553445) // 2030-01-02T03:04:05Z
	r1 := connectRelay(t, s, "secret-1", "198.18.0.1", "2001:db8::1")
	p := expectAs[portalapi.RelaysPresence](c, portalapi.EventRelaysPresence)
	if len(p.DisconnectedIDs) != 0 || len(p.Connected) != 2 {
		t.Fatalf("presence after first relay = %+v", p)
	}
	for _, r := range p.Connected {
		u, pw := portalapi.RelayCredentials("secret-1", cpk, unix(clientExpiry))
		if r.ID != portalapi.RelayID("secret-1") || r.Username != u || r.Password != pw || r.ExpiresAt != clientExpiry {
			t.Errorf("client relay = %+v, want user %s", r, u)
		}
	}
	gp := expectAs[portalapi.RelaysPresence](g, portalapi.EventRelaysPresence)
	if len(gp.Connected) != 2 || gp.Connected[0].ExpiresAt != 2145916800 {
		t.Errorf("gateway presence = %+v", gp)
	}

	r2 := connectRelay(t, s, "secret-2", "198.18.0.2", "")
	p = expectAs[portalapi.RelaysPresence](c, portalapi.EventRelaysPresence)
	if ids := relayIDsOf(p.Connected); !slices.Equal(ids, []string{portalapi.RelayID("secret-1"), portalapi.RelayID("secret-1"), portalapi.RelayID("secret-2")}) {
		t.Errorf("connected after second relay = %v", ids)
	}
	expectAs[portalapi.RelaysPresence](g, portalapi.EventRelaysPresence)

	// A third relay does not change anyone's first two: nothing is pushed.
	connectRelay(t, s, "secret-3", "198.18.0.3", "")
	c.sync()
	g.sync()

	// The first relay leaves: its id is disconnected, relay 3 takes its place.
	n := s.EventCount()
	r1.close()
	p = expectAs[portalapi.RelaysPresence](c, portalapi.EventRelaysPresence)
	if !slices.Equal(p.DisconnectedIDs, []string{portalapi.RelayID("secret-1")}) ||
		!slices.Equal(relayIDsOf(p.Connected), []string{portalapi.RelayID("secret-2"), portalapi.RelayID("secret-3")}) {
		t.Errorf("presence after leave = %+v", p)
	}
	expectAs[portalapi.RelaysPresence](g, portalapi.EventRelaysPresence)
	ctx, cancel := context.WithTimeout(t.Context(), waitTime)
	defer cancel()
	if _, err := s.WaitFrom(ctx, n, Is(EventRelayLeft, portalapi.RelayID("secret-1"))); err != nil {
		t.Fatal(err)
	}
	_ = r2
	if st := s.State(); len(st.Relays) != 2 {
		t.Errorf("state relays = %+v", st.Relays)
	}
}

func relayIDsOf(rs []portalapi.Relay) []string {
	var ids []string
	for _, r := range rs {
		ids = append(ids, r.ID)
	}
	return ids
}

// flowSetup joins client-1 and both gateways of the default config.
type flowSetup struct {
	s         *Server
	c, g1, g2 *peer
	cpk, g1pk string
	g2pk      string
}

func newFlowSetup(t *testing.T) *flowSetup {
	fs := &flowSetup{s: startServer(t, nil), cpk: newKey(t), g1pk: newKey(t), g2pk: newKey(t)}
	fs.c = connectPeer(t, fs.s, "client", DefaultClientToken1, fs.cpk)
	fs.c.expect(portalapi.EventInit)
	fs.g1 = connectPeer(t, fs.s, "gateway", DefaultGatewayToken1, fs.g1pk)
	fs.g1.expect(portalapi.EventInit)
	fs.g2 = connectPeer(t, fs.s, "gateway", DefaultGatewayToken2, fs.g2pk)
	fs.g2.expect(portalapi.EventInit)
	return fs
}

// flow runs create_flow → authorize_flow → flow_authorized → flow_created and checks both sides agree.
func flow(t *testing.T, c, g *peer, resource string, connected []string) (portalapi.AuthorizeFlow, portalapi.FlowCreated) {
	t.Helper()
	c.send(portalapi.TopicClient, portalapi.EventCreateFlow, portalapi.CreateFlow{ResourceID: resource, ConnectedGatewayIDs: connected})
	af := expectAs[portalapi.AuthorizeFlow](g, portalapi.EventAuthorizeFlow)
	g.send(portalapi.TopicGateway, portalapi.EventFlowAuthorized, portalapi.FlowAuthorized{Ref: af.Ref})
	fc := expectAs[portalapi.FlowCreated](c, portalapi.EventFlowCreated)
	if fc.ClientIceCredentials != af.ClientIceCredentials || fc.GatewayIceCredentials != af.GatewayIceCredentials ||
		fc.PresharedKey != af.Client.PresharedKey || fc.ResourceID != resource || af.Resource.ID != resource {
		t.Fatalf("flow_created %+v does not match authorize_flow %+v", fc, af)
	}
	return af, fc
}

func TestCreateFlow(t *testing.T) {
	fs := newFlowSetup(t)
	af, fc := flow(t, fs.c, fs.g1, resCIDR, nil)

	cp := portalapi.FlowPeer{ID: client1, PublicKey: fs.cpk}
	gp := portalapi.FlowPeer{ID: gateway1, PublicKey: fs.g1pk}
	wc, wg := portalapi.IceCredentialsFor(cp, gp)
	psk, err := portalapi.PresharedKey(cp, pskBaseOf(client1), gp, pskBaseOf(gateway1))
	if err != nil {
		t.Fatal(err)
	}
	if af.ClientIceCredentials != wc || af.GatewayIceCredentials != wg || af.Client.PresharedKey != psk {
		t.Errorf("authorize_flow creds %+v %+v %s, want %+v %+v %s", af.ClientIceCredentials, af.GatewayIceCredentials, af.Client.PresharedKey, wc, wg, psk)
	}
	if af.Client.ID != client1 || af.Client.PublicKey != fs.cpk || af.Client.IPv4 != netip.MustParseAddr("100.64.0.1") ||
		af.Client.IPv6 != netip.MustParseAddr("fd00:2021:1111::1") || af.ExpiresAt != 2145916800 {
		t.Errorf("authorize_flow client = %+v expires %d", af.Client, af.ExpiresAt)
	}
	if af.Resource.Sites != nil || af.Resource.Address != "198.51.100.0/24" || af.Resource.Type != portalapi.ResourceCIDR {
		t.Errorf("authorize_flow resource = %+v (want gateway view, no sites)", af.Resource)
	}
	if fc.GatewayID != gateway1 || fc.GatewayPublicKey != fs.g1pk || fc.SiteID != siteDev ||
		fc.GatewayIPv4 != netip.MustParseAddr("100.64.0.3") || fc.GatewayIPv6 != netip.MustParseAddr("fd00:2021:1111::3") {
		t.Errorf("flow_created = %+v", fc)
	}

	// The same pair gets the same credentials again (the client says it is connected to gateway-1).
	af2, fc2 := flow(t, fs.c, fs.g1, resDNS, []string{gateway1})
	if af2.ClientIceCredentials != af.ClientIceCredentials || af2.GatewayIceCredentials != af.GatewayIceCredentials ||
		af2.Client.PresharedKey != af.Client.PresharedKey || fc2.PresharedKey != fc.PresharedKey || af2.Ref == af.Ref {
		t.Errorf("second flow differs: %+v vs %+v", af2, af)
	}
	if af2.Resource.Address != "**.lab.test" || len(af2.Resource.Filters) != 3 {
		t.Errorf("dns resource on gateway = %+v", af2.Resource)
	}

	// Round robin: with no connected gateway, the next flow goes to gateway-2; with gateway-2 gone, to gateway-1.
	_, fc3 := flow(t, fs.c, fs.g2, resHost, nil)
	if fc3.GatewayID != gateway2 || fc3.GatewayPublicKey != fs.g2pk {
		t.Errorf("round robin picked %s", fc3.GatewayID)
	}
	n := fs.s.EventCount()
	fs.g2.close()
	ctx, cancel := context.WithTimeout(t.Context(), waitTime)
	defer cancel()
	if _, err := fs.s.WaitFrom(ctx, n, Is(EventGatewayLeft, gateway2)); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, fc := flow(t, fs.c, fs.g1, resHost, nil); fc.GatewayID != gateway1 {
			t.Errorf("offline gateway not skipped: %s", fc.GatewayID)
		}
	}
	if st := fs.s.State(); len(st.Flows) != 2 || st.Flows[0].GatewayID != gateway1 || len(st.Flows[0].ResourceIDs) != 3 {
		t.Errorf("state flows = %+v", st.Flows)
	}
}

func pskBaseOf(id string) []byte {
	b, _ := pskBase(id, "")
	return b
}

func TestKeyChangeGivesNewCredentials(t *testing.T) {
	fs := newFlowSetup(t)
	af1, _ := flow(t, fs.c, fs.g1, resCIDR, []string{gateway1})

	// The client resets: new key, new socket. The old socket is closed by the portal.
	newPK := newKey(t)
	c2 := connectPeer(t, fs.s, "client", DefaultClientToken1, newPK)
	c2.expect(portalapi.EventInit)
	af2, fc2 := flow(t, c2, fs.g1, resCIDR, []string{gateway1})
	if af2.ClientIceCredentials == af1.ClientIceCredentials || af2.GatewayIceCredentials == af1.GatewayIceCredentials ||
		af2.Client.PresharedKey == af1.Client.PresharedKey || af2.Client.PublicKey != newPK {
		t.Errorf("credentials did not change with the key: %+v vs %+v", af2, af1)
	}
	cp := portalapi.FlowPeer{ID: client1, PublicKey: newPK}
	gp := portalapi.FlowPeer{ID: gateway1, PublicKey: fs.g1pk}
	if wc, _ := portalapi.IceCredentialsFor(cp, gp); fc2.ClientIceCredentials != wc {
		t.Errorf("client creds %+v, want %+v", fc2.ClientIceCredentials, wc)
	}
	fs.c.expectClosed()
}

func TestFlowFailures(t *testing.T) {
	s := startServer(t, nil)
	c2 := connectPeer(t, s, "client", DefaultClientToken2, newKey(t))
	c2.expect(portalapi.EventInit)
	tests := []struct {
		resource string
		reason   portalapi.FailReason
	}{
		{"00000000-0000-4000-8000-00000000dead", portalapi.FailNotFound},
		{resInet, portalapi.FailForbidden}, // client-2 has no policy for it
		{resCIDR, portalapi.FailOffline},   // no gateway online
	}
	for _, tt := range tests {
		c2.send(portalapi.TopicClient, portalapi.EventCreateFlow, portalapi.CreateFlow{ResourceID: tt.resource})
		f := expectAs[portalapi.FlowCreationFailed](c2, portalapi.EventFlowCreationFailed)
		if f.ResourceID != tt.resource || f.Reason != tt.reason {
			t.Errorf("create_flow %s: got %+v, want reason %s", tt.resource, f, tt.reason)
		}
	}
}

func TestSignallingOnlyWithinFlow(t *testing.T) {
	fs := newFlowSetup(t)
	flow(t, fs.c, fs.g1, resCIDR, nil)
	other := connectPeer(t, fs.s, "client", DefaultClientToken2, newKey(t))
	other.expect(portalapi.EventInit)

	cands := []string{"candidate:1 1 udp 2130706431 198.18.0.5 52625 typ host"}
	fs.c.send(portalapi.TopicClient, portalapi.EventBroadcastIceCandidates, portalapi.BroadcastGatewayIceCandidates{GatewayIDs: []string{gateway1}, Candidates: cands})
	got := expectAs[portalapi.ClientIceCandidates](fs.g1, portalapi.EventIceCandidates)
	if got.ClientID != client1 || !slices.Equal(got.Candidates, cands) {
		t.Errorf("gateway got %+v", got)
	}
	fs.c.send(portalapi.TopicClient, portalapi.EventBroadcastInvalidatedIceCandidates, portalapi.BroadcastInvalidatedGatewayIceCandidates{GatewayIDs: []string{gateway1}, Candidates: cands})
	if inv := expectAs[portalapi.InvalidatedClientIceCandidates](fs.g1, portalapi.EventInvalidateIceCandidates); inv.ClientID != client1 {
		t.Errorf("gateway got %+v", inv)
	}
	fs.g1.send(portalapi.TopicGateway, portalapi.EventBroadcastIceCandidates, portalapi.BroadcastClientIceCandidates{ClientIDs: []string{client1}, Candidates: cands})
	if gc := expectAs[portalapi.GatewayIceCandidates](fs.c, portalapi.EventIceCandidates); gc.GatewayID != gateway1 || !slices.Equal(gc.Candidates, cands) {
		t.Errorf("client got %+v", gc)
	}
	fs.g1.send(portalapi.TopicGateway, portalapi.EventBroadcastInvalidatedIceCandidates, portalapi.BroadcastInvalidatedClientIceCandidates{ClientIDs: []string{client1}, Candidates: cands})
	if gc := expectAs[portalapi.InvalidatedGatewayIceCandidates](fs.c, portalapi.EventInvalidateIceCandidates); gc.GatewayID != gateway1 {
		t.Errorf("client got %+v", gc)
	}

	// A third party gets an error and nothing is forwarded; neither may a gateway signal a stranger.
	ref := other.send(portalapi.TopicClient, portalapi.EventBroadcastIceCandidates, portalapi.BroadcastGatewayIceCandidates{GatewayIDs: []string{gateway1}, Candidates: cands})
	other.expectErrorReason(ref, "not_found")
	ref = fs.c.send(portalapi.TopicClient, portalapi.EventBroadcastIceCandidates, portalapi.BroadcastGatewayIceCandidates{GatewayIDs: []string{gateway1, gateway2}, Candidates: cands})
	fs.c.expectErrorReason(ref, "not_found")
	ref = fs.g2.send(portalapi.TopicGateway, portalapi.EventBroadcastIceCandidates, portalapi.BroadcastClientIceCandidates{ClientIDs: []string{client1}, Candidates: cands})
	fs.g2.expectErrorReason(ref, "not_found")
	ref = fs.g1.send(portalapi.TopicGateway, portalapi.EventBroadcastIceCandidates, portalapi.BroadcastClientIceCandidates{ClientIDs: []string{client2}, Candidates: cands})
	fs.g1.expectErrorReason(ref, "not_found")
	ref = fs.g2.send(portalapi.TopicGateway, portalapi.EventFlowAuthorized, portalapi.FlowAuthorized{Ref: "flow-1"})
	fs.g2.expectErrorReason(ref, "not_found")
	fs.g1.sync()
	fs.g2.sync()
	fs.c.sync()
	other.sync()
}

func adminDo(t *testing.T, s *Server, method, path, token string, body any) *http.Response {
	t.Helper()
	var rd bytes.Buffer
	if body != nil {
		if err := json.NewEncoder(&rd).Encode(body); err != nil {
			t.Fatal(err)
		}
	}
	req, err := http.NewRequestWithContext(t.Context(), method, s.AdminURL()+path, &rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func TestAdminAPI(t *testing.T) {
	defer http.DefaultClient.CloseIdleConnections()
	fs := newFlowSetup(t)
	c2 := connectPeer(t, fs.s, "client", DefaultClientToken2, newKey(t))
	c2.expect(portalapi.EventInit)
	flow(t, fs.c, fs.g1, resCIDR, nil)

	if resp := adminDo(t, fs.s, "GET", "/v1/resources", "wrong", nil); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("wrong admin token: %d", resp.StatusCode)
	}
	const newRes = "2e50c000-0000-4000-8000-0000000000aa"
	rc := ResourceConfig{Type: "dns", Name: "new", Address: "*.new.test", Sites: []string{siteDev}}
	if resp := adminDo(t, fs.s, "PUT", "/v1/resources/"+newRes, DefaultAdminToken, rc); resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT resource: %d", resp.StatusCode)
	}
	// No policy yet: nobody hears about it. Then a policy for client-1 only.
	fs.c.sync()
	if resp := adminDo(t, fs.s, "PUT", "/v1/policies/p-new", DefaultAdminToken, PolicyConfig{Client: client1, Resource: newRes}); resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT policy: %d", resp.StatusCode)
	}
	r := expectAs[portalapi.ResourceCreatedOrUpdated](fs.c, portalapi.EventResourceCreatedOrUpdated)
	if r.ID != newRes || r.Address != "*.new.test" || len(r.Sites) != 1 {
		t.Errorf("pushed %+v", r)
	}
	c2.sync()

	// Change the flow's resource: clients see the update, the gateways get resource_updated.
	rc = ResourceConfig{Type: "cidr", Name: "lab network", Address: "198.51.100.0/25", Sites: []string{siteDev}}
	if resp := adminDo(t, fs.s, "PUT", "/v1/resources/"+resCIDR, DefaultAdminToken, rc); resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT resource: %d", resp.StatusCode)
	}
	for _, c := range []*peer{fs.c, c2} {
		if r := expectAs[portalapi.ResourceCreatedOrUpdated](c, portalapi.EventResourceCreatedOrUpdated); r.Address != "198.51.100.0/25" {
			t.Errorf("pushed %+v", r)
		}
	}
	// The site's other gateway too (it may hold an authorisation from before a portal restart, see
	// TestResourceUpdateReachesGatewaysAfterRestart).
	for _, g := range []*peer{fs.g1, fs.g2} {
		if ru := expectAs[portalapi.ResourceUpdated](g, portalapi.EventResourceUpdated); ru.Address != "198.51.100.0/25" || ru.Sites != nil {
			t.Errorf("gateway resource_updated %+v", ru)
		}
	}

	// Delete it: resource_deleted to both clients, reject_access to the gateway with the flow.
	if resp := adminDo(t, fs.s, "DELETE", "/v1/resources/"+resCIDR, DefaultAdminToken, nil); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE resource: %d", resp.StatusCode)
	}
	for _, c := range []*peer{fs.c, c2} {
		if d := expectAs[portalapi.ResourceDeleted](c, portalapi.EventResourceDeleted); string(d) != resCIDR {
			t.Errorf("deleted %q", d)
		}
	}
	if ra := expectAs[portalapi.RejectAccess](fs.g1, portalapi.EventRejectAccess); ra != (portalapi.RejectAccess{ClientID: client1, ResourceID: resCIDR}) {
		t.Errorf("reject_access %+v", ra)
	}
	// Every other online gateway of the site is told too, for every client that lost the resource: it
	// may hold an authorisation from before a portal restart (see TestRevokeReachesGatewaysAfterRestart).
	for _, want := range []struct {
		g      *peer
		client string
	}{{fs.g1, client2}, {fs.g2, client1}, {fs.g2, client2}} {
		if ra := expectAs[portalapi.RejectAccess](want.g, portalapi.EventRejectAccess); ra != (portalapi.RejectAccess{ClientID: want.client, ResourceID: resCIDR}) {
			t.Errorf("reject_access %+v, want for %s", ra, want.client)
		}
	}
	fs.g1.sync()
	fs.g2.sync()
	// The flow is gone, so is signalling.
	ref := fs.c.send(portalapi.TopicClient, portalapi.EventBroadcastIceCandidates, portalapi.BroadcastGatewayIceCandidates{GatewayIDs: []string{gateway1}, Candidates: []string{"x"}})
	fs.c.expectErrorReason(ref, "not_found")

	// Policy removal revokes.
	if resp := adminDo(t, fs.s, "DELETE", "/v1/policies/p-new", DefaultAdminToken, nil); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE policy: %d", resp.StatusCode)
	}
	if d := expectAs[portalapi.ResourceDeleted](fs.c, portalapi.EventResourceDeleted); string(d) != newRes {
		t.Errorf("deleted %q", d)
	}
	for _, tc := range []struct {
		method, path string
		body         any
		status       int
	}{
		{"DELETE", "/v1/policies/p-new", nil, http.StatusNotFound},
		{"PUT", "/v1/resources/x", ResourceConfig{Type: "cidr", Address: "nope", Sites: []string{siteDev}}, http.StatusBadRequest},
		{"PUT", "/v1/resources/x", ResourceConfig{Type: "cidr", Address: "192.0.2.0/24", Sites: []string{"no-site"}}, http.StatusBadRequest},
		{"PUT", "/v1/policies/x", PolicyConfig{Client: "*", Resource: "missing"}, http.StatusBadRequest},
		{"PUT", "/v1/policies/x", map[string]string{"bogus": "1"}, http.StatusBadRequest},
	} {
		if resp := adminDo(t, fs.s, tc.method, tc.path, DefaultAdminToken, tc.body); resp.StatusCode != tc.status {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, resp.StatusCode, tc.status)
		}
	}
	var list []ResourceConfig
	if err := json.NewDecoder(adminDo(t, fs.s, "GET", "/v1/resources", DefaultAdminToken, nil).Body).Decode(&list); err != nil || len(list) != 5 {
		t.Errorf("GET resources: %d, %v", len(list), err)
	}
	var st State
	if err := json.NewDecoder(adminDo(t, fs.s, "GET", "/v1/state", DefaultAdminToken, nil).Body).Decode(&st); err != nil || len(st.Flows) != 0 || !st.Clients[0].Online {
		t.Errorf("GET state: %+v, %v", st, err)
	}
}

func TestBadTokenIs401(t *testing.T) {
	s := startServer(t, nil)
	pk := url.Values{"public_key": {newKey(t)}}
	for _, tc := range []struct {
		path, token string
		q           url.Values
	}{
		{"/client/websocket", "", pk},
		{"/client/websocket", "nope", pk},
		{"/gateway/websocket", DefaultClientToken1, pk},                                    // a client token on the gateway endpoint
		{"/relay/websocket", DefaultGatewayToken1, relayURLValues("198.18.0.1", "", 3478)}, // and a gateway token on the relay's
	} {
		_, resp, err := dial(t, s, tc.path, tc.token, tc.q)
		if err == nil || statusOf(resp, err) != http.StatusUnauthorized {
			t.Errorf("%s with token %q: err %v, status %d; want 401", tc.path, tc.token, err, statusOf(resp, err))
		}
	}
	// Query-parameter token and the v2 path alias work.
	q := url.Values{"public_key": {newKey(t)}, "token": {DefaultClientToken1}}
	if _, _, err := dial(t, s, "/client/v2/websocket", "", q); err != nil {
		t.Errorf("token query parameter: %v", err)
	}
	// A bad public key is a 400.
	_, resp, err := dial(t, s, "/client/websocket", DefaultClientToken1, url.Values{"public_key": {"short"}})
	if err == nil || statusOf(resp, err) != http.StatusBadRequest {
		t.Errorf("bad public key: %v", err)
	}
}

func TestBadInputKeepsSocket(t *testing.T) {
	fs := newFlowSetup(t)
	c := fs.c
	c.sendRaw([]byte(`{{{ not json`))
	m := c.next()
	if m.Event != phoenix.EventReply || m.Topic != phoenix.TopicPhoenix || !bytes.Contains(m.Payload, []byte(`"error"`)) {
		t.Errorf("garbage frame: %s/%s %s", m.Topic, m.Event, m.Payload)
	}
	c.sendRaw([]byte(`{"topic":"client","event":"create_flow","payload":{"resource_id":5},"ref":41}`))
	c.expectErrorReason(phoenix.IntRef(41), "malformed payload")
	c.sendRaw([]byte(`{"topic":"client","ref":42}`))
	c.expectErrorReason(phoenix.IntRef(42), "malformed frame")
	ref := c.send(portalapi.TopicGateway, portalapi.EventCreateFlow, portalapi.CreateFlow{ResourceID: resCIDR})
	c.expectErrorReason(ref, "unmatched topic")
	ref = c.send("room:lobby", phoenix.EventJoin, nil)
	c.expectErrorReason(ref, "unmatched topic")
	ref = c.send(portalapi.TopicClient, "set_snownet_capabilities", map[string]bool{"iceless": true}) // unknown: ignored
	fs.g1.sync()
	fs.g2.sync()
	c.sync()
	_ = ref

	// A relay with an empty stamp secret is refused and stays unjoined.
	r, _, err := dial(t, fs.s, "/relay/websocket", DefaultRelayToken, relayURLValues("198.18.0.9", "", 3478))
	if err != nil {
		t.Fatal(err)
	}
	r.topic = portalapi.TopicRelay
	ref = r.send(portalapi.TopicRelay, phoenix.EventJoin, map[string]string{})
	r.expectErrorReason(ref, "invalid stamp_secret")
	r.sync()

	// Nothing changed: the flow still works over the same socket.
	flow(t, c, fs.g1, resCIDR, nil)
}

func TestV2Serializer(t *testing.T) {
	s := startServer(t, nil)
	q := url.Values{"vsn": {"2.0.0"}, "public_key": {newKey(t)}}
	p, _, err := dial(t, s, "/client/websocket", DefaultClientToken1, q)
	if err != nil {
		t.Fatal(err)
	}
	p.topic = portalapi.TopicClient
	p.sendRaw([]byte(`["3","3","client","phx_join",{}]`))
	p.expectReply(phoenix.Ref{Value: "3"}, phoenix.StatusOK)
	m := p.expect(portalapi.EventInit)
	if m.JoinRef != (phoenix.Ref{Value: "3"}) {
		t.Errorf("init join_ref = %+v, want the join's", m.JoinRef)
	}
	p.sendRaw([]byte(`[null,"4","phoenix","heartbeat",{}]`))
	p.expectReply(phoenix.Ref{Value: "4"}, phoenix.StatusOK)
}

func unix(sec int64) time.Time { return time.Unix(sec, 0) }

func TestExpiredClientTokenIs401(t *testing.T) {
	f := DefaultFile()
	f.Accounts[0].Clients[1].ExpiresAt = "2020-01-01T00:00:00Z"
	s := startServer(t, f)
	_, resp, err := dial(t, s, "/client/websocket", DefaultClientToken2, url.Values{"public_key": {newKey(t)}})
	if err == nil || statusOf(resp, err) != http.StatusUnauthorized {
		t.Errorf("expired token: err %v status %d, want 401", err, statusOf(resp, err))
	}
}

func TestPendingAuthorizationsBounded(t *testing.T) {
	fs := newFlowSetup(t)
	for range maxPendingPerClient + 10 {
		fs.c.send(portalapi.TopicClient, portalapi.EventCreateFlow, portalapi.CreateFlow{ResourceID: resCIDR, ConnectedGatewayIDs: []string{gateway1}})
	}
	var refs []string
	for range maxPendingPerClient + 10 {
		refs = append(refs, expectAs[portalapi.AuthorizeFlow](fs.g1, portalapi.EventAuthorizeFlow).Ref)
	}
	fs.s.mu.Lock()
	n := len(fs.s.core.pending)
	fs.s.mu.Unlock()
	if n != maxPendingPerClient {
		t.Errorf("%d pending, want %d", n, maxPendingPerClient)
	}
	// The oldest was evicted: its late answer is refused; the newest still works.
	ref := fs.g1.send(portalapi.TopicGateway, portalapi.EventFlowAuthorized, portalapi.FlowAuthorized{Ref: refs[0]})
	fs.g1.expectErrorReason(ref, "not_found")
	fs.g1.send(portalapi.TopicGateway, portalapi.EventFlowAuthorized, portalapi.FlowAuthorized{Ref: refs[len(refs)-1]})
	expectAs[portalapi.FlowCreated](fs.c, portalapi.EventFlowCreated)
}
