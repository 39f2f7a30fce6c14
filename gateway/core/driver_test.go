package core_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/snowgate/snowgate/gateway/core"
	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/tunnel"
	"github.com/snowgate/snowgate/node"
)

// fakeNode fails UpsertConnection for the ids in noRelays with node.ErrNoRelays.
type fakeNode struct {
	mu       sync.Mutex
	noRelays map[string]bool
	upserts  []string
	removed  []string
	events   chan node.Event
}

func (n *fakeNode) PublicKey() node.Key { return node.Key{1} }
func (n *fakeNode) UpsertConnection(p node.ConnectionParams) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.upserts = append(n.upserts, p.ID)
	if n.noRelays[p.ID] {
		return fmt.Errorf("upsert connection %s: %w", p.ID, node.ErrNoRelays)
	}
	return nil
}
func (n *fakeNode) RemoveConnection(id string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.removed = append(n.removed, id)
	return nil
}
func (n *fakeNode) SetAllowedIPs(string, []netip.Prefix) error { return nil }
func (n *fakeNode) AddRemoteCandidate(string, string) error    { return nil }
func (n *fakeNode) RemoveRemoteCandidate(string, string) error { return nil }
func (n *fakeNode) UpdateRelays([]string, []node.Relay)        {}
func (n *fakeNode) Reset() (node.Key, error)                   { return node.Key{2}, nil }
func (n *fakeNode) Stats() []node.ConnStats                    { return nil }
func (n *fakeNode) Events() <-chan node.Event                  { return n.events }
func (n *fakeNode) removedIDs() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.removed)
}
func (n *fakeNode) upserted() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.upserts)
}
func (n *fakeNode) setNoRelays(id string, v bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.noRelays[id] = v
}

// fakePortal records pushes and reconnects; every push is also sent on pushed.
type fakePortal struct {
	events     chan phoenix.Event
	pushed     chan tunnel.PortalPush
	mu         sync.Mutex
	reconnects int
}

func (p *fakePortal) Connect(context.Context, string) error { return nil }
func (p *fakePortal) Join(string, any)                      {}
func (p *fakePortal) Push(_, event string, payload any) (phoenix.Ref, error) {
	p.pushed <- tunnel.PortalPush{Event: event, Payload: payload}
	return phoenix.Ref{}, nil
}
func (p *fakePortal) Reconnect()                   { p.mu.Lock(); p.reconnects++; p.mu.Unlock() }
func (p *fakePortal) Events() <-chan phoenix.Event { return p.events }
func (p *fakePortal) reconnectCount() int          { p.mu.Lock(); defer p.mu.Unlock(); return p.reconnects }
func (p *fakePortal) send(t *testing.T, ev string, m any) {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	p.events <- phoenix.Event{Kind: phoenix.EventMessage, Topic: portalapi.TopicGateway, Event: ev, Payload: b}
}

type nopInjector struct{}

func (nopInjector) InjectOutbound(...[]byte) error { return nil }
func (nopInjector) WriteTUN(...[]byte) error       { return nil }

// TestDriverAnswersOnlyCreatedConnections runs the core under the real tunnel.Driver: a flow whose
// upsert fails with ErrNoRelays gets no flow_authorized and makes the driver reconnect the portal; a flow
// whose upsert succeeds is answered.
func TestDriverAnswersOnlyCreatedConnections(t *testing.T) {
	g, err := core.New(core.Config{})
	if err != nil {
		t.Fatal(err)
	}
	d, err := tunnel.NewDriver(tunnel.DriverConfig{Core: g, Topic: portalapi.TopicGateway, Decode: portalapi.DecodeGatewayIngress})
	if err != nil {
		t.Fatal(err)
	}
	n := &fakeNode{noRelays: map[string]bool{"client-1": true}, events: make(chan node.Event)}
	p := &fakePortal{events: make(chan phoenix.Event, 16), pushed: make(chan tunnel.PortalPush, 16)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, n, p, nopInjector{}) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	p.events <- phoenix.Event{Kind: phoenix.EventJoined, Topic: portalapi.TopicGateway}
	p.send(t, portalapi.EventInit, portalapi.GatewayInit{Interface: portalapi.Interface{IPv4: gwV4, IPv6: gwV6}})
	c1, c2 := mkClient(1), mkClient(2)
	p.send(t, portalapi.EventAuthorizeFlow, c1.authorize("ref-1", cidrRes(1, "198.51.100.0/24"), time.Time{}))
	p.send(t, portalapi.EventAuthorizeFlow, c2.authorize("ref-2", cidrRes(1, "198.51.100.0/24"), time.Time{}))

	// Answers go out in order, so once ref-2 is answered ref-1 would have been.
	deadline := time.After(10 * time.Second)
	var got []string
	for !slices.Contains(got, "ref-2") {
		select {
		case push := <-p.pushed:
			if fa, ok := push.Payload.(portalapi.FlowAuthorized); ok {
				got = append(got, fa.Ref)
			}
		case <-deadline:
			t.Fatalf("no flow_authorized for ref-2; got %v", got)
		}
	}
	if !slices.Equal(got, []string{"ref-2"}) {
		t.Fatalf("flow_authorized for %v, want only ref-2", got)
	}
	if rm := n.removedIDs(); !slices.Equal(rm, []string{"client-1"}) {
		t.Fatalf("connections removed: %v, want client-1's", rm)
	}
	if n := p.reconnectCount(); n != 1 {
		t.Fatalf("%d portal reconnects, want 1", n)
	}
	// The relays come back (a new init); the portal authorises client-1 again and it is answered.
	n.setNoRelays("client-1", false)
	p.send(t, portalapi.EventInit, portalapi.GatewayInit{Interface: portalapi.Interface{IPv4: gwV4, IPv6: gwV6}})
	p.send(t, portalapi.EventAuthorizeFlow, c1.authorize("ref-3", cidrRes(1, "198.51.100.0/24"), time.Time{}))
	for {
		select {
		case push := <-p.pushed:
			if fa, ok := push.Payload.(portalapi.FlowAuthorized); ok {
				if fa.Ref != "ref-3" {
					t.Fatalf("unexpected answer %v", fa.Ref)
				}
				if up := n.upserted(); !slices.Equal(up, []string{"client-1", "client-2", "client-1"}) {
					t.Fatalf("upserts %v", up)
				}
				return
			}
		case <-deadline:
			t.Fatal("no flow_authorized for ref-3")
		}
	}
}
