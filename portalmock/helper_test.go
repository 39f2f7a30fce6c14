package portalmock

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/portalapi"
)

// Ids of the embedded default configuration.
const (
	client1  = "c11e0000-0000-4000-8000-000000000001"
	client2  = "c11e0000-0000-4000-8000-000000000002"
	gateway1 = "9a7e0000-0000-4000-8000-000000000001"
	gateway2 = "9a7e0000-0000-4000-8000-000000000002"
	siteDev  = "5173e000-0000-4000-8000-000000000001"
	resCIDR  = "2e50c000-0000-4000-8000-000000000001"
	resDNS   = "2e50c000-0000-4000-8000-000000000002"
	resHost  = "2e50c000-0000-4000-8000-000000000003"
	resInet  = "2e50c000-0000-4000-8000-000000000004"
	resDemo  = "2e50c000-0000-4000-8000-000000000005"
)

const waitTime = 5 * time.Second

func startServer(t *testing.T, f *File) *Server {
	t.Helper()
	s, err := New(Config{File: f})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	for _, start := range []func(net.Listener) error{s.Start, s.StartAdmin} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if err := start(ln); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func newKey(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

// peer is a minimal Phoenix test client (V1 unless vsn says otherwise).
type peer struct {
	t     *testing.T
	ws    *websocket.Conn
	v     phoenix.Version
	topic string
	ref   uint64
	msgs  chan phoenix.Message
	done  chan struct{}
}

func dial(t *testing.T, s *Server, path, token string, q url.Values) (*peer, *http.Response, error) {
	t.Helper()
	if q == nil {
		q = url.Values{}
	}
	v, err := phoenix.ParseVersion(q.Get("vsn"))
	if err != nil {
		t.Fatal(err)
	}
	hdr := http.Header{}
	if token != "" {
		hdr.Set("X-Authorization", "Bearer "+token)
	}
	ctx, cancel := context.WithTimeout(t.Context(), waitTime)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, s.URL()+path+"?"+q.Encode(), &websocket.DialOptions{HTTPHeader: hdr})
	if err != nil {
		return nil, resp, err
	}
	p := &peer{t: t, ws: ws, v: v, msgs: make(chan phoenix.Message, 256), done: make(chan struct{})}
	go p.readLoop()
	t.Cleanup(p.close)
	return p, resp, nil
}

func (p *peer) readLoop() {
	defer close(p.done)
	defer close(p.msgs)
	for {
		_, data, err := p.ws.Read(context.Background())
		if err != nil {
			return
		}
		m, err := phoenix.Decode(p.v, data)
		if err != nil {
			p.t.Errorf("server sent an undecodable frame %q: %v", data, err)
			return
		}
		p.msgs <- m
	}
}

func (p *peer) close() {
	p.ws.CloseNow()
	<-p.done
}

// connectPeer dials and joins kind's topic, consuming the join reply; the init is left for the caller.
func connectPeer(t *testing.T, s *Server, kind, token, pk string) *peer {
	t.Helper()
	q := url.Values{"name": {kind + "-test"}, "public_key": {pk}}
	p, _, err := dial(t, s, "/"+kind+"/websocket", token, q)
	if err != nil {
		t.Fatal(err)
	}
	p.topic = kind
	ref := p.send(kind, phoenix.EventJoin, nil)
	p.expectReply(ref, phoenix.StatusOK)
	return p
}

func (p *peer) sendRaw(b []byte) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTime)
	defer cancel()
	if err := p.ws.Write(ctx, websocket.MessageText, b); err != nil {
		p.t.Fatalf("write: %v", err)
	}
}

func (p *peer) send(topic, event string, payload any) phoenix.Ref {
	p.t.Helper()
	p.ref++
	ref := phoenix.IntRef(p.ref)
	var raw json.RawMessage
	if payload != nil {
		b, err := json.Marshal(payload)
		if err != nil {
			p.t.Fatal(err)
		}
		raw = b
	}
	m := phoenix.Message{Ref: ref, Topic: topic, Event: event, Payload: raw}
	if p.v == phoenix.V2 {
		m.JoinRef = phoenix.IntRef(1)
	}
	b, err := phoenix.Encode(p.v, m)
	if err != nil {
		p.t.Fatal(err)
	}
	p.sendRaw(b)
	return ref
}

func (p *peer) next() phoenix.Message {
	p.t.Helper()
	select {
	case m, ok := <-p.msgs:
		if !ok {
			p.t.Fatal("socket closed while waiting for a message")
		}
		return m
	case <-time.After(waitTime):
		p.t.Fatal("timed out waiting for a message")
	}
	return phoenix.Message{}
}

// expect returns the next message, which must be event on the peer's topic.
func (p *peer) expect(event string) phoenix.Message {
	p.t.Helper()
	m := p.next()
	if m.Event != event || m.Topic != p.topic {
		p.t.Fatalf("got %s/%s %s, want %s/%s", m.Topic, m.Event, m.Payload, p.topic, event)
	}
	return m
}

func expectAs[T portalapi.Message](p *peer, event string) T {
	p.t.Helper()
	m := p.expect(event)
	var dec portalapi.Message
	var err error
	if p.topic == portalapi.TopicClient {
		dec, err = portalapi.DecodeClientIngress(m.Event, m.Payload)
	} else {
		dec, err = portalapi.DecodeGatewayIngress(m.Event, m.Payload)
	}
	if err != nil {
		p.t.Fatalf("decode %s: %v", event, err)
	}
	v, ok := dec.(T)
	if !ok {
		p.t.Fatalf("%s decoded to %T", event, dec)
	}
	return v
}

// expectReply returns the response of the next message, which must be a phx_reply to ref with status.
func (p *peer) expectReply(ref phoenix.Ref, status string) json.RawMessage {
	p.t.Helper()
	m := p.next()
	if m.Event != phoenix.EventReply || m.Ref != ref {
		p.t.Fatalf("got %s/%s ref %v %s, want reply to ref %v", m.Topic, m.Event, m.Ref, m.Payload, ref)
	}
	var rp phoenix.ReplyPayload
	if err := json.Unmarshal(m.Payload, &rp); err != nil {
		p.t.Fatal(err)
	}
	if rp.Status != status {
		p.t.Fatalf("reply status %q (%s), want %q", rp.Status, rp.Response, status)
	}
	return rp.Response
}

func (p *peer) expectErrorReason(ref phoenix.Ref, reason string) {
	p.t.Helper()
	resp := p.expectReply(ref, phoenix.StatusError)
	var r struct{ Reason string }
	if err := json.Unmarshal(resp, &r); err != nil || r.Reason != reason {
		p.t.Fatalf("error reply %s, want reason %q", resp, reason)
	}
}

// sync proves that nothing was queued for p before now: the server handles frames in order, so the reply
// to a heartbeat sent now comes after anything pushed to p earlier.
func (p *peer) sync() {
	p.t.Helper()
	ref := p.send(phoenix.TopicPhoenix, phoenix.EventHeartbeat, struct{}{})
	m := p.next()
	if m.Event != phoenix.EventReply || m.Ref != ref {
		p.t.Fatalf("unexpected message %s/%s %s", m.Topic, m.Event, m.Payload)
	}
}

func relayURLValues(ipv4, ipv6 string, port int) url.Values {
	q := url.Values{"name": {"relay-test"}, "port": {strconv.Itoa(port)}}
	if ipv4 != "" {
		q.Set("ipv4", ipv4)
	}
	if ipv6 != "" {
		q.Set("ipv6", ipv6)
	}
	return q
}

func connectRelay(t *testing.T, s *Server, secret, ipv4, ipv6 string) *peer {
	t.Helper()
	p, _, err := dial(t, s, "/relay/websocket", DefaultRelayToken, relayURLValues(ipv4, ipv6, 3478))
	if err != nil {
		t.Fatal(err)
	}
	p.topic = portalapi.TopicRelay
	ref := p.send(portalapi.TopicRelay, phoenix.EventJoin, portalapi.RelayJoin{StampSecret: secret})
	p.expectReply(ref, phoenix.StatusOK)
	p.expect(portalapi.EventInit)
	return p
}

func statusOf(resp *http.Response, err error) int {
	var ce websocket.CloseError
	if resp == nil || errors.As(err, &ce) {
		return 0
	}
	return resp.StatusCode
}

// expectClosed waits until the server closes p's socket; no message may arrive before.
func (p *peer) expectClosed() {
	p.t.Helper()
	select {
	case m, ok := <-p.msgs:
		if ok {
			p.t.Fatalf("got %s/%s, want the socket closed", m.Topic, m.Event)
		}
	case <-time.After(waitTime):
		p.t.Fatal("socket not closed")
	}
}
