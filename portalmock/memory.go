package portalmock

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
)

// ErrUnauthorized is returned by DialMemory for an unknown or expired token, or one of another kind (the
// WebSocket endpoints answer HTTP 401).
var ErrUnauthorized = errors.New("portalmock: unauthorized")

// ErrMemoryClosed is returned by MemoryConn.Send once the session is closed.
var ErrMemoryClosed = errors.New("portalmock: memory session closed")

// MemoryConn is a portal session without a socket: frames go in with Send and the portal's frames come
// out of Frames, exactly as they would over the WebSocket, and they go through the same core, the same
// authentication and the same event history. Simulations (internal/tunnelsim) run clients, gateways and
// relays against a real Server this way, inside a testing/synctest bubble, without a network and without
// a goroutine on the portal's side.
//
// What a MemoryConn does not do is what the WebSocket layer does: there is no idle timeout (no heartbeat
// is needed), and a session the portal closes (replaced by a newer one of the same device, or too slow to
// read) is only marked closed: its owner sees Done and calls Close, as the WebSocket handler would when
// its socket ends.
type MemoryConn struct {
	s      *Server
	id     uint64
	frames chan []byte
	done   chan struct{}

	doneOnce  sync.Once
	closeOnce sync.Once
}

// DialMemory opens a session on the endpoint of kind ("client", "gateway" or "relay") with token and the
// query parameters of the WebSocket URL (public_key, name, vsn; ipv4, ipv6 and port for relays). It fails
// with ErrUnauthorized where the endpoint answers 401, with a descriptive error where it answers 400, and
// with ErrClosed once the server is closed. The session must be closed with Close.
func (s *Server) DialMemory(kind, token string, query url.Values) (*MemoryConn, error) {
	var k tokenKind
	switch kind {
	case kindClient.String():
		k = kindClient
	case kindGateway.String():
		k = kindGateway
	case kindRelay.String():
		k = kindRelay
	default:
		return nil, fmt.Errorf("portalmock: no endpoint for %q", kind)
	}
	id, ok := s.authenticate(k, token)
	if !ok {
		return nil, fmt.Errorf("%w: %s endpoint", ErrUnauthorized, kind)
	}
	sess, err := newSession(k, id, query)
	if err != nil {
		return nil, fmt.Errorf("portalmock: bad connect request: %w", err)
	}
	if !s.admit(sess) {
		return nil, ErrClosed
	}
	c := &MemoryConn{s: s, id: sess.id, frames: make(chan []byte, s.cfg.SendQueue), done: make(chan struct{})}
	err = s.apply(func(core *core) {
		s.conns[sess.id] = &wsConn{out: c.frames, cancel: c.markDone}
		core.connect(sess)
	})
	if err != nil {
		s.logPanic("portal bug: connecting a memory session panicked", err, "kind", kind, "session", sess.id)
		c.Close()
		return nil, err
	}
	s.log.Info("connected", "kind", k, "id", id.id, "name", sess.name, "session", sess.id, "vsn", sess.version, "transport", "memory")
	return c, nil
}

// markDone is the session's cancel: the portal closed it (or the owner did).
func (c *MemoryConn) markDone() { c.doneOnce.Do(func() { close(c.done) }) }

// Send hands the portal one frame, as a WebSocket text message. The portal's answers are in Frames when
// Send returns.
func (c *MemoryConn) Send(frame []byte) error {
	select {
	case <-c.done:
		return ErrMemoryClosed
	default:
	}
	if err := c.s.apply(func(core *core) { core.frame(c.id, frame) }); err != nil {
		c.s.logPanic("portal bug: handling a connection panicked; closing it", err, "session", c.id)
		c.Close()
		return err
	}
	return nil
}

// Frames delivers what the portal sends on the session, in order. It is never closed: select on Done too.
func (c *MemoryConn) Frames() <-chan []byte { return c.frames }

// Done is closed when the session is closed, by the portal or by Close.
func (c *MemoryConn) Done() <-chan struct{} { return c.done }

// Close ends the session as a closed socket does (the peer leaves its channel); it is idempotent.
func (c *MemoryConn) Close() {
	c.closeOnce.Do(func() {
		c.markDone()
		err := c.s.apply(func(core *core) {
			delete(c.s.conns, c.id)
			core.disconnect(c.id)
		})
		c.s.logPanic("portal bug: forgetting a connection panicked", err, "session", c.id)
		c.s.log.Info("disconnected", "session", c.id, "transport", "memory", slog.Any("error", err))
		c.s.wg.Done()
	})
}
