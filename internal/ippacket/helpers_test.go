package ippacket_test

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/snowgate/snowgate/internal/ippacket"
)

// The helpers below build and check packets with gVisor's tcpip/header, an
// implementation independent of the package under test.

func gaddr(a netip.Addr) tcpip.Address { return tcpip.AddrFromSlice(a.AsSlice()) }

// ipWrap prepends an IP header (gVisor-encoded) to the upper-layer bytes l4.
func ipWrap(src, dst netip.Addr, proto ippacket.Protocol, l4 []byte) []byte {
	if src.Is4() {
		b := make([]byte, header.IPv4MinimumSize+len(l4))
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(len(b)),
			ID:          0x1234,
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

// gUDP builds a UDP packet with gVisor; zeroSum leaves the checksum 0.
func gUDP(src, dst netip.AddrPort, payload []byte, zeroSum bool) []byte {
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
	return ipWrap(src.Addr(), dst.Addr(), ippacket.ProtoUDP, u)
}

// gTCP builds a TCP packet with gVisor.
func gTCP(src, dst netip.AddrPort, seq uint32, payload []byte) []byte {
	t := make([]byte, header.TCPMinimumSize+len(payload))
	header.TCP(t).Encode(&header.TCPFields{
		SrcPort: src.Port(), DstPort: dst.Port(), SeqNum: seq, AckNum: ^seq,
		DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagAck | header.TCPFlagPsh, WindowSize: 4096,
	})
	copy(t[header.TCPMinimumSize:], payload)
	x := header.PseudoHeaderChecksum(header.TCPProtocolNumber, gaddr(src.Addr()), gaddr(dst.Addr()), uint16(len(t)))
	x = checksum.Checksum(payload, x)
	header.TCP(t).SetChecksum(^header.TCP(t).CalculateChecksum(x))
	return ipWrap(src.Addr(), dst.Addr(), ippacket.ProtoTCP, t)
}

// gICMP builds an ICMP (IPv4) or ICMPv6 message of type typ/code whose
// 4-byte rest of header is rest, followed by body.
func gICMP(src, dst netip.Addr, typ, code uint8, rest uint32, body []byte) []byte {
	m := make([]byte, 8+len(body))
	m[0], m[1] = typ, code
	binary.BigEndian.PutUint32(m[4:8], rest)
	copy(m[8:], body)
	if src.Is4() {
		header.ICMPv4(m).SetChecksum(^checksum.Checksum(m, 0))
		return ipWrap(src, dst, ippacket.ProtoICMP, m)
	}
	header.ICMPv6(m).SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
		Header: m, Src: gaddr(src), Dst: gaddr(dst),
	}))
	return ipWrap(src, dst, ippacket.ProtoICMPv6, m)
}

// gEcho builds an echo request (IPv4 type 8, IPv6 type 128).
func gEcho(src, dst netip.Addr, id, seq uint16, data []byte) []byte {
	typ := uint8(8)
	if src.Is6() {
		typ = 128
	}
	return gICMP(src, dst, typ, 0, uint32(id)<<16|uint32(seq), data)
}

// gUnreach builds a destination unreachable (port unreachable) quoting q.
func gUnreach(src, dst netip.Addr, q []byte) []byte {
	if src.Is4() {
		return gICMP(src, dst, 3, 3, 0, q)
	}
	return gICMP(src, dst, 1, 4, 0, q)
}

// verify checks, with gVisor, every checksum of the IP packet b (no IPv6
// extension headers): the IPv4 header, TCP, UDP (unless 0), ICMP, ICMPv6.
// For an ICMP error it also checks the quoted IPv4 header checksum and, when
// the quote is complete, the quoted transport checksum.
func verify(b []byte) error {
	return verifyDepth(b, false)
}

func verifyDepth(b []byte, quoted bool) error {
	var src, dst tcpip.Address
	var proto uint8
	var l4 []byte
	switch b[0] >> 4 {
	case 4:
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
		u := header.UDP(l4)
		if u.Checksum() == 0 && b[0]>>4 == 4 {
			return nil
		}
		if !u.IsChecksumValid(src, dst, checksum.Checksum(u.Payload(), 0)) {
			return fmt.Errorf("UDP checksum %#04x invalid", u.Checksum())
		}
	case uint8(ippacket.ProtoTCP):
		t := header.TCP(l4)
		if !t.IsChecksumValid(src, dst, checksum.Checksum(t.Payload(), 0), uint16(len(t.Payload()))) {
			return fmt.Errorf("TCP checksum %#04x invalid", t.Checksum())
		}
	case uint8(ippacket.ProtoICMP):
		if checksum.Checksum(l4, 0) != 0xFFFF {
			return fmt.Errorf("ICMP checksum invalid")
		}
		if t := l4[0]; !quoted && (t == 3 || t == 11) {
			return verifyDepth(l4[8:], true)
		}
	case uint8(ippacket.ProtoICMPv6):
		x := header.PseudoHeaderChecksum(header.ICMPv6ProtocolNumber, src, dst, uint16(len(l4)))
		if checksum.Checksum(l4, x) != 0xFFFF {
			return fmt.Errorf("ICMPv6 checksum invalid")
		}
		if t := l4[0]; !quoted && t >= 1 && t <= 4 {
			return verifyDepth(l4[8:], true)
		}
	}
	return nil
}

// sumsValid recomputes from scratch, with gVisor's checksum, the checksums
// of a packet parsed by this package (extension headers allowed): used by
// the fuzz targets on arbitrary input.
func sumsValid(p ippacket.Packet) bool {
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
		pseudo = header.PseudoHeaderChecksum(header.TCPProtocolNumber, s, d, uint16(len(l4)))
	case ippacket.ProtoICMP:
		if p.Version() != 4 {
			return false
		}
	case ippacket.ProtoICMPv6:
		if p.Version() != 6 {
			return false
		}
		pseudo = header.PseudoHeaderChecksum(header.ICMPv6ProtocolNumber, s, d, uint16(len(l4)))
	default:
		return true
	}
	return checksum.Checksum(l4, pseudo) == 0xFFFF
}

// ipv4HeaderValid checks an IPv4 header checksum with gVisor.
func ipv4HeaderValid(b []byte) bool { return header.IPv4(b).IsChecksumValid() }

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
