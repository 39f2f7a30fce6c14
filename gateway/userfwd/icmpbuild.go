package userfwd

import (
	"encoding/binary"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/snowgate/snowgate/internal/ippacket"
)

// icmpErrorKind is the destination-unreachable flavour the device answers with.
type icmpErrorKind int

const (
	// icmpNetUnreachable: ICMP type 3 code 0; ICMPv6 type 1 code 0 (no route to destination).
	icmpNetUnreachable icmpErrorKind = iota
	// icmpHostUnreachable: ICMP type 3 code 1; ICMPv6 type 1 code 3 (address unreachable).
	icmpHostUnreachable
	// icmpPortUnreachable: ICMP type 3 code 3; ICMPv6 type 1 code 4.
	icmpPortUnreachable
	// icmpProhibited: ICMP type 3 code 13; ICMPv6 type 1 code 1 (administratively prohibited).
	icmpProhibited
)

var (
	icmpv4Codes = [...]uint8{0, 1, 3, 13}
	icmpv6Codes = [...]uint8{0, 3, 4, 1}
)

// Quote limits: an ICMPv4 error stays within 576 bytes (RFC 1812 §4.3.2.3), an ICMPv6 error within the IPv6
// minimum MTU (RFC 4443 §2.4).
const (
	maxICMPv4Error = 576
	maxICMPv6Error = 1280
	ttl            = 64
)

// replyICMPError sends the client a destination unreachable of the given kind for orig, a packet (or the
// start of one) the client sent: from orig's destination to its source, quoting orig. Nothing is sent for
// an ICMP error, a non-first fragment or bytes that do not parse.
func (d *Device) replyICMPError(orig []byte, kind icmpErrorKind) {
	if b := buildICMPError(orig, kind); b != nil {
		d.emit(b)
	}
}

// buildICMPError builds the error replyICMPError sends, or returns nil.
func buildICMPError(orig []byte, kind icmpErrorKind) []byte {
	p, err := ippacket.Parse(orig)
	if err != nil || p.IsICMPError() || p.FragmentOffset() != 0 {
		return nil
	}
	src, dst := p.Dst(), p.Src()
	if p.Version() == 4 {
		quote := orig[:min(len(p.Bytes()), maxICMPv4Error-header.IPv4MinimumSize-header.ICMPv4MinimumSize)]
		b := make([]byte, header.IPv4MinimumSize+header.ICMPv4MinimumSize+len(quote))
		m := header.ICMPv4(b[header.IPv4MinimumSize:])
		m.SetType(header.ICMPv4DstUnreachable)
		m.SetCode(header.ICMPv4Code(icmpv4Codes[kind]))
		copy(m[header.ICMPv4MinimumSize:], quote)
		return finishICMPv4(b, src, dst)
	}
	quote := orig[:min(len(p.Bytes()), maxICMPv6Error-header.IPv6MinimumSize-header.ICMPv6MinimumSize)]
	b := make([]byte, header.IPv6MinimumSize+header.ICMPv6MinimumSize+len(quote))
	m := header.ICMPv6(b[header.IPv6MinimumSize:])
	m.SetType(header.ICMPv6DstUnreachable)
	m.SetCode(header.ICMPv6Code(icmpv6Codes[kind]))
	copy(m[header.ICMPv6MinimumSize:], quote)
	return finishICMPv6(b, src, dst)
}

// buildEchoReply builds an echo reply from src (the pinged destination) to dst (the client) with the
// client's identifier and sequence number.
func buildEchoReply(src, dst netip.Addr, id, seq uint16, data []byte) []byte {
	if src.Is4() {
		b := make([]byte, header.IPv4MinimumSize+header.ICMPv4MinimumSize+len(data))
		m := header.ICMPv4(b[header.IPv4MinimumSize:])
		m.SetType(header.ICMPv4EchoReply)
		m.SetIdent(id)
		m.SetSequence(seq)
		copy(m[header.ICMPv4MinimumSize:], data)
		return finishICMPv4(b, src, dst)
	}
	b := make([]byte, header.IPv6MinimumSize+header.ICMPv6MinimumSize+len(data))
	m := header.ICMPv6(b[header.IPv6MinimumSize:])
	m.SetType(header.ICMPv6EchoReply)
	m.SetIdent(id)
	m.SetSequence(seq)
	copy(m[header.ICMPv6MinimumSize:], data)
	return finishICMPv6(b, src, dst)
}

// finishICMPv4 writes the IPv4 header in front of the ICMP message at b[20:] and both checksums.
func finishICMPv4(b []byte, src, dst netip.Addr) []byte {
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)),
		TTL:         ttl,
		Protocol:    uint8(header.ICMPv4ProtocolNumber),
		SrcAddr:     tcpip.AddrFrom4(src.Unmap().As4()),
		DstAddr:     tcpip.AddrFrom4(dst.Unmap().As4()),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	m := header.ICMPv4(b[header.IPv4MinimumSize:])
	m.SetChecksum(0)
	m.SetChecksum(^checksum.Checksum(m, 0))
	return b
}

// finishICMPv6 writes the IPv6 header in front of the ICMPv6 message at b[40:] and its checksum.
func finishICMPv6(b []byte, src, dst netip.Addr) []byte {
	s, d := tcpip.AddrFrom16(src.As16()), tcpip.AddrFrom16(dst.As16())
	ip := header.IPv6(b)
	ip.Encode(&header.IPv6Fields{
		PayloadLength:     uint16(len(b) - header.IPv6MinimumSize),
		TransportProtocol: header.ICMPv6ProtocolNumber,
		HopLimit:          ttl,
		SrcAddr:           s,
		DstAddr:           d,
	})
	m := header.ICMPv6(b[header.IPv6MinimumSize:])
	m.SetChecksum(0)
	m.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: m, Src: s, Dst: d}))
	return b
}

// udpQuote synthesises the start of a datagram from client to dst (IP header and UDP header, no payload) for
// an ICMP error about it: the client matches the error to its socket by addresses and ports only.
func udpQuote(client, dst netip.AddrPort) []byte {
	b := make([]byte, 0, header.IPv6MinimumSize+header.UDPMinimumSize)
	if client.Addr().Is4() {
		b = b[:header.IPv4MinimumSize+header.UDPMinimumSize]
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(len(b)),
			TTL:         ttl,
			Protocol:    uint8(header.UDPProtocolNumber),
			SrcAddr:     tcpip.AddrFrom4(client.Addr().As4()),
			DstAddr:     tcpip.AddrFrom4(dst.Addr().Unmap().As4()),
		})
		ip.SetChecksum(^ip.CalculateChecksum())
	} else {
		b = b[:header.IPv6MinimumSize+header.UDPMinimumSize]
		header.IPv6(b).Encode(&header.IPv6Fields{
			PayloadLength:     header.UDPMinimumSize,
			TransportProtocol: header.UDPProtocolNumber,
			HopLimit:          ttl,
			SrcAddr:           tcpip.AddrFrom16(client.Addr().As16()),
			DstAddr:           tcpip.AddrFrom16(dst.Addr().As16()),
		})
	}
	u := b[len(b)-header.UDPMinimumSize:]
	binary.BigEndian.PutUint16(u[0:2], client.Port())
	binary.BigEndian.PutUint16(u[2:4], dst.Port())
	binary.BigEndian.PutUint16(u[4:6], header.UDPMinimumSize)
	return b
}
