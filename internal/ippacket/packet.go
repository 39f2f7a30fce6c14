package ippacket

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// Protocol is an IP protocol number (IPv4 protocol field, IPv6 next header).
type Protocol uint8

// Protocol numbers this package knows about.
const (
	// ProtoICMP is ICMP for IPv4.
	ProtoICMP Protocol = 1
	// ProtoTCP is TCP.
	ProtoTCP Protocol = 6
	// ProtoUDP is UDP.
	ProtoUDP Protocol = 17
	// ProtoICMPv6 is ICMP for IPv6.
	ProtoICMPv6 Protocol = 58
	// ProtoP2PControl is the next header (255, reserved by IANA) of the
	// in-tunnel p2p control protocol's IPv6 packets.
	ProtoP2PControl Protocol = 0xFF
)

// IPv6 extension headers walked by Parse.
const (
	protoHopByHop = 0
	protoRouting  = 43
	protoFragment = 44
	protoDestOpts = 60
)

// Header sizes.
const (
	// IPv4MinHeaderLen is the size of an IPv4 header without options.
	IPv4MinHeaderLen = 20
	// IPv6HeaderLen is the size of the fixed IPv6 header.
	IPv6HeaderLen = 40
	// UDPHeaderLen is the size of a UDP header.
	UDPHeaderLen = 8
	// ICMPHeaderLen is the size of an ICMP or ICMPv6 header (type, code,
	// checksum and the 4-byte rest of header).
	ICMPHeaderLen   = 8
	tcpMinHeaderLen = 20
)

// maxExtHeaders bounds the IPv6 extension-header walk.
const maxExtHeaders = 8

// Packet is a parsed view over an IPv4 or IPv6 packet held in a caller's
// buffer. It holds no copy: accessors read the buffer, setters write it. The
// zero Packet is not valid (its accessors return zero values or errors);
// obtain one from Parse or Packet.Quoted. A Packet is a small value meant to
// be passed by value; copies share the buffer.
type Packet struct {
	b       []byte // the packet, trimmed to its IP length (or what is there when partial)
	l4      int    // offset of the upper-layer header
	fragOff int    // fragment offset in bytes
	version uint8
	proto   Protocol
	frag    bool
	partial bool
	// routing is set for an IPv6 packet with a routing header that still has
	// segments left: its TCP/UDP/ICMPv6 pseudo-header uses the final
	// destination, not the destination field.
	routing bool
	// outer is the 2-byte checksum field of the ICMP error that quotes this
	// packet, nil for a packet that is not quoted.
	outer []byte
}

// Parse validates the IP header at the start of b and returns a view of the
// packet. Bytes after the IP total length (IPv4) or payload length (IPv6) are
// excluded from the view. The IPv4 header checksum must be valid. IPv6
// hop-by-hop, routing, destination options and fragment headers are walked
// (at most 8) to the upper-layer protocol; other next headers are reported
// as the packet's protocol. Fragments are parsed, not reassembled.
func Parse(b []byte) (Packet, error) {
	return parse(b, false)
}

func parse(b []byte, partial bool) (Packet, error) {
	if len(b) < 1 {
		return Packet{}, fmt.Errorf("empty packet: %w", ErrTruncated)
	}
	switch b[0] >> 4 {
	case 4:
		return parse4(b, partial)
	case 6:
		return parse6(b, partial)
	default:
		return Packet{}, fmt.Errorf("IP version %d: %w", b[0]>>4, ErrUnsupported)
	}
}

func parse4(b []byte, partial bool) (Packet, error) {
	if len(b) < IPv4MinHeaderLen {
		return Packet{}, fmt.Errorf("IPv4 header: %d bytes: %w", len(b), ErrTruncated)
	}
	ihl := int(b[0]&0x0F) * 4
	if ihl < IPv4MinHeaderLen {
		return Packet{}, fmt.Errorf("IPv4 IHL %d: %w", ihl, ErrMalformed)
	}
	if len(b) < ihl {
		return Packet{}, fmt.Errorf("IPv4 header of %d bytes in %d: %w", ihl, len(b), ErrTruncated)
	}
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if total < ihl {
		return Packet{}, fmt.Errorf("IPv4 total length %d < header %d: %w", total, ihl, ErrMalformed)
	}
	if total > len(b) {
		if !partial {
			return Packet{}, fmt.Errorf("IPv4 total length %d > %d bytes: %w", total, len(b), ErrTruncated)
		}
	} else {
		b = b[:total]
	}
	if !partial && fold(sum16(b[:ihl], 0)) != 0xFFFF {
		return Packet{}, fmt.Errorf("IPv4 header checksum: %w", ErrMalformed)
	}
	ff := binary.BigEndian.Uint16(b[6:8])
	off := int(ff&0x1FFF) * 8
	return Packet{
		b:       b,
		l4:      ihl,
		fragOff: off,
		version: 4,
		proto:   Protocol(b[9]),
		frag:    ff&0x2000 != 0 || off != 0,
		partial: partial,
	}, nil
}

func parse6(b []byte, partial bool) (Packet, error) {
	if len(b) < IPv6HeaderLen {
		return Packet{}, fmt.Errorf("IPv6 header: %d bytes: %w", len(b), ErrTruncated)
	}
	pl := int(binary.BigEndian.Uint16(b[4:6]))
	if pl == 0 && b[6] == protoHopByHop {
		return Packet{}, fmt.Errorf("IPv6 jumbogram: %w", ErrUnsupported)
	}
	if IPv6HeaderLen+pl > len(b) {
		if !partial {
			return Packet{}, fmt.Errorf("IPv6 payload length %d > %d bytes: %w", pl, len(b)-IPv6HeaderLen, ErrTruncated)
		}
	} else {
		b = b[:IPv6HeaderLen+pl]
	}
	p := Packet{b: b, version: 6, partial: partial}
	next, off := b[6], IPv6HeaderLen
	for i := 0; ; i++ {
		switch next {
		case protoHopByHop, protoRouting, protoDestOpts, protoFragment:
		default:
			p.proto, p.l4 = Protocol(next), off
			return p, nil
		}
		if i == maxExtHeaders {
			return Packet{}, fmt.Errorf("more than %d IPv6 extension headers: %w", maxExtHeaders, ErrUnsupported)
		}
		if off+8 > len(b) {
			return Packet{}, fmt.Errorf("IPv6 extension header %d at %d: %w", next, off, ErrTruncated)
		}
		hlen := 8
		switch next {
		case protoFragment:
			fo := binary.BigEndian.Uint16(b[off+2 : off+4])
			p.frag, p.fragOff = true, int(fo&^7)
		case protoRouting:
			hlen = (int(b[off+1]) + 1) * 8
			if b[off+3] != 0 {
				p.routing = true
			}
		default:
			hlen = (int(b[off+1]) + 1) * 8
		}
		if off+hlen > len(b) {
			return Packet{}, fmt.Errorf("IPv6 extension header %d of %d bytes at %d: %w", next, hlen, off, ErrTruncated)
		}
		next, off = b[off], off+hlen
	}
}

// Bytes returns the packet's bytes: the buffer given to Parse trimmed to the
// IP length, or the quoted bytes that are there for a partial packet.
func (p Packet) Bytes() []byte { return p.b }

// Version returns 4 or 6.
func (p Packet) Version() int { return int(p.version) }

// Protocol returns the upper-layer protocol: the IPv4 protocol field, or the
// IPv6 next header after the walked extension headers.
func (p Packet) Protocol() Protocol { return p.proto }

// HeaderLen returns the length of the IP header including IPv4 options and
// walked IPv6 extension headers, i.e. the offset of the upper-layer header.
func (p Packet) HeaderLen() int { return p.l4 }

// Payload returns the upper-layer bytes (header included) that are present.
// For a fragment, it is this fragment's part only.
func (p Packet) Payload() []byte { return p.b[p.l4:] }

// IsFragment reports whether the packet is a fragment (IPv4 more-fragments
// flag or offset, IPv6 fragment header).
func (p Packet) IsFragment() bool { return p.frag }

// FragmentOffset returns the fragment offset in bytes; only a first fragment
// (or an unfragmented packet) has 0 and carries the upper-layer header.
func (p Packet) FragmentOffset() int { return p.fragOff }

// IsPartial reports whether the packet is a quoted packet from an ICMP error:
// it may be truncated, its IPv4 header checksum is not checked, and accessors
// need only the bytes of the field they read.
func (p Packet) IsPartial() bool { return p.partial }

func (p Packet) addrRange(src bool) (int, int) {
	if p.version == 4 {
		if src {
			return 12, 16
		}
		return 16, 20
	}
	if src {
		return 8, 24
	}
	return 24, 40
}

func (p Packet) addr(src bool) netip.Addr {
	if p.version == 0 {
		return netip.Addr{}
	}
	s, e := p.addrRange(src)
	if p.version == 4 {
		return netip.AddrFrom4([4]byte(p.b[s:e]))
	}
	return netip.AddrFrom16([16]byte(p.b[s:e]))
}

// Src returns the source address (the zero Addr for the zero Packet).
func (p Packet) Src() netip.Addr { return p.addr(true) }

// Dst returns the destination address (the zero Addr for the zero Packet).
func (p Packet) Dst() netip.Addr { return p.addr(false) }

// isICMP reports whether the protocol is the ICMP of the packet's family.
func (p Packet) isICMP() bool {
	return (p.version == 4 && p.proto == ProtoICMP) || (p.version == 6 && p.proto == ProtoICMPv6)
}

// l4Header returns the upper-layer bytes after checking that fields up to
// end are present. A full packet must also hold the protocol's minimum
// header (minLen).
func (p Packet) l4Header(end, minLen int) ([]byte, error) {
	if p.fragOff != 0 {
		return nil, fmt.Errorf("fragment at offset %d: %w", p.fragOff, ErrFragment)
	}
	h := p.b[p.l4:]
	need := end
	if !p.partial && minLen > need {
		need = minLen
	}
	if len(h) < need {
		return nil, fmt.Errorf("protocol %d header: %d bytes, need %d: %w", p.proto, len(h), need, ErrTruncated)
	}
	return h, nil
}

func (p Packet) portsHeader() ([]byte, error) {
	switch p.proto {
	case ProtoTCP:
		return p.l4Header(4, tcpMinHeaderLen)
	case ProtoUDP:
		return p.l4Header(4, UDPHeaderLen)
	default:
		return nil, fmt.Errorf("ports of protocol %d: %w", p.proto, ErrUnsupported)
	}
}

// Ports returns the TCP or UDP source and destination ports.
func (p Packet) Ports() (src, dst uint16, err error) {
	h, err := p.portsHeader()
	if err != nil {
		return 0, 0, err
	}
	return binary.BigEndian.Uint16(h[0:2]), binary.BigEndian.Uint16(h[2:4]), nil
}

// UDPPayload returns the UDP payload, bounded by the UDP length field. It
// fails on a partial packet that does not hold the whole datagram.
func (p Packet) UDPPayload() ([]byte, error) {
	if p.proto != ProtoUDP {
		return nil, fmt.Errorf("UDP payload of protocol %d: %w", p.proto, ErrUnsupported)
	}
	h, err := p.l4Header(UDPHeaderLen, UDPHeaderLen)
	if err != nil {
		return nil, err
	}
	if p.frag {
		return nil, fmt.Errorf("UDP payload of a fragment: %w", ErrFragment)
	}
	l := int(binary.BigEndian.Uint16(h[4:6]))
	if l < UDPHeaderLen {
		return nil, fmt.Errorf("UDP length %d: %w", l, ErrMalformed)
	}
	if l > len(h) {
		return nil, fmt.Errorf("UDP length %d > %d bytes: %w", l, len(h), ErrTruncated)
	}
	return h[UDPHeaderLen:l], nil
}

// ICMP returns the type and code of an ICMP (IPv4) or ICMPv6 (IPv6) message.
func (p Packet) ICMP() (typ, code uint8, err error) {
	if !p.isICMP() {
		return 0, 0, fmt.Errorf("ICMP type of protocol %d over IPv%d: %w", p.proto, p.version, ErrUnsupported)
	}
	h, err := p.l4Header(2, ICMPHeaderLen)
	if err != nil {
		return 0, 0, err
	}
	return h[0], h[1], nil
}

// isEcho reports whether an ICMP type is an echo request or reply.
func (p Packet) isEcho(typ uint8) bool {
	if p.version == 4 {
		return typ == 8 || typ == 0
	}
	return typ == 128 || typ == 129
}

func (p Packet) echoHeader() ([]byte, error) {
	if !p.isICMP() {
		return nil, fmt.Errorf("echo id of protocol %d over IPv%d: %w", p.proto, p.version, ErrUnsupported)
	}
	h, err := p.l4Header(6, ICMPHeaderLen)
	if err != nil {
		return nil, err
	}
	if !p.isEcho(h[0]) {
		return nil, fmt.Errorf("echo id of ICMP type %d: %w", h[0], ErrUnsupported)
	}
	return h, nil
}

// EchoID returns the identifier of an ICMP or ICMPv6 echo request or reply.
func (p Packet) EchoID() (uint16, error) {
	h, err := p.echoHeader()
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint16(h[4:6]), nil
}

// IsICMPError reports whether the packet is an ICMP error that quotes another
// packet: destination unreachable, source quench, redirect, time exceeded and
// parameter problem for IPv4; destination unreachable, packet too big, time
// exceeded and parameter problem for IPv6.
func (p Packet) IsICMPError() bool {
	need := ICMPHeaderLen
	if p.partial {
		need = 1
	}
	if !p.isICMP() || p.fragOff != 0 || len(p.b) < p.l4+need {
		return false
	}
	typ := p.b[p.l4]
	if p.version == 4 {
		return typ == 3 || typ == 4 || typ == 5 || typ == 11 || typ == 12
	}
	return typ >= 1 && typ <= 4
}

// Quoted returns the packet quoted by an ICMP error, as a partial Packet over
// the same bytes. Its IP header must be complete (IPv6 extension headers
// included) and of the outer packet's family; the rest may be truncated.
// Setters on the quoted packet also update the outer ICMP checksum. A quoted
// packet nested in a quoted packet is not supported.
func (p Packet) Quoted() (Packet, error) {
	if p.partial {
		return Packet{}, fmt.Errorf("packet quoted in a quoted packet: %w", ErrUnsupported)
	}
	if !p.IsICMPError() {
		return Packet{}, fmt.Errorf("quoted packet of a non-error: %w", ErrUnsupported)
	}
	if p.frag {
		return Packet{}, fmt.Errorf("quoted packet of a fragmented ICMP error: %w", ErrFragment)
	}
	q, err := parse(p.b[p.l4+ICMPHeaderLen:], true)
	if err != nil {
		return Packet{}, fmt.Errorf("quoted packet: %w", err)
	}
	if q.version != p.version {
		return Packet{}, fmt.Errorf("IPv%d packet quoted in IPv%d: %w", q.version, p.version, ErrUnsupported)
	}
	q.outer = p.b[p.l4+2 : p.l4+4]
	return q, nil
}
