// Package phoenix speaks the Phoenix channels protocol over WebSocket: the wire format (V1 JSON objects and
// V2 JSON arrays), and a reconnecting client used by the client, the gateway and the relay to talk to the
// portal.
package phoenix

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// Reserved events and topics of the Phoenix protocol.
const (
	EventJoin      = "phx_join"
	EventLeave     = "phx_leave"
	EventReply     = "phx_reply"
	EventError     = "phx_error"
	EventClose     = "phx_close"
	EventHeartbeat = "heartbeat"
	// TopicPhoenix is the topic heartbeats are sent on.
	TopicPhoenix = "phoenix"
)

// Reply statuses carried in a phx_reply payload.
const (
	StatusOK    = "ok"
	StatusError = "error"
)

// Version is a Phoenix serializer version, chosen by the `vsn` query parameter of the WebSocket URL.
type Version int

const (
	// V1 frames are JSON objects {"topic","event","payload","ref","join_ref"}: what Firezone's clients speak,
	// and what a Phoenix server assumes when the URL has no `vsn`.
	V1 Version = 1
	// V2 frames are JSON arrays [join_ref, ref, topic, event, payload]: the default of the official
	// JavaScript client (vsn=2.0.0).
	V2 Version = 2
)

// ErrUnsupportedVersion is returned by ParseVersion for a `vsn` a Phoenix server would refuse.
var ErrUnsupportedVersion = errors.New("phoenix: unsupported serializer version")

// ParseVersion maps the `vsn` query parameter to a serializer: empty or 1.x → V1, 2.x → V2.
func ParseVersion(vsn string) (Version, error) {
	switch {
	case vsn == "", vsn == "1.0.0", vsn == "1":
		return V1, nil
	case vsn == "2.0.0", vsn == "2":
		return V2, nil
	}
	return 0, fmt.Errorf("%w: %q", ErrUnsupportedVersion, vsn)
}

// String returns the `vsn` value of v.
func (v Version) String() string {
	if v == V2 {
		return "2.0.0"
	}
	return "1.0.0"
}

// Ref is a message (or join) reference as the peer wrote it. Phoenix JS sends strings, Firezone's clients
// send integers; a reply echoes the reference in the same JSON form. The zero Ref is JSON null.
type Ref struct {
	Value   string
	Numeric bool
}

// IsZero reports whether r is absent (JSON null).
func (r Ref) IsZero() bool { return r.Value == "" }

// IntRef returns a numeric Ref.
func IntRef(n uint64) Ref { return Ref{Value: strconv.FormatUint(n, 10), Numeric: true} }

// MarshalJSON writes a number, a string or null.
func (r Ref) MarshalJSON() ([]byte, error) {
	switch {
	case r.Value == "":
		return []byte("null"), nil
	case r.Numeric:
		return []byte(r.Value), nil
	}
	return json.Marshal(r.Value)
}

// UnmarshalJSON accepts a JSON string, an unsigned integer or null.
func (r *Ref) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case bytes.Equal(b, []byte("null")):
		*r = Ref{}
		return nil
	case len(b) > 0 && b[0] == '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return fmt.Errorf("phoenix: ref: %w", err)
		}
		*r = Ref{Value: s}
		return nil
	}
	n, err := strconv.ParseUint(string(b), 10, 64)
	if err != nil {
		return fmt.Errorf("phoenix: ref %q is neither a string nor an unsigned integer", b)
	}
	*r = IntRef(n)
	return nil
}

// Message is one Phoenix frame, independent of the serializer version.
type Message struct {
	JoinRef Ref
	Ref     Ref
	Topic   string
	Event   string
	// Payload is the raw JSON payload; nil is encoded as null.
	Payload json.RawMessage
}

type v1Frame struct {
	Topic   string          `json:"topic"`
	Event   string          `json:"event"`
	Payload json.RawMessage `json:"payload"`
	Ref     Ref             `json:"ref"`
	JoinRef *Ref            `json:"join_ref,omitempty"`
}

// Encode serializes m in version v.
func Encode(v Version, m Message) ([]byte, error) {
	payload := m.Payload
	if len(payload) == 0 {
		payload = json.RawMessage("null")
	}
	switch v {
	case V1:
		f := v1Frame{Topic: m.Topic, Event: m.Event, Payload: payload, Ref: m.Ref}
		if !m.JoinRef.IsZero() {
			jr := m.JoinRef
			f.JoinRef = &jr
		}
		b, err := json.Marshal(f)
		if err != nil {
			return nil, fmt.Errorf("phoenix: encode v1 %s/%s: %w", m.Topic, m.Event, err)
		}
		return b, nil
	case V2:
		b, err := json.Marshal([]any{m.JoinRef, m.Ref, m.Topic, m.Event, payload})
		if err != nil {
			return nil, fmt.Errorf("phoenix: encode v2 %s/%s: %w", m.Topic, m.Event, err)
		}
		return b, nil
	}
	return nil, fmt.Errorf("%w: %d", ErrUnsupportedVersion, v)
}

// ErrMalformed wraps every decoding failure, so callers can answer bad frames without closing the socket.
var ErrMalformed = errors.New("phoenix: malformed frame")

// Decode parses one frame in version v. Unknown fields of a V1 object are ignored.
func Decode(v Version, data []byte) (Message, error) {
	switch v {
	case V1:
		var f struct {
			Topic   *string         `json:"topic"`
			Event   *string         `json:"event"`
			Payload json.RawMessage `json:"payload"`
			Ref     Ref             `json:"ref"`
			JoinRef Ref             `json:"join_ref"`
		}
		if err := json.Unmarshal(data, &f); err != nil {
			return Message{}, fmt.Errorf("%w: %w", ErrMalformed, err)
		}
		if f.Topic == nil || f.Event == nil {
			return Message{}, fmt.Errorf("%w: missing topic or event", ErrMalformed)
		}
		return Message{JoinRef: f.JoinRef, Ref: f.Ref, Topic: *f.Topic, Event: *f.Event, Payload: f.Payload}, nil
	case V2:
		var arr []json.RawMessage
		if err := json.Unmarshal(data, &arr); err != nil {
			return Message{}, fmt.Errorf("%w: %w", ErrMalformed, err)
		}
		if len(arr) != 5 {
			return Message{}, fmt.Errorf("%w: v2 frame has %d elements, want 5", ErrMalformed, len(arr))
		}
		var m Message
		if err := json.Unmarshal(arr[0], &m.JoinRef); err != nil {
			return Message{}, fmt.Errorf("%w: join_ref: %w", ErrMalformed, err)
		}
		if err := json.Unmarshal(arr[1], &m.Ref); err != nil {
			return Message{}, fmt.Errorf("%w: ref: %w", ErrMalformed, err)
		}
		if err := json.Unmarshal(arr[2], &m.Topic); err != nil {
			return Message{}, fmt.Errorf("%w: topic: %w", ErrMalformed, err)
		}
		if err := json.Unmarshal(arr[3], &m.Event); err != nil {
			return Message{}, fmt.Errorf("%w: event: %w", ErrMalformed, err)
		}
		m.Payload = arr[4]
		return m, nil
	}
	return Message{}, fmt.Errorf("%w: %d", ErrUnsupportedVersion, v)
}

// ReplyPayload is the payload of a phx_reply.
type ReplyPayload struct {
	Status   string          `json:"status"`
	Response json.RawMessage `json:"response"`
}

// NewReply builds the phx_reply to req with the given status and response (marshalled to JSON).
func NewReply(req Message, status string, response any) (Message, error) {
	if response == nil {
		response = struct{}{}
	}
	resp, err := json.Marshal(response)
	if err != nil {
		return Message{}, fmt.Errorf("phoenix: reply to %s/%s: %w", req.Topic, req.Event, err)
	}
	payload, err := json.Marshal(ReplyPayload{Status: status, Response: resp})
	if err != nil {
		return Message{}, fmt.Errorf("phoenix: reply to %s/%s: %w", req.Topic, req.Event, err)
	}
	return Message{JoinRef: req.JoinRef, Ref: req.Ref, Topic: req.Topic, Event: EventReply, Payload: payload}, nil
}
