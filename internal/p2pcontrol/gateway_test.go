package p2pcontrol

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

func newTestGateway(t *testing.T, maxDomains int) *Gateway {
	t.Helper()
	g, err := NewGateway(GatewayConfig{Local: gwAddr, MaxDomainsPerPeer: maxDomains})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func drainGateway(t *testing.T, g *Gateway) ([]DomainStatus, []GatewayEvent) {
	t.Helper()
	var sts []DomainStatus
	for {
		tr, ok := g.PollTransmit()
		if !ok {
			break
		}
		p, err := Decode(tr.Packet)
		if err != nil {
			t.Fatalf("gateway sent an undecodable packet: %v", err)
		}
		if p.Src != gwAddr || p.Dst != tr.Peer {
			t.Fatalf("transmit to %s carries %s -> %s", tr.Peer, p.Src, p.Dst)
		}
		if st, ok := p.Msg.(DomainStatus); ok {
			sts = append(sts, st)
		}
	}
	var evs []GatewayEvent
	for {
		ev, ok := g.PollEvent()
		if !ok {
			break
		}
		evs = append(evs, ev)
	}
	return sts, evs
}

func assignedPacket(t *testing.T, m AssignedIPs) []byte {
	t.Helper()
	pkt, err := Encode(clientAddr, gwAddr, m)
	if err != nil {
		t.Fatal(err)
	}
	return pkt
}

func TestNewGatewayConfig(t *testing.T) {
	for _, cfg := range []GatewayConfig{{}, {Local: gwAddr, MaxDomainsPerPeer: -1}} {
		if _, err := NewGateway(cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("NewGateway(%+v) err = %v", cfg, err)
		}
	}
}

func TestGatewayIdempotentAssignedIPs(t *testing.T) {
	g := newTestGateway(t, 0)
	a := AssignedIPs{Resource: resA, Domain: "example.com", ProxyIPs: proxyIPs, Seq: 1}
	if err := g.HandlePacket(assignedPacket(t, a), t0); err != nil {
		t.Fatal(err)
	}
	sts, evs := drainGateway(t, g)
	if len(sts) != 0 || len(evs) != 1 || evs[0].Kind != EventSetupNAT || evs[0].Peer != clientAddr || evs[0].Assignment.Seq != 1 {
		t.Fatalf("statuses %+v events %+v", sts, evs)
	}
	// A retransmit while the loop resolves: nothing new.
	_ = g.HandlePacket(assignedPacket(t, a), t0)
	if sts, evs := drainGateway(t, g); len(sts)+len(evs) != 0 {
		t.Fatalf("retransmit while resolving: %+v %+v", sts, evs)
	}
	if err := g.Complete(clientAddr, evs[0].Assignment, NatActive, t0); err != nil {
		t.Fatal(err)
	}
	sts, _ = drainGateway(t, g)
	if len(sts) != 1 || sts[0] != (DomainStatus{Resource: resA, Domain: "example.com", Status: NatActive, Seq: 1}) {
		t.Fatalf("statuses %+v", sts)
	}
	// Completing twice is harmless and silent.
	if err := g.Complete(clientAddr, evs[0].Assignment, NatActive, t0); err != nil {
		t.Fatal(err)
	}
	// Retransmits (same or older seq, or none) are answered at once, echoing their seq, without a new event.
	for _, seq := range []uint64{1, 0} {
		a.Seq = seq
		_ = g.HandlePacket(assignedPacket(t, a), t0)
		sts, evs := drainGateway(t, g)
		if len(evs) != 0 || len(sts) != 1 || sts[0].Seq != seq || sts[0].Status != NatActive {
			t.Fatalf("repeat seq %d: statuses %+v events %+v", seq, sts, evs)
		}
	}
	// A higher seq with the same content sets the domain up again (re-resolve); older retransmits arriving
	// meanwhile wait, and the answer echoes the highest seq.
	a.Seq = 5
	_ = g.HandlePacket(assignedPacket(t, a), t0)
	a.Seq = 4
	_ = g.HandlePacket(assignedPacket(t, a), t0)
	sts, evs = drainGateway(t, g)
	if len(sts) != 0 || len(evs) != 1 || evs[0].Assignment.Seq != 5 {
		t.Fatalf("refresh: statuses %+v events %+v", sts, evs)
	}
	_ = g.Complete(clientAddr, evs[0].Assignment, NatActive, t0)
	if sts, _ := drainGateway(t, g); len(sts) != 1 || sts[0].Seq != 5 {
		t.Fatalf("refresh answer %+v", sts)
	}
}

func TestGatewaySupersede(t *testing.T) {
	g := newTestGateway(t, 0)
	a := AssignedIPs{Resource: resA, Domain: "example.com", ProxyIPs: proxyIPs, Seq: 1}
	b := a
	b.ProxyIPs = proxyIPs[:4]
	b.Seq = 2
	_ = g.HandleAssignedIPs(clientAddr, a, t0)
	_ = g.HandleAssignedIPs(clientAddr, b, t0)
	_, evs := drainGateway(t, g)
	if len(evs) != 2 {
		t.Fatalf("events %+v", evs)
	}
	if g.IsCurrent(clientAddr, a) || !g.IsCurrent(clientAddr, b) {
		t.Fatal("IsCurrent wrong")
	}
	if err := g.Complete(clientAddr, a, NatActive, t0); !errors.Is(err, ErrStale) {
		t.Fatalf("completing the superseded assignment: %v", err)
	}
	if err := g.Complete(clientAddr, b, NatActive, t0); err != nil {
		t.Fatal(err)
	}
	sts, _ := drainGateway(t, g)
	if len(sts) != 1 || sts[0].Seq != 2 {
		t.Fatalf("statuses %+v", sts)
	}
}

func TestGatewayInactiveRetriedOnNewSeq(t *testing.T) {
	g := newTestGateway(t, 0)
	a := AssignedIPs{Resource: resA, Domain: "example.com", ProxyIPs: proxyIPs, Seq: 1}
	_ = g.HandleAssignedIPs(clientAddr, a, t0)
	_ = g.Complete(clientAddr, a, NatInactive, t0)
	sts, _ := drainGateway(t, g)
	if len(sts) != 1 || sts[0].Status != NatInactive {
		t.Fatalf("statuses %+v", sts)
	}
	_ = g.HandleAssignedIPs(clientAddr, a, t0) // retransmit of the same assignment: same answer
	sts, evs := drainGateway(t, g)
	if len(sts) != 1 || sts[0].Status != NatInactive || len(evs) != 0 {
		t.Fatalf("statuses %+v events %+v", sts, evs)
	}
	a.Seq = 2 // the client tries again
	_ = g.HandleAssignedIPs(clientAddr, a, t0)
	sts, evs = drainGateway(t, g)
	if len(sts) != 0 || len(evs) != 1 || evs[0].Assignment.Seq != 2 {
		t.Fatalf("statuses %+v events %+v", sts, evs)
	}
}

func TestGatewayGoodbyeForgetAndLimits(t *testing.T) {
	g := newTestGateway(t, 2)
	mk := func(d string) AssignedIPs {
		return AssignedIPs{Resource: resA, Domain: d, ProxyIPs: proxyIPs, Seq: 1}
	}
	_ = g.HandleAssignedIPs(clientAddr, mk("a.com"), t0)
	_ = g.HandleAssignedIPs(clientAddr, mk("b.com"), t0)
	if err := g.HandleAssignedIPs(clientAddr, mk("c.com"), t0); !errors.Is(err, ErrTooManyDomains) {
		t.Fatalf("third domain: %v", err)
	}
	sts, evs := drainGateway(t, g)
	if len(evs) != 2 || len(sts) != 1 || sts[0].Domain != "c.com" || sts[0].Status != NatInactive {
		t.Fatalf("statuses %+v events %+v", sts, evs)
	}
	g.Forget(clientAddr, "A.com.")
	if g.IsCurrent(clientAddr, mk("a.com")) {
		t.Fatal("Forget kept the domain")
	}
	_ = g.HandleAssignedIPs(clientAddr, mk("c.com"), t0)
	if _, evs := drainGateway(t, g); len(evs) != 1 {
		t.Fatalf("after Forget: events %+v", evs)
	}
	_ = g.Complete(clientAddr, mk("c.com"), NatActive, t0)
	bye, _ := Encode(clientAddr, gwAddr, Goodbye{})
	if err := g.HandlePacket(bye, t0); err != nil {
		t.Fatal(err)
	}
	sts, evs = drainGateway(t, g)
	if len(sts) != 0 || len(evs) != 1 || evs[0].Kind != EventClientGoodbye || evs[0].Peer != clientAddr {
		t.Fatalf("after Goodbye: statuses %+v events %+v", sts, evs)
	}
	if g.IsCurrent(clientAddr, mk("b.com")) {
		t.Fatal("Goodbye kept state")
	}
	if err := g.SayGoodbye(clientAddr); err != nil {
		t.Fatal(err)
	}
	if tr, ok := g.PollTransmit(); !ok || !IsControl(tr.Packet) || tr.Packet[40] != byte(KindGoodbye) {
		t.Fatal("no Goodbye queued")
	}
}

func TestGatewayHandlePacketErrors(t *testing.T) {
	g := newTestGateway(t, 0)
	status, _ := Encode(clientAddr, gwAddr, DomainStatus{Resource: resA, Domain: "a.com"})
	wrongDst, _ := Encode(clientAddr, clientAddr, Goodbye{})
	for _, tt := range []struct {
		name string
		pkt  []byte
		want error
	}{
		{"status to gateway", status, ErrUnexpectedEvent},
		{"wrong destination", wrongDst, ErrWrongDestination},
		{"unknown kind", rawPacket(200, 0, ""), ErrUnknownKind},
		{"malformed", rawPacket(0, 0, `{"resource":1}`), ErrMalformed},
	} {
		if err := g.HandlePacket(tt.pkt, t0); !errors.Is(err, tt.want) {
			t.Errorf("%s: err = %v, want %v", tt.name, err, tt.want)
		}
	}
	if err := g.HandleAssignedIPs(netip.MustParseAddr("100.64.0.1"), AssignedIPs{Resource: resA, Domain: "a.com", ProxyIPs: proxyIPs}, t0); !errors.Is(err, ErrInvalidAddress) {
		t.Errorf("IPv4 peer: %v", err)
	}
	if err := g.HandleAssignedIPs(clientAddr, AssignedIPs{Resource: resA, Domain: "a.com"}, t0); !errors.Is(err, ErrInvalidMessage) {
		t.Errorf("no proxy IPs: %v", err)
	}
}

// Client and gateway machines talk to each other over a lossless "tunnel".
func TestClientGatewayEndToEnd(t *testing.T) {
	c := newTestClient(t, 0)
	g := newTestGateway(t, 0)
	id, err := c.Assign(gwAddr, resA, "example.com", proxyIPs, t0)
	if err != nil {
		t.Fatal(err)
	}
	now := t0
	var confirmed bool
	for step := 0; step < 10 && !confirmed; step++ {
		for tr, ok := c.PollTransmit(); ok; tr, ok = c.PollTransmit() {
			if err := g.HandlePacket(tr.Packet, now); err != nil {
				t.Fatal(err)
			}
		}
		for ev, ok := g.PollEvent(); ok; ev, ok = g.PollEvent() {
			if err := g.Complete(ev.Peer, ev.Assignment, NatActive, now); err != nil {
				t.Fatal(err)
			}
		}
		for tr, ok := g.PollTransmit(); ok; tr, ok = g.PollTransmit() {
			if err := c.HandlePacket(tr.Packet, now); err != nil {
				t.Fatal(err)
			}
		}
		for ev, ok := c.PollEvent(); ok; ev, ok = c.PollEvent() {
			if ev.Kind != EventConfirmed || ev.ID != id {
				t.Fatalf("event %+v", ev)
			}
			confirmed = true
		}
		now = now.Add(time.Second)
	}
	if !confirmed {
		t.Fatal("not confirmed")
	}
	if c.Stats().Sends != 1 {
		t.Fatalf("stats %+v", c.Stats())
	}
}
