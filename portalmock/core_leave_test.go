package portalmock

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/portalapi"
)

// coreHarness drives the core directly, in exactly the order a test says (the WebSocket driver cannot
// deliver a socket's frame after its close, the core must still cope).
type coreHarness struct {
	t      *testing.T
	c      *core
	nextID uint64
	got    map[uint64][]phoenix.Message // frames sent to each session
	events []Event
}

func newCoreHarness(t *testing.T) *coreHarness {
	m, err := buildModel(DefaultFile())
	if err != nil {
		t.Fatal(err)
	}
	return &coreHarness{t: t, c: newCore(m, time.Now, slog.New(slog.NewTextHandler(io.Discard, nil))), got: map[uint64][]phoenix.Message{}}
}

func (h *coreHarness) drain() {
	h.t.Helper()
	for _, o := range h.c.out {
		if o.data == nil {
			continue
		}
		msg, err := phoenix.Decode(phoenix.V1, o.data)
		if err != nil {
			h.t.Fatalf("malformed frame %q", o.data)
		}
		h.got[o.sess] = append(h.got[o.sess], msg)
	}
	h.c.out = h.c.out[:0]
	h.events = append(h.events, h.c.events...)
	h.c.events = h.c.events[:0]
}

func (h *coreHarness) frame(id uint64, topic, event string, payload any) {
	h.t.Helper()
	b, _ := json.Marshal(payload)
	data, err := phoenix.Encode(phoenix.V1, phoenix.Message{Ref: phoenix.IntRef(1), Topic: topic, Event: event, Payload: b})
	if err != nil {
		h.t.Fatal(err)
	}
	h.c.frame(id, data)
	h.drain()
}

// connect opens a session of kind and joins it (a relay with secret).
func (h *coreHarness) connect(kind tokenKind, peerID, secret string) uint64 {
	h.t.Helper()
	h.nextID++
	s := &session{id: h.nextID, kind: kind, peerID: peerID, version: phoenix.V1, publicKey: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}
	var payload any
	if kind == kindRelay {
		s.addr4 = netip.MustParseAddrPort("198.18.0.1:3478")
		payload = portalapi.RelayJoin{StampSecret: secret}
	}
	h.c.connect(s)
	h.frame(s.id, kind.String(), phoenix.EventJoin, payload)
	return s.id
}

func (h *coreHarness) disconnect(id uint64) {
	h.c.disconnect(id)
	h.drain()
}

// relaysKnown returns the distinct relay ids a session was last told about (init or relays_presence).
func (h *coreHarness) relaysKnown(id uint64) []string {
	h.t.Helper()
	var rs []portalapi.Relay
	for _, m := range h.got[id] {
		switch m.Event {
		case portalapi.EventInit:
			var v struct{ Relays []portalapi.Relay }
			_ = json.Unmarshal(m.Payload, &v)
			rs = v.Relays
		case portalapi.EventRelaysPresence:
			var v portalapi.RelaysPresence
			_ = json.Unmarshal(m.Payload, &v)
			rs = v.Connected
		}
	}
	return distinct(relayIDsOf(rs))
}

func (h *coreHarness) count(kind EventKind) int {
	n := 0
	for _, e := range h.events {
		if e.Kind == kind {
			n++
		}
	}
	return n
}

func (h *coreHarness) presences(id uint64) int {
	n := 0
	for _, m := range h.got[id] {
		if m.Event == portalapi.EventRelaysPresence {
			n++
		}
	}
	return n
}

// TestCoreRelayLeaveOrders runs a relay's leave and close in every order, interleaved with joins: the relay
// leaves presence exactly once, every peer is told once, and every later join is answered without it.
func TestCoreRelayLeaveOrders(t *testing.T) {
	rid := portalapi.RelayID("s1")
	for _, order := range []string{
		"leave close",
		"close leave",
		"leave client close gateway",
		"leave gateway client close",
		"close client leave gateway",
		"leave close rejoin client",
		"leave leave close client",
	} {
		t.Run(strings.ReplaceAll(order, " ", "_"), func(t *testing.T) {
			h := newCoreHarness(t)
			c := h.connect(kindClient, client1, "")
			r := h.connect(kindRelay, "dev-relays", "s1")
			if got := h.relaysKnown(c); !slices.Equal(got, []string{rid}) {
				t.Fatalf("client knows %v after the relay joined", got)
			}
			peers := []uint64{c}
			online := false // whether the relay is expected online at the end
			for _, step := range strings.Fields(order) {
				switch step {
				case "leave":
					h.frame(r, portalapi.TopicRelay, phoenix.EventLeave, struct{}{})
				case "close":
					h.disconnect(r)
				case "client":
					peers = append(peers, h.connect(kindClient, client2, ""))
				case "gateway":
					peers = append(peers, h.connect(kindGateway, gateway1, ""))
				case "rejoin":
					r = h.connect(kindRelay, "dev-relays", "s1")
					online = true
				}
			}
			wantLeft, want := 1, []string{}
			if online {
				want = []string{rid}
			}
			if got := h.count(EventRelayLeft); got != wantLeft {
				t.Errorf("%d relay_left events, want %d", got, wantLeft)
			}
			for _, p := range peers {
				if got := h.relaysKnown(p); !slices.Equal(orEmpty(got), want) {
					t.Errorf("session %d knows relays %v, want %v", p, got, want)
				}
			}
			// The first client was told once that the relay left (and once more if it came back).
			if got, want := h.presences(c), 2+btoi(online); got != want {
				t.Errorf("client got %d relays_presence, want %d", got, want)
			}
			if st := h.c.state(); len(st.Relays) != len(want) {
				t.Errorf("state relays %+v, want %v", st.Relays, want)
			}
		})
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
