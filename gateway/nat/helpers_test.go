package nat_test

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/snowgate/snowgate/internal/ippacket"
)

// Packets are built and checked with gVisor's tcpip/header, independently of
// ippacket (which the package under test uses to rewrite them).

func gaddr(a netip.Addr) tcpip.Address { return tcpip.AddrFromSlice(a.AsSlice()) }

func ipWrap(src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	if src.Is4() {
		b := make([]byte, header.IPv4MinimumSize+len(l4))
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(len(b)), ID: 0x4242, TTL: 64, Protocol: proto,
			SrcAddr: gaddr(src), DstAddr: gaddr(dst),
		})
		ip.SetChecksum(^ip.CalculateChecksum())
		copy(b[header.IPv4MinimumSize:], l4)
		return b
	}
	b := make([]byte, header.IPv6MinimumSize+len(l4))
	header.IPv6(b).Encode(&header.IPv6Fields{
		PayloadLength: uint16(len(l4)), TransportProtocol: tcpip.TransportProtocolNumber(proto),
		HopLimit: 64, SrcAddr: gaddr(src), DstAddr: gaddr(dst),
	})
	copy(b[header.IPv6MinimumSize:], l4)
	return b
}

func udpPkt(src, dst netip.AddrPort, payload []byte) []byte {
	u := make([]byte, header.UDPMinimumSize+len(payload))
	header.UDP(u).Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(len(u))})
	copy(u[header.UDPMinimumSize:], payload)
	x := header.PseudoHeaderChecksum(header.UDPProtocolNumber, gaddr(src.Addr()), gaddr(dst.Addr()), uint16(len(u)))
	x = checksum.Checksum(payload, x)
	s := ^header.UDP(u).CalculateChecksum(x)
	if s == 0 {
		s = 0xFFFF
	}
	header.UDP(u).SetChecksum(s)
	return ipWrap(src.Addr(), dst.Addr(), uint8(ippacket.ProtoUDP), u)
}

func tcpPkt(src, dst netip.AddrPort, flags header.TCPFlags, payload []byte) []byte {
	t := make([]byte, header.TCPMinimumSize+len(payload))
	header.TCP(t).Encode(&header.TCPFields{
		SrcPort: src.Port(), DstPort: dst.Port(), SeqNum: 1000, AckNum: 2000,
		DataOffset: header.TCPMinimumSize, Flags: flags, WindowSize: 4096,
	})
	copy(t[header.TCPMinimumSize:], payload)
	x := header.PseudoHeaderChecksum(header.TCPProtocolNumber, gaddr(src.Addr()), gaddr(dst.Addr()), uint16(len(t)))
	x = checksum.Checksum(payload, x)
	header.TCP(t).SetChecksum(^header.TCP(t).CalculateChecksum(x))
	return ipWrap(src.Addr(), dst.Addr(), uint8(ippacket.ProtoTCP), t)
}

func icmpPkt(src, dst netip.Addr, typ, code uint8, rest uint32, body []byte) []byte {
	m := make([]byte, 8+len(body))
	m[0], m[1] = typ, code
	binary.BigEndian.PutUint32(m[4:8], rest)
	copy(m[8:], body)
	if src.Is4() {
		header.ICMPv4(m).SetChecksum(^checksum.Checksum(m, 0))
		return ipWrap(src, dst, uint8(ippacket.ProtoICMP), m)
	}
	header.ICMPv6(m).SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
		Header: m, Src: gaddr(src), Dst: gaddr(dst),
	}))
	return ipWrap(src, dst, uint8(ippacket.ProtoICMPv6), m)
}

// echoPkt builds an echo request (reply=false) or reply.
func echoPkt(src, dst netip.Addr, id, seq uint16, reply bool) []byte {
	typ := map[[2]bool]uint8{{true, false}: 8, {true, true}: 0, {false, false}: 128, {false, true}: 129}[[2]bool{src.Is4(), reply}]
	return icmpPkt(src, dst, typ, 0, uint32(id)<<16|uint32(seq), []byte("ping"))
}

// unreachPkt builds a destination unreachable (port unreachable) quoting q.
func unreachPkt(src, dst netip.Addr, q []byte) []byte {
	if src.Is4() {
		return icmpPkt(src, dst, 3, 3, 0, q)
	}
	return icmpPkt(src, dst, 1, 4, 0, q)
}

// verify checks every checksum of b with gVisor, recursing once into the
// quote of an ICMP error (whose transport checksum is checked when complete).
func verify(b []byte) error { return verifyDepth(b, false) }

func verifyDepth(b []byte, quoted bool) error {
	var src, dst tcpip.Address
	var proto uint8
	var l4 []byte
	switch b[0] >> 4 {
	case 4:
		ip := header.IPv4(b)
		if !ip.IsChecksumValid() {
			return fmt.Errorf("IPv4 header checksum invalid")
		}
		src, dst, proto = ip.SourceAddress(), ip.DestinationAddress(), ip.Protocol()
		if int(ip.TotalLength()) > len(b) {
			if quoted {
				return nil
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
		if !u.IsChecksumValid(src, dst, checksum.Checksum(u.Payload(), 0)) {
			return fmt.Errorf("UDP checksum invalid")
		}
	case uint8(ippacket.ProtoTCP):
		t := header.TCP(l4)
		if !t.IsChecksumValid(src, dst, checksum.Checksum(t.Payload(), 0), uint16(len(t.Payload()))) {
			return fmt.Errorf("TCP checksum invalid")
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

// flowID reads (src, dst, client-side id) of a packet: TCP/UDP ports or the
// echo id (reported as both ports).
func flowID(b []byte) (src, dst netip.Addr, sport, dport uint16) {
	p, err := ippacket.Parse(b)
	if err != nil {
		panic(err)
	}
	if s, d, err := p.Ports(); err == nil {
		return p.Src(), p.Dst(), s, d
	}
	id, err := p.EchoID()
	if err != nil {
		panic(err)
	}
	return p.Src(), p.Dst(), id, id
}
