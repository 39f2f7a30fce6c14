package phoenix

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/snowgate/snowgate/internal/fifo"
	"github.com/snowgate/snowgate/internal/telemetry"
)

// Errors of the client. ErrUnauthorized and ErrTokenExpired are terminal: the client stops reconnecting and
// reports them as EventFatal. Both are expected now and then (a revoked or expired token) rather than bugs:
// they implement telemetry's TelemetryWarning, so error telemetry counts them as warnings, not exceptions,
// even when an application logs them at ERROR.
var (
	// ErrUnauthorized is the portal answering the WebSocket upgrade with HTTP 401.
	ErrUnauthorized error = &expectedError{"phoenix: unauthorized (HTTP 401 on upgrade)"}
	// ErrTokenExpired is the portal pushing "disconnect" with reason "token_expired".
	ErrTokenExpired error = &expectedError{"phoenix: token expired"}
	// ErrClosed is returned by methods of a closed client.
	ErrClosed = errors.New("phoenix: client closed")
	// ErrHeartbeatTimeout is the cause of a reconnect after too many unanswered heartbeats.
	ErrHeartbeatTimeout = errors.New("phoenix: heartbeat replies missing")
	// ErrJoinTimeout is the cause of a reconnect after a join reply did not arrive in time.
	ErrJoinTimeout = errors.New("phoenix: join timed out")
	// ErrJoinRefused is the Err of the EventReplied for a join the server answered with status "error".
	ErrJoinRefused = errors.New("phoenix: join refused")
	// ErrServerDisconnect is the cause of a reconnect after a "disconnect" push (other than token_expired).
	ErrServerDisconnect = errors.New("phoenix: disconnected by the server")
	// ErrReconnect is the cause of a disconnect asked for by Connect or Reconnect.
	ErrReconnect = errors.New("phoenix: reconnect requested")
)

// expectedError is a sentinel for a condition that is expected now and then: error telemetry reports it as a
// warning (it implements internal/telemetry's TelemetryWarning without importing it).
type expectedError struct{ msg string }

func (e *expectedError) Error() string { return e.msg }

// TelemetryWarning marks the error as a warning for error telemetry.
func (e *expectedError) TelemetryWarning() bool { return true }

// EventDisconnectPush is the event the portal pushes to end a session; its payload carries a "reason".
const EventDisconnectPush = "disconnect"

// ReasonTokenExpired is the "disconnect" reason that makes the client stop with ErrTokenExpired.
const ReasonTokenExpired = "token_expired"

// ReasonUnmatchedTopic is the reason of the error reply a Phoenix server sends for a topic not joined.
const ReasonUnmatchedTopic = "unmatched topic"

// Defaults of ClientConfig.
const (
	DefaultHeartbeatInterval = 10 * time.Second
	DefaultJoinTimeout       = 5 * time.Second
	DefaultMaxQueue          = 256
	// MaxMissedHeartbeats is how many heartbeats may go unanswered; at the next tick the socket is dropped.
	MaxMissedHeartbeats = 3
)

// Backoff is an exponential backoff with jitter: attempt n waits a uniformly random time in [d/2, d] where
// d = min(Max, Initial·2ⁿ).
type Backoff struct {
	Initial time.Duration // 100 ms when zero
	Max     time.Duration // 30 s when zero
}

func (b Backoff) withDefaults() Backoff {
	if b.Initial <= 0 {
		b.Initial = 100 * time.Millisecond
	}
	if b.Max <= 0 {
		b.Max = 30 * time.Second
	}
	if b.Max < b.Initial {
		b.Max = b.Initial
	}
	return b
}

// Delay returns the wait before attempt n (0-based); r in [0,1) picks the jitter.
func (b Backoff) Delay(attempt int, r float64) time.Duration {
	b = b.withDefaults()
	d := b.Initial
	for i := 0; i < attempt && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	half := d / 2
	return half + time.Duration(r*float64(d-half))
}

// EventKind says what an Event reports.
type EventKind int

// Event kinds.
const (
	// EventJoined: a topic was (re)joined; Payload is the join reply's response.
	EventJoined EventKind = iota + 1
	// EventMessage: a push from the server; Event is its name, Payload its payload.
	EventMessage
	// EventReplied: a phx_reply to a Push (or to a refused join); Ref is the request's reference, Status the
	// reply status, Payload the response. (Named so because EventReply is the wire event "phx_reply".)
	EventReplied
	// EventDisconnected: an established socket was lost (Err says why); the client reconnects by itself.
	EventDisconnected
	// EventFatal: the client stopped for good (Err wraps ErrUnauthorized or ErrTokenExpired).
	EventFatal
)

// String names k.
func (k EventKind) String() string {
	switch k {
	case EventJoined:
		return "joined"
	case EventMessage:
		return "message"
	case EventReplied:
		return "replied"
	case EventDisconnected:
		return "disconnected"
	case EventFatal:
		return "fatal"
	}
	return "unknown(" + strconv.Itoa(int(k)) + ")"
}

// Event is what the client reports on its Events channel.
type Event struct {
	Kind    EventKind
	Topic   string
	Event   string
	Payload json.RawMessage
	Ref     Ref
	// Status is the reply status ("ok", "error") for EventJoined and EventReplied.
	Status string
	Err    error
}

// sessionConfig configures the sans-IO session.
type sessionConfig struct {
	Version           Version
	HeartbeatInterval time.Duration
	JoinTimeout       time.Duration
	Backoff           Backoff
	MaxQueue          int
	// Rand returns a number in [0,1) for the backoff jitter.
	Rand   func() float64
	Logger *slog.Logger
}

type connState int

const (
	stIdle connState = iota
	stWaiting
	stDialing
	stConnected
	stFatal
	stClosed
)

type topicPhase int

const (
	tUnjoined topicPhase = iota
	tJoining
	tJoined
)

type topicState struct {
	name         string
	payload      json.RawMessage
	phase        topicPhase
	joinRef      Ref
	joinDeadline time.Time
	rejoinAt     time.Time
	attempts     int
}

type queuedPush struct {
	topic, event string
	payload      json.RawMessage
	ref          Ref
}

type commandKind int

const (
	cmdDial commandKind = iota + 1
	cmdDrop
)

// command is an instruction for the driver: open a socket with publicKey, or drop the current one. Every
// dial is followed by exactly one drop, also when the driver reported the socket lost or the dial failed.
type command struct {
	kind      commandKind
	publicKey string
}

// session is the sans-IO core of the client: Phoenix joins, heartbeats, replies, reconnect scheduling and the
// push queue. Inputs are its Handle…/API methods with the current time; outputs are polled. It never blocks
// and owns no goroutine or socket.
type session struct {
	cfg sessionConfig
	log *slog.Logger

	state     connState
	publicKey string
	dialAt    time.Time
	attempts  int
	// dialFailures counts the dials failed since a socket was last up (the first one warns).
	dialFailures int
	ref          uint64
	fatalErr     error

	topics   []*topicState
	queue    []queuedPush
	dropped  uint64
	hbNext   time.Time
	hbMissed int

	cmds      fifo.Queue[command]
	transmits fifo.Queue[[]byte]
	events    fifo.Queue[Event]
}

func newSession(cfg sessionConfig) *session {
	if cfg.Version == 0 {
		cfg.Version = V1
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if cfg.JoinTimeout <= 0 {
		cfg.JoinTimeout = DefaultJoinTimeout
	}
	if cfg.MaxQueue <= 0 {
		cfg.MaxQueue = DefaultMaxQueue
	}
	cfg.Backoff = cfg.Backoff.withDefaults()
	if cfg.Rand == nil {
		cfg.Rand = func() float64 { return 0.5 }
	}
	l := cfg.Logger
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	return &session{cfg: cfg, log: l}
}

func (s *session) nextRef() Ref {
	r := s.ref
	s.ref++
	if s.cfg.Version == V2 {
		return Ref{Value: strconv.FormatUint(r, 10)}
	}
	return IntRef(r)
}

func (s *session) topic(name string) *topicState {
	for _, t := range s.topics {
		if t.name == name {
			return t
		}
	}
	return nil
}

// terminal returns the error API calls fail with, or nil.
func (s *session) terminal() error {
	switch s.state {
	case stClosed:
		return ErrClosed
	case stFatal:
		return s.fatalErr
	}
	return nil
}

// Join registers topic (or replaces its join payload); it is joined after every connect, and now if connected.
func (s *session) Join(topic string, payload json.RawMessage, now time.Time) {
	t := s.topic(topic)
	if t == nil {
		t = &topicState{name: topic}
		s.topics = append(s.topics, t)
	}
	t.payload = payload
	t.phase, t.rejoinAt = tUnjoined, now
	s.pump(now)
}

// Push queues a message; it is sent once connected and its topic (if registered) joined.
func (s *session) Push(topic, event string, payload json.RawMessage, now time.Time) (Ref, error) {
	if err := s.terminal(); err != nil {
		return Ref{}, err
	}
	ref := s.nextRef()
	s.queue = append(s.queue, queuedPush{topic: topic, event: event, payload: payload, ref: ref})
	if over := len(s.queue) - s.cfg.MaxQueue; over > 0 {
		for _, q := range s.queue[:over] {
			s.log.Debug("phoenix push queue full, dropping oldest", "topic", q.topic, "event", q.event, "ref", q.ref.Value)
		}
		s.dropped += uint64(over)
		s.queue = append(s.queue[:0:0], s.queue[over:]...)
	}
	s.pump(now)
	return ref, nil
}

// Connect (re)starts the connection with publicKey, dropping the current socket if any.
func (s *session) Connect(publicKey string, now time.Time) error {
	if err := s.terminal(); err != nil {
		return err
	}
	s.dropSocket(ErrReconnect)
	s.publicKey = publicKey
	s.state = stDialing
	s.cmds.Push(command{kind: cmdDial, publicKey: publicKey})
	return nil
}

// Reconnect drops the current socket and dials again at once with the same key; no-op unless connecting.
func (s *session) Reconnect(now time.Time) {
	switch s.state {
	case stWaiting, stDialing, stConnected:
		_ = s.Connect(s.publicKey, now)
	}
}

// Disconnect drops the socket and stays disconnected until the next Connect.
func (s *session) Disconnect(now time.Time) {
	if s.terminal() != nil {
		return
	}
	s.dropSocket(ErrReconnect)
	s.state = stIdle
}

// Close stops the session for good.
func (s *session) Close() {
	if s.state == stClosed {
		return
	}
	s.dropSocket(ErrClosed)
	s.state = stClosed
	s.queue = nil
}

// HandleDialed reports that the socket asked for by the last dial command is up.
func (s *session) HandleDialed(now time.Time) {
	if s.state != stDialing {
		return
	}
	s.state = stConnected
	s.dialFailures = 0
	s.hbNext, s.hbMissed = now.Add(s.cfg.HeartbeatInterval), 0
	for _, t := range s.topics {
		t.phase, t.rejoinAt, t.attempts = tUnjoined, now, 0
	}
	if len(s.topics) == 0 {
		s.attempts = 0
	}
	s.pump(now)
}

// HandleDialFailed reports that the last dial failed; ErrUnauthorized in err's chain is terminal.
func (s *session) HandleDialFailed(err error, now time.Time) {
	if s.state != stDialing {
		return
	}
	if errors.Is(err, ErrUnauthorized) {
		s.fatal(err)
		return
	}
	s.dropSocket(err)
	s.scheduleRedial(now)
	// One outage is one warning: the retries that follow are INFO until a socket is up again.
	level := slog.LevelInfo
	if s.dialFailures == 0 {
		level = slog.LevelWarn
	}
	s.dialFailures++
	s.log.Log(context.Background(), level, "phoenix dial failed", telemetry.Err(err), "failures", s.dialFailures,
		"retry_in", s.dialAt.Sub(now).String())
}

// HandleClosed reports that the current socket was lost (read or write error).
func (s *session) HandleClosed(err error, now time.Time) {
	if s.state != stConnected && s.state != stDialing {
		return
	}
	s.lose(err, now)
}

// lose drops the current socket because of err and schedules a reconnect.
func (s *session) lose(err error, now time.Time) {
	s.dropSocket(err)
	s.scheduleRedial(now)
	s.log.Info("phoenix connection lost, reconnecting", telemetry.Err(err), "retry_in", s.dialAt.Sub(now).String())
}

func (s *session) scheduleRedial(now time.Time) {
	s.state = stWaiting
	s.dialAt = now.Add(s.cfg.Backoff.Delay(s.attempts, s.cfg.Rand()))
	s.attempts++
}

// dropSocket tells the driver to drop the socket (if any) and resets per-connection state.
func (s *session) dropSocket(cause error) {
	switch s.state {
	case stConnected:
		s.events.Push(Event{Kind: EventDisconnected, Err: cause})
		fallthrough
	case stDialing:
		s.cmds.Push(command{kind: cmdDrop})
	}
	s.transmits.Clear()
	s.hbMissed = 0
	for _, t := range s.topics {
		t.phase = tUnjoined
	}
}

func (s *session) fatal(err error) {
	s.dropSocket(err)
	s.state = stFatal
	s.fatalErr = err
	s.queue = nil
	s.events.Push(Event{Kind: EventFatal, Err: err})
	// WARN, not ERROR: the application gets the error (EventFatal) and reports it as its situation demands.
	s.log.Warn("phoenix client stopped", telemetry.Err(err))
}

// HandleTimeout fires the timers that are due at now.
func (s *session) HandleTimeout(now time.Time) { s.pump(now) }

// HandleFrame handles one frame received on the current socket.
func (s *session) HandleFrame(data []byte, now time.Time) {
	if s.state != stConnected {
		return
	}
	m, err := Decode(s.cfg.Version, data)
	if err != nil {
		s.log.Debug("phoenix ignoring malformed frame", telemetry.Err(err))
		return
	}
	s.handleMessage(m, now)
	s.pump(now)
}

func (s *session) handleMessage(m Message, now time.Time) {
	t := s.topic(m.Topic)
	if t != nil && s.cfg.Version == V2 && !m.JoinRef.IsZero() && m.JoinRef.Value != t.joinRef.Value {
		s.log.Debug("phoenix ignoring message of an old join", "topic", m.Topic, "event", m.Event)
		return
	}
	switch m.Event {
	case EventReply:
		if m.Topic == TopicPhoenix {
			s.hbMissed = 0
			return
		}
		s.handleReply(t, m, now)
	case EventDisconnectPush:
		var p struct {
			Reason string `json:"reason"`
		}
		_ = json.Unmarshal(m.Payload, &p)
		if p.Reason == ReasonTokenExpired {
			s.fatal(ErrTokenExpired)
			return
		}
		s.lose(fmt.Errorf("%w: reason %q", ErrServerDisconnect, p.Reason), now)
	case EventError, EventClose:
		if t == nil {
			return
		}
		t.phase = tUnjoined
		t.rejoinAt = now.Add(s.cfg.Backoff.Delay(t.attempts, s.cfg.Rand()))
		t.attempts++
		s.log.Info("phoenix channel closed by the server, rejoining", "topic", m.Topic, "event", m.Event,
			"retry_in", t.rejoinAt.Sub(now).String())
	default:
		s.events.Push(Event{Kind: EventMessage, Topic: m.Topic, Event: m.Event, Payload: m.Payload, Ref: m.Ref})
	}
}

func (s *session) handleReply(t *topicState, m Message, now time.Time) {
	var p ReplyPayload
	if err := json.Unmarshal(m.Payload, &p); err != nil {
		s.log.Debug("phoenix ignoring malformed reply", "topic", m.Topic, telemetry.Err(err))
		return
	}
	if t != nil && t.phase == tJoining && m.Ref.Value == t.joinRef.Value {
		if p.Status == StatusOK {
			t.phase, t.attempts = tJoined, 0
			s.attempts = 0
			s.log.Debug("phoenix joined", "topic", t.name)
			s.events.Push(Event{Kind: EventJoined, Topic: t.name, Event: EventReply, Payload: p.Response, Ref: m.Ref, Status: p.Status})
			return
		}
		t.phase = tUnjoined
		t.rejoinAt = now.Add(s.cfg.Backoff.Delay(t.attempts, s.cfg.Rand()))
		t.attempts++
		s.log.Warn("phoenix join refused", "topic", t.name, "response", string(p.Response))
		s.events.Push(Event{Kind: EventReplied, Topic: t.name, Event: EventReply, Payload: p.Response, Ref: m.Ref, Status: p.Status,
			Err: fmt.Errorf("%w: topic %q: %s", ErrJoinRefused, t.name, p.Response)})
		return
	}
	if p.Status == StatusError && t != nil {
		var r struct {
			Reason string `json:"reason"`
		}
		if json.Unmarshal(p.Response, &r) == nil && r.Reason == ReasonUnmatchedTopic {
			s.log.Info("phoenix topic unmatched, rejoining", "topic", t.name)
			t.phase, t.rejoinAt = tUnjoined, now
		}
	}
	s.events.Push(Event{Kind: EventReplied, Topic: m.Topic, Event: EventReply, Payload: p.Response, Ref: m.Ref, Status: p.Status})
}

// pump runs everything that is due at now: dialing, joins, join timeouts, heartbeats, queued pushes.
func (s *session) pump(now time.Time) {
	switch s.state {
	case stWaiting:
		if !now.Before(s.dialAt) {
			s.state = stDialing
			s.cmds.Push(command{kind: cmdDial, publicKey: s.publicKey})
		}
		return
	case stConnected:
	default:
		return
	}
	for _, t := range s.topics {
		if t.phase == tJoining && !now.Before(t.joinDeadline) {
			s.lose(fmt.Errorf("%w: topic %q", ErrJoinTimeout, t.name), now)
			return
		}
	}
	if !now.Before(s.hbNext) {
		if s.hbMissed >= MaxMissedHeartbeats {
			s.lose(fmt.Errorf("%w: %d unanswered", ErrHeartbeatTimeout, s.hbMissed), now)
			return
		}
		s.send(Message{Ref: s.nextRef(), Topic: TopicPhoenix, Event: EventHeartbeat, Payload: json.RawMessage("{}")})
		s.hbMissed++
		s.hbNext = now.Add(s.cfg.HeartbeatInterval)
	}
	for _, t := range s.topics {
		if t.phase == tUnjoined && !now.Before(t.rejoinAt) {
			t.phase = tJoining
			t.joinRef = s.nextRef()
			t.joinDeadline = now.Add(s.cfg.JoinTimeout)
			payload := t.payload
			if len(payload) == 0 {
				payload = json.RawMessage("null")
			}
			s.send(Message{JoinRef: s.v2JoinRef(t.joinRef), Ref: t.joinRef, Topic: t.name, Event: EventJoin, Payload: payload})
		}
	}
	kept := s.queue[:0]
	for _, q := range s.queue {
		t := s.topic(q.topic)
		if t != nil && t.phase != tJoined {
			kept = append(kept, q)
			continue
		}
		var jr Ref
		if t != nil {
			jr = s.v2JoinRef(t.joinRef)
		}
		s.send(Message{JoinRef: jr, Ref: q.ref, Topic: q.topic, Event: q.event, Payload: q.payload})
	}
	clear(s.queue[len(kept):])
	s.queue = kept
}

func (s *session) v2JoinRef(r Ref) Ref {
	if s.cfg.Version == V2 {
		return r
	}
	return Ref{}
}

func (s *session) send(m Message) {
	b, err := Encode(s.cfg.Version, m)
	if err != nil {
		s.log.Warn("phoenix cannot encode frame", "topic", m.Topic, "event", m.Event, telemetry.Err(err))
		return
	}
	s.transmits.Push(b)
}

// PollTimeout returns when HandleTimeout must next be called; false when no timer runs.
func (s *session) PollTimeout() (time.Time, bool) {
	var at time.Time
	set := func(t time.Time) {
		if at.IsZero() || t.Before(at) {
			at = t
		}
	}
	switch s.state {
	case stWaiting:
		set(s.dialAt)
	case stConnected:
		set(s.hbNext)
		for _, t := range s.topics {
			switch t.phase {
			case tJoining:
				set(t.joinDeadline)
			case tUnjoined:
				set(t.rejoinAt)
			}
		}
	}
	return at, !at.IsZero()
}

// PollCommand returns the next instruction for the driver.
func (s *session) PollCommand() (command, bool) {
	return s.cmds.Pop()
}

// PollTransmit returns the next encoded frame to write on the current socket.
func (s *session) PollTransmit() ([]byte, bool) {
	return s.transmits.Pop()
}

// PollEvent returns the next event for the user.
func (s *session) PollEvent() (Event, bool) {
	return s.events.Pop()
}
