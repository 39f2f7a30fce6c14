package p2pcontrol

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"pgregory.net/rapid"
)

const propMaxSends = 5

// netSim is a lossy, reordering tunnel between one Client and two Gateway machines, with a record of what
// the client sent and reported, to check the invariants of the retransmit machine.
type netSim struct {
	c        *Client
	gws      map[netip.Addr]*Gateway
	now      time.Time
	toGW     []Transmit            // in flight client → gateway (Transmit.Peer is the gateway)
	toClient []Transmit            // in flight gateway → client (Transmit.Peer is the gateway that sent it)
	history  []Transmit            // every gateway → client packet ever sent, for replays
	setups   []setup               // EventSetupNAT not completed yet
	issued   map[AssignmentID]bool // every ID Assign returned
	sends    map[AssignmentID]int
	terminal map[AssignmentID]ClientEventKind
	// contents ties an ID to its content.
	contents map[AssignmentID]AssignedIPs
}

var (
	propPeers   = []netip.Addr{gwAddr, netip.MustParseAddr("fd00:2021:1111::2")}
	propDomains = []string{"a.example.com", "b.example.com"}
	propIPSets  = [][]netip.Addr{proxyIPs, proxyIPs[:4]}
	propRes     = []string{resA, "00000000-0000-0000-0000-000000000066"}
)

// setup is an EventSetupNAT and the gateway that emitted it.
type setup struct {
	gw netip.Addr
	ev GatewayEvent
}

func newNetSim(t *rapid.T) *netSim {
	c, err := NewClient(ClientConfig{Local: clientAddr, MaxSends: propMaxSends})
	if err != nil {
		t.Fatal(err)
	}
	s := &netSim{
		c: c, gws: map[netip.Addr]*Gateway{}, now: t0,
		issued: map[AssignmentID]bool{}, sends: map[AssignmentID]int{},
		terminal: map[AssignmentID]ClientEventKind{}, contents: map[AssignmentID]AssignedIPs{},
	}
	for _, p := range propPeers {
		g, err := NewGateway(GatewayConfig{Local: p})
		if err != nil {
			t.Fatal(err)
		}
		s.gws[p] = g
	}
	return s
}

// drain moves the machines' outputs into the network and checks the per-step invariants. status is the
// DomainStatus the client just handled, if any: only it may end an assignment as confirmed or rejected.
func (s *netSim) drain(t *rapid.T, status *DomainStatus) {
	for tr, ok := s.c.PollTransmit(); ok; tr, ok = s.c.PollTransmit() {
		p, err := Decode(tr.Packet)
		if err != nil {
			t.Fatalf("client sent an undecodable packet: %v", err)
		}
		if m, ok := p.Msg.(AssignedIPs); ok {
			id := AssignmentID(m.Seq)
			if !s.issued[id] {
				t.Fatalf("client sent seq %d that Assign never returned", id)
			}
			if k, done := s.terminal[id]; done {
				t.Fatalf("assignment %d sent after it ended (%s)", id, k)
			}
			s.sends[id]++
			if s.sends[id] > propMaxSends {
				t.Fatalf("assignment %d sent %d times, max %d", id, s.sends[id], propMaxSends)
			}
		}
		s.toGW = append(s.toGW, tr)
	}
	for ev, ok := s.c.PollEvent(); ok; ev, ok = s.c.PollEvent() {
		if ev.Kind == EventPeerGoodbye {
			continue
		}
		if k, done := s.terminal[ev.ID]; done {
			t.Fatalf("assignment %d ended twice: %s then %s", ev.ID, k, ev.Kind)
		}
		s.terminal[ev.ID] = ev.Kind
		if ev.Kind == EventConfirmed || ev.Kind == EventRejected {
			if status == nil || AssignmentID(status.Seq) != ev.ID {
				t.Fatalf("assignment %d %s without its own DomainStatus (handled %+v)", ev.ID, ev.Kind, status)
			}
			if want := status.Status == NatActive; want != (ev.Kind == EventConfirmed) {
				t.Fatalf("assignment %d %s by status %s", ev.ID, ev.Kind, status.Status)
			}
			c := s.contents[ev.ID]
			if ev.Resource != c.Resource || ev.Domain != c.Domain || !slices.Equal(ev.ProxyIPs, c.ProxyIPs) {
				t.Fatalf("event %+v does not match assignment %+v", ev, c)
			}
		}
	}
	for peer, g := range s.gws {
		for tr, ok := g.PollTransmit(); ok; tr, ok = g.PollTransmit() {
			tr.Peer = peer
			s.toClient = append(s.toClient, tr)
			s.history = append(s.history, tr)
		}
		for ev, ok := g.PollEvent(); ok; ev, ok = g.PollEvent() {
			if ev.Kind == EventSetupNAT {
				s.setups = append(s.setups, setup{gw: peer, ev: ev})
			}
		}
	}
}

func (s *netSim) deliverToClient(t *rapid.T, tr Transmit) {
	var status *DomainStatus
	if p, err := Decode(tr.Packet); err == nil {
		if m, ok := p.Msg.(DomainStatus); ok {
			status = &m
		}
	}
	if err := s.c.HandlePacket(tr.Packet, s.now); err != nil {
		t.Fatalf("client rejected a gateway packet: %v", err)
	}
	s.drain(t, status)
}

func pick[T any](t *rapid.T, list []T, label string) (int, T) {
	i := rapid.IntRange(0, len(list)-1).Draw(t, label)
	return i, list[i]
}

func TestPropertyClientRetransmit(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		s := newNetSim(t)
		t.Repeat(map[string]func(*rapid.T){
			"assign": func(t *rapid.T) {
				_, peer := pick(t, propPeers, "peer")
				_, domain := pick(t, propDomains, "domain")
				_, ips := pick(t, propIPSets, "ips")
				_, res := pick(t, propRes, "resource")
				before, _ := s.c.State(peer, domain)
				id, err := s.c.Assign(peer, res, domain, ips, s.now)
				if err != nil {
					t.Fatal(err)
				}
				if s.issued[id] {
					// Idempotent: only the current, live assignment with the same content is returned again.
					if before != StatePending && before != StateConfirmed {
						t.Fatalf("Assign returned old ID %d for a %v assignment", id, before)
					}
					c := s.contents[id]
					if c.Resource != res || !slices.Equal(c.ProxyIPs, ips) {
						t.Fatalf("Assign returned ID %d of different content", id)
					}
					if s.c.transmits.Len() != 0 {
						t.Fatal("an idempotent Assign queued a send")
					}
				}
				s.issued[id] = true
				s.contents[id] = AssignedIPs{Resource: res, Domain: domain, ProxyIPs: ips}
				s.drain(t, nil)
			},
			"tick": func(t *rapid.T) {
				_, dt := pick(t, []time.Duration{0, 100 * time.Millisecond, time.Second, 2 * time.Second, 5 * time.Second, 20 * time.Second}, "dt")
				s.now = s.now.Add(dt)
				if at, ok := s.c.PollTimeout(); ok && !s.now.Before(at) || rapid.Bool().Draw(t, "spurious") {
					s.c.HandleTimeout(s.now)
				}
				s.drain(t, nil)
			},
			"deliver to gateway": func(t *rapid.T) {
				if len(s.toGW) == 0 {
					t.Skip("nothing in flight")
				}
				i, tr := pick(t, s.toGW, "packet")
				s.toGW = slices.Delete(s.toGW, i, i+1)
				if err := s.gws[tr.Peer].HandlePacket(tr.Packet, s.now); err != nil {
					t.Fatalf("gateway rejected a client packet: %v", err)
				}
				s.drain(t, nil)
			},
			"complete setup": func(t *rapid.T) {
				if len(s.setups) == 0 {
					t.Skip("no setup pending")
				}
				i, su := pick(t, s.setups, "setup")
				s.setups = slices.Delete(s.setups, i, i+1)
				status := NatActive
				if rapid.IntRange(0, 4).Draw(t, "inactive") == 0 {
					status = NatInactive
				}
				_ = s.gws[su.gw].Complete(su.ev.Peer, su.ev.Assignment, status, s.now) // ErrStale is fine
				s.drain(t, nil)
			},
			"deliver to client": func(t *rapid.T) {
				if len(s.toClient) == 0 {
					t.Skip("nothing in flight")
				}
				i, tr := pick(t, s.toClient, "packet")
				s.toClient = slices.Delete(s.toClient, i, i+1)
				s.deliverToClient(t, tr)
			},
			"replay old status": func(t *rapid.T) {
				if len(s.history) == 0 {
					t.Skip("nothing sent yet")
				}
				_, tr := pick(t, s.history, "old packet")
				s.deliverToClient(t, tr)
			},
			"lose": func(t *rapid.T) {
				if rapid.Bool().Draw(t, "direction") {
					if len(s.toGW) > 0 {
						i, _ := pick(t, s.toGW, "lost")
						s.toGW = slices.Delete(s.toGW, i, i+1)
					}
				} else if len(s.toClient) > 0 {
					i, _ := pick(t, s.toClient, "lost")
					s.toClient = slices.Delete(s.toClient, i, i+1)
				}
			},
			"forget": func(t *rapid.T) {
				_, peer := pick(t, propPeers, "peer")
				_, domain := pick(t, propDomains, "domain")
				s.c.Forget(peer, domain)
				s.drain(t, nil)
			},
			"gateway goodbye": func(t *rapid.T) {
				if rapid.IntRange(0, 9).Draw(t, "rare") != 0 {
					t.Skip("goodbye is rare")
				}
				_, peer := pick(t, propPeers, "peer")
				if err := s.gws[peer].SayGoodbye(clientAddr); err != nil {
					t.Fatal(err)
				}
				s.setups = slices.DeleteFunc(s.setups, func(su setup) bool { return su.gw == peer })
				s.drain(t, nil)
			},
		})

		// The network goes dark: every assignment must end, within bounded time and sends.
		s.toGW, s.toClient = nil, nil
		for i := 0; ; i++ {
			at, ok := s.c.PollTimeout()
			if !ok {
				break
			}
			if i > 2*propMaxSends*len(s.issued)+10 {
				t.Fatalf("still pending after %d timeouts", i)
			}
			s.now = at
			s.c.HandleTimeout(s.now)
			s.drain(t, nil)
		}
		for id := range s.issued {
			if _, ok := s.terminal[id]; !ok {
				t.Fatalf("assignment %d (%+v) never ended", id, s.contents[id])
			}
		}
		var total int
		for _, n := range s.sends {
			total += n
		}
		if total > propMaxSends*len(s.issued) {
			t.Fatalf("%d sends for %d assignments", total, len(s.issued))
		}
	})
}
