package filter_test

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/snowgate/snowgate/internal/ippacket"
)

// Packet builders for the tests. Upper-layer checksums are left 0: the filter
// never reads them, and ippacket.Parse only checks the IPv4 header checksum.

func csum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// rawIP wraps l4 in an IPv4 or IPv6 header; fragOff (in 8-byte units) and
// more set IPv4 fragmentation (IPv6 packets get a fragment header when either
// is set).
func rawIP(src, dst netip.Addr, proto ippacket.Protocol, l4 []byte, fragOff uint16, more bool) []byte {
	if src.Is4() {
		b := make([]byte, 20+len(l4))
		b[0] = 0x45
		binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
		ff := fragOff & 0x1fff
		if more {
			ff |= 0x2000
		}
		binary.BigEndian.PutUint16(b[6:], ff)
		b[8] = 64
		b[9] = byte(proto)
		s4, d4 := src.As4(), dst.As4()
		copy(b[12:], s4[:])
		copy(b[16:], d4[:])
		binary.BigEndian.PutUint16(b[10:], csum(b[:20]))
		copy(b[20:], l4)
		return b
	}
	frag := fragOff != 0 || more
	hl := 40
	if frag {
		hl += 8
	}
	b := make([]byte, hl+len(l4))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(hl-40+len(l4)))
	b[6] = byte(proto)
	b[7] = 64
	s6, d6 := src.As16(), dst.As16()
	copy(b[8:], s6[:])
	copy(b[24:], d6[:])
	if frag {
		b[6] = 44
		b[40] = byte(proto)
		fo := fragOff << 3
		if more {
			fo |= 1
		}
		binary.BigEndian.PutUint16(b[42:], fo)
		binary.BigEndian.PutUint32(b[44:], 0x1234)
	}
	copy(b[hl:], l4)
	return b
}

func tcpBytes(sport, dport uint16) []byte {
	t := make([]byte, 20)
	binary.BigEndian.PutUint16(t[0:], sport)
	binary.BigEndian.PutUint16(t[2:], dport)
	t[12] = 5 << 4
	t[13] = 0x02 // SYN
	return t
}

func icmpBytes(typ, code uint8, rest []byte) []byte {
	b := make([]byte, 8+len(rest))
	b[0], b[1] = typ, code
	copy(b[8:], rest)
	return b
}

var (
	client4 = netip.MustParseAddr("100.64.0.1")
	client6 = netip.MustParseAddr("fd00:2021:1111::1")
)

func clientFor(dst netip.Addr) netip.Addr {
	if dst.Is4() {
		return client4
	}
	return client6
}

func mustParse(t testing.TB, b []byte) ippacket.Packet {
	t.Helper()
	p, err := ippacket.Parse(b)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return p
}

func tcpPkt(t testing.TB, dst netip.Addr, dport uint16) ippacket.Packet {
	return mustParse(t, rawIP(clientFor(dst), dst, ippacket.ProtoTCP, tcpBytes(40000, dport), 0, false))
}

func udpPkt(t testing.TB, dst netip.Addr, dport uint16) ippacket.Packet {
	t.Helper()
	buf := make([]byte, 1500)
	n, err := ippacket.BuildUDP(buf, netip.AddrPortFrom(clientFor(dst), 40000), netip.AddrPortFrom(dst, dport), []byte("hello"))
	if err != nil {
		t.Fatalf("BuildUDP: %v", err)
	}
	return mustParse(t, buf[:n])
}

// echoPkt is an ICMP echo request (IPv4) or ICMPv6 echo request (IPv6).
func echoPkt(t testing.TB, dst netip.Addr) ippacket.Packet {
	if dst.Is4() {
		return mustParse(t, rawIP(client4, dst, ippacket.ProtoICMP, icmpBytes(8, 0, []byte("ping")), 0, false))
	}
	return mustParse(t, rawIP(client6, dst, ippacket.ProtoICMPv6, icmpBytes(128, 0, []byte("ping")), 0, false))
}

// unreachPkt is an ICMP port unreachable the client sends to dst, quoting a UDP
// packet from dst:53 to the client.
func unreachPkt(t testing.TB, dst netip.Addr) ippacket.Packet {
	quoted := rawIP(dst, clientFor(dst), ippacket.ProtoUDP, []byte{0, 53, 0x9c, 0x40, 0, 8, 0, 0}, 0, false)
	if dst.Is4() {
		return mustParse(t, rawIP(client4, dst, ippacket.ProtoICMP, icmpBytes(3, 3, quoted), 0, false))
	}
	return mustParse(t, rawIP(client6, dst, ippacket.ProtoICMPv6, icmpBytes(1, 4, quoted), 0, false))
}

func protoPkt(t testing.TB, dst netip.Addr, proto ippacket.Protocol) ippacket.Packet {
	return mustParse(t, rawIP(clientFor(dst), dst, proto, make([]byte, 16), 0, false))
}

// fragPkt is a non-first fragment (offset 64 bytes) of a proto packet.
func fragPkt(t testing.TB, dst netip.Addr, proto ippacket.Protocol) ippacket.Packet {
	return mustParse(t, rawIP(clientFor(dst), dst, proto, make([]byte, 16), 8, false))
}
