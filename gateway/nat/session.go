package nat

import (
	"time"

	"github.com/snowgate/snowgate/internal/ippacket"
)

// TCP flag bits (byte 13 of the TCP header).
const (
	tcpFIN = 0x01
	tcpRST = 0x04
)

// session is one translated flow of a client.
type session struct {
	inside  flowKey // (protocol, client port or echo id, proxy IP)
	outside flowKey // (protocol, port, real IP)
	lastOut time.Time
	lastIn  time.Time // zero until the first reply: unconfirmed
	finOut  bool
	finIn   bool
	rstOut  bool
	rstIn   bool
}

func (s *session) ttl() time.Duration {
	switch s.inside.proto {
	case ippacket.ProtoTCP:
		return TCPTTL
	case ippacket.ProtoUDP:
		return UDPTTL
	default:
		return ICMPTTL
	}
}

func (s *session) last() time.Time {
	if s.lastIn.After(s.lastOut) {
		return s.lastIn
	}
	return s.lastOut
}

// removeAt is when the session expires: the earliest of its TTL after the
// last packet, UnconfirmedTTL after the last outgoing packet while
// unconfirmed, FinLinger after both FINs, and the last packet after a RST.
func (s *session) removeAt() time.Time {
	last := s.last()
	at := last.Add(s.ttl())
	if s.lastIn.IsZero() {
		at = earliest(at, s.lastOut.Add(UnconfirmedTTL))
	}
	if s.finOut && s.finIn {
		at = earliest(at, last.Add(FinLinger))
	}
	if s.rstOut || s.rstIn {
		at = earliest(at, last)
	}
	return at
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// tcpFlags returns the FIN and RST flags of a TCP packet (false for others
// and when the flags are not in the buffer).
func tcpFlags(p ippacket.Packet) (fin, rst bool) {
	if p.Protocol() != ippacket.ProtoTCP || p.FragmentOffset() != 0 {
		return false, false
	}
	h := p.Payload()
	if len(h) < 14 {
		return false, false
	}
	return h[13]&tcpFIN != 0, h[13]&tcpRST != 0
}
