package p2pcontrol

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func newTestClient(t *testing.T, maxSends int) *Client {
	t.Helper()
	c, err := NewClient(ClientConfig{Local: clientAddr, MaxSends: maxSends})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// drainClient returns the decoded transmits and the events of c.
func drainClient(t *testing.T, c *Client) ([]Packet, []ClientEvent) {
	t.Helper()
	var pkts []Packet
	for {
		tr, ok := c.PollTransmit()
		if !ok {
			break
		}
		p, err := Decode(tr.Packet)
		if err != nil {
			t.Fatalf("client sent an undecodable packet: %v", err)
		}
		if p.Dst != tr.Peer || p.Src != clientAddr {
			t.Fatalf("transmit to %s carries %s -> %s", tr.Peer, p.Src, p.Dst)
		}
		pkts = append(pkts, p)
	}
	var evs []ClientEvent
	for {
		ev, ok := c.PollEvent()
		if !ok {
			break
		}
		evs = append(evs, ev)
	}
	return pkts, evs
}

func statusPacket(t *testing.T, src netip.Addr, m DomainStatus) []byte {
	t.Helper()
	pkt, err := Encode(src, clientAddr, m)
	if err != nil {
		t.Fatal(err)
	}
	return pkt
}

func TestNewClientConfig(t *testing.T) {
	for _, cfg := range []ClientConfig{
		{},
		{Local: netip.MustParseAddr("100.64.0.1")},
		{Local: clientAddr, MaxSends: -1},
		{Local: clientAddr, InitialRetransmit: -time.Second},
	} {
		if _, err := NewClient(cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("NewClient(%+v) err = %v, want ErrInvalidConfig", cfg, err)
		}
	}
}

func TestClientRetransmitScheduleAndGiveUp(t *testing.T) {
	c := newTestClient(t, 4)
	id, err := c.Assign(gwAddr, resA, "Example.COM.", proxyIPs, t0)
	if err != nil {
		t.Fatal(err)
	}
	if id != 1 {
		t.Fatalf("first ID %d", id)
	}
	pkts, _ := drainClient(t, c)
	if len(pkts) != 1 {
		t.Fatalf("%d packets after Assign", len(pkts))
	}
	m := pkts[0].Msg.(AssignedIPs)
	if m.Domain != "example.com" || m.Seq != 1 || m.Resource != resA {
		t.Fatalf("sent %+v", m)
	}
	// Sends at 0, 1, 3, 7 s; gives up at 15 s (waits 1, 2, 4, 8 s).
	var sendTimes []time.Duration
	sendTimes = append(sendTimes, 0)
	var evs []ClientEvent
	for range 20 {
		at, ok := c.PollTimeout()
		if !ok {
			break
		}
		c.HandleTimeout(at.Add(-time.Millisecond)) // early: nothing happens
		if p, e := drainClient(t, c); len(p)+len(e) != 0 {
			t.Fatal("early HandleTimeout did something")
		}
		c.HandleTimeout(at)
		p, e := drainClient(t, c)
		for range p {
			sendTimes = append(sendTimes, at.Sub(t0))
		}
		evs = append(evs, e...)
		if len(e) > 0 && at.Sub(t0) != 15*time.Second {
			t.Fatalf("gave up at %s", at.Sub(t0))
		}
	}
	want := []time.Duration{0, time.Second, 3 * time.Second, 7 * time.Second}
	if len(sendTimes) != len(want) {
		t.Fatalf("sends at %v, want %v", sendTimes, want)
	}
	for i := range want {
		if sendTimes[i] != want[i] {
			t.Fatalf("sends at %v, want %v", sendTimes, want)
		}
	}
	if len(evs) != 1 || evs[0].Kind != EventGaveUp || evs[0].ID != id {
		t.Fatalf("events %+v", evs)
	}
	if st, _ := c.State(gwAddr, "example.com"); st != StateFailed {
		t.Fatalf("state %v", st)
	}
	if s := c.Stats(); s.Sends != 4 || s.Retransmits != 3 || s.GaveUp != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestClientBackoffCap(t *testing.T) {
	c, err := NewClient(ClientConfig{Local: clientAddr, InitialRetransmit: time.Second, MaxRetransmit: 3 * time.Second, MaxSends: 5})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Assign(gwAddr, resA, "a.com", proxyIPs, t0); err != nil {
		t.Fatal(err)
	}
	var waits []time.Duration
	last := t0
	for {
		at, ok := c.PollTimeout()
		if !ok {
			break
		}
		waits = append(waits, at.Sub(last))
		last = at
		c.HandleTimeout(at)
	}
	want := []time.Duration{1, 2, 3, 3, 3}
	for i := range want {
		want[i] *= time.Second
	}
	if len(waits) != len(want) {
		t.Fatalf("waits %v, want %v", waits, want)
	}
	for i := range want {
		if waits[i] != want[i] {
			t.Fatalf("waits %v, want %v", waits, want)
		}
	}
}

func TestClientConfirmStopsSends(t *testing.T) {
	c := newTestClient(t, 0)
	id, _ := c.Assign(gwAddr, resA, "example.com", proxyIPs, t0)
	drainClient(t, c)
	if err := c.HandlePacket(statusPacket(t, gwAddr, DomainStatus{Resource: resA, Domain: "example.com", Status: NatActive, Seq: uint64(id)}), t0); err != nil {
		t.Fatal(err)
	}
	pkts, evs := drainClient(t, c)
	if len(pkts) != 0 || len(evs) != 1 || evs[0].Kind != EventConfirmed || evs[0].ID != id || evs[0].Peer != gwAddr {
		t.Fatalf("pkts %v events %+v", pkts, evs)
	}
	if _, ok := c.PollTimeout(); ok {
		t.Fatal("timeout pending after confirmation")
	}
	c.HandleTimeout(t0.Add(time.Hour))
	if pkts, evs := drainClient(t, c); len(pkts)+len(evs) != 0 {
		t.Fatal("activity after confirmation")
	}
	// The same assignment again: a no-op with the same ID.
	again, err := c.Assign(gwAddr, resA, "EXAMPLE.com", proxyIPs, t0.Add(time.Hour))
	if err != nil || again != id {
		t.Fatalf("re-assign = %d, %v", again, err)
	}
	if pkts, evs := drainClient(t, c); len(pkts)+len(evs) != 0 {
		t.Fatal("re-assigning a confirmed assignment sent something")
	}
	// A duplicate status changes nothing.
	_ = c.HandlePacket(statusPacket(t, gwAddr, DomainStatus{Resource: resA, Domain: "example.com", Status: NatInactive, Seq: uint64(id)}), t0)
	if st, _ := c.State(gwAddr, "example.com"); st != StateConfirmed {
		t.Fatalf("state %v", st)
	}
}

func TestClientIdempotentWhilePending(t *testing.T) {
	c := newTestClient(t, 0)
	id, _ := c.Assign(gwAddr, resA, "example.com", proxyIPs, t0)
	drainClient(t, c)
	again, _ := c.Assign(gwAddr, resA, "example.com", proxyIPs, t0.Add(500*time.Millisecond))
	if again != id {
		t.Fatalf("IDs %d, %d", id, again)
	}
	if pkts, _ := drainClient(t, c); len(pkts) != 0 {
		t.Fatal("same assignment sent again")
	}
	if at, _ := c.PollTimeout(); at != t0.Add(time.Second) {
		t.Fatalf("timer moved to %s", at)
	}
}

func TestClientSupersedeAndStaleStatus(t *testing.T) {
	c := newTestClient(t, 0)
	old, _ := c.Assign(gwAddr, resA, "example.com", proxyIPs, t0)
	other := append([]netip.Addr(nil), proxyIPs...)
	other[0] = netip.MustParseAddr("100.96.0.9")
	cur, _ := c.Assign(gwAddr, resA, "example.com", other, t0)
	pkts, evs := drainClient(t, c)
	if len(pkts) != 2 || pkts[1].Msg.(AssignedIPs).Seq != uint64(cur) {
		t.Fatalf("packets %+v", pkts)
	}
	if len(evs) != 1 || evs[0].Kind != EventSuperseded || evs[0].ID != old {
		t.Fatalf("events %+v", evs)
	}
	// The late answer to the old assignment, and a status for another resource, are dropped.
	_ = c.HandlePacket(statusPacket(t, gwAddr, DomainStatus{Resource: resA, Domain: "example.com", Status: NatActive, Seq: uint64(old)}), t0)
	_ = c.HandlePacket(statusPacket(t, gwAddr, DomainStatus{Resource: "00000000-0000-0000-0000-000000000066", Domain: "example.com", Status: NatActive, Seq: uint64(cur)}), t0)
	_ = c.HandlePacket(statusPacket(t, netip.MustParseAddr("fd00:2021:1111::2"), DomainStatus{Resource: resA, Domain: "example.com", Status: NatActive, Seq: uint64(cur)}), t0)
	if _, evs := drainClient(t, c); len(evs) != 0 {
		t.Fatalf("stale statuses produced %+v", evs)
	}
	if c.Stats().StaleStatuses != 3 {
		t.Fatalf("stats %+v", c.Stats())
	}
	_ = c.HandlePacket(statusPacket(t, gwAddr, DomainStatus{Resource: resA, Domain: "example.com", Status: NatActive, Seq: uint64(cur)}), t0)
	if _, evs := drainClient(t, c); len(evs) != 1 || evs[0].Kind != EventConfirmed || evs[0].ID != cur {
		t.Fatalf("events %+v", evs)
	}
}

// A Firezone gateway does not echo seq: its status confirms the current assignment.
func TestClientStatusWithoutSeq(t *testing.T) {
	c := newTestClient(t, 0)
	id, _ := c.Assign(gwAddr, resA, "example.com", proxyIPs, t0)
	_ = c.HandlePacket(statusPacket(t, gwAddr, DomainStatus{Resource: resA, Domain: "example.com", Status: NatActive}), t0)
	if _, evs := drainClient(t, c); len(evs) != 1 || evs[0].Kind != EventConfirmed || evs[0].ID != id {
		t.Fatalf("events %+v", evs)
	}
}

func TestClientRejectedThenRetried(t *testing.T) {
	c := newTestClient(t, 0)
	id, _ := c.Assign(gwAddr, resA, "example.com", proxyIPs, t0)
	_ = c.HandlePacket(statusPacket(t, gwAddr, DomainStatus{Resource: resA, Domain: "example.com", Status: NatInactive, Seq: uint64(id)}), t0)
	if _, evs := drainClient(t, c); len(evs) != 1 || evs[0].Kind != EventRejected {
		t.Fatalf("events %+v", evs)
	}
	again, _ := c.Assign(gwAddr, resA, "example.com", proxyIPs, t0)
	if again == id {
		t.Fatal("a rejected assignment was not retried")
	}
	if pkts, _ := drainClient(t, c); len(pkts) != 1 {
		t.Fatalf("%d packets", len(pkts))
	}
}

func TestClientGoodbye(t *testing.T) {
	c := newTestClient(t, 0)
	other := netip.MustParseAddr("fd00:2021:1111::2")
	a, _ := c.Assign(gwAddr, resA, "a.com", proxyIPs, t0)
	b, _ := c.Assign(gwAddr, resA, "b.com", proxyIPs, t0)
	keep, _ := c.Assign(other, resA, "a.com", proxyIPs, t0)
	bye, err := Encode(gwAddr, clientAddr, Goodbye{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.HandlePacket(bye, t0); err != nil {
		t.Fatal(err)
	}
	pkts, evs := drainClient(t, c)
	if len(pkts) != 1 || pkts[0].Dst != other {
		t.Fatalf("transmits to a gone peer were kept: %+v", pkts)
	}
	want := []ClientEvent{{Kind: EventAborted, ID: a}, {Kind: EventAborted, ID: b}, {Kind: EventPeerGoodbye}}
	if len(evs) != len(want) {
		t.Fatalf("events %+v", evs)
	}
	for i, w := range want {
		if evs[i].Kind != w.Kind || evs[i].ID != w.ID || evs[i].Peer != gwAddr {
			t.Fatalf("event %d = %+v, want %+v", i, evs[i], w)
		}
	}
	if st, _ := c.State(gwAddr, "a.com"); st != StateNone {
		t.Fatalf("state %v", st)
	}
	if st, id := c.State(other, "a.com"); st != StatePending || id != keep {
		t.Fatalf("other peer's state %v %d", st, id)
	}
	if err := c.SayGoodbye(other); err != nil {
		t.Fatal(err)
	}
	pkts, evs = drainClient(t, c)
	if len(pkts) != 1 || pkts[0].Msg.Kind() != KindGoodbye || pkts[0].Dst != other {
		t.Fatalf("goodbye packets %+v", pkts)
	}
	if len(evs) != 1 || evs[0].Kind != EventAborted || evs[0].ID != keep {
		t.Fatalf("events %+v", evs)
	}
	if _, ok := c.PollTimeout(); ok {
		t.Fatal("timer left after all peers are gone")
	}
}

func TestClientHandlePacketErrors(t *testing.T) {
	c := newTestClient(t, 0)
	assigned, _ := Encode(gwAddr, clientAddr, AssignedIPs{Resource: resA, Domain: "a.com", ProxyIPs: proxyIPs})
	wrongDst, _ := Encode(gwAddr, gwAddr, Goodbye{})
	tests := []struct {
		name string
		pkt  []byte
		want error
	}{
		{"assigned ips to client", assigned, ErrUnexpectedEvent},
		{"wrong destination", wrongDst, ErrWrongDestination},
		{"unknown kind", rawPacket(9, 0, ""), ErrUnknownKind},
		{"not control", []byte{0x45, 0}, ErrNotControl},
		{"malformed", rawPacket(1, 0, "{"), ErrMalformed},
	}
	for _, tt := range tests {
		pkt := tt.pkt
		if tt.name == "unknown kind" || tt.name == "malformed" { // rawPacket goes client -> gateway
			copy(pkt[24:40], clientAddr.AsSlice())
		}
		if err := c.HandlePacket(pkt, t0); !errors.Is(err, tt.want) {
			t.Errorf("%s: err = %v, want %v", tt.name, err, tt.want)
		}
	}
	if _, err := c.Assign(netip.MustParseAddr("100.64.0.1"), resA, "a.com", proxyIPs, t0); !errors.Is(err, ErrInvalidAddress) {
		t.Errorf("Assign to an IPv4 peer: err = %v", err)
	}
	if _, err := c.Assign(gwAddr, "x", "a.com", proxyIPs, t0); !errors.Is(err, ErrInvalidMessage) {
		t.Errorf("Assign with a bad resource: err = %v", err)
	}
	if st, _ := c.State(gwAddr, "a.com"); st != StateNone {
		t.Errorf("failed Assign left state %v", st)
	}
}

func TestClientForget(t *testing.T) {
	c := newTestClient(t, 0)
	id, _ := c.Assign(gwAddr, resA, "a.com", proxyIPs, t0)
	c.Forget(gwAddr, "A.COM")
	if _, evs := drainClient(t, c); len(evs) != 1 || evs[0].Kind != EventAborted || evs[0].ID != id {
		t.Fatalf("events %+v", evs)
	}
	if _, ok := c.PollTimeout(); ok {
		t.Fatal("timer left after Forget")
	}
	again, _ := c.Assign(gwAddr, resA, "a.com", proxyIPs, t0)
	if again == id {
		t.Fatal("Assign after Forget reused the ID")
	}
	c.Forget(gwAddr, "unknown.com") // harmless
}
