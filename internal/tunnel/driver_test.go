package tunnel

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/node"
)

// recCore is a scripted Core: it records its inputs and emits the actions a test queues.
type recCore struct {
	inputs   []string
	actions  []Action
	deadline time.Time
	timeouts int
	failed   []error
	verdict  Verdict
}

func (c *recCore) note(s string) { c.inputs = append(c.inputs, s) }

func (c *recCore) HandlePortalState(s PortalState, _ time.Time) { c.note("portal:" + s.String()) }
func (c *recCore) HandlePortalMessage(m portalapi.Message, _ time.Time) {
	c.note("msg:" + m.Event())
	if m.Event() == portalapi.EventInit {
		c.actions = append(c.actions, NodeUpsert{Params: node.ConnectionParams{ID: "gw"}, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")},
			Then: []Action{PortalPush{Event: "flow_authorized"}}})
	}
}
func (c *recCore) HandleNodeEvent(ev node.Event, _ time.Time) { c.note("node:" + ev.Kind.String()) }
func (c *recCore) HandleActionFailed(a Action, err error, _ time.Time) {
	c.note("failed:" + a.Kind())
	c.failed = append(c.failed, err)
	if errors.Is(err, node.ErrNoRelays) {
		c.actions = append(c.actions, PortalReconnect{Reason: "no relays"})
	}
}
func (c *recCore) HandleTunInput(pkt []byte, _ time.Time) Verdict {
	if pkt[0] == 0xEE {
		c.actions = append(c.actions, WriteToTUN{Packets: [][]byte{{0xAA}}})
		return Stop
	}
	return c.verdict
}
func (c *recCore) HandleNetworkInput(pkt []byte, _ time.Time) Verdict { return c.verdict }
func (c *recCore) HandleTimeout(now time.Time) {
	if !c.deadline.IsZero() && !now.Before(c.deadline) {
		c.timeouts++
		c.deadline = time.Time{}
	}
}
func (c *recCore) PollTimeout() (time.Time, bool) { return c.deadline, !c.deadline.IsZero() }
func (c *recCore) PollAction() (Action, bool) {
	if len(c.actions) == 0 {
		return nil, false
	}
	a := c.actions[0]
	c.actions = c.actions[1:]
	return a, true
}

type fakeNode struct {
	mu        sync.Mutex
	calls     []string
	upsertErr error
	events    chan node.Event
	key       node.Key
}

func (n *fakeNode) call(s string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.calls = append(n.calls, s)
}
func (n *fakeNode) Calls() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.calls)
}
func (n *fakeNode) PublicKey() node.Key { return n.key }
func (n *fakeNode) UpsertConnection(p node.ConnectionParams) error {
	n.call("upsert:" + p.ID)
	return n.upsertErr
}
func (n *fakeNode) RemoveConnection(id string) error { n.call("remove:" + id); return nil }
func (n *fakeNode) SetAllowedIPs(id string, p []netip.Prefix) error {
	n.call("allowed:" + id)
	return nil
}
func (n *fakeNode) AddRemoteCandidate(id, sdp string) error    { n.call("add:" + id); return nil }
func (n *fakeNode) RemoveRemoteCandidate(id, sdp string) error { n.call("rm:" + id); return nil }
func (n *fakeNode) UpdateRelays(remove []string, add []node.Relay) {
	n.call("relays")
}
func (n *fakeNode) Reset() (node.Key, error) {
	n.call("reset")
	n.key[0]++
	return n.key, nil
}
func (n *fakeNode) Stats() []node.ConnStats   { return nil }
func (n *fakeNode) Events() <-chan node.Event { return n.events }

type fakePortal struct {
	mu       sync.Mutex
	events   chan phoenix.Event
	pushes   []string
	keys     []string
	joined   []string
	reconnec int
}

func (p *fakePortal) Connect(_ context.Context, key string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.keys = append(p.keys, key)
	return nil
}
func (p *fakePortal) Join(topic string, _ any) { p.joined = append(p.joined, topic) }
func (p *fakePortal) Push(topic, event string, _ any) (phoenix.Ref, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pushes = append(p.pushes, topic+"/"+event)
	return phoenix.Ref{}, nil
}
func (p *fakePortal) Reconnect() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reconnec++
}
func (p *fakePortal) Events() <-chan phoenix.Event { return p.events }

type fakeInj struct {
	mu       sync.Mutex
	toTunnel [][]byte
	toTUN    [][]byte
}

func (f *fakeInj) InjectOutbound(p ...[]byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.toTunnel = append(f.toTunnel, p...)
	return nil
}
func (f *fakeInj) WriteTUN(p ...[]byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.toTUN = append(f.toTUN, p...)
	return nil
}

type harness struct {
	core   *recCore
	node   *fakeNode
	portal *fakePortal
	inj    *fakeInj
	d      *Driver
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, core *recCore) *harness {
	t.Helper()
	h := &harness{
		core:   core,
		node:   &fakeNode{events: make(chan node.Event, 16)},
		portal: &fakePortal{events: make(chan phoenix.Event, 16)},
		inj:    &fakeInj{},
		done:   make(chan error, 1),
	}
	d, err := NewDriver(DriverConfig{
		Core: core, Topic: portalapi.TopicClient,
		Decode: portalapi.DecodeClientIngress,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.d = d
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- d.Run(ctx, h.node, h.portal, h.inj) }()
	t.Cleanup(func() {
		cancel()
		<-h.done
	})
	return h
}

// eventually polls cond (under the driver's lock) until it holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestDriverPortalMessagesAndNodeCalls(t *testing.T) {
	h := start(t, &recCore{})
	h.portal.events <- phoenix.Event{Kind: phoenix.EventJoined, Topic: "client"}
	init := portalapi.ClientInit{Interface: portalapi.Interface{IPv4: netip.MustParseAddr("100.64.0.1")}}
	payload, _ := json.Marshal(init)
	h.portal.events <- phoenix.Event{Kind: phoenix.EventMessage, Topic: "client", Event: "init", Payload: payload}
	eventually(t, "upsert then allowed IPs", func() bool {
		return slices.Equal(h.node.Calls(), []string{"upsert:gw", "allowed:gw"})
	})
	eventually(t, "the upsert's Then", func() bool {
		h.portal.mu.Lock()
		defer h.portal.mu.Unlock()
		return slices.Equal(h.portal.pushes, []string{"client/flow_authorized"})
	})
	var inputs []string
	h.d.Inspect(func(time.Time) { inputs = slices.Clone(h.core.inputs) })
	if !slices.Equal(inputs, []string{"portal:joined", "msg:init"}) {
		t.Fatalf("core inputs %v", inputs)
	}
	if h.portal.joined[0] != "client" || len(h.portal.keys) != 1 {
		t.Fatalf("joined %v, keys %v", h.portal.joined, h.portal.keys)
	}
}

func TestDriverNoRelaysFeedsBackAndReconnects(t *testing.T) {
	h := start(t, &recCore{})
	h.node.mu.Lock()
	h.node.upsertErr = node.ErrNoRelays
	h.node.mu.Unlock()
	payload, _ := json.Marshal(portalapi.ClientInit{})
	h.portal.events <- phoenix.Event{Kind: phoenix.EventMessage, Topic: "client", Event: "init", Payload: payload}
	eventually(t, "reconnect", func() bool {
		h.portal.mu.Lock()
		defer h.portal.mu.Unlock()
		return h.portal.reconnec == 1
	})
	// The upsert failed, so AllowedIPs were not set and its Then was skipped.
	if calls := h.node.Calls(); !slices.Equal(calls, []string{"upsert:gw"}) {
		t.Fatalf("node calls %v", calls)
	}
	h.portal.mu.Lock()
	defer h.portal.mu.Unlock()
	if len(h.portal.pushes) != 0 {
		t.Fatalf("Then of a failed upsert carried out: %v", h.portal.pushes)
	}
}

func TestDriverMalformedAndUnknownMessagesIgnored(t *testing.T) {
	h := start(t, &recCore{})
	h.portal.events <- phoenix.Event{Kind: phoenix.EventMessage, Topic: "client", Event: "init", Payload: []byte(`{"interface":7}`)}
	h.portal.events <- phoenix.Event{Kind: phoenix.EventMessage, Topic: "client", Event: "no_such_event", Payload: []byte(`{}`)}
	h.portal.events <- phoenix.Event{Kind: phoenix.EventMessage, Topic: "other", Event: "init", Payload: []byte(`{}`)}
	h.portal.events <- phoenix.Event{Kind: phoenix.EventJoined, Topic: "client"}
	eventually(t, "joined", func() bool {
		var n int
		h.d.Inspect(func(time.Time) { n = len(h.core.inputs) })
		return n == 1
	})
	var inputs []string
	h.d.Inspect(func(time.Time) { inputs = slices.Clone(h.core.inputs) })
	if !slices.Equal(inputs, []string{"portal:joined"}) {
		t.Fatalf("core saw %v", inputs)
	}
}

func TestDriverFatalPortalErrorStops(t *testing.T) {
	h := start(t, &recCore{})
	h.portal.events <- phoenix.Event{Kind: phoenix.EventFatal, Err: phoenix.ErrUnauthorized}
	select {
	case err := <-h.done:
		if !errors.Is(err, ErrPortalRefused) || !errors.Is(err, phoenix.ErrUnauthorized) {
			t.Fatalf("Run: %v", err)
		}
		h.done <- nil // for the cleanup
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop")
	}
}

func TestDriverDataPathAndTimer(t *testing.T) {
	core := &recCore{}
	h := start(t, core)
	keep := []bool{true, true}
	h.d.Outbound([][]byte{{0x45}, {0xEE}}, keep)
	if !keep[0] || keep[1] {
		t.Fatalf("keep %v", keep)
	}
	eventually(t, "local answer written", func() bool {
		h.inj.mu.Lock()
		defer h.inj.mu.Unlock()
		return len(h.inj.toTUN) == 1 && h.inj.toTUN[0][0] == 0xAA
	})
	// A deadline set from another goroutine wakes the loop, which then calls HandleTimeout.
	h.d.Do(func(now time.Time) { core.deadline = now.Add(20 * time.Millisecond) })
	eventually(t, "timeout handled", func() bool {
		var n int
		h.d.Inspect(func(time.Time) { n = core.timeouts })
		return n == 1
	})
}

func TestDriverNodeResetReconnectsWithNewKey(t *testing.T) {
	core := &recCore{}
	h := start(t, core)
	h.d.Do(func(time.Time) { core.actions = append(core.actions, NodeReset{}) })
	eventually(t, "second connect", func() bool {
		h.portal.mu.Lock()
		defer h.portal.mu.Unlock()
		return len(h.portal.keys) == 2 && h.portal.keys[0] != h.portal.keys[1]
	})
}

func TestDriverNodeEvents(t *testing.T) {
	core := &recCore{}
	h := start(t, core)
	h.node.events <- node.Event{Kind: node.EventNoRelays}
	eventually(t, "node event", func() bool {
		var in []string
		h.d.Inspect(func(time.Time) { in = slices.Clone(core.inputs) })
		return slices.Contains(in, "node:no_relays")
	})
}

func TestMergeRelays(t *testing.T) {
	in := []portalapi.Relay{
		{ID: "b", Type: "turn", Addr: netip.MustParseAddrPort("[2001:db8::1]:3478"), Username: "u", Password: "p"},
		{ID: "b", Type: "turn", Addr: netip.MustParseAddrPort("198.18.0.2:3478"), Username: "u", Password: "p"},
		{ID: "a", Type: "turn", Addr: netip.MustParseAddrPort("[::ffff:198.18.0.1]:3478"), Username: "x", Password: "y"},
		{ID: "c", Type: "stun", Addr: netip.MustParseAddrPort("198.18.0.3:3478")},
		{ID: "d", Type: "turn"},
		{ID: "a", Type: "turn", Addr: netip.MustParseAddrPort("198.18.0.9:3478")},
	}
	got := MergeRelays(in)
	want := []node.Relay{
		{ID: "a", Addr4: netip.MustParseAddrPort("198.18.0.1:3478"), Username: "x", Password: "y", Realm: RelayRealm},
		{ID: "b", Addr4: netip.MustParseAddrPort("198.18.0.2:3478"), Addr6: netip.MustParseAddrPort("[2001:db8::1]:3478"), Username: "u", Password: "p", Realm: RelayRealm},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("MergeRelays:\n got %+v\nwant %+v", got, want)
	}
}
