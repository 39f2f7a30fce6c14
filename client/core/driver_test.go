package core

import (
	"context"
	"encoding/json"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/tunnel"
	"github.com/snowgate/snowgate/node"
)

// The core under the real tunnel.Driver, with fakes for the node, the portal session and the TUN wrapper:
// the contract (who calls what, in which order, from which goroutine) holds end to end.

type drvNode struct {
	mu       sync.Mutex
	events   chan node.Event
	upserts  []node.ConnectionParams
	allowed  map[string][]netip.Prefix
	failNext error
}

func (n *drvNode) PublicKey() node.Key { return node.Key{9} }
func (n *drvNode) UpsertConnection(p node.ConnectionParams) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.failNext; err != nil {
		n.failNext = nil
		return err
	}
	n.upserts = append(n.upserts, p)
	return nil
}
func (n *drvNode) RemoveConnection(id string) error { return nil }
func (n *drvNode) SetAllowedIPs(id string, p []netip.Prefix) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.allowed[id] = slices.Clone(p)
	return nil
}
func (n *drvNode) AddRemoteCandidate(id, sdp string) error        { return nil }
func (n *drvNode) RemoveRemoteCandidate(id, sdp string) error     { return nil }
func (n *drvNode) UpdateRelays(remove []string, add []node.Relay) {}
func (n *drvNode) Reset() (node.Key, error)                       { return node.Key{10}, nil }
func (n *drvNode) Stats() []node.ConnStats                        { return nil }
func (n *drvNode) Events() <-chan node.Event                      { return n.events }

type drvPortal struct {
	mu         sync.Mutex
	events     chan phoenix.Event
	pushes     []string
	reconnects int
}

func (p *drvPortal) Connect(ctx context.Context, publicKey string) error { return nil }
func (p *drvPortal) Join(topic string, payload any)                      {}
func (p *drvPortal) Push(topic, event string, payload any) (phoenix.Ref, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pushes = append(p.pushes, event)
	return phoenix.Ref{}, nil
}
func (p *drvPortal) Reconnect() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reconnects++
}
func (p *drvPortal) Events() <-chan phoenix.Event { return p.events }

func (p *drvPortal) send(t *testing.T, event string, payload any) {
	t.Helper()
	b, err := json.Marshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	p.events <- phoenix.Event{Kind: phoenix.EventMessage, Topic: portalapi.TopicClient, Event: event, Payload: b}
}

type drvInjector struct {
	mu       sync.Mutex
	injected [][]byte
	written  [][]byte
}

func (i *drvInjector) InjectOutbound(pkts ...[]byte) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.injected = append(i.injected, pkts...)
	return nil
}

func (i *drvInjector) WriteTUN(pkts ...[]byte) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.written = append(i.written, pkts...)
	return nil
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestUnderTunnelDriver(t *testing.T) {
	c, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	var execMu sync.Mutex
	var own []tunnel.Action
	drv, err := tunnel.NewDriver(tunnel.DriverConfig{
		Core: c, Topic: portalapi.TopicClient,
		Decode: portalapi.DecodeClientIngress,
		Exec: func(_ context.Context, a tunnel.Action) error {
			execMu.Lock()
			defer execMu.Unlock()
			own = append(own, a)
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	n := &drvNode{events: make(chan node.Event, 16), allowed: make(map[string][]netip.Prefix)}
	p := &drvPortal{events: make(chan phoenix.Event, 16)}
	inj := &drvInjector{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- drv.Run(ctx, n, p, inj) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	p.events <- phoenix.Event{Kind: phoenix.EventJoined, Topic: portalapi.TopicClient, Status: "ok"}
	p.send(t, portalapi.EventInit, initMsg(cidrRes(rid(1), "198.51.100.0/24")))
	eventually(t, "the interface, DNS and routes", func() bool {
		execMu.Lock()
		defer execMu.Unlock()
		kinds := map[string]bool{}
		for _, a := range own {
			kinds[a.Kind()] = true
		}
		return kinds["set_interface"] && kinds["set_dns"] && kinds["set_routes"]
	})

	// A packet from the TUN device: kept back, create_flow pushed.
	pkt := packet(clientV4, lan, ippacket.ProtoTCP, 443, 1)
	keep := []bool{true}
	drv.Outbound([][]byte{slices.Clone(pkt)}, keep)
	if keep[0] {
		t.Fatal("packet without flow passed")
	}
	eventually(t, "create_flow", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return slices.Contains(p.pushes, portalapi.EventCreateFlow)
	})

	// No relays for the first attempt: the portal is reconnected, the flow asked again after the rejoin.
	n.mu.Lock()
	n.failNext = node.ErrNoRelays
	n.mu.Unlock()
	p.send(t, portalapi.EventFlowCreated, gw(1).flowCreated(rid(1)))
	eventually(t, "a portal reconnect", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.reconnects == 1
	})
	p.events <- phoenix.Event{Kind: phoenix.EventDisconnected, Topic: portalapi.TopicClient}
	p.events <- phoenix.Event{Kind: phoenix.EventJoined, Topic: portalapi.TopicClient, Status: "ok"}
	eventually(t, "create_flow again", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		cnt := 0
		for _, e := range p.pushes {
			if e == portalapi.EventCreateFlow {
				cnt++
			}
		}
		return cnt == 2
	})
	p.send(t, portalapi.EventFlowCreated, gw(1).flowCreated(rid(1)))
	eventually(t, "the connection and its AllowedIPs", func() bool {
		n.mu.Lock()
		defer n.mu.Unlock()
		return len(n.upserts) == 1 && slices.Contains(n.allowed[gw(1).id], netip.MustParsePrefix("198.51.100.0/24"))
	})
	n.events <- node.Event{Kind: node.EventConnectionEstablished, ConnectionID: gw(1).id}
	eventually(t, "the buffered packet injected", func() bool {
		inj.mu.Lock()
		defer inj.mu.Unlock()
		return len(inj.injected) == 1 && slices.Equal(inj.injected[0], pkt)
	})
	keep[0] = true
	drv.Outbound([][]byte{pkt}, keep)
	if !keep[0] {
		t.Fatal("packet with its flow up did not pass")
	}
	var st Status
	drv.Inspect(func(now time.Time) { st = c.Status(now) })
	if len(st.Gateways) != 1 || st.Gateways[0].State != "established" {
		t.Fatalf("status %+v", st.Gateways)
	}
}
