package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/telemetry/teltest"
	"github.com/snowgate/snowgate/portalmock"
)

// resourceCIDR is the "lab network" resource of the embedded configuration.
const resourceCIDR = "2e50c000-0000-4000-8000-000000000001"

// TestNoSecretsInLogs runs the portal binary's run at trace level through a
// relay, a client and a gateway joining with their tokens and one flow
// (PSK and ICE credentials), and asserts that the output holds none of the
// tokens, the relay's stamp secret, the TURN passwords, the PSK or the ICE
// passwords (issue 6).
func TestNoSecretsInLogs(t *testing.T) {
	r, err := startRun(t, "--listen", "127.0.0.1:0", "--admin-addr", "", "--log-level", "trace")
	if err != nil {
		t.Fatal(err)
	}
	ctx, srv, out := t.Context(), r.srv, r.out

	var sb [32]byte
	_, _ = rand.Read(sb[:])
	stampSecret := hex.EncodeToString(sb[:])
	relayQ := url.Values{"name": {"relay-secrets"}, "ipv4": {"198.18.0.101"}, "port": {"3478"}}
	relay := wsDial(t, srv, "/relay/websocket", portalmock.DefaultRelayToken, relayQ)
	relay.join(portalapi.TopicRelay, portalapi.RelayJoin{StampSecret: stampSecret})
	relay.expect(portalapi.EventInit)

	client := wsDial(t, srv, "/client/websocket", portalmock.DefaultClientToken1, url.Values{"public_key": {newKey(t)}})
	client.join(portalapi.TopicClient, nil)
	var cinit portalapi.ClientInit
	client.expectInto(portalapi.EventInit, &cinit)
	gateway := wsDial(t, srv, "/gateway/websocket", portalmock.DefaultGatewayToken1, url.Values{"public_key": {newKey(t)}})
	gateway.join(portalapi.TopicGateway, nil)
	var ginit portalapi.GatewayInit
	gateway.expectInto(portalapi.EventInit, &ginit)
	if len(cinit.Relays) == 0 || len(ginit.Relays) == 0 || cinit.Relays[0].Password == "" {
		t.Fatalf("no relay credentials in the inits: client %+v gateway %+v", cinit.Relays, ginit.Relays)
	}

	client.send(portalapi.TopicClient, portalapi.EventCreateFlow, portalapi.CreateFlow{ResourceID: resourceCIDR})
	var af portalapi.AuthorizeFlow
	gateway.expectInto(portalapi.EventAuthorizeFlow, &af)
	gateway.send(portalapi.TopicGateway, portalapi.EventFlowAuthorized, portalapi.FlowAuthorized{Ref: af.Ref})
	var fc portalapi.FlowCreated
	client.expectInto(portalapi.EventFlowCreated, &fc)
	if fc.PresharedKey == "" || fc.ClientIceCredentials.Password == "" || fc.GatewayIceCredentials.Password == "" {
		t.Fatalf("flow_created without credentials: %+v", fc)
	}
	// A bad token too (a 401 is logged).
	if _, resp, err := websocket.Dial(ctx, srv.URL()+"/client/websocket", &websocket.DialOptions{
		HTTPHeader: http.Header{"X-Authorization": {"Bearer not-" + portalmock.DefaultClientToken2}},
	}); err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("bad token: %v %v", resp, err)
	}
	if err := r.stop(); err != nil {
		t.Fatalf("run: %v", err)
	}

	logs := out.String()
	if testing.Verbose() {
		t.Logf("portal output:\n%s", logs)
	}
	for _, want := range []string{"kind=relay", "kind=client", "kind=gateway"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q; the scenario did not run as expected:\n%s", want, logs)
		}
	}
	secrets := []string{
		portalmock.DefaultRelayToken, portalmock.DefaultClientToken1, portalmock.DefaultGatewayToken1,
		"not-" + portalmock.DefaultClientToken2, portalmock.DefaultAdminToken,
		stampSecret, fc.PresharedKey, af.Client.PresharedKey,
		fc.ClientIceCredentials.Password, fc.GatewayIceCredentials.Password,
		af.ClientIceCredentials.Password, af.GatewayIceCredentials.Password,
	}
	for _, r := range append(cinit.Relays, ginit.Relays...) {
		secrets = append(secrets, r.Password)
	}
	teltest.AssertNoSecrets(t, logs, secrets...)
}

func newKey(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// wsPeer is a minimal Phoenix V1 test client.
type wsPeer struct {
	t     *testing.T
	ws    *websocket.Conn
	topic string
	ref   uint64
}

func wsDial(t *testing.T, s *portalmock.Server, path, token string, q url.Values) *wsPeer {
	t.Helper()
	return wsDialURL(t, s.URL(), path, token, q)
}

// wsDialURL dials the portal at base ("ws://host:port").
func wsDialURL(t *testing.T, base, path, token string, q url.Values) *wsPeer {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, base+path+"?"+q.Encode(), &websocket.DialOptions{
		HTTPHeader: http.Header{"X-Authorization": {"Bearer " + token}},
	})
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	t.Cleanup(func() { _ = ws.CloseNow() })
	return &wsPeer{t: t, ws: ws}
}

func (p *wsPeer) send(topic, event string, payload any) phoenix.Ref {
	p.t.Helper()
	p.ref++
	raw, err := json.Marshal(payload)
	if err != nil {
		p.t.Fatal(err)
	}
	if payload == nil {
		raw = json.RawMessage(`{}`)
	}
	b, err := phoenix.Encode(phoenix.V1, phoenix.Message{Ref: phoenix.IntRef(p.ref), Topic: topic, Event: event, Payload: raw})
	if err != nil {
		p.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(p.t.Context(), 5*time.Second)
	defer cancel()
	if err := p.ws.Write(ctx, websocket.MessageText, b); err != nil {
		p.t.Fatalf("write: %v", err)
	}
	return phoenix.IntRef(p.ref)
}

func (p *wsPeer) next() phoenix.Message {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.t.Context(), 5*time.Second)
	defer cancel()
	_, data, err := p.ws.Read(ctx)
	if err != nil {
		p.t.Fatalf("read: %v", err)
	}
	m, err := phoenix.Decode(phoenix.V1, data)
	if err != nil {
		p.t.Fatalf("decode %q: %v", data, err)
	}
	return m
}

func (p *wsPeer) join(topic string, payload any) {
	p.t.Helper()
	p.topic = topic
	ref := p.send(topic, phoenix.EventJoin, payload)
	m := p.next()
	var rp phoenix.ReplyPayload
	if m.Event != phoenix.EventReply || m.Ref != ref || json.Unmarshal(m.Payload, &rp) != nil || rp.Status != phoenix.StatusOK {
		p.t.Fatalf("join %s: %s %s", topic, m.Event, m.Payload)
	}
}

// expect returns the next message on the peer's topic that is event,
// skipping replies and presence updates.
func (p *wsPeer) expect(event string) phoenix.Message {
	p.t.Helper()
	for range 20 {
		m := p.next()
		if m.Topic == p.topic && m.Event == event {
			return m
		}
	}
	p.t.Fatalf("no %s on %s", event, p.topic)
	return phoenix.Message{}
}

func (p *wsPeer) expectInto(event string, v any) {
	p.t.Helper()
	m := p.expect(event)
	if err := json.Unmarshal(m.Payload, v); err != nil {
		p.t.Fatalf("%s payload %s: %v", event, m.Payload, err)
	}
}
