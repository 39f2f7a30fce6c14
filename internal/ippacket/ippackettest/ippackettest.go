// Package ippackettest builds and checks IP packets for tests with gVisor's tcpip/header: an implementation
// independent of internal/ippacket, so tests of ippacket and of what rewrites packets with it (gateway/nat)
// do not check the code under test against itself.
//
// Builders return complete IPv4 (no options, TTL 64) or IPv6 (no extension headers, hop limit 64) packets
// with every checksum valid; the family follows the source address. Verify checks every checksum of a
// packet, recursing into the quote of an ICMP error.
package ippackettest

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/snowgate/snowgate/internal/ippacket"
)

// IPv4ID is the identification field of every IPv4 header built here.
const IPv4ID = 0x1234

func gaddr(a netip.Addr) tcpip.Address { return tcpip.AddrFromSlice(a.AsSlice()) }

// IP prepends an IPv4 or IPv6 header (by src's family) for protocol proto to the upper-layer bytes l4.
func IP(src, dst netip.Addr, proto ippacket.Protocol, l4 []byte) []byte {
	if src.Is4() {
		b := make([]byte, header.IPv4MinimumSize+len(l4))
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(len(b)),
			ID:          IPv4ID,
			TTL:         64,
			Protocol:    uint8(proto),
			SrcAddr:     gaddr(src),
			DstAddr:     gaddr(dst),
		})
		ip.SetChecksum(^ip.CalculateChecksum())
		copy(b[header.IPv4MinimumSize:], l4)
		return b
	}
	b := make([]byte, header.IPv6MinimumSize+len(l4))
	header.IPv6(b).Encode(&header.IPv6Fields{
		PayloadLength:     uint16(len(l4)),
		TransportProtocol: tcpip.TransportProtocolNumber(proto),
		HopLimit:          64,
		SrcAddr:           gaddr(src),
		DstAddr:           gaddr(dst),
	})
	copy(b[header.IPv6MinimumSize:], l4)
	return b
}

// UDP builds a UDP packet with a valid checksum (a computed 0 is sent as 0xFFFF).
func UDP(src, dst netip.AddrPort, payload []byte) []byte { return udp(src, dst, payload, false) }

// UDPZeroChecksum builds a UDP packet whose checksum field is 0, "no checksum" (RFC 768; IPv4 only, an IPv6
// receiver must drop it).
func UDPZeroChecksum(src, dst netip.AddrPort, payload []byte) []byte {
	return udp(src, dst, payload, true)
}

func udp(src, dst netip.AddrPort, payload []byte, zeroSum bool) []byte {
	u := make([]byte, header.UDPMinimumSize+len(payload))
	header.UDP(u).Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(len(u))})
	copy(u[header.UDPMinimumSize:], payload)
	if !zeroSum {
		x := header.PseudoHeaderChecksum(header.UDPProtocolNumber, gaddr(src.Addr()), gaddr(dst.Addr()), uint16(len(u)))
		x = checksum.Checksum(payload, x)
		s := ^header.UDP(u).CalculateChecksum(x)
		if s == 0 {
			s = 0xFFFF
		}
		header.UDP(u).SetChecksum(s)
	}
	return IP(src.Addr(), dst.Addr(), ippacket.ProtoUDP, u)
}

// TCPFlags are the flags of a TCP segment.
type TCPFlags uint8

// TCP flags.
const (
	FIN TCPFlags = 1 << iota
	SYN
	RST
	PSH
	ACK
)

// TCP builds a TCP segment (no options, window 4096) with the given sequence and acknowledgement numbers.
func TCP(src, dst netip.AddrPort, seq, ack uint32, flags TCPFlags, payload []byte) []byte {
	t := make([]byte, header.TCPMinimumSize+len(payload))
	header.TCP(t).Encode(&header.TCPFields{
		SrcPort: src.Port(), DstPort: dst.Port(), SeqNum: seq, AckNum: ack,
		DataOffset: header.TCPMinimumSize, Flags: header.TCPFlags(flags), WindowSize: 4096,
	})
	copy(t[header.TCPMinimumSize:], payload)
	x := header.PseudoHeaderChecksum(header.TCPProtocolNumber, gaddr(src.Addr()), gaddr(dst.Addr()), uint16(len(t)))
	x = checksum.Checksum(payload, x)
	header.TCP(t).SetChecksum(^header.TCP(t).CalculateChecksum(x))
	return IP(src.Addr(), dst.Addr(), ippacket.ProtoTCP, t)
}

// ICMP builds an ICMP (IPv4) or ICMPv6 message of type typ and code whose 4-byte rest of header is rest,
// followed by body.
func ICMP(src, dst netip.Addr, typ, code uint8, rest uint32, body []byte) []byte {
	m := make([]byte, 8+len(body))
	m[0], m[1] = typ, code
	binary.BigEndian.PutUint32(m[4:8], rest)
	copy(m[8:], body)
	if src.Is4() {
		header.ICMPv4(m).SetChecksum(^checksum.Checksum(m, 0))
		return IP(src, dst, ippacket.ProtoICMP, m)
	}
	header.ICMPv6(m).SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
		Header: m, Src: gaddr(src), Dst: gaddr(dst),
	}))
	return IP(src, dst, ippacket.ProtoICMPv6, m)
}

// Echo builds an echo request (IPv4 type 8, IPv6 type 128).
func Echo(src, dst netip.Addr, id, seq uint16, data []byte) []byte {
	typ := uint8(8)
	if src.Is6() {
		typ = 128
	}
	return ICMP(src, dst, typ, 0, uint32(id)<<16|uint32(seq), data)
}

// EchoReply builds an echo reply (IPv4 type 0, IPv6 type 129).
func EchoReply(src, dst netip.Addr, id, seq uint16, data []byte) []byte {
	typ := uint8(0)
	if src.Is6() {
		typ = 129
	}
	return ICMP(src, dst, typ, 0, uint32(id)<<16|uint32(seq), data)
}

// Unreachable builds a destination unreachable, port unreachable (IPv4 3/3, IPv6 1/4), quoting q.
func Unreachable(src, dst netip.Addr, q []byte) []byte {
	if src.Is4() {
		return ICMP(src, dst, 3, 3, 0, q)
	}
	return ICMP(src, dst, 1, 4, 0, q)
}

// VerifyOption relaxes Verify.
type VerifyOption int

// AllowZeroUDPChecksum makes Verify accept an IPv4 UDP checksum of 0 ("no checksum", RFC 768). Without it a
// zero checksum is checked like any other, and fails.
const AllowZeroUDPChecksum VerifyOption = 1

// Verify checks every checksum of the IP packet b (no IPv6 extension headers): the IPv4 header, TCP, UDP,
// ICMP, ICMPv6, and that b holds the whole packet. For an ICMP error it also checks the quoted IPv4 header
// checksum and, when the quote is complete, the quoted transport checksum.
func Verify(b []byte, opts ...VerifyOption) error {
	zeroOK := false
	for _, o := range opts {
		zeroOK = zeroOK || o == AllowZeroUDPChecksum
	}
	return verify(b, false, zeroOK)
}

func verify(b []byte, quoted, zeroUDPOK bool) error {
	if len(b) == 0 {
		return fmt.Errorf("empty packet")
	}
	var src, dst tcpip.Address
	var proto uint8
	var l4 []byte
	switch b[0] >> 4 {
	case 4:
		if len(b) < header.IPv4MinimumSize {
			return fmt.Errorf("truncated IPv4 header")
		}
		ip := header.IPv4(b)
		if !ip.IsChecksumValid() {
			return fmt.Errorf("IPv4 header checksum %#04x invalid", ip.Checksum())
		}
		src, dst, proto = ip.SourceAddress(), ip.DestinationAddress(), ip.Protocol()
		if int(ip.TotalLength()) > len(b) {
			if quoted {
				return nil // truncated quote: only the header is checkable
			}
			return fmt.Errorf("truncated")
		}
		l4 = b[ip.HeaderLength():ip.TotalLength()]
	case 6:
		if len(b) < header.IPv6MinimumSize {
			return fmt.Errorf("truncated IPv6 header")
		}
		ip := header.IPv6(b)
		src, dst, proto = ip.SourceAddress(), ip.DestinationAddress(), uint8(ip.TransportProtocol())
		if int(ip.PayloadLength())+header.IPv6MinimumSize > len(b) {
			if quoted {
				return nil
			}
			return fmt.Errorf("truncated")
		}
		l4 = b[header.IPv6MinimumSize : header.IPv6MinimumSize+int(ip.PayloadLength())]
	default:
		return fmt.Errorf("version %d", b[0]>>4)
	}
	switch proto {
	case uint8(ippacket.ProtoUDP):
		if len(l4) < header.UDPMinimumSize {
			return fmt.Errorf("truncated UDP header")
		}
		u := header.UDP(l4)
		if u.Checksum() == 0 && b[0]>>4 == 4 && zeroUDPOK {
			return nil
		}
		if !u.IsChecksumValid(src, dst, checksum.Checksum(u.Payload(), 0)) {
			return fmt.Errorf("UDP checksum %#04x invalid", u.Checksum())
		}
	case uint8(ippacket.ProtoTCP):
		if len(l4) < header.TCPMinimumSize {
			return fmt.Errorf("truncated TCP header")
		}
		t := header.TCP(l4)
		if !t.IsChecksumValid(src, dst, checksum.Checksum(t.Payload(), 0), uint16(len(t.Payload()))) {
			return fmt.Errorf("TCP checksum %#04x invalid", t.Checksum())
		}
	case uint8(ippacket.ProtoICMP):
		if checksum.Checksum(l4, 0) != 0xFFFF {
			return fmt.Errorf("ICMP checksum invalid")
		}
		if len(l4) > 8 && !quoted && (l4[0] == 3 || l4[0] == 11) {
			return verify(l4[8:], true, zeroUDPOK)
		}
	case uint8(ippacket.ProtoICMPv6):
		x := header.PseudoHeaderChecksum(header.ICMPv6ProtocolNumber, src, dst, uint16(len(l4)))
		if checksum.Checksum(l4, x) != 0xFFFF {
			return fmt.Errorf("ICMPv6 checksum invalid")
		}
		if len(l4) > 8 && !quoted && l4[0] >= 1 && l4[0] <= 4 {
			return verify(l4[8:], true, zeroUDPOK)
		}
	}
	return nil
}

// SumsValid recomputes from scratch the checksums of a packet parsed by ippacket (IPv6 extension headers
// allowed): the IPv4 header, and the transport checksum unless the packet is a fragment. An IPv4 UDP checksum
// of 0 counts as valid, an IPv6 one does not.
func SumsValid(p ippacket.Packet) bool {
	b := p.Bytes()
	if p.Version() == 4 && checksum.Checksum(b[:p.HeaderLen()], 0) != 0xFFFF {
		return false
	}
	if p.IsFragment() {
		return true // the transport checksum covers the reassembled datagram
	}
	l4 := p.Payload()
	var pseudo uint16
	var s, d tcpip.Address = gaddr(p.Src()), gaddr(p.Dst())
	switch p.Protocol() {
	case ippacket.ProtoUDP:
		if len(l4) < 8 || int(binary.BigEndian.Uint16(l4[4:6])) != len(l4) {
			return false
		}
		if binary.BigEndian.Uint16(l4[6:8]) == 0 {
			return p.Version() == 4
		}
		pseudo = header.PseudoHeaderChecksum(header.UDPProtocolNumber, s, d, uint16(len(l4)))
	case ippacket.ProtoTCP:
		// A segment shorter than TCP's fixed header has no checksum field: its sum may come out right by
		// chance (the fuzzer found one), but nothing can keep it right.
		if len(l4) < header.TCPMinimumSize {
			return false
		}
		pseudo = header.PseudoHeaderChecksum(header.TCPProtocolNumber, s, d, uint16(len(l4)))
	case ippacket.ProtoICMP:
		if p.Version() != 4 || len(l4) < 4 { // type, code, checksum
			return false
		}
	case ippacket.ProtoICMPv6:
		if p.Version() != 6 || len(l4) < 4 {
			return false
		}
		pseudo = header.PseudoHeaderChecksum(header.ICMPv6ProtocolNumber, s, d, uint16(len(l4)))
	default:
		return true
	}
	return checksum.Checksum(l4, pseudo) == 0xFFFF
}

// IPv4HeaderValid reports whether the IPv4 header at the start of b has a valid checksum.
func IPv4HeaderValid(b []byte) bool {
	return len(b) >= header.IPv4MinimumSize && header.IPv4(b).IsChecksumValid()
}
