package phoenix

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"pgregory.net/rapid"
)

func TestBackoffDelay(t *testing.T) {
	b := Backoff{} // defaults 100ms..30s
	tests := []struct {
		attempt  int
		r        float64
		min, max time.Duration
	}{
		{0, 0, 50 * time.Millisecond, 50 * time.Millisecond},
		{0, 0.999, 99 * time.Millisecond, 100 * time.Millisecond},
		{1, 0, 100 * time.Millisecond, 100 * time.Millisecond},
		{3, 0.5, 600 * time.Millisecond, 600 * time.Millisecond},
		{20, 0, 15 * time.Second, 15 * time.Second},
		{1000, 0.999, 29 * time.Second, 30 * time.Second},
	}
	for _, tt := range tests {
		got := b.Delay(tt.attempt, tt.r)
		if got < tt.min || got > tt.max {
			t.Errorf("Delay(%d, %v) = %v, want in [%v, %v]", tt.attempt, tt.r, got, tt.min, tt.max)
		}
	}
	if got := (Backoff{Initial: time.Millisecond, Max: 4 * time.Millisecond}).Delay(10, 0.999); got > 4*time.Millisecond {
		t.Errorf("Delay above Max: %v", got)
	}
}

// tb is what both *testing.T and *rapid.T offer.
type tb interface {
	Fatal(args ...any)
	Fatalf(format string, args ...any)
}

// harness drives a session like the client's driver does, with a fake clock.
type harness struct {
	t   tb
	s   *session
	now time.Time
}

func newHarness(t tb, cfg sessionConfig) *harness {
	return &harness{t: t, s: newSession(cfg), now: time.Unix(1_000_000, 0)}
}

func (h *harness) cmds() []command {
	var out []command
	for {
		c, ok := h.s.PollCommand()
		if !ok {
			return out
		}
		out = append(out, c)
	}
}

func (h *harness) frames() []Message {
	var out []Message
	for {
		b, ok := h.s.PollTransmit()
		if !ok {
			return out
		}
		m, err := Decode(h.s.cfg.Version, b)
		if err != nil {
			h.t.Fatalf("session sent an undecodable frame %s: %v", b, err)
		}
		out = append(out, m)
	}
}

func (h *harness) events() []Event {
	var out []Event
	for {
		e, ok := h.s.PollEvent()
		if !ok {
			return out
		}
		out = append(out, e)
	}
}

func (h *harness) advance(d time.Duration) {
	h.now = h.now.Add(d)
	h.s.HandleTimeout(h.now)
}

func (h *harness) reply(req Message, status string, response any) {
	m, err := NewReply(req, status, response)
	if err != nil {
		h.t.Fatal(err)
	}
	b, err := Encode(h.s.cfg.Version, m)
	if err != nil {
		h.t.Fatal(err)
	}
	h.s.HandleFrame(b, h.now)
}

// connectAndJoin connects, joins "client" and returns the join frame.
func (h *harness) connectAndJoin() Message {
	h.s.Join("client", nil, h.now)
	if err := h.s.Connect("key", h.now); err != nil {
		h.t.Fatal(err)
	}
	if c := h.cmds(); len(c) != 1 || c[0].kind != cmdDial || c[0].publicKey != "key" {
		h.t.Fatalf("commands %+v, want one dial with the key", c)
	}
	h.s.HandleDialed(h.now)
	f := h.frames()
	if len(f) != 1 || f[0].Event != EventJoin {
		h.t.Fatalf("frames after dial %+v, want the join", f)
	}
	h.reply(f[0], StatusOK, nil)
	if ev := h.events(); len(ev) != 1 || ev[0].Kind != EventJoined {
		h.t.Fatalf("events %+v, want joined", ev)
	}
	return f[0]
}

func TestSessionHeartbeats(t *testing.T) {
	h := newHarness(t, sessionConfig{})
	h.connectAndJoin()
	h.advance(DefaultHeartbeatInterval - time.Millisecond)
	if f := h.frames(); len(f) != 0 {
		t.Fatalf("early frames %+v", f)
	}
	h.advance(time.Millisecond)
	f := h.frames()
	if len(f) != 1 || f[0].Topic != TopicPhoenix || f[0].Event != EventHeartbeat || string(f[0].Payload) != "{}" {
		t.Fatalf("frames %+v, want one heartbeat", f)
	}
	b, _ := Encode(V1, f[0])
	if want := fmt.Sprintf(`{"topic":"phoenix","event":"heartbeat","payload":{},"ref":%s}`, f[0].Ref.Value); string(b) != want {
		t.Errorf("heartbeat wire %s, want %s", b, want)
	}
	h.reply(f[0], StatusOK, nil)
	// Three unanswered heartbeats are tolerated; at the fourth tick the socket is dropped.
	for i := range MaxMissedHeartbeats {
		h.advance(DefaultHeartbeatInterval)
		if f := h.frames(); len(f) != 1 || f[0].Event != EventHeartbeat {
			t.Fatalf("tick %d: frames %+v", i, f)
		}
		if c := h.cmds(); len(c) != 0 {
			t.Fatalf("tick %d: early drop %+v", i, c)
		}
	}
	h.advance(DefaultHeartbeatInterval)
	if c := h.cmds(); len(c) != 1 || c[0].kind != cmdDrop {
		t.Fatalf("commands %+v, want a drop", c)
	}
	ev := h.events()
	if len(ev) != 1 || ev[0].Kind != EventDisconnected || !errors.Is(ev[0].Err, ErrHeartbeatTimeout) {
		t.Fatalf("events %+v", ev)
	}
	at, ok := h.s.PollTimeout()
	// Backoff was reset by the join: first redial after Initial·[0.5,1] (Rand is 0.5 → 75ms).
	if !ok || at.Sub(h.now) != 75*time.Millisecond {
		t.Fatalf("redial at +%v (%v), want +75ms", at.Sub(h.now), ok)
	}
	h.advance(75 * time.Millisecond)
	if c := h.cmds(); len(c) != 1 || c[0].kind != cmdDial || c[0].publicKey != "key" {
		t.Fatalf("commands %+v, want the redial", c)
	}
}

func TestSessionJoinTimeout(t *testing.T) {
	h := newHarness(t, sessionConfig{})
	h.s.Join("gateway", nil, h.now)
	_ = h.s.Connect("", h.now)
	h.cmds()
	h.s.HandleDialed(h.now)
	h.frames()
	h.advance(DefaultJoinTimeout)
	if c := h.cmds(); len(c) != 1 || c[0].kind != cmdDrop {
		t.Fatalf("commands %+v, want a drop", c)
	}
	if ev := h.events(); len(ev) != 1 || !errors.Is(ev[0].Err, ErrJoinTimeout) {
		t.Fatalf("events %+v", ev)
	}
}

func TestSessionBackoffGrowsUntilJoin(t *testing.T) {
	h := newHarness(t, sessionConfig{Backoff: Backoff{Initial: 100 * time.Millisecond, Max: time.Second}})
	h.s.Join("client", nil, h.now)
	_ = h.s.Connect("k", h.now)
	h.cmds()
	var waits []time.Duration
	for range 6 {
		h.s.HandleDialFailed(errors.New("refused"), h.now)
		at, _ := h.s.PollTimeout()
		waits = append(waits, at.Sub(h.now))
		h.advance(at.Sub(h.now))
		if c := h.cmds(); len(c) != 2 || c[0].kind != cmdDrop || c[1].kind != cmdDial {
			t.Fatalf("commands %+v", c)
		}
	}
	want := []time.Duration{75, 150, 300, 600, 750, 750} // ms, Rand 0.5 → 3/4 of min(Max, Initial·2ⁿ)
	for i := range want {
		if waits[i] != want[i]*time.Millisecond {
			t.Fatalf("waits %v, want %v ms", waits, want)
		}
	}
	h.s.HandleDialed(h.now)
	f := h.frames()
	h.reply(f[0], StatusOK, nil)
	h.s.HandleClosed(errors.New("eof"), h.now)
	if at, _ := h.s.PollTimeout(); at.Sub(h.now) != 75*time.Millisecond {
		t.Errorf("wait after a successful join %v, want the reset 75ms", at.Sub(h.now))
	}
}

func TestSessionQueueBoundedAndOrdered(t *testing.T) {
	h := newHarness(t, sessionConfig{MaxQueue: 3})
	var refs []Ref
	for i := range 5 {
		r, err := h.s.Push("client", fmt.Sprintf("e%d", i), json.RawMessage("{}"), h.now)
		if err != nil {
			t.Fatal(err)
		}
		refs = append(refs, r)
	}
	if h.s.dropped != 2 || len(h.s.queue) != 3 {
		t.Fatalf("dropped %d queued %d", h.s.dropped, len(h.s.queue))
	}
	join := h.connectAndJoin()
	_ = join
	f := h.frames()
	if len(f) != 3 {
		t.Fatalf("flushed %+v", f)
	}
	for i, m := range f {
		if m.Event != fmt.Sprintf("e%d", i+2) || m.Ref != refs[i+2] {
			t.Errorf("flushed[%d] = %s ref %v, want e%d ref %v", i, m.Event, m.Ref, i+2, refs[i+2])
		}
	}
}

func TestSessionIgnoresGarbage(t *testing.T) {
	h := newHarness(t, sessionConfig{})
	h.connectAndJoin()
	for _, in := range []string{``, `{{`, `[]`, `{"topic":"client"}`, `{"topic":"client","event":"phx_reply","payload":"x","ref":1}`,
		`{"topic":"client","event":"disconnect","payload":7,"ref":null}`} {
		h.s.HandleFrame([]byte(in), h.now)
	}
	// The odd disconnect (no reason) reconnects; nothing is fatal.
	for _, e := range h.events() {
		if e.Kind == EventFatal {
			t.Fatalf("garbage made the session fatal: %+v", e)
		}
	}
}

// TestSessionStateMachine drives the session with random inputs, like a driver and a hostile server would,
// and checks its invariants after each step.
func TestSessionStateMachine(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		version := rapid.SampledFrom([]Version{V1, V2}).Draw(rt, "version")
		cfg := sessionConfig{Version: version, MaxQueue: 4, HeartbeatInterval: 10 * time.Second,
			Backoff: Backoff{Initial: 100 * time.Millisecond, Max: 2 * time.Second}}
		h := newHarness(rt, cfg)
		topics := []string{"a", "b", "c"}

		const (
			sockNone = iota
			sockDialing
			sockUp
		)
		sock := sockNone
		fatal := false
		registered := map[string]bool{}
		lastJoin := map[string]Message{} // last join frame per topic on this socket
		joined := map[string]bool{}      // topics whose last join we answered ok on this socket
		var sent []Message               // frames of this socket

		drain := func() {
			for _, c := range h.cmds() {
				switch c.kind {
				case cmdDrop:
					if sock == sockNone {
						rt.Fatalf("drop without a socket")
					}
					sock = sockNone
				case cmdDial:
					if sock != sockNone {
						rt.Fatalf("dial while a socket exists")
					}
					if fatal {
						rt.Fatalf("dial after fatal")
					}
					sock = sockDialing
				}
				clear(lastJoin)
				clear(joined)
				sent = nil
			}
			for _, m := range h.frames() {
				if sock != sockUp {
					rt.Fatalf("frame %s/%s without an open socket", m.Topic, m.Event)
				}
				switch {
				case m.Event == EventJoin:
					lastJoin[m.Topic] = m
					joined[m.Topic] = false
				case m.Topic == TopicPhoenix:
				default:
					if registered[m.Topic] && !joined[m.Topic] {
						rt.Fatalf("push %s/%s before its topic was joined", m.Topic, m.Event)
					}
					if version == V2 && registered[m.Topic] && m.JoinRef != lastJoin[m.Topic].Ref {
						rt.Fatalf("v2 push join_ref %v, want %v", m.JoinRef, lastJoin[m.Topic].Ref)
					}
				}
				sent = append(sent, m)
			}
			for _, e := range h.events() {
				if e.Kind == EventFatal {
					fatal = true
				}
				if fatal && e.Kind != EventFatal && e.Kind != EventDisconnected {
					rt.Fatalf("event %v after fatal", e.Kind)
				}
			}
			if len(h.s.queue) > cfg.MaxQueue {
				rt.Fatalf("queue %d > %d", len(h.s.queue), cfg.MaxQueue)
			}
			if at, ok := h.s.PollTimeout(); ok && !at.After(h.now) {
				rt.Fatalf("timer due at %v not fired at %v", at, h.now)
			}
			if sock == sockUp && h.s.state != stConnected || sock != sockUp && h.s.state == stConnected {
				rt.Fatalf("driver socket %d, session state %d", sock, h.s.state)
			}
		}
		serverSend := func(m Message) {
			b, err := Encode(version, m)
			if err != nil {
				rt.Fatal(err)
			}
			if sock == sockUp {
				h.s.HandleFrame(b, h.now)
			}
		}

		actions := map[string]func(*rapid.T){
			"join": func(rt *rapid.T) {
				tp := rapid.SampledFrom(topics).Draw(rt, "topic")
				registered[tp] = true
				h.s.Join(tp, json.RawMessage(`{"p":1}`), h.now)
				drain()
			},
			"push": func(rt *rapid.T) {
				tp := rapid.SampledFrom(append(topics, "unregistered")).Draw(rt, "topic")
				_, err := h.s.Push(tp, "ev", json.RawMessage("{}"), h.now)
				if (err != nil) != fatal {
					rt.Fatalf("push err %v with fatal=%v", err, fatal)
				}
				drain()
			},
			"connect": func(rt *rapid.T) {
				err := h.s.Connect(rapid.SampledFrom([]string{"k1", "k2", ""}).Draw(rt, "key"), h.now)
				if (err != nil) != fatal {
					rt.Fatalf("connect err %v with fatal=%v", err, fatal)
				}
				drain()
			},
			"reconnect":  func(rt *rapid.T) { h.s.Reconnect(h.now); drain() },
			"disconnect": func(rt *rapid.T) { h.s.Disconnect(h.now); drain() },
			"dialed": func(rt *rapid.T) {
				if sock != sockDialing {
					return
				}
				sock = sockUp
				h.s.HandleDialed(h.now)
				drain()
			},
			"dialFailed": func(rt *rapid.T) {
				if sock != sockDialing {
					return
				}
				err := errors.New("refused")
				if rapid.IntRange(0, 9).Draw(rt, "unauthorized") == 0 {
					err = fmt.Errorf("%w: x", ErrUnauthorized)
				}
				h.s.HandleDialFailed(err, h.now)
				drain()
			},
			"closed": func(rt *rapid.T) {
				if sock != sockUp {
					return
				}
				h.s.HandleClosed(errors.New("eof"), h.now)
				drain()
			},
			"replyJoin": func(rt *rapid.T) {
				tp := rapid.SampledFrom(topics).Draw(rt, "topic")
				j, ok := lastJoin[tp]
				if !ok || joined[tp] {
					return
				}
				ok2 := rapid.IntRange(0, 4).Draw(rt, "refuse") != 0
				status := StatusOK
				if !ok2 {
					status = StatusError
				}
				m, _ := NewReply(j, status, nil)
				joined[tp] = ok2
				serverSend(m)
				drain()
			},
			"serverFrame": func(rt *rapid.T) {
				tp := rapid.SampledFrom(topics).Draw(rt, "topic")
				var jr Ref
				if version == V2 {
					jr = lastJoin[tp].Ref
				}
				var ref Ref
				if len(sent) > 0 {
					ref = rapid.SampledFrom(sent).Draw(rt, "req").Ref
				}
				switch rapid.IntRange(0, 6).Draw(rt, "kind") {
				case 0:
					serverSend(Message{Ref: ref, Topic: TopicPhoenix, Event: EventReply, Payload: json.RawMessage(`{"status":"ok","response":{}}`)})
				case 1:
					joined[tp] = false
					serverSend(Message{JoinRef: jr, Topic: tp, Event: EventError, Payload: json.RawMessage(`{}`)})
				case 2:
					joined[tp] = false
					serverSend(Message{JoinRef: jr, Topic: tp, Event: EventClose, Payload: json.RawMessage(`{}`)})
				case 3:
					joined[tp] = false
					serverSend(Message{JoinRef: jr, Ref: ref, Topic: tp, Event: EventReply,
						Payload: json.RawMessage(`{"status":"error","response":{"reason":"unmatched topic"}}`)})
				case 4:
					serverSend(Message{JoinRef: jr, Topic: tp, Event: "init", Payload: json.RawMessage(`{"x":1}`)})
				case 5:
					reason := rapid.SampledFrom([]string{ReasonTokenExpired, "other"}).Draw(rt, "reason")
					serverSend(Message{Topic: tp, Event: EventDisconnectPush, Payload: json.RawMessage(`{"reason":"` + reason + `"}`)})
				case 6:
					if sock == sockUp {
						h.s.HandleFrame([]byte(rapid.SampledFrom([]string{"{", "[1,2]", "null", `{"topic":1}`}).Draw(rt, "junk")), h.now)
					}
				}
				drain()
			},
			"advance": func(rt *rapid.T) {
				h.advance(time.Duration(rapid.IntRange(1, 12_000).Draw(rt, "ms")) * time.Millisecond)
				drain()
			},
		}
		names := make([]string, 0, len(actions))
		for n := range actions {
			names = append(names, n)
		}
		slices.Sort(names)
		for range rapid.IntRange(20, 300).Draw(rt, "steps") {
			actions[rapid.SampledFrom(names).Draw(rt, "action")](rt)
		}
	})
}

// FuzzSessionHandleFrame feeds arbitrary server frames to a joined session: no panic, no stuck timer.
func FuzzSessionHandleFrame(f *testing.F) {
	f.Add([]byte(`{"topic":"client","event":"phx_reply","payload":{"status":"error","response":{"reason":"unmatched topic"}},"ref":0}`), false)
	f.Add([]byte(`{"topic":"client","event":"disconnect","payload":{"reason":"token_expired"},"ref":null}`), false)
	f.Add([]byte(`{"topic":"client","event":"phx_error","payload":{},"ref":null}`), false)
	f.Add([]byte(`["0","0","client","phx_reply",{"status":"ok","response":{}}]`), true)
	f.Add([]byte(`[null,null,"client","phx_close",{}]`), true)
	f.Fuzz(func(t *testing.T, data []byte, v2 bool) {
		cfg := sessionConfig{}
		if v2 {
			cfg.Version = V2
		}
		h := newHarness(t, cfg)
		h.connectAndJoin()
		h.s.HandleFrame(data, h.now)
		h.s.HandleFrame(data, h.now)
		h.cmds()
		h.frames()
		h.events()
		if at, ok := h.s.PollTimeout(); ok && !at.After(h.now) {
			t.Fatalf("timer due at %v not fired at %v", at, h.now)
		}
	})
}

// A portal that stays down is one problem, not one per retry: the first failed dial is a WARN, the retries
// after it are INFO, and once a socket is up again the next outage warns again.
func TestSessionDialFailuresWarnOncePerOutage(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	h := newHarness(t, sessionConfig{Backoff: Backoff{Initial: 100 * time.Millisecond, Max: time.Second}, Logger: logger})
	h.s.Join("client", nil, h.now)
	_ = h.s.Connect("k", h.now)
	h.cmds()
	fail := func(n int) {
		for range n {
			h.s.HandleDialFailed(errors.New("refused"), h.now)
			at, _ := h.s.PollTimeout()
			h.advance(at.Sub(h.now))
			h.cmds()
		}
	}
	fail(5)
	if got := strings.Count(buf.String(), "level=WARN"); got != 1 {
		t.Fatalf("%d WARN lines for one outage of 5 failed dials, want 1:\n%s", got, buf.String())
	}
	if got := strings.Count(buf.String(), "phoenix dial failed"); got != 5 {
		t.Fatalf("%d dial failure lines, want 5", got)
	}
	h.s.HandleDialed(h.now)
	h.s.HandleClosed(errors.New("eof"), h.now)
	at, _ := h.s.PollTimeout()
	h.advance(at.Sub(h.now))
	h.cmds()
	fail(2)
	if got := strings.Count(buf.String(), "level=WARN"); got != 2 {
		t.Fatalf("%d WARN lines after a second outage, want 2:\n%s", got, buf.String())
	}
}
