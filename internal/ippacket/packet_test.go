package ippacket_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/snowgate/snowgate/internal/ippacket"
	ipt "github.com/snowgate/snowgate/internal/ippacket/ippackettest"
)

var (
	v4a = netip.MustParseAddr("100.64.0.1")
	v4b = netip.MustParseAddr("198.51.100.7")
	v4c = netip.MustParseAddr("100.96.0.3")
	v6a = netip.MustParseAddr("fd00:2021:1111::1")
	v6b = netip.MustParseAddr("2001:db8::7")
	v6c = netip.MustParseAddr("fd00:2021:1111:8000::3")
)

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

// fixSum4 recomputes the IPv4 header checksum after a test edits the header.
func fixSum4(b []byte) []byte {
	ihl := int(b[0]&0xF) * 4
	b[10], b[11] = 0, 0
	var s uint32
	for i := 0; i < ihl; i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for s > 0xFFFF {
		s = s>>16 + s&0xFFFF
	}
	binary.BigEndian.PutUint16(b[10:], ^uint16(s))
	return b
}

// with returns a copy of b after f edited it.
func with(b []byte, f func([]byte) []byte) []byte {
	c := append([]byte(nil), b...)
	return f(c)
}

// v4opts returns an IPv4 packet with 4 bytes of options (IHL 6).
func v4opts(p []byte) []byte {
	b := make([]byte, len(p)+4)
	copy(b, p[:20])
	b[20], b[21], b[22], b[23] = 1, 1, 1, 0 // NOP NOP NOP EOL
	copy(b[24:], p[20:])
	b[0] = 0x46
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	return fixSum4(b)
}

// v6ext inserts IPv6 extension headers (each given as next-header-less
// body; the chain's next headers are filled in) between the fixed header of
// the IPv6 packet p and its payload.
func v6ext(p []byte, kinds []uint8, bodies [][]byte) []byte {
	var ext []byte
	upper := p[6]
	for i := range kinds {
		h := append([]byte(nil), bodies[i]...)
		if i+1 < len(kinds) {
			h[0] = kinds[i+1]
		} else {
			h[0] = upper
		}
		ext = append(ext, h...)
	}
	b := append(append(append([]byte(nil), p[:40]...), ext...), p[40:]...)
	b[6] = kinds[0]
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)-40))
	return b
}

func optsHdr() []byte { return []byte{0, 0, 1, 4, 0, 0, 0, 0} } // PadN
func fragHdr(off uint16, more bool) []byte {
	h := []byte{0, 0, 0, 0, 0, 0, 0x12, 0x34}
	v := off &^ 7
	if more {
		v |= 1
	}
	binary.BigEndian.PutUint16(h[2:], v)
	return h
}
func routingHdr(left uint8) []byte {
	return []byte{0, 2, 0, left, 0, 0, 0, 0, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9}
}

type want struct {
	err      error
	version  int
	proto    ippacket.Protocol
	hdrLen   int
	src, dst netip.Addr
	frag     bool
	fragOff  int
	sport    uint16
	dport    uint16
	portsErr error
	icmpType int // -1: ICMP() must fail
	echoID   int // -1: EchoID() must fail
	isErr    bool
	length   int
}

func TestParse(t *testing.T) {
	udp4 := ipt.UDP(ap(v4a, 5353), ap(v4b, 53), []byte("query"))
	udp6 := ipt.UDP(ap(v6a, 5353), ap(v6b, 53), []byte("query"))
	tcp4 := ipt.TCP(ap(v4a, 40000), ap(v4b, 443), 7, 0, ipt.ACK|ipt.PSH, []byte("hello"))
	tcp6 := ipt.TCP(ap(v6a, 40000), ap(v6b, 443), 7, 0, ipt.ACK|ipt.PSH, nil)
	echo4 := ipt.Echo(v4a, v4b, 0xBEEF, 1, []byte("ping"))
	echo6 := ipt.Echo(v6a, v6b, 0xBEEF, 1, []byte("ping"))
	p2p := ipt.IP(v6a, v6b, ippacket.ProtoP2PControl, []byte{1, 0, 0, 0, 0, 0, 0, 0, '{', '}'})

	ok := func(w want) want { return w }
	cases := []struct {
		name string
		b    []byte
		w    want
	}{
		{"udp4", udp4, ok(want{version: 4, proto: ippacket.ProtoUDP, hdrLen: 20, src: v4a, dst: v4b, sport: 5353, dport: 53, icmpType: -1, echoID: -1, length: len(udp4)})},
		{"udp4 trailing bytes trimmed", append(append([]byte(nil), udp4...), 0xAA, 0xBB), want{version: 4, proto: ippacket.ProtoUDP, hdrLen: 20, src: v4a, dst: v4b, sport: 5353, dport: 53, icmpType: -1, echoID: -1, length: len(udp4)}},
		{"udp4 options", v4opts(udp4), want{version: 4, proto: ippacket.ProtoUDP, hdrLen: 24, src: v4a, dst: v4b, sport: 5353, dport: 53, icmpType: -1, echoID: -1, length: len(udp4) + 4}},
		{"udp6", udp6, want{version: 6, proto: ippacket.ProtoUDP, hdrLen: 40, src: v6a, dst: v6b, sport: 5353, dport: 53, icmpType: -1, echoID: -1, length: len(udp6)}},
		{"tcp4", tcp4, want{version: 4, proto: ippacket.ProtoTCP, hdrLen: 20, src: v4a, dst: v4b, sport: 40000, dport: 443, icmpType: -1, echoID: -1, length: len(tcp4)}},
		{"tcp6", tcp6, want{version: 6, proto: ippacket.ProtoTCP, hdrLen: 40, src: v6a, dst: v6b, sport: 40000, dport: 443, icmpType: -1, echoID: -1, length: len(tcp6)}},
		{"echo4", echo4, want{version: 4, proto: ippacket.ProtoICMP, hdrLen: 20, src: v4a, dst: v4b, portsErr: ippacket.ErrUnsupported, icmpType: 8, echoID: 0xBEEF, length: len(echo4)}},
		{"echo6", echo6, want{version: 6, proto: ippacket.ProtoICMPv6, hdrLen: 40, src: v6a, dst: v6b, portsErr: ippacket.ErrUnsupported, icmpType: 128, echoID: 0xBEEF, length: len(echo6)}},
		{"unreachable4", ipt.Unreachable(v4b, v4a, udp4[:28]), want{version: 4, proto: ippacket.ProtoICMP, hdrLen: 20, src: v4b, dst: v4a, portsErr: ippacket.ErrUnsupported, icmpType: 3, echoID: -1, isErr: true, length: 56}},
		{"unreachable6", ipt.Unreachable(v6b, v6a, udp6), want{version: 6, proto: ippacket.ProtoICMPv6, hdrLen: 40, src: v6b, dst: v6a, portsErr: ippacket.ErrUnsupported, icmpType: 1, echoID: -1, isErr: true, length: 48 + len(udp6)}},
		{"p2p control", p2p, want{version: 6, proto: ippacket.ProtoP2PControl, hdrLen: 40, src: v6a, dst: v6b, portsErr: ippacket.ErrUnsupported, icmpType: -1, echoID: -1, length: len(p2p)}},
		{"icmp protocol over IPv6", ipt.IP(v6a, v6b, ippacket.ProtoICMP, make([]byte, 8)), want{version: 6, proto: ippacket.ProtoICMP, hdrLen: 40, src: v6a, dst: v6b, portsErr: ippacket.ErrUnsupported, icmpType: -1, echoID: -1, length: 48}},
		{"udp4 more fragments", with(udp4, func(b []byte) []byte { b[6] = 0x20; return fixSum4(b) }), want{version: 4, proto: ippacket.ProtoUDP, hdrLen: 20, src: v4a, dst: v4b, frag: true, sport: 5353, dport: 53, icmpType: -1, echoID: -1, length: len(udp4)}},
		{"udp4 later fragment", with(udp4, func(b []byte) []byte { b[7] = 3; return fixSum4(b) }), want{version: 4, proto: ippacket.ProtoUDP, hdrLen: 20, src: v4a, dst: v4b, frag: true, fragOff: 24, portsErr: ippacket.ErrFragment, icmpType: -1, echoID: -1, length: len(udp4)}},
		{"udp6 hbh+dst+frag", v6ext(udp6, []uint8{0, 60, 44}, [][]byte{optsHdr(), optsHdr(), fragHdr(0, true)}), want{version: 6, proto: ippacket.ProtoUDP, hdrLen: 64, src: v6a, dst: v6b, frag: true, sport: 5353, dport: 53, icmpType: -1, echoID: -1, length: len(udp6) + 24}},
		{"udp6 routing", v6ext(udp6, []uint8{43}, [][]byte{routingHdr(1)}), want{version: 6, proto: ippacket.ProtoUDP, hdrLen: 64, src: v6a, dst: v6b, sport: 5353, dport: 53, icmpType: -1, echoID: -1, length: len(udp6) + 24}},
		{"udp6 later fragment", v6ext(udp6, []uint8{44}, [][]byte{fragHdr(1232, false)}), want{version: 6, proto: ippacket.ProtoUDP, hdrLen: 48, src: v6a, dst: v6b, frag: true, fragOff: 1232, portsErr: ippacket.ErrFragment, icmpType: -1, echoID: -1, length: len(udp6) + 8}},
		{"ipv6 no next header", ipt.IP(v6a, v6b, 59, nil), want{version: 6, proto: 59, hdrLen: 40, src: v6a, dst: v6b, portsErr: ippacket.ErrUnsupported, icmpType: -1, echoID: -1, length: 40}},
		{"tcp4 short header", ipt.IP(v4a, v4b, ippacket.ProtoTCP, make([]byte, 12)), want{version: 4, proto: ippacket.ProtoTCP, hdrLen: 20, src: v4a, dst: v4b, portsErr: ippacket.ErrTruncated, icmpType: -1, echoID: -1, length: 32}},
		{"echo4 short", ipt.IP(v4a, v4b, ippacket.ProtoICMP, []byte{8, 0, 0, 0}), want{version: 4, proto: ippacket.ProtoICMP, hdrLen: 20, src: v4a, dst: v4b, portsErr: ippacket.ErrUnsupported, icmpType: -1, echoID: -1, length: 24}},

		{"empty", nil, want{err: ippacket.ErrTruncated}},
		{"version 5", []byte{0x50, 0, 0, 0}, want{err: ippacket.ErrUnsupported}},
		{"ipv4 short", udp4[:19], want{err: ippacket.ErrTruncated}},
		{"ipv4 IHL 4", with(udp4, func(b []byte) []byte { b[0] = 0x44; return fixSum4(b) }), want{err: ippacket.ErrMalformed}},
		{"ipv4 IHL past end", with(udp4[:20], func(b []byte) []byte { b[0] = 0x46; return b }), want{err: ippacket.ErrTruncated}},
		{"ipv4 bad checksum", with(udp4, func(b []byte) []byte { b[10] ^= 1; return b }), want{err: ippacket.ErrMalformed}},
		{"ipv4 total < IHL", with(udp4, func(b []byte) []byte { b[2], b[3] = 0, 19; return fixSum4(b) }), want{err: ippacket.ErrMalformed}},
		{"ipv4 total > len", udp4[:len(udp4)-1], want{err: ippacket.ErrTruncated}},
		{"ipv6 short", udp6[:39], want{err: ippacket.ErrTruncated}},
		{"ipv6 payload > len", udp6[:len(udp6)-1], want{err: ippacket.ErrTruncated}},
		{"ipv6 jumbogram", with(udp6, func(b []byte) []byte { b[4], b[5], b[6] = 0, 0, 0; return b }), want{err: ippacket.ErrUnsupported}},
		{"ipv6 ext past end", with(v6ext(udp6, []uint8{60}, [][]byte{optsHdr()}), func(b []byte) []byte { b[41] = 200; return b }), want{err: ippacket.ErrTruncated}},
		{"ipv6 ext header only, cut", with(udp6[:40], func(b []byte) []byte { b[6] = 0; return b }), want{err: ippacket.ErrTruncated}},
		{"ipv6 too many ext headers", v6ext(udp6, []uint8{60, 60, 60, 60, 60, 60, 60, 60, 60}, [][]byte{optsHdr(), optsHdr(), optsHdr(), optsHdr(), optsHdr(), optsHdr(), optsHdr(), optsHdr(), optsHdr()}), want{err: ippacket.ErrUnsupported}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := ippacket.Parse(c.b)
			if c.w.err != nil {
				if !errors.Is(err, c.w.err) {
					t.Fatalf("Parse err = %v, want %v", err, c.w.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			w := c.w
			if p.Version() != w.version || p.Protocol() != w.proto || p.HeaderLen() != w.hdrLen || p.Src() != w.src || p.Dst() != w.dst {
				t.Fatalf("got v%d proto %d hdr %d %v→%v, want v%d proto %d hdr %d %v→%v",
					p.Version(), p.Protocol(), p.HeaderLen(), p.Src(), p.Dst(), w.version, w.proto, w.hdrLen, w.src, w.dst)
			}
			if len(p.Bytes()) != w.length || !bytes.Equal(p.Payload(), p.Bytes()[w.hdrLen:]) {
				t.Errorf("length %d, want %d", len(p.Bytes()), w.length)
			}
			if p.IsFragment() != w.frag || p.FragmentOffset() != w.fragOff {
				t.Errorf("fragment %v@%d, want %v@%d", p.IsFragment(), p.FragmentOffset(), w.frag, w.fragOff)
			}
			if p.IsPartial() {
				t.Errorf("IsPartial on a parsed packet")
			}
			sp, dp, err := p.Ports()
			if w.portsErr != nil {
				if !errors.Is(err, w.portsErr) {
					t.Errorf("Ports err = %v, want %v", err, w.portsErr)
				}
			} else if err != nil || sp != w.sport || dp != w.dport {
				t.Errorf("Ports = %d, %d, %v; want %d, %d", sp, dp, err, w.sport, w.dport)
			}
			typ, _, err := p.ICMP()
			if (err == nil) != (w.icmpType >= 0) || (err == nil && int(typ) != w.icmpType) {
				t.Errorf("ICMP = %d, %v; want %d", typ, err, w.icmpType)
			}
			id, err := p.EchoID()
			if (err == nil) != (w.echoID >= 0) || (err == nil && int(id) != w.echoID) {
				t.Errorf("EchoID = %d, %v; want %d", id, err, w.echoID)
			}
			if p.IsICMPError() != w.isErr {
				t.Errorf("IsICMPError = %v", p.IsICMPError())
			}
		})
	}
}

func TestUDPPayload(t *testing.T) {
	b := ipt.UDP(ap(v4a, 1), ap(v4b, 53), []byte("dns!"))
	p, err := ippacket.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	pl, err := p.UDPPayload()
	if err != nil || string(pl) != "dns!" {
		t.Fatalf("UDPPayload = %q, %v", pl, err)
	}
	bad := with(b, func(b []byte) []byte { b[24], b[25] = 0, 40; return b })
	p, _ = ippacket.Parse(bad)
	if _, err := p.UDPPayload(); !errors.Is(err, ippacket.ErrTruncated) {
		t.Errorf("UDP length past end: %v", err)
	}
	bad = with(b, func(b []byte) []byte { b[24], b[25] = 0, 7; return b })
	p, _ = ippacket.Parse(bad)
	if _, err := p.UDPPayload(); !errors.Is(err, ippacket.ErrMalformed) {
		t.Errorf("UDP length 7: %v", err)
	}
	p, _ = ippacket.Parse(ipt.TCP(ap(v4a, 1), ap(v4b, 2), 0, 0, ipt.ACK|ipt.PSH, nil))
	if _, err := p.UDPPayload(); !errors.Is(err, ippacket.ErrUnsupported) {
		t.Errorf("TCP: %v", err)
	}
	p, _ = ippacket.Parse(with(b, func(b []byte) []byte { b[6] = 0x20; return fixSum4(b) }))
	if _, err := p.UDPPayload(); !errors.Is(err, ippacket.ErrFragment) {
		t.Errorf("first fragment: %v", err)
	}
}

func TestQuoted(t *testing.T) {
	udp4 := ipt.UDP(ap(v4a, 5353), ap(v4c, 53), []byte("query"))
	tcp6 := ipt.TCP(ap(v6a, 40000), ap(v6c, 443), 7, 0, ipt.ACK|ipt.PSH, []byte("hello"))
	echo4 := ipt.Echo(v4a, v4c, 77, 1, nil)
	cases := []struct {
		name          string
		outer         []byte
		proto         ippacket.Protocol
		src, dst      netip.Addr
		sport, dport  uint16
		portsErr      error
		echoID        int
		err           error
		quotedHdrOnly bool
	}{
		{name: "udp4 full", outer: ipt.Unreachable(v4b, v4a, udp4), proto: ippacket.ProtoUDP, src: v4a, dst: v4c, sport: 5353, dport: 53, echoID: -1},
		{name: "udp4 28 bytes", outer: ipt.Unreachable(v4b, v4a, udp4[:28]), proto: ippacket.ProtoUDP, src: v4a, dst: v4c, sport: 5353, dport: 53, echoID: -1},
		{name: "udp4 ports only", outer: ipt.Unreachable(v4b, v4a, udp4[:24]), proto: ippacket.ProtoUDP, src: v4a, dst: v4c, sport: 5353, dport: 53, echoID: -1},
		{name: "udp4 ports cut", outer: ipt.Unreachable(v4b, v4a, udp4[:23]), proto: ippacket.ProtoUDP, src: v4a, dst: v4c, portsErr: ippacket.ErrTruncated, echoID: -1},
		{name: "tcp6 48 bytes", outer: ipt.Unreachable(v6b, v6a, tcp6[:48]), proto: ippacket.ProtoTCP, src: v6a, dst: v6c, sport: 40000, dport: 443, echoID: -1},
		{name: "time exceeded echo4", outer: ipt.ICMP(v4b, v4a, 11, 0, 0, echo4[:28]), proto: ippacket.ProtoICMP, src: v4a, dst: v4c, portsErr: ippacket.ErrUnsupported, echoID: 77},
		{name: "ipv4 header cut", outer: ipt.Unreachable(v4b, v4a, udp4[:19]), err: ippacket.ErrTruncated},
		{name: "v6 in v4", outer: ipt.Unreachable(v4b, v4a, tcp6[:48]), err: ippacket.ErrUnsupported},
		{name: "echo is no error", outer: echo4, err: ippacket.ErrUnsupported},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := ippacket.Parse(c.outer)
			if err != nil {
				t.Fatal(err)
			}
			q, err := p.Quoted()
			if c.err != nil {
				if !errors.Is(err, c.err) {
					t.Fatalf("Quoted err = %v, want %v", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !q.IsPartial() || q.Protocol() != c.proto || q.Src() != c.src || q.Dst() != c.dst {
				t.Fatalf("quoted partial=%v proto %d %v→%v", q.IsPartial(), q.Protocol(), q.Src(), q.Dst())
			}
			sp, dp, err := q.Ports()
			if c.portsErr != nil {
				if !errors.Is(err, c.portsErr) {
					t.Errorf("Ports err = %v, want %v", err, c.portsErr)
				}
			} else if err != nil || sp != c.sport || dp != c.dport {
				t.Errorf("Ports = %d %d %v", sp, dp, err)
			}
			id, err := q.EchoID()
			if (err == nil) != (c.echoID >= 0) || (err == nil && int(id) != c.echoID) {
				t.Errorf("EchoID = %d, %v; want %d", id, err, c.echoID)
			}
			if _, err := q.Quoted(); !errors.Is(err, ippacket.ErrUnsupported) {
				t.Errorf("nested Quoted: %v", err)
			}
		})
	}
}
