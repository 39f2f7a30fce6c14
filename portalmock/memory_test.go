package portalmock

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/url"
	"slices"
	"testing"

	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/portalapi"
)

// memFrame reads the next frame of c, decoded (V1), failing the test if none is waiting.
func memFrame(t *testing.T, c *MemoryConn) phoenix.Message {
	t.Helper()
	select {
	case b := <-c.Frames():
		m, err := phoenix.Decode(phoenix.V1, b)
		if err != nil {
			t.Fatalf("portal sent %q: %v", b, err)
		}
		return m
	default:
		t.Fatal("no frame waiting")
		return phoenix.Message{}
	}
}

func memSend(t *testing.T, c *MemoryConn, topic, event string, ref uint64, payload any) {
	t.Helper()
	b, _ := json.Marshal(payload)
	f, err := phoenix.Encode(phoenix.V1, phoenix.Message{Topic: topic, Event: event, Ref: phoenix.IntRef(ref), Payload: b})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Send(f); err != nil {
		t.Fatal(err)
	}
}

// A client, a gateway and a relay on memory sessions: joins answer with init, the relay shows up in the
// client's presence, create_flow reaches the gateway, a newer session of the same device closes the older
// one, and closing a gateway's session takes it offline.
func TestMemorySessions(t *testing.T) {
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	}()
	if _, err := s.DialMemory("client", "wrong", url.Values{"public_key": {testKey(1)}}); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("bad token: %v", err)
	}
	if _, err := s.DialMemory("gateway", DefaultClientToken1, url.Values{"public_key": {testKey(1)}}); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("token of another kind: %v", err)
	}
	if _, err := s.DialMemory("client", DefaultClientToken1, url.Values{"public_key": {"short"}}); err == nil || errors.Is(err, ErrUnauthorized) {
		t.Fatalf("bad public key: %v", err)
	}

	relay, err := s.DialMemory("relay", DefaultRelayToken, url.Values{"ipv4": {"198.18.0.10"}})
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	memSend(t, relay, "relay", phoenix.EventJoin, 1, portalapi.RelayJoin{StampSecret: "secret"})
	if m := memFrame(t, relay); m.Event != phoenix.EventReply {
		t.Fatalf("relay join answered %+v", m)
	}

	gw, err := s.DialMemory("gateway", DefaultGatewayToken1, url.Values{"public_key": {testKey(2)}})
	if err != nil {
		t.Fatal(err)
	}
	memSend(t, gw, "gateway", phoenix.EventJoin, 1, nil)
	memFrame(t, gw) // reply
	var gi portalapi.GatewayInit
	if m := memFrame(t, gw); m.Event != portalapi.EventInit || json.Unmarshal(m.Payload, &gi) != nil || len(gi.Relays) != 1 {
		t.Fatalf("gateway init %+v", m)
	}

	cl, err := s.DialMemory("client", DefaultClientToken1, url.Values{"public_key": {testKey(1)}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	memSend(t, cl, "client", phoenix.EventJoin, 1, nil)
	memFrame(t, cl)
	var ci portalapi.ClientInit
	if m := memFrame(t, cl); m.Event != portalapi.EventInit || json.Unmarshal(m.Payload, &ci) != nil || len(ci.Relays) != 1 ||
		ci.Relays[0].Username == "" {
		t.Fatalf("client init %+v", m)
	}
	memSend(t, cl, "client", portalapi.EventCreateFlow, 2, portalapi.CreateFlow{ResourceID: resCIDR, ConnectedGatewayIDs: []string{}})
	if m := memFrame(t, gw); m.Event != portalapi.EventAuthorizeFlow {
		t.Fatalf("gateway got %+v, want authorize_flow", m)
	}

	// A second session of the client replaces the first.
	cl2, err := s.DialMemory("client", DefaultClientToken1, url.Values{"public_key": {testKey(3)}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl2.Close()
	memSend(t, cl2, "client", phoenix.EventJoin, 1, nil)
	select {
	case <-cl.Done():
	default:
		t.Fatal("the replaced session is not done")
	}
	if err := cl.Send([]byte(`{}`)); !errors.Is(err, ErrMemoryClosed) {
		t.Fatalf("send on a closed session: %v", err)
	}

	gw.Close()
	gw.Close()
	online := func(ps []PeerState) (n int) {
		for _, p := range ps {
			if p.Online {
				n++
			}
		}
		return n
	}
	if st := s.State(); online(st.Gateways) != 0 || online(st.Clients) != 1 || st.Clients[0].PublicKey != testKey(3) ||
		len(st.Relays) != 1 {
		t.Fatalf("state after the gateway left: %+v", st)
	}
	if s.EventCount() == 0 {
		t.Fatal("no events recorded")
	}
}

// testKey is a fixed base64 32-byte public key.
func testKey(b byte) string {
	k := make([]byte, 32)
	k[0] = b
	return base64.StdEncoding.EncodeToString(k)
}

// memJoin dials and joins a session of kind and discards the join reply and init.
func memJoin(t *testing.T, s *Server, kind, token, key string) *MemoryConn {
	t.Helper()
	c, err := s.DialMemory(kind, token, url.Values{"public_key": {key}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	memSend(t, c, kind, phoenix.EventJoin, 1, nil)
	memFrame(t, c)
	memFrame(t, c)
	return c
}

// memDrain returns the events of the frames waiting on c.
func memDrain(t *testing.T, c *MemoryConn) []string {
	t.Helper()
	var evs []string
	for {
		select {
		case b := <-c.Frames():
			m, err := phoenix.Decode(phoenix.V1, b)
			if err != nil {
				t.Fatal(err)
			}
			evs = append(evs, m.Event)
		default:
			return evs
		}
	}
}

// Found by the whole-tunnel simulation (internal/tunnelsim): a portal that restarted (a new core, its
// flows forgotten) never told a gateway to revoke access the gateway kept from before, so deleting a
// resource, or its policy, left the client authorised at the gateway until the authorisation expired.
// Revocations now go to every online gateway of the sites that served the resource, whether or not the
// portal remembers a flow.
func TestRevokeReachesGatewaysAfterRestart(t *testing.T) {
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() }) // after the sessions' cleanups: Close waits for their owners
	// The gateway and the client joined a portal that has no memory of their flow (as after a restart).
	gw := memJoin(t, s, "gateway", DefaultGatewayToken1, testKey(2))
	memJoin(t, s, "client", DefaultClientToken1, testKey(1))
	if err := s.DeleteResource(resCIDR); err != nil {
		t.Fatal(err)
	}
	if evs := memDrain(t, gw); !slices.Contains(evs, portalapi.EventRejectAccess) {
		t.Fatalf("gateway got %v after the resource was deleted, want reject_access", evs)
	}
	// A policy change that hides a resource from the client does the same.
	if err := s.DeletePolicy(s.Policies()[0].ID); err != nil {
		t.Fatal(err)
	}
	if evs := memDrain(t, gw); !slices.Contains(evs, portalapi.EventRejectAccess) {
		t.Fatalf("gateway got %v after a policy was deleted, want reject_access", evs)
	}
}

// Found by the whole-tunnel simulation (internal/tunnelsim), shrunk scenario: resource 1 allowed with
// a filter (UDP 53 only), pinged (a flow), the portal restarts, resource 1's filter is lifted, UDP 80 to
// it -> never answered: the restarted portal had forgotten the flow, so resource_updated went to no
// gateway and the gateway kept enforcing the old filter. Updates now go to every online gateway of the
// resource's sites too.
func TestResourceUpdateReachesGatewaysAfterRestart(t *testing.T) {
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	gw := memJoin(t, s, "gateway", DefaultGatewayToken1, testKey(2))
	memJoin(t, s, "client", DefaultClientToken1, testKey(1))
	var r ResourceConfig
	for _, rc := range s.Resources() {
		if rc.ID == resCIDR {
			r = rc
		}
	}
	if r.ID == "" {
		t.Fatal("no CIDR resource in the default configuration")
	}
	port53 := uint16(53)
	r.Filters = append(slices.Clone(r.Filters), FilterConfig{Protocol: "udp", PortRangeStart: &port53, PortRangeEnd: &port53})
	if err := s.PutResource(r); err != nil {
		t.Fatal(err)
	}
	if evs := memDrain(t, gw); !slices.Contains(evs, portalapi.EventResourceUpdated) {
		t.Fatalf("gateway got %v after the resource's filters changed, want resource_updated", evs)
	}
	// An update that changes nothing is not sent.
	if err := s.PutResource(r); err != nil {
		t.Fatal(err)
	}
	if evs := memDrain(t, gw); slices.Contains(evs, portalapi.EventResourceUpdated) {
		t.Fatalf("gateway got %v after a put that changed nothing", evs)
	}
}
