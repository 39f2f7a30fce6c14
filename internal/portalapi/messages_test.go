package portalapi

import (
	"encoding/json"
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestDecodeClientInit(t *testing.T) {
	payload := `{
	  "interface": {"ipv4":"100.64.0.1","ipv6":"fd00:2021:1111::1",
	    "upstream_dns":[{"protocol":"ip_port","address":"1.1.1.1:53"}], "future_field": 1},
	  "resources": [
	    {"type":"dns","id":"r1","name":"web","address":"**.example.com","ip_stack":"ipv4_only",
	     "sites":[{"id":"s1","name":"HQ"}],
	     "filters":[{"protocol":"tcp","port_range_start":80,"port_range_end":443},{"protocol":"udp"},{"protocol":"icmp"}]},
	    {"type":"cidr","id":"r2","name":"net","address":"198.51.100.0/24","sites":[{"id":"s1","name":"HQ"}]},
	    {"type":"internet","id":"r3","sites":[{"id":"s1","name":"HQ"}]},
	    {"type":"static_device_pool","id":"r4","devices":[]}
	  ],
	  "relays": [{"id":"rl","type":"turn","addr":"198.18.0.1:3478","username":"1:x","password":"p","expires_at":1}],
	  "authorizations": []
	}`
	m, err := DecodeClientIngress(EventInit, json.RawMessage(payload))
	if err != nil {
		t.Fatal(err)
	}
	want := ClientInit{
		Interface: Interface{
			IPv4: netip.MustParseAddr("100.64.0.1"), IPv6: netip.MustParseAddr("fd00:2021:1111::1"),
			UpstreamDNS: []DNSServer{{Protocol: "ip_port", Address: netip.MustParseAddrPort("1.1.1.1:53")}},
		},
		Resources: []Resource{
			{Type: ResourceDNS, ID: "r1", Name: "web", Address: "**.example.com", IPStack: IPStackIPv4Only,
				Sites:   []Site{{ID: "s1", Name: "HQ"}},
				Filters: []Filter{{ProtocolTCP, 80, 443}, {ProtocolUDP, 0, 65535}, {Protocol: ProtocolICMP}}},
			{Type: ResourceCIDR, ID: "r2", Name: "net", Address: "198.51.100.0/24", Sites: []Site{{ID: "s1", Name: "HQ"}}},
			{Type: ResourceInternet, ID: "r3", Sites: []Site{{ID: "s1", Name: "HQ"}}},
		},
		Relays:           []Relay{{ID: "rl", Type: "turn", Addr: netip.MustParseAddrPort("198.18.0.1:3478"), Username: "1:x", Password: "p", ExpiresAt: 1}},
		IgnoredResources: []string{"static_device_pool"},
	}
	if diff := cmp.Diff(Message(want), m, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
		cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("init (-want +got):\n%s", diff)
	}
	for _, r := range want.Resources {
		if err := r.Validate(); err != nil {
			t.Errorf("Validate(%s): %v", r.ID, err)
		}
	}
}

func TestDecodeTable(t *testing.T) {
	tests := []struct {
		name    string
		decode  func(string, json.RawMessage) (Message, error)
		event   string
		payload string
		want    Message
		wantErr bool
	}{
		{"resource deleted", DecodeClientIngress, EventResourceDeleted, `"r1"`, ResourceDeleted("r1"), false},
		{"unknown event", DecodeClientIngress, "client_device_access_granted", `{}`, Unknown{Name: "client_device_access_granted", Reason: "unknown event"}, false},
		{"unknown resource type", DecodeClientIngress, EventResourceCreatedOrUpdated, `{"type":"device_pool","id":"x"}`,
			Unknown{Name: EventResourceCreatedOrUpdated, Reason: `unknown resource type "device_pool"`}, false},
		{"flow failed", DecodeClientIngress, EventFlowCreationFailed, `{"resource_id":"r","reason":"offline","x":[1]}`,
			FlowCreationFailed{ResourceID: "r", Reason: FailOffline}, false},
		{"create flow", DecodeClientEgress, EventCreateFlow, `{"resource_id":"r","connected_gateway_ids":["g"]}`,
			CreateFlow{ResourceID: "r", ConnectedGatewayIDs: []string{"g"}}, false},
		{"broadcast", DecodeClientEgress, EventBroadcastIceCandidates, `{"gateway_ids":["g"],"candidates":["candidate:1 1 udp 1 198.18.0.1 1 typ host"]}`,
			BroadcastGatewayIceCandidates{GatewayIDs: []string{"g"}, Candidates: []string{"candidate:1 1 udp 1 198.18.0.1 1 typ host"}}, false},
		{"flow authorized", DecodeGatewayEgress, EventFlowAuthorized, `{"ref":"abc"}`, FlowAuthorized{Ref: "abc"}, false},
		{"gateway broadcast invalidated", DecodeGatewayEgress, EventBroadcastInvalidatedIceCandidates, `{"client_ids":["c"],"candidates":[]}`,
			BroadcastInvalidatedClientIceCandidates{ClientIDs: []string{"c"}, Candidates: []string{}}, false},
		{"reject access", DecodeGatewayIngress, EventRejectAccess, `{"client_id":"c","resource_id":"r"}`, RejectAccess{ClientID: "c", ResourceID: "r"}, false},
		{"relay init", DecodeRelayIngress, EventInit, `{}`, RelayInit{}, false},
		{"report connections", DecodeClientEgress, EventReportConnections,
			`{"connections":[{"peer_id":"g","path":"relay","relay_id":"r","local":"198.18.0.1:52625","remote":"198.18.0.2:49152","rtt_ms":12.5,"rx_bytes":10,"tx_bytes":20,"idle":false},{"peer_id":"g2","path":"none","relay_id":"","local":"","remote":"","rtt_ms":0,"rx_bytes":0,"tx_bytes":0,"idle":true}]}`,
			ReportConnections{Connections: []ConnectionReport{
				{PeerID: "g", Path: PathRelay, RelayID: "r", Local: netip.MustParseAddrPort("198.18.0.1:52625"), Remote: netip.MustParseAddrPort("198.18.0.2:49152"), RTTMillis: 12.5, RxBytes: 10, TxBytes: 20},
				{PeerID: "g2", Path: PathNone, Idle: true},
			}}, false},
		{"gateway report connections", DecodeGatewayEgress, EventReportConnections, `{"connections":[{"peer_id":"c","path":"host","local":"[2001:db8::1]:52625","remote":"[2001:db8::2]:52625"}]}`,
			ReportConnections{Connections: []ConnectionReport{{PeerID: "c", Path: PathHost, Local: netip.MustParseAddrPort("[2001:db8::1]:52625"), Remote: netip.MustParseAddrPort("[2001:db8::2]:52625")}}}, false},
		{"empty report", DecodeGatewayEgress, EventReportConnections, `{"connections":[]}`, ReportConnections{Connections: []ConnectionReport{}}, false},
		{"report unknown path", DecodeClientEgress, EventReportConnections, `{"connections":[{"peer_id":"g","path":"carrier_pigeon"}]}`, nil, true},
		// A relay path through the peer's relay only: the reporter does not know which relay it is.
		{"report relay without id", DecodeClientEgress, EventReportConnections, `{"connections":[{"peer_id":"g","path":"relay"}]}`,
			ReportConnections{Connections: []ConnectionReport{{PeerID: "g", Path: PathRelay}}}, false},
		{"report relay id off relay", DecodeClientEgress, EventReportConnections, `{"connections":[{"peer_id":"g","path":"srflx","relay_id":"r"}]}`, nil, true},
		{"report no peer", DecodeGatewayEgress, EventReportConnections, `{"connections":[{"path":"host"}]}`, nil, true},
		{"report negative rtt", DecodeGatewayEgress, EventReportConnections, `{"connections":[{"peer_id":"c","path":"host","rtt_ms":-1}]}`, nil, true},
		{"report bad address", DecodeGatewayEgress, EventReportConnections, `{"connections":[{"peer_id":"c","path":"host","local":"nope"}]}`, nil, true},
		{"connection ready", DecodeGatewayEgress, EventConnectionReady, `{"ref":"x","gateway_payload":{"connection_accepted":{"ice_parameters":{"username":"u","password":"p"}}}}`,
			ConnectionReady{Ref: "x", GatewayPayload: GatewayResponse{ConnectionAccepted: &ConnectionAccepted{IceParameters: IceCredentials{"u", "p"}}}}, false},
		{"malformed", DecodeClientEgress, EventCreateFlow, `{"resource_id":5}`, nil, true},
		{"not json", DecodeGatewayEgress, EventFlowAuthorized, `{`, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := tt.decode(tt.event, json.RawMessage(tt.payload))
			if tt.wantErr {
				if !errors.Is(err, ErrMalformedPayload) {
					t.Fatalf("err = %v, want ErrMalformedPayload", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, m, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			if m.Event() != tt.event {
				t.Errorf("Event() = %q, want %q", m.Event(), tt.event)
			}
		})
	}
}

func TestAuthorizeFlowRoundTrip(t *testing.T) {
	in := AuthorizeFlow{
		Ref:      "ref-1",
		Resource: Resource{Type: ResourceCIDR, ID: "r", Name: "n", Address: "198.51.100.0/24", Filters: []Filter{{Protocol: ProtocolICMP}}},
		Client: FlowClient{ID: "c", PublicKey: "pk", PresharedKey: "psk",
			IPv4: netip.MustParseAddr("100.64.0.2"), IPv6: netip.MustParseAddr("fd00:2021:1111::2")},
		ClientIceCredentials:  IceCredentials{"a", "b"},
		GatewayIceCredentials: IceCredentials{"c", "d"},
		ExpiresAt:             1700000000,
	}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"ref":"ref-1","resource":{"type":"cidr","id":"r","name":"n","address":"198.51.100.0/24","filters":[{"protocol":"icmp"}]},"client":{"id":"c","public_key":"pk","preshared_key":"psk","ipv4":"100.64.0.2","ipv6":"fd00:2021:1111::2"},"client_ice_credentials":{"username":"a","password":"b"},"gateway_ice_credentials":{"username":"c","password":"d"},"expires_at":1700000000}`
	if string(b) != want {
		t.Errorf("marshal:\n got %s\nwant %s", b, want)
	}
	m, err := DecodeGatewayIngress(EventAuthorizeFlow, b)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Message(in), m, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}

// The wire shapes of the report (snowgate's own) and of the old protocol's request_connection are fixed.
func TestWireShapes(t *testing.T) {
	for _, tc := range []struct {
		msg  any
		want string
	}{
		{ReportConnections{Connections: []ConnectionReport{{PeerID: "g", Path: PathRelay, RelayID: "r",
			Local: netip.MustParseAddrPort("198.18.0.1:52625"), Remote: netip.MustParseAddrPort("198.18.0.2:3478"), RTTMillis: 12.5, RxBytes: 1, TxBytes: 2}}},
			`{"connections":[{"peer_id":"g","path":"relay","relay_id":"r","local":"198.18.0.1:52625","remote":"198.18.0.2:3478","rtt_ms":12.5,"rx_bytes":1,"tx_bytes":2,"idle":false}]}`},
		{ReportConnections{Connections: []ConnectionReport{{PeerID: "g", Path: PathNone}}},
			`{"connections":[{"peer_id":"g","path":"none","relay_id":"","local":"","remote":"","rtt_ms":0,"rx_bytes":0,"tx_bytes":0,"idle":false}]}`},
		{RequestConnection{Resource: Resource{Type: ResourceCIDR, ID: "r", Address: "198.51.100.0/24"}, Ref: "x", ExpiresAt: 1,
			Client: RequestClient{ID: "c", Payload: ClientPayload{IceParameters: IceCredentials{"u", "p"}},
				Peer: Peer{PublicKey: "pk", PresharedKey: "psk", IPv4: netip.MustParseAddr("100.64.0.1"), IPv6: netip.MustParseAddr("fd00:2021:1111::1")}}},
			`{"resource":{"type":"cidr","id":"r","address":"198.51.100.0/24"},"client":{"id":"c","payload":{"ice_parameters":{"username":"u","password":"p"},"domain":null},"peer":{"public_key":"pk","preshared_key":"psk","ipv4":"100.64.0.1","ipv6":"fd00:2021:1111::1"}},"ref":"x","expires_at":1}`},
		{AllowAccess{ClientID: "c", Resource: Resource{Type: ResourceCIDR, ID: "r", Address: "198.51.100.0/24"}, ExpiresAt: 1, Ref: "x",
			ClientIPv4: netip.MustParseAddr("100.64.0.1"), ClientIPv6: netip.MustParseAddr("fd00:2021:1111::1")},
			`{"client_id":"c","resource":{"type":"cidr","id":"r","address":"198.51.100.0/24"},"expires_at":1,"ref":"x","client_ipv4":"100.64.0.1","client_ipv6":"fd00:2021:1111::1"}`},
	} {
		b, err := json.Marshal(tc.msg)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != tc.want {
			t.Errorf("%T:\n got %s\nwant %s", tc.msg, b, tc.want)
		}
	}
}

func TestFilterJSON(t *testing.T) {
	b, err := json.Marshal([]Filter{{ProtocolUDP, 53, 53}, {Protocol: ProtocolICMP}})
	if err != nil {
		t.Fatal(err)
	}
	if want := `[{"protocol":"udp","port_range_start":53,"port_range_end":53},{"protocol":"icmp"}]`; string(b) != want {
		t.Errorf("got %s, want %s", b, want)
	}
	var f Filter
	if err := json.Unmarshal([]byte(`{"protocol":"tcp","port_range_start":1000}`), &f); err != nil || f != (Filter{ProtocolTCP, 1000, 65535}) {
		t.Errorf("defaults: %+v %v", f, err)
	}
	if err := (Filter{ProtocolTCP, 10, 5}).Validate(); err == nil {
		t.Error("empty range accepted")
	}
	if err := (Filter{Protocol: "sctp"}).Validate(); err == nil {
		t.Error("unknown protocol accepted")
	}
}

func TestResourceValidate(t *testing.T) {
	bad := []Resource{
		{Type: ResourceDNS, ID: ""},
		{Type: ResourceCIDR, ID: "x", Address: "not-a-cidr"},
		{Type: ResourceDNS, ID: "x", Address: "a.com", IPStack: "both"},
		{Type: "weird", ID: "x"},
		{Type: ResourceInternet, ID: "x", Filters: []Filter{{Protocol: "gre"}}},
	}
	for _, r := range bad {
		if err := r.Validate(); !errors.Is(err, ErrInvalidResource) {
			t.Errorf("Validate(%+v) = %v, want ErrInvalidResource", r, err)
		}
	}
	p, err := Resource{Type: ResourceCIDR, ID: "h", Address: "2001:db8::1"}.Prefix()
	if err != nil || p.String() != "2001:db8::1/128" {
		t.Errorf("Prefix host = %v, %v", p, err)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(EventInit, []byte(`{"interface":{"ipv4":"100.64.0.1","ipv6":"fd00::1"},"resources":[{"type":"dns","id":"x","filters":[{"protocol":"tcp"}]}],"relays":[]}`))
	f.Add(EventCreateFlow, []byte(`{"resource_id":"r","connected_gateway_ids":[]}`))
	f.Add(EventAuthorizeFlow, []byte(`{"ref":"x","resource":{"type":"cidr"}}`))
	f.Add(EventResourceDeleted, []byte(`"x"`))
	f.Add(EventReportConnections, []byte(`{"connections":[{"peer_id":"g","path":"relay","relay_id":"r","local":"198.18.0.1:1","rtt_ms":1.5}]}`))
	f.Add(EventConnectionReady, []byte(`{"ref":"x","gateway_payload":{"connection_accepted":{"ice_parameters":{"username":"u","password":"p"}}}}`))
	f.Add("nope", []byte(`null`))
	f.Fuzz(func(t *testing.T, event string, payload []byte) {
		for _, d := range []func(string, json.RawMessage) (Message, error){
			DecodeClientIngress, DecodeClientEgress, DecodeGatewayIngress, DecodeGatewayEgress, DecodeRelayIngress,
		} {
			m, err := d(event, payload)
			if err == nil && m == nil {
				t.Fatal("nil message without error")
			}
			if err != nil {
				continue
			}
			if _, unknown := m.(Unknown); !unknown && m.Event() == "" {
				t.Fatalf("decoded %T without an event name", m)
			}
			b, err := json.Marshal(m)
			if err != nil {
				t.Fatalf("decoded message does not marshal: %v", err)
			}
			if _, unknown := m.(Unknown); unknown || m.Event() != event {
				continue
			}
			// What decodes re-encodes to a payload that decodes to a message with the same encoding (nil and
			// empty lists, say, are one on the wire).
			again, err := d(event, b)
			if err != nil {
				t.Fatalf("%s: re-encoded %s does not decode: %v", event, b, err)
			}
			if b2, err := json.Marshal(again); err != nil || string(b2) != string(b) {
				t.Fatalf("%s: round trip changed the message:\n%s\n%s", event, b, b2)
			}
		}
	})
}
