package devstack

import (
	"strings"
	"testing"
	"time"

	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/portalmock"
)

// TestDaemonsReportPaths: the client and the gateway tell the portal which path their connection takes
// (report_connections), and the portal's state shows it: both directions, through the stack's one relay.
func TestDaemonsReportPaths(t *testing.T) {
	st := startStack(t, Options{Relays: 1, Clients: 1, Relayed: true, AdminAddr: "127.0.0.1:0"})
	var summary strings.Builder
	if err := st.WriteSummary(t.Context(), &summary); err != nil {
		t.Fatal(err)
	}
	if u := st.Portal.PageURL(); u == "" || !strings.Contains(summary.String(), "portal live page") || !strings.Contains(summary.String(), u) {
		t.Errorf("the summary does not give the live page %q:\n%s", u, summary.String())
	}
	if body := fetch(t, st.Clients[0], "http://"+DemoName+"/report"); !strings.Contains(body, DemoPage) {
		t.Fatalf("demo page: %q", body)
	}
	relayID := portalapi.RelayID(st.Relays[0].StampSecret())
	relayed := func(ps portalmock.PeerState, peer string) bool {
		if !ps.Online || len(ps.Connections) != 1 {
			return false
		}
		c := ps.Connections[0]
		return c.PeerID == peer && c.Path == portalapi.PathRelay && c.RelayID == relayID && c.Local.IsValid() && c.Remote.IsValid()
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		s := st.Portal.State()
		cl, gw := s.Clients[0], s.Gateways[0]
		if relayed(cl, gw.ID) && relayed(gw, cl.ID) {
			if cl.Connections[0].Local != gw.Connections[0].Remote || cl.Connections[0].Remote != gw.Connections[0].Local {
				t.Errorf("the two sides disagree on the pair: client %+v, gateway %+v", cl.Connections[0], gw.Connections[0])
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no relayed path reported by both sides:\nclient %+v\ngateway %+v", cl, gw)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
