package ippacket

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// l4Checksum returns the upper-layer checksum field that covers the
// pseudo-header (TCP, UDP, ICMPv6), or nil when the packet has none or it is
// not in the buffer (non-first fragment, truncated quote).
func (p Packet) l4Checksum() (ck []byte, udp bool) {
	if p.fragOff != 0 {
		return nil, false
	}
	var off int
	switch {
	case p.proto == ProtoTCP:
		off = 16
	case p.proto == ProtoUDP:
		off, udp = 6, true
	case p.version == 6 && p.proto == ProtoICMPv6:
		off = 2
	default:
		return nil, false
	}
	if p.l4+off+2 > len(p.b) {
		return nil, false
	}
	return p.b[p.l4+off : p.l4+off+2], udp
}

// finish applies the total update term of a rewrite to the outer ICMP
// checksum of a quoted packet.
func (p Packet) finish(d uint64) {
	if p.outer != nil {
		adjust(p.outer, d, false)
	}
}

func (p Packet) setAddr(a netip.Addr, src bool) error {
	if p.version == 0 {
		return fmt.Errorf("setting an address in the zero Packet: %w", ErrUnsupported)
	}
	if !a.IsValid() || (p.version == 4) != a.Is4() {
		return fmt.Errorf("setting %v in an IPv%d packet: %w", a, p.version, ErrFamily)
	}
	if !src && p.routing {
		return fmt.Errorf("destination of an IPv6 packet with a routing header: %w", ErrUnsupported)
	}
	s, e := p.addrRange(src)
	if p.addr(src) == a {
		return nil // nothing to do; also keeps a 0xFFFF checksum as it is
	}
	var buf [16]byte
	var nb []byte
	if a.Is4() {
		a4 := a.As4()
		nb = buf[:copy(buf[:], a4[:])]
	} else {
		nb = buf[:copy(buf[:], a.AsSlice())]
	}
	d := delta(p.b[s:e], nb)
	copy(p.b[s:e], nb)
	total := d
	if p.version == 4 {
		total += adjust(p.b[10:12], d, false)
	}
	if ck, udp := p.l4Checksum(); ck != nil {
		total += adjust(ck, d, udp)
	}
	p.finish(total)
	return nil
}

// SetSrc writes a as the source address and updates the IPv4 header checksum
// and the TCP/UDP/ICMPv6 checksum (and, for a quoted packet, the outer ICMP
// checksum). a must be of the packet's family. A UDP checksum of 0 (none,
// allowed over IPv4) stays 0, and a UDP checksum that computes to 0 is
// written as 0xFFFF. Setting the address already there changes nothing.
func (p Packet) SetSrc(a netip.Addr) error { return p.setAddr(a, true) }

// SetDst writes a as the destination address, updating checksums as SetSrc
// does. It refuses IPv6 packets whose routing header has segments left.
func (p Packet) SetDst(a netip.Addr) error { return p.setAddr(a, false) }

func (p Packet) setPort(port uint16, off int) error {
	h, err := p.portsHeader()
	if err != nil {
		return err
	}
	if binary.BigEndian.Uint16(h[off:off+2]) == port {
		return nil
	}
	var nb [2]byte
	binary.BigEndian.PutUint16(nb[:], port)
	d := delta(h[off:off+2], nb[:])
	copy(h[off:off+2], nb[:])
	total := d
	if ck, udp := p.l4Checksum(); ck != nil {
		total += adjust(ck, d, udp)
	}
	p.finish(total)
	return nil
}

// SetSrcPort writes the TCP or UDP source port and updates the checksums.
func (p Packet) SetSrcPort(port uint16) error { return p.setPort(port, 0) }

// SetDstPort writes the TCP or UDP destination port and updates the checksums.
func (p Packet) SetDstPort(port uint16) error { return p.setPort(port, 2) }

// SetEchoID writes the identifier of an ICMP or ICMPv6 echo request or reply
// and updates the ICMP checksum (and, for a quoted packet, the outer one).
// For a quoted echo truncated before its checksum only the id is written.
func (p Packet) SetEchoID(id uint16) error {
	h, err := p.echoHeader()
	if err != nil {
		return err
	}
	if binary.BigEndian.Uint16(h[4:6]) == id {
		return nil
	}
	var nb [2]byte
	binary.BigEndian.PutUint16(nb[:], id)
	d := delta(h[4:6], nb[:])
	copy(h[4:6], nb[:])
	// The echo checksum precedes the id, so it is present whenever the id is.
	total := d + adjust(h[2:4], d, false)
	p.finish(total)
	return nil
}
