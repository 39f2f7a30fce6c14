package portalmock

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/netip"
	"slices"
	"testing"

	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/portalapi"
)

// legacySetup runs the default configuration with client-2 on the old gateway protocol; client-1, client-2
// and gateway-1 are joined.
type legacySetup struct {
	s          *Server
	c1, c2, g  *peer
	c2pk, gpk  string
	c2creds    portalapi.IceCredentials // client-2's derived ICE credentials towards gateway-1
	psk        string
	gatewayICE portalapi.IceCredentials // what gateway-1 answers in connection_ready
}

func newLegacySetup(t *testing.T) *legacySetup {
	t.Helper()
	f := DefaultFile()
	f.Accounts[0].Clients[1].LegacyGatewayProtocol = true
	ls := &legacySetup{s: startServer(t, f), c2pk: newKey(t), gpk: newKey(t),
		gatewayICE: portalapi.IceCredentials{Username: "gwuf", Password: "gateway-own-password-1"}}
	ls.c1 = connectPeer(t, ls.s, "client", DefaultClientToken1, newKey(t))
	ls.c1.expect(portalapi.EventInit)
	ls.c2 = connectPeer(t, ls.s, "client", DefaultClientToken2, ls.c2pk)
	ls.c2.expect(portalapi.EventInit)
	ls.g = connectPeer(t, ls.s, "gateway", DefaultGatewayToken1, ls.gpk)
	ls.g.expect(portalapi.EventInit)
	ls.c2creds, ls.psk = derived(t, client2, ls.c2pk, gateway1, ls.gpk)
	return ls
}

// derived returns the client's ICE credentials and the PSK of a pair.
func derived(t *testing.T, cid, cpk, gid, gpk string) (portalapi.IceCredentials, string) {
	t.Helper()
	cp, gp := portalapi.FlowPeer{ID: cid, PublicKey: cpk}, portalapi.FlowPeer{ID: gid, PublicKey: gpk}
	cc, _ := portalapi.IceCredentialsFor(cp, gp)
	psk, err := portalapi.PresharedKey(cp, pskBaseOf(cid), gp, pskBaseOf(gid))
	if err != nil {
		t.Fatal(err)
	}
	return cc, psk
}

// expectRequestConnection reads request_connection and checks it describes client-2 with its current key.
func (ls *legacySetup) expectRequestConnection(t *testing.T, resource string) portalapi.RequestConnection {
	t.Helper()
	raw := ls.g.expect(portalapi.EventRequestConnection)
	if !bytes.Contains(raw.Payload, []byte(`"domain":null`)) {
		t.Errorf("request_connection without domain null: %s", raw.Payload)
	}
	m, err := portalapi.DecodeGatewayIngress(raw.Event, raw.Payload)
	if err != nil {
		t.Fatal(err)
	}
	rc := m.(portalapi.RequestConnection)
	want := portalapi.RequestClient{
		ID:      client2,
		Payload: portalapi.ClientPayload{IceParameters: ls.c2creds},
		Peer: portalapi.Peer{PublicKey: ls.c2pk, PresharedKey: ls.psk,
			IPv4: netip.MustParseAddr("100.64.0.2"), IPv6: netip.MustParseAddr("fd00:2021:1111::2")},
	}
	if rc.Client != want || rc.Resource.ID != resource || rc.Resource.Sites != nil || rc.Ref == "" || rc.ExpiresAt != 2145916800 {
		t.Fatalf("request_connection = %+v\nwant client %+v, resource %s (gateway view)", rc, want, resource)
	}
	return rc
}

func (ls *legacySetup) expectFlowCreated(t *testing.T, resource string) portalapi.FlowCreated {
	t.Helper()
	fc := expectAs[portalapi.FlowCreated](ls.c2, portalapi.EventFlowCreated)
	if fc.ResourceID != resource || fc.GatewayID != gateway1 || fc.GatewayPublicKey != ls.gpk || fc.PresharedKey != ls.psk ||
		fc.ClientIceCredentials != ls.c2creds || fc.GatewayIceCredentials != ls.gatewayICE {
		t.Fatalf("flow_created = %+v\nwant client creds %+v, gateway creds %+v from connection_ready", fc, ls.c2creds, ls.gatewayICE)
	}
	return fc
}

func (ls *legacySetup) connectionReady(ref string, accepted *portalapi.ConnectionAccepted) phoenix.Ref {
	return ls.g.send(portalapi.TopicGateway, portalapi.EventConnectionReady, portalapi.ConnectionReady{
		Ref: ref, GatewayPayload: portalapi.GatewayResponse{ConnectionAccepted: accepted}})
}

func TestLegacyGatewayProtocol(t *testing.T) {
	ls := newLegacySetup(t)
	rc := ls.expectRequestConnection(t, flowOn(ls, resCIDR))

	// Candidates are relayed while the connection is being set up, both ways.
	cands := []string{"candidate:1 1 udp 2130706431 198.18.0.5 52625 typ host"}
	ls.c2.send(portalapi.TopicClient, portalapi.EventBroadcastIceCandidates, portalapi.BroadcastGatewayIceCandidates{GatewayIDs: []string{gateway1}, Candidates: cands})
	if got := expectAs[portalapi.ClientIceCandidates](ls.g, portalapi.EventIceCandidates); got.ClientID != client2 || !slices.Equal(got.Candidates, cands) {
		t.Errorf("gateway got %+v", got)
	}
	ls.g.send(portalapi.TopicGateway, portalapi.EventBroadcastIceCandidates, portalapi.BroadcastClientIceCandidates{ClientIDs: []string{client2}, Candidates: cands})
	if got := expectAs[portalapi.GatewayIceCandidates](ls.c2, portalapi.EventIceCandidates); got.GatewayID != gateway1 {
		t.Errorf("client got %+v", got)
	}

	// Answers that do not fit: error replies, the socket stays, the request still waits.
	ref := ls.g.send(portalapi.TopicGateway, portalapi.EventFlowAuthorized, portalapi.FlowAuthorized{Ref: rc.Ref})
	ls.g.expectErrorReason(ref, reasonNotFound)
	ref = ls.connectionReady("flow-999", &portalapi.ConnectionAccepted{IceParameters: ls.gatewayICE})
	ls.g.expectErrorReason(ref, reasonNotFound)
	ref = ls.connectionReady(rc.Ref, nil)
	ls.g.expectErrorReason(ref, reasonMalformed)
	ref = ls.connectionReady(rc.Ref, &portalapi.ConnectionAccepted{IceParameters: portalapi.IceCredentials{Username: "u"}})
	ls.g.expectErrorReason(ref, reasonMalformed)
	ls.g.sendRaw([]byte(`{"topic":"gateway","event":"connection_ready","payload":{"ref":7},"ref":77}`))
	ls.g.expectErrorReason(phoenix.IntRef(77), reasonMalformed)
	ls.c2.sync()

	n := ls.s.EventCount()
	ls.connectionReady(rc.Ref, &portalapi.ConnectionAccepted{IceParameters: ls.gatewayICE})
	ls.expectFlowCreated(t, resCIDR)
	waitEvent(t, ls.s, n, EventFlowAuthorized, client2)
	// The same ref again: it was answered.
	ref = ls.connectionReady(rc.Ref, &portalapi.ConnectionAccepted{IceParameters: ls.gatewayICE})
	ls.g.expectErrorReason(ref, reasonNotFound)

	// The pair has a connection now: allow_access, no answer expected, flow_created at once.
	ls.c2.send(portalapi.TopicClient, portalapi.EventCreateFlow, portalapi.CreateFlow{ResourceID: resDNS, ConnectedGatewayIDs: []string{gateway1}})
	aa := expectAs[portalapi.AllowAccess](ls.g, portalapi.EventAllowAccess)
	if aa.ClientID != client2 || aa.Resource.ID != resDNS || aa.Resource.Address != "**.lab.test" || aa.Resource.Sites != nil || aa.Ref == "" ||
		aa.ExpiresAt != 2145916800 || aa.ClientIPv4 != netip.MustParseAddr("100.64.0.2") || aa.ClientIPv6 != netip.MustParseAddr("fd00:2021:1111::2") || aa.Payload != nil {
		t.Errorf("allow_access = %+v", aa)
	}
	ls.expectFlowCreated(t, resDNS)
	ref = ls.connectionReady(aa.Ref, &portalapi.ConnectionAccepted{IceParameters: ls.gatewayICE})
	ls.g.expectErrorReason(ref, reasonNotFound)
	if st := ls.s.State(); len(st.Flows) != 1 || !slices.Equal(st.Flows[0].ResourceIDs, []string{resCIDR, resDNS}) {
		t.Errorf("state flows %+v", st.Flows)
	}

	// client-1 is not on the old protocol: authorize_flow as usual, to the same gateway.
	flow(t, ls.c1, ls.g, resCIDR, []string{gateway1})

	// client-2 resets (new key, new socket): no connection under the new key, request_connection again.
	ls.c2pk = newKey(t)
	ls.c2 = connectPeer(t, ls.s, "client", DefaultClientToken2, ls.c2pk)
	ls.c2.expect(portalapi.EventInit)
	ls.c2creds, ls.psk = derived(t, client2, ls.c2pk, gateway1, ls.gpk)
	rc = ls.expectRequestConnection(t, flowOn(ls, resHost))
	ls.gatewayICE = portalapi.IceCredentials{Username: "gwu2", Password: "gateway-own-password-2"}
	ls.connectionReady(rc.Ref, &portalapi.ConnectionAccepted{IceParameters: ls.gatewayICE})
	ls.expectFlowCreated(t, resHost)

	// The gateway restarts (new key): request_connection again.
	ls.gpk = newKey(t)
	ls.g = connectPeer(t, ls.s, "gateway", DefaultGatewayToken1, ls.gpk)
	ls.g.expect(portalapi.EventInit)
	ls.c2creds, ls.psk = derived(t, client2, ls.c2pk, gateway1, ls.gpk)
	ls.expectRequestConnection(t, flowOn(ls, resCIDR))
}

// flowOn sends client-2's create_flow for resource (connected to gateway-1) and returns the resource.
func flowOn(ls *legacySetup, resource string) string {
	ls.c2.send(portalapi.TopicClient, portalapi.EventCreateFlow, portalapi.CreateFlow{ResourceID: resource, ConnectedGatewayIDs: []string{gateway1}})
	return resource
}

// A request_connection waiting for its answer fails like an authorization when the gateway goes away.
func TestLegacyPendingFailsWhenGatewayLeaves(t *testing.T) {
	ls := newLegacySetup(t)
	ls.expectRequestConnection(t, flowOn(ls, resCIDR))
	ls.g.leave()
	if f := expectAs[portalapi.FlowCreationFailed](ls.c2, portalapi.EventFlowCreationFailed); f.Reason != portalapi.FailOffline || f.ResourceID != resCIDR {
		t.Errorf("flow failure %+v", f)
	}
}

func TestReportConnections(t *testing.T) {
	defer http.DefaultClient.CloseIdleConnections()
	fs := newFlowSetup(t)
	report := portalapi.ReportConnections{Connections: []portalapi.ConnectionReport{
		{PeerID: gateway1, Path: portalapi.PathRelay, RelayID: "r1", Local: netip.MustParseAddrPort("198.18.0.10:52625"),
			Remote: netip.MustParseAddrPort("198.18.0.1:49152"), RTTMillis: 12.5, RxBytes: 100, TxBytes: 200},
		{PeerID: gateway2, Path: portalapi.PathNone, Idle: true},
	}}
	n := fs.s.EventCount()
	fs.c.send(portalapi.TopicClient, portalapi.EventReportConnections, report)
	waitEvent(t, fs.s, n, EventConnectionsReported, client1)
	if e, _ := fs.s.WaitFrom(t.Context(), n, Is(EventConnectionsReported, client1)); e.Detail != "2" {
		t.Errorf("event detail %q, want the count 2", e.Detail)
	}
	st := fs.s.State()
	if !slices.Equal(st.Clients[0].Connections, report.Connections) || len(st.Clients[1].Connections) != 0 || st.Clients[1].Connections == nil {
		t.Errorf("state clients %+v", st.Clients)
	}
	gr := portalapi.ReportConnections{Connections: []portalapi.ConnectionReport{{PeerID: client1, Path: portalapi.PathHost,
		Local: netip.MustParseAddrPort("[2001:db8::1]:52625"), Remote: netip.MustParseAddrPort("[2001:db8::2]:52625"), RTTMillis: 0.3}}}
	n = fs.s.EventCount()
	fs.g1.send(portalapi.TopicGateway, portalapi.EventReportConnections, gr)
	waitEvent(t, fs.s, n, EventConnectionsReported, gateway1)

	// The admin API shows both, in the documented JSON.
	var raw struct {
		Clients  []struct{ Connections []map[string]any } `json:"clients"`
		Gateways []struct{ Connections []map[string]any } `json:"gateways"`
	}
	if err := json.NewDecoder(adminDo(t, fs.s, "GET", "/v1/state", DefaultAdminToken, nil).Body).Decode(&raw); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"peer_id": gateway1, "path": "relay", "relay_id": "r1", "local": "198.18.0.10:52625",
		"remote": "198.18.0.1:49152", "rtt_ms": 12.5, "rx_bytes": 100.0, "tx_bytes": 200.0, "idle": false}
	if len(raw.Clients[0].Connections) != 2 || !mapsEqual(raw.Clients[0].Connections[0], want) {
		t.Errorf("GET /v1/state client connections %v\nwant first %v", raw.Clients[0].Connections, want)
	}
	if len(raw.Gateways[0].Connections) != 1 || raw.Gateways[0].Connections[0]["path"] != "host" || raw.Gateways[1].Connections == nil {
		t.Errorf("GET /v1/state gateway connections %+v", raw.Gateways)
	}

	// Bad reports: an error reply, nothing stored, the socket stays.
	ref := fs.c.send(portalapi.TopicClient, portalapi.EventReportConnections, map[string]any{"connections": []map[string]any{{"peer_id": gateway1, "path": "smoke_signals"}}})
	fs.c.expectErrorReason(ref, reasonMalformed)
	ref = fs.c.send(portalapi.TopicClient, portalapi.EventReportConnections, portalapi.ReportConnections{Connections: []portalapi.ConnectionReport{{PeerID: client2, Path: portalapi.PathHost}}})
	fs.c.expectErrorReason(ref, reasonNotFound) // a client, not a gateway
	ref = fs.g1.send(portalapi.TopicGateway, portalapi.EventReportConnections, portalapi.ReportConnections{Connections: []portalapi.ConnectionReport{{PeerID: "nobody", Path: portalapi.PathHost}}})
	fs.g1.expectErrorReason(ref, reasonNotFound)
	ref = fs.c.send(portalapi.TopicClient, portalapi.EventReportConnections, "nope")
	fs.c.expectErrorReason(ref, reasonMalformed)
	if st := fs.s.State(); !slices.Equal(st.Clients[0].Connections, report.Connections) || len(st.Gateways[0].Connections) != 1 {
		t.Errorf("a bad report changed the state: %+v", st)
	}

	// Each report replaces the last; leaving clears it.
	n = fs.s.EventCount()
	fs.c.send(portalapi.TopicClient, portalapi.EventReportConnections, portalapi.ReportConnections{})
	waitEvent(t, fs.s, n, EventConnectionsReported, client1)
	if st := fs.s.State(); st.Clients[0].Connections == nil || len(st.Clients[0].Connections) != 0 {
		t.Errorf("empty report: %+v", st.Clients[0])
	}
	fs.g1.leave()
	if st := fs.s.State(); len(st.Gateways[0].Connections) != 0 {
		t.Errorf("gateway left, connections %+v", st.Gateways[0].Connections)
	}
}

func mapsEqual(a, b map[string]any) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
