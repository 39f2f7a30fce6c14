package nat

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/snowgate/snowgate/internal/ippacket"
)

// Verdict says what the caller does with a packet after a Translate call.
type Verdict uint8

// Verdicts. The zero Verdict is Drop.
const (
	// Drop: discard the packet; the returned error says why.
	Drop Verdict = iota
	// NotNAT: the packet is not DNS-resource NAT traffic; it is unchanged and
	// goes on through the rest of the pipeline (filters, CIDR resources).
	NotNAT
	// Translated: the packet was rewritten in place; forward it.
	Translated
	// Unreachable: discard the packet and answer the client with an ICMP
	// destination unreachable (BuildUnreachable); the returned error is
	// ErrNoTranslation or ErrNoRealIP.
	Unreachable
)

// String returns the verdict's name.
func (v Verdict) String() string {
	switch v {
	case Drop:
		return "drop"
	case NotNAT:
		return "not-nat"
	case Translated:
		return "translated"
	case Unreachable:
		return "unreachable"
	default:
		return fmt.Sprintf("verdict(%d)", uint8(v))
	}
}

// isICMP reports whether proto is the ICMP of the packet's family.
func isICMP(p ippacket.Packet) bool {
	return (p.Version() == 4 && p.Protocol() == ippacket.ProtoICMP) ||
		(p.Version() == 6 && p.Protocol() == ippacket.ProtoICMPv6)
}

func isEchoRequest(p ippacket.Packet, typ uint8) bool {
	if p.Version() == 4 {
		return typ == 8
	}
	return typ == 128
}

func isEchoReply(p ippacket.Packet, typ uint8) bool {
	if p.Version() == 4 {
		return typ == 0
	}
	return typ == 129
}

// clientPort returns the flow identifier a client's packet (or a quote of
// it) carries: the TCP/UDP source port or the echo request's id.
func clientPort(p ippacket.Packet) (uint16, error) {
	switch {
	case p.Protocol() == ippacket.ProtoTCP || p.Protocol() == ippacket.ProtoUDP:
		sp, _, err := p.Ports()
		if err != nil {
			return 0, fmt.Errorf("%w: %w", ErrUnsupportedProtocol, err)
		}
		return sp, nil
	case isICMP(p):
		typ, _, err := p.ICMP()
		if err != nil {
			return 0, fmt.Errorf("%w: %w", ErrUnsupportedProtocol, err)
		}
		if !isEchoRequest(p, typ) {
			return 0, ErrUnsupportedProtocol
		}
		return p.EchoID()
	default:
		return 0, ErrUnsupportedProtocol
	}
}

// setClientPort writes port where clientPort reads it.
func setClientPort(p ippacket.Packet, port uint16) error {
	if p.Protocol() == ippacket.ProtoTCP || p.Protocol() == ippacket.ProtoUDP {
		return p.SetSrcPort(port)
	}
	return p.SetEchoID(port)
}

// TranslateOutgoing translates, in place, a packet from a client's tunnel
// toward a resource: a packet to a proxy IP gets the real IP as destination
// (and, when needed to keep replies unambiguous, another source port or echo
// id). Packets to addresses outside the proxy ranges are NotNAT.
func (t *Table) TranslateOutgoing(pkt []byte, now time.Time) (Verdict, error) {
	v, err := t.translateOutgoing(pkt, now)
	if err != nil {
		t.counters.drop(err)
	}
	return v, err
}

func (t *Table) translateOutgoing(pkt []byte, now time.Time) (Verdict, error) {
	p, err := ippacket.Parse(pkt)
	if err != nil {
		return Drop, fmt.Errorf("outgoing packet: %w: %w", ErrMalformed, err)
	}
	dst := p.Dst()
	if !t.isProxy(dst) {
		return NotNAT, nil
	}
	c := t.clients[p.Src()]
	if c == nil {
		return Drop, ErrUnknownClient
	}
	port, err := clientPort(p)
	if err != nil {
		return Drop, err
	}
	in := flowKey{addr: dst, port: port, proto: p.Protocol()}
	s := c.byInside[in]
	if s != nil && !now.Before(s.removeAt()) {
		c.removeSession(s, now)
		s = nil
	}
	if s == nil {
		tr, ok := c.translations[dst]
		if !ok {
			return Unreachable, ErrNoTranslation
		}
		if !tr.real.IsValid() || tr.real.Is4() != dst.Is4() {
			return Unreachable, ErrNoRealIP
		}
		if s, err = t.newSession(c, in, tr.real, now); err != nil {
			return Drop, err
		}
	}
	if err := p.SetDst(s.outside.addr); err != nil {
		return Drop, fmt.Errorf("outgoing packet: %w: %w", ErrMalformed, err)
	}
	if s.outside.port != port {
		if err := setClientPort(p, s.outside.port); err != nil {
			return Drop, fmt.Errorf("outgoing packet: %w: %w", ErrMalformed, err)
		}
	}
	s.lastOut = now
	if fin, rst := tcpFlags(p); fin || rst {
		s.finOut = s.finOut || fin
		s.rstOut = s.rstOut || rst
		c.schedule(s.removeAt())
	}
	return Translated, nil
}

// newSession creates the session for inside key in toward real, choosing
// the outside port: the client's own if free, else the next free one.
func (t *Table) newSession(c *client, in flowKey, real netip.Addr, now time.Time) (*session, error) {
	if len(c.byInside) >= t.maxSessions {
		t.expire(c, now)
		if len(c.byInside) >= t.maxSessions {
			return nil, ErrTableFull
		}
	}
	out := flowKey{addr: real, proto: in.proto}
	found := false
	// At most maxSessions candidates are taken, so this ends quickly.
	for i := 0; i <= 0xFFFF; i++ {
		cand := in.port + uint16(i)
		if cand == 0 && in.port != 0 {
			continue
		}
		out.port = cand
		other, taken := c.byOutside[out]
		if taken && !now.Before(other.removeAt()) {
			c.removeSession(other, now) // expired, not yet collected
			taken = false
		}
		if !taken {
			found = true
			break
		}
	}
	if !found {
		return nil, ErrTableFull
	}
	s := &session{inside: in, outside: out, lastOut: now}
	c.byInside[in] = s
	c.byOutside[out] = s
	t.counters.created.Add(1)
	t.counters.sessions.Add(1)
	delete(c.expired, out)
	c.schedule(s.removeAt())
	t.log.Debug("new NAT session", "proxy_ip", in.addr, "real_ip", real, "proto", in.proto,
		"port", in.port, "outside_port", out.port)
	return s, nil
}

// TranslateIncoming translates, in place, a packet from a resource toward a
// client: a reply of a session gets the proxy IP as source (and the client's
// port or echo id back); an ICMP error quoting a translated packet gets the
// quote translated back and the proxy IP as outer source. A packet that
// matches no session is NotNAT, unless it matches a session that expired
// (Drop, ErrExpiredSession).
func (t *Table) TranslateIncoming(pkt []byte, now time.Time) (Verdict, error) {
	v, err := t.translateIncoming(pkt, now)
	if err != nil {
		t.counters.drop(err)
	}
	return v, err
}

func (t *Table) translateIncoming(pkt []byte, now time.Time) (Verdict, error) {
	p, err := ippacket.Parse(pkt)
	if err != nil {
		return Drop, fmt.Errorf("incoming packet: %w: %w", ErrMalformed, err)
	}
	c := t.clients[p.Dst()]
	if c == nil {
		return NotNAT, nil
	}
	if p.IsICMPError() {
		return t.incomingICMPError(c, p, now)
	}
	var port uint16
	switch {
	case p.Protocol() == ippacket.ProtoTCP || p.Protocol() == ippacket.ProtoUDP:
		_, dp, err := p.Ports()
		if err != nil {
			return NotNAT, nil
		}
		port = dp
	case isICMP(p):
		typ, _, err := p.ICMP()
		if err != nil || !isEchoReply(p, typ) {
			return NotNAT, nil
		}
		if port, err = p.EchoID(); err != nil {
			return NotNAT, nil
		}
	default:
		return NotNAT, nil
	}
	out := flowKey{addr: p.Src(), port: port, proto: p.Protocol()}
	s, v, err := c.lookupOutside(out, now)
	if s == nil {
		return v, err
	}
	if err := p.SetSrc(s.inside.addr); err != nil {
		return Drop, fmt.Errorf("incoming packet: %w: %w", ErrMalformed, err)
	}
	if s.inside.port != port {
		if p.Protocol() == ippacket.ProtoTCP || p.Protocol() == ippacket.ProtoUDP {
			err = p.SetDstPort(s.inside.port)
		} else {
			err = p.SetEchoID(s.inside.port)
		}
		if err != nil {
			return Drop, fmt.Errorf("incoming packet: %w: %w", ErrMalformed, err)
		}
	}
	s.lastIn = now
	if fin, rst := tcpFlags(p); fin || rst {
		s.finIn = s.finIn || fin
		s.rstIn = s.rstIn || rst
		c.schedule(s.removeAt())
	}
	return Translated, nil
}

// lookupOutside finds the live session of outside key out; without one it
// returns the verdict for the packet.
func (c *client) lookupOutside(out flowKey, now time.Time) (*session, Verdict, error) {
	s := c.byOutside[out]
	if s != nil && !now.Before(s.removeAt()) {
		c.removeSession(s, now)
		s = nil
	}
	if s != nil {
		return s, Translated, nil
	}
	if _, ok := c.expired[out]; ok {
		return nil, Drop, ErrExpiredSession
	}
	return nil, NotNAT, nil
}

// incomingICMPError translates an ICMP error whose quoted packet is a
// translated packet of client c.
func (t *Table) incomingICMPError(c *client, p ippacket.Packet, now time.Time) (Verdict, error) {
	q, err := p.Quoted()
	if err != nil {
		return Drop, fmt.Errorf("incoming ICMP error: %w: %w", ErrMalformed, err)
	}
	port, err := clientPort(q)
	if err != nil {
		return NotNAT, nil
	}
	s, v, err := c.lookupOutside(flowKey{addr: q.Dst(), port: port, proto: q.Protocol()}, now)
	if s == nil {
		return v, err
	}
	if err := q.SetDst(s.inside.addr); err != nil {
		return Drop, fmt.Errorf("incoming ICMP error: %w: %w", ErrMalformed, err)
	}
	if s.inside.port != port {
		if err := setClientPort(q, s.inside.port); err != nil {
			return Drop, fmt.Errorf("incoming ICMP error: %w: %w", ErrMalformed, err)
		}
	}
	if err := p.SetSrc(s.inside.addr); err != nil {
		return Drop, fmt.Errorf("incoming ICMP error: %w: %w", ErrMalformed, err)
	}
	s.lastIn = now
	return Translated, nil
}
