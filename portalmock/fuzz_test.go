package portalmock

import (
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/snowgate/snowgate/internal/phoenix"
)

// FuzzFrame feeds arbitrary frames from a joined client (on the new or the old gateway protocol), gateway
// and relay to the portal core: it must not panic, and every frame it sends back must be a well-formed
// Phoenix frame.
func FuzzFrame(f *testing.F) {
	for _, s := range []string{
		`{"topic":"client","event":"create_flow","payload":{"resource_id":"2e50c000-0000-4000-8000-000000000001","connected_gateway_ids":[]},"ref":1}`,
		`{"topic":"gateway","event":"flow_authorized","payload":{"ref":"flow-1"},"ref":2}`,
		`{"topic":"client","event":"broadcast_ice_candidates","payload":{"gateway_ids":["9a7e0000-0000-4000-8000-000000000001"],"candidates":["c"]},"ref":3}`,
		`{"topic":"gateway","event":"broadcast_invalidated_ice_candidates","payload":{"client_ids":["x"],"candidates":null},"ref":"4"}`,
		`{"topic":"relay","event":"phx_join","payload":{"stamp_secret":"s"},"ref":5}`,
		`{"topic":"phoenix","event":"heartbeat","payload":{},"ref":6}`,
		`["1","2","client","create_flow",{"resource_id":5}]`,
		`["1","2","client","phx_leave",null]`,
		`{"topic":"relay","event":"phx_leave","payload":{},"ref":7}`,
		`{"topic":"gateway","event":"phx_leave","payload":{},"ref":8}`,
		`{"topic":"gateway","event":"connection_ready","payload":{"ref":"flow-1","gateway_payload":{"connection_accepted":{"ice_parameters":{"username":"u","password":"p"}}}},"ref":9}`,
		`{"topic":"gateway","event":"connection_ready","payload":{"ref":"flow-1","gateway_payload":{}},"ref":10}`,
		`{"topic":"client","event":"report_connections","payload":{"connections":[{"peer_id":"9a7e0000-0000-4000-8000-000000000001","path":"relay","relay_id":"r","local":"198.18.0.1:1","remote":"198.18.0.2:2","rtt_ms":1.5,"rx_bytes":1,"tx_bytes":2,"idle":false}]},"ref":11}`,
		`{"topic":"gateway","event":"report_connections","payload":{"connections":[{"peer_id":"c11e0000-0000-4000-8000-000000000001","path":"bogus"}]},"ref":12}`,
		`{"topic":"client","event":"phx_join","payload":null,"ref":0}`,
		`{{`, `null`, `[]`, `{"topic":7}`,
	} {
		f.Add(false, false, []byte(s))
		f.Add(true, false, []byte(s))
		f.Add(false, true, []byte(s))
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	f.Fuzz(func(t *testing.T, v2, legacy bool, data []byte) {
		file := DefaultFile()
		file.Accounts[0].Clients[0].LegacyGatewayProtocol = legacy
		m, err := buildModel(file)
		if err != nil {
			t.Fatal(err)
		}
		v := phoenix.V1
		if v2 {
			v = phoenix.V2
		}
		c := newCore(m, time.Now, log)
		sessions := []*session{
			{id: 1, kind: kindClient, peerID: "c11e0000-0000-4000-8000-000000000001", publicKey: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", version: v, joined: true},
			{id: 2, kind: kindGateway, peerID: "9a7e0000-0000-4000-8000-000000000001", publicKey: "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", version: v, joined: true},
			{id: 3, kind: kindRelay, peerID: "dev-relays", version: v, addr4: netip.MustParseAddrPort("198.18.0.1:3478")},
		}
		for _, s := range sessions {
			c.connect(s)
		}
		c.clients[sessions[0].peerID] = 1
		c.gateways[sessions[1].peerID] = 2
		for range 2 { // twice: the first frame may set up state (a flow, a join) the second one uses
			for _, s := range sessions {
				c.frame(s.id, data)
			}
		}
		for _, o := range c.out {
			if o.data == nil {
				continue
			}
			if _, err := phoenix.Decode(v, o.data); err != nil {
				t.Fatalf("portal sent a malformed frame %q: %v", o.data, err)
			}
		}
	})
}
