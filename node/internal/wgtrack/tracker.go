// Package wgtrack follows WireGuard handshakes from the outside: it reads the
// type and index fields of the messages a node sends and receives (never
// their encrypted parts) and says when a handshake completed, how long its
// round trip took and which session indices belong to the peer.
//
// wireguard-go keeps this to itself (a peer's last handshake time, keypairs
// and endpoint are unexported; only the UAPI text dump shows them). The
// tracker gives the node the same facts from the message flow, sans-IO: the
// caller feeds every handshake message and, while Awaiting, every transport
// message with the time, and reads the results. It is not safe for
// concurrent use.
//
// A handshake is complete, as in wireguard-go, when
//
//   - initiator: a response whose receiver index is our latest initiation's
//     sender index came in, and we then sent a transport message to the
//     response's sender index (wireguard-go sends a keepalive at once once it
//     authenticated the response; a response it rejects, e.g. with the wrong
//     pre-shared key, is never followed by one);
//   - responder: after we sent a response, a transport message to its sender
//     index came in (the initiator's keepalive above).
//
// The round trip is initiation sent → response received (initiator) and
// response sent → first transport message received (responder): both are
// one network round trip plus the peer's handshake processing.
//
// The responder's side reads the index of the initiator's first transport
// message, not its authentication tag: an on-path attacker who saw the
// index could fake the event (not the session). wireguard-go still drops
// what it cannot authenticate.
package wgtrack

import (
	"encoding/binary"
	"time"
)

// Message types (the first byte of a WireGuard message, little-endian type
// field followed by three zero bytes).
const (
	TypeInitiation  = 1
	TypeResponse    = 2
	TypeCookieReply = 3
	TypeTransport   = 4
)

// Sizes of the handshake messages (wireguard-go's device package).
const (
	initiationSize = 148
	responseSize   = 92
	transportMin   = 32
)

// Header is what the tracker reads of a message: its type and index fields.
type Header struct {
	Type     byte
	Sender   uint32 // initiation, response
	Receiver uint32 // response, cookie reply, transport
}

// Parse reads the header of a WireGuard message. It reports false for what
// is not a well-formed initiation, response or transport message.
func Parse(b []byte) (Header, bool) {
	if len(b) < 4 || b[1] != 0 || b[2] != 0 || b[3] != 0 {
		return Header{}, false
	}
	switch b[0] {
	case TypeInitiation:
		if len(b) != initiationSize {
			return Header{}, false
		}
		return Header{Type: TypeInitiation, Sender: binary.LittleEndian.Uint32(b[4:8])}, true
	case TypeResponse:
		if len(b) != responseSize {
			return Header{}, false
		}
		return Header{Type: TypeResponse, Sender: binary.LittleEndian.Uint32(b[4:8]), Receiver: binary.LittleEndian.Uint32(b[8:12])}, true
	case TypeTransport:
		if len(b) < transportMin {
			return Header{}, false
		}
		return Header{Type: TypeTransport, Receiver: binary.LittleEndian.Uint32(b[4:8])}, true
	}
	return Header{}, false
}

// remoteIndices is how many of the peer's session indices a tracker
// remembers (wireguard-go keeps up to three keypairs: previous, current,
// next).
const remoteIndices = 4

// Tracker follows the handshakes of one peer.
type Tracker struct {
	// initiation we sent last (we are the initiator).
	initSender uint32
	initAt     time.Time
	initOK     bool
	// response we received to it, waiting for our confirming transport message.
	respSender uint32
	respRTT    time.Duration
	respOK     bool
	// response we sent last (we are the responder), waiting for the initiator's first transport message.
	sentSender   uint32
	sentReceiver uint32
	sentAt       time.Time
	sentOK       bool

	remotes [remoteIndices]uint32
	nRemote int

	last        time.Time
	rtt         time.Duration
	completions uint64
}

// Awaiting reports whether transport messages matter to the tracker (a
// handshake is waiting for its confirmation). When it is false the caller
// may skip feeding transport messages.
func (t *Tracker) Awaiting() bool { return t.respOK || t.sentOK }

// Sent records a message we sent. It reports whether a handshake completed.
func (t *Tracker) Sent(b []byte, now time.Time) bool {
	h, ok := Parse(b)
	if !ok {
		return false
	}
	return t.SentHeader(h, now)
}

// SentHeader is Sent for a parsed header.
func (t *Tracker) SentHeader(h Header, now time.Time) bool {
	switch h.Type {
	case TypeInitiation:
		// A new initiation replaces the previous one: wireguard-go only
		// accepts a response to its latest.
		t.initSender, t.initAt, t.initOK = h.Sender, now, true
		t.respOK = false
	case TypeResponse:
		t.sentSender, t.sentReceiver, t.sentAt, t.sentOK = h.Sender, h.Receiver, now, true
	case TypeTransport:
		if t.respOK && h.Receiver == t.respSender {
			t.respOK, t.initOK = false, false
			t.complete(now, t.respRTT, h.Receiver)
			return true
		}
	}
	return false
}

// Received records a message we received. It reports whether a handshake
// completed.
func (t *Tracker) Received(b []byte, now time.Time) bool {
	h, ok := Parse(b)
	if !ok {
		return false
	}
	return t.ReceivedHeader(h, now)
}

// ReceivedHeader is Received for a parsed header.
func (t *Tracker) ReceivedHeader(h Header, now time.Time) bool {
	switch h.Type {
	case TypeResponse:
		if t.initOK && h.Receiver == t.initSender {
			t.respSender, t.respRTT, t.respOK = h.Sender, now.Sub(t.initAt), true
		}
	case TypeTransport:
		if t.sentOK && h.Receiver == t.sentSender {
			t.sentOK = false
			t.complete(now, now.Sub(t.sentAt), t.sentReceiver)
			return true
		}
	}
	return false
}

func (t *Tracker) complete(now time.Time, rtt time.Duration, remote uint32) {
	t.last, t.rtt = now, max(rtt, 0)
	t.completions++
	if t.HasRemote(remote) {
		return
	}
	copy(t.remotes[1:], t.remotes[:remoteIndices-1])
	t.remotes[0] = remote
	t.nRemote = min(t.nRemote+1, remoteIndices)
}

// Last returns when the latest handshake completed and its round trip; ok is
// false before the first.
func (t *Tracker) Last() (at time.Time, rtt time.Duration, ok bool) {
	return t.last, t.rtt, t.completions > 0
}

// Completions counts the completed handshakes.
func (t *Tracker) Completions() uint64 { return t.completions }

// HasRemote reports whether idx is the peer's index of one of the latest
// sessions: a transport message we send to idx goes to this peer.
func (t *Tracker) HasRemote(idx uint32) bool {
	for _, r := range t.remotes[:t.nRemote] {
		if r == idx {
			return true
		}
	}
	return false
}

// Remotes returns the peer's indices of the latest sessions, newest first.
func (t *Tracker) Remotes() []uint32 { return append([]uint32(nil), t.remotes[:t.nRemote]...) }
