package phoenix

import (
	"context"
	"fmt"
	"net/http"

	"github.com/coder/websocket"
)

// ServerConn is the server side of one Phoenix socket: a WebSocket plus the serializer version the client
// asked for. Write and Reply may be called from several goroutines; Read from one at a time.
type ServerConn struct {
	// Conn is the underlying WebSocket (for Close/CloseNow).
	Conn *websocket.Conn
	// Version is the serializer of this socket.
	Version Version
}

// Accept upgrades r to a Phoenix socket, with the version from its `vsn` query parameter. An unsupported
// vsn is refused with HTTP 400 before the upgrade (error wraps ErrUnsupportedVersion). opts may be nil.
func Accept(w http.ResponseWriter, r *http.Request, opts *websocket.AcceptOptions) (*ServerConn, error) {
	v, err := ParseVersion(r.URL.Query().Get("vsn"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return nil, err
	}
	c, err := websocket.Accept(w, r, opts)
	if err != nil {
		return nil, fmt.Errorf("phoenix: accept: %w", err)
	}
	return &ServerConn{Conn: c, Version: v}, nil
}

// Read returns the next frame. A frame that does not decode gives an error wrapping ErrMalformed and the
// socket stays usable; any other error means the socket is gone.
func (s *ServerConn) Read(ctx context.Context) (Message, error) {
	_, data, err := s.Conn.Read(ctx)
	if err != nil {
		return Message{}, fmt.Errorf("phoenix: read: %w", err)
	}
	return Decode(s.Version, data)
}

// Write sends m encoded in the socket's version. coder/websocket serializes concurrent writers itself.
func (s *ServerConn) Write(ctx context.Context, m Message) error {
	b, err := Encode(s.Version, m)
	if err != nil {
		return err
	}
	if err := s.Conn.Write(ctx, websocket.MessageText, b); err != nil {
		return fmt.Errorf("phoenix: write %s/%s: %w", m.Topic, m.Event, err)
	}
	return nil
}

// Reply answers req with a phx_reply of the given status and response (nil → {}).
func (s *ServerConn) Reply(ctx context.Context, req Message, status string, response any) error {
	m, err := NewReply(req, status, response)
	if err != nil {
		return err
	}
	return s.Write(ctx, m)
}

// Push sends a server push (no ref) on topic; joinRef is the join_ref of the channel (V2; zero for V1).
func (s *ServerConn) Push(ctx context.Context, joinRef Ref, topic, event string, payload any) error {
	raw, err := marshalPayload(payload)
	if err != nil {
		return fmt.Errorf("phoenix: push %s/%s: %w", topic, event, err)
	}
	return s.Write(ctx, Message{JoinRef: joinRef, Topic: topic, Event: event, Payload: raw})
}
