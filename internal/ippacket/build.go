package ippacket

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// DefaultTTL is the IPv4 TTL and IPv6 hop limit of the packets this package
// builds.
const DefaultTTL = 64

// Quote limits for BuildICMPProhibited: an ICMPv4 error stays within 576
// bytes (RFC 1812 §4.3.2.3), an ICMPv6 error within the IPv6 minimum MTU,
// 1280 bytes (RFC 4443 §2.4).
const (
	maxICMPv4Error = 576
	maxICMPv6Error = 1280
)

// writeIPHeader writes an IPv4 or IPv6 header for a packet of payloadLen
// upper-layer bytes into buf and returns its length.
func writeIPHeader(buf []byte, src, dst netip.Addr, proto Protocol, payloadLen int) int {
	if src.Is4() {
		h := buf[:IPv4MinHeaderLen]
		h[0], h[1] = 0x45, 0
		binary.BigEndian.PutUint16(h[2:4], uint16(IPv4MinHeaderLen+payloadLen))
		binary.BigEndian.PutUint16(h[4:6], 0)
		binary.BigEndian.PutUint16(h[6:8], 0x4000) // DF
		h[8], h[9] = DefaultTTL, byte(proto)
		h[10], h[11] = 0, 0
		s, d := src.As4(), dst.As4()
		copy(h[12:16], s[:])
		copy(h[16:20], d[:])
		binary.BigEndian.PutUint16(h[10:12], ^fold(sum16(h, 0)))
		return IPv4MinHeaderLen
	}
	h := buf[:IPv6HeaderLen]
	binary.BigEndian.PutUint32(h[0:4], 6<<28)
	binary.BigEndian.PutUint16(h[4:6], uint16(payloadLen))
	h[6], h[7] = byte(proto), DefaultTTL
	s, d := src.As16(), dst.As16()
	copy(h[8:24], s[:])
	copy(h[24:40], d[:])
	return IPv6HeaderLen
}

func checkFamilies(src, dst netip.Addr) error {
	if !src.IsValid() || !dst.IsValid() || src.Is4() != dst.Is4() {
		return fmt.Errorf("source %v and destination %v: %w", src, dst, ErrFamily)
	}
	return nil
}

// BuildUDP writes into buf an IPv4 or IPv6 UDP packet from src to dst
// carrying payload, with valid checksums, TTL/hop limit DefaultTTL and (IPv4)
// the don't-fragment flag, and returns its length. src and dst must be of the
// same family (an IPv4-mapped IPv6 address counts as IPv6).
func BuildUDP(buf []byte, src, dst netip.AddrPort, payload []byte) (int, error) {
	sa, da := src.Addr(), dst.Addr()
	if err := checkFamilies(sa, da); err != nil {
		return 0, err
	}
	hl := IPv6HeaderLen
	if sa.Is4() {
		hl = IPv4MinHeaderLen
	}
	ul := UDPHeaderLen + len(payload)
	if ul > 0xFFFF || (sa.Is4() && hl+ul > 0xFFFF) {
		return 0, fmt.Errorf("UDP payload of %d bytes: %w", len(payload), ErrTooLarge)
	}
	if len(buf) < hl+ul {
		return 0, fmt.Errorf("UDP packet of %d bytes in %d: %w", hl+ul, len(buf), ErrBufferTooSmall)
	}
	writeIPHeader(buf, sa, da, ProtoUDP, ul)
	u := buf[hl : hl+ul]
	binary.BigEndian.PutUint16(u[0:2], src.Port())
	binary.BigEndian.PutUint16(u[2:4], dst.Port())
	binary.BigEndian.PutUint16(u[4:6], uint16(ul))
	u[6], u[7] = 0, 0
	copy(u[UDPHeaderLen:], payload)
	ck := ^fold(sum16(u, pseudo(buf, hl, ProtoUDP, ul)))
	if ck == 0 {
		ck = 0xFFFF
	}
	binary.BigEndian.PutUint16(u[6:8], ck)
	return hl + ul, nil
}

// pseudo returns the pseudo-header sum of the packet whose IP header of
// length hl starts buf.
func pseudo(buf []byte, hl int, proto Protocol, l4len int) uint64 {
	if hl == IPv4MinHeaderLen {
		return pseudoSum(buf[12:16], buf[16:20], proto, l4len)
	}
	return pseudoSum(buf[8:24], buf[24:40], proto, l4len)
}

// BuildICMPProhibited writes into buf the reply a filter gives to a denied
// packet: an ICMP destination unreachable, communication administratively
// prohibited (type 3 code 13) for IPv4, or an ICMPv6 destination unreachable,
// administratively prohibited (type 1 code 1) for IPv6. The reply goes from
// the denied packet's destination to its source and quotes as much of it as
// fits in 576 (IPv4) or 1280 (IPv6) bytes. It returns the reply's length.
// Following RFC 1812 and RFC 4443, it refuses to answer an ICMP error
// (ErrUnsupported) or a non-first fragment (ErrFragment); the caller decides
// about the other cases where no error should be sent (multicast or broadcast
// destinations, rate limiting). buf may be the denied packet's own buffer.
func BuildICMPProhibited(buf []byte, pkt Packet) (int, error) {
	if pkt.b == nil || pkt.partial {
		return 0, fmt.Errorf("reply to a partial packet: %w", ErrUnsupported)
	}
	if pkt.fragOff != 0 {
		return 0, fmt.Errorf("reply to a fragment at offset %d: %w", pkt.fragOff, ErrFragment)
	}
	if pkt.IsICMPError() {
		return 0, fmt.Errorf("reply to an ICMP error: %w", ErrUnsupported)
	}
	src, dst := pkt.Dst(), pkt.Src()
	hl, limit, proto, typ, code := IPv6HeaderLen, maxICMPv6Error, ProtoICMPv6, uint8(1), uint8(1)
	if pkt.version == 4 {
		hl, limit, proto, typ, code = IPv4MinHeaderLen, maxICMPv4Error, ProtoICMP, 3, 13
	}
	quote := min(len(pkt.b), limit-hl-ICMPHeaderLen)
	il := ICMPHeaderLen + quote
	if len(buf) < hl+il {
		return 0, fmt.Errorf("ICMP reply of %d bytes in %d: %w", hl+il, len(buf), ErrBufferTooSmall)
	}
	// Copy the quote first: buf may be pkt's own buffer.
	copy(buf[hl+ICMPHeaderLen:hl+il], pkt.b[:quote])
	writeIPHeader(buf, src, dst, proto, il)
	m := buf[hl : hl+il]
	m[0], m[1] = typ, code
	m[2], m[3], m[4], m[5], m[6], m[7] = 0, 0, 0, 0, 0, 0
	var acc uint64
	if pkt.version == 6 {
		acc = pseudo(buf, hl, proto, il)
	}
	binary.BigEndian.PutUint16(m[2:4], ^fold(sum16(m, acc)))
	return hl + il, nil
}
