package phoenix

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"
)

// chanConn is an in-memory Conn: the test reads what the client writes and feeds what it reads.
type chanConn struct {
	in, out chan []byte
	closed  chan struct{}
}

func (c *chanConn) Read(ctx context.Context) ([]byte, error) {
	select {
	case b := <-c.in:
		return b, nil
	case <-c.closed:
		return nil, io.EOF
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (c *chanConn) Write(ctx context.Context, b []byte) error {
	select {
	case c.out <- b:
		return nil
	case <-c.closed:
		return io.EOF
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *chanConn) Close() error {
	select {
	case <-c.closed:
	default:
		close(c.closed)
	}
	return nil
}

// A Transport replaces the WebSocket: the client dials through it with the token in the header and the
// public key in the URL, joins over the Conn and reports what comes back; a Transport error wrapping
// ErrUnauthorized stops the client.
func TestTransport(t *testing.T) {
	conn := &chanConn{in: make(chan []byte, 4), out: make(chan []byte, 4), closed: make(chan struct{})}
	dialed := make(chan string, 1)
	c := NewClient(ClientConfig{URL: "ws://portal/client/websocket", Token: "tok",
		Transport: func(_ context.Context, u string, h http.Header) (Conn, error) {
			dialed <- h.Get("X-Authorization") + " " + u
			return conn, nil
		}})
	defer c.Close()
	c.Join("client", nil)
	if err := c.Connect(context.Background(), "KEY"); err != nil {
		t.Fatal(err)
	}
	if got := <-dialed; got != "Bearer tok ws://portal/client/websocket?public_key=KEY" {
		t.Fatalf("dialed %q", got)
	}
	join, err := Decode(V1, <-conn.out)
	if err != nil || join.Event != EventJoin || join.Topic != "client" {
		t.Fatalf("first frame %+v %v", join, err)
	}
	reply, _ := NewReply(join, StatusOK, nil)
	b, _ := Encode(V1, reply)
	conn.in <- b
	select {
	case ev := <-c.Events():
		if ev.Kind != EventJoined || ev.Topic != "client" {
			t.Fatalf("event %+v", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no joined event")
	}

	refused := NewClient(ClientConfig{URL: "ws://portal/client/websocket",
		Transport: func(context.Context, string, http.Header) (Conn, error) {
			return nil, fmt.Errorf("memory portal: %w", ErrUnauthorized)
		}})
	defer refused.Close()
	refused.Join("client", nil)
	_ = refused.Connect(context.Background(), "KEY")
	select {
	case ev := <-refused.Events():
		if ev.Kind != EventFatal || !errors.Is(ev.Err, ErrUnauthorized) {
			t.Fatalf("event %+v", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no fatal event")
	}
}
