package ippacket_test

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/snowgate/snowgate/internal/ippacket"
	ipt "github.com/snowgate/snowgate/internal/ippacket/ippackettest"
)

// fuzzSeeds returns valid packets of every kind the package handles.
func fuzzSeeds() [][]byte {
	udp4 := ipt.UDP(ap(v4a, 5353), ap(v4c, 53), []byte("query"))
	udp6 := ipt.UDP(ap(v6a, 5353), ap(v6c, 53), []byte("query"))
	tcp4 := ipt.TCP(ap(v4a, 40000), ap(v4c, 443), 7, 0, ipt.ACK|ipt.PSH, []byte("hello"))
	tcp6 := ipt.TCP(ap(v6a, 40000), ap(v6c, 443), 7, 0, ipt.ACK|ipt.PSH, []byte("hello"))
	return [][]byte{
		udp4, udp6, tcp4, tcp6,
		ipt.UDPZeroChecksum(ap(v4a, 1), ap(v4b, 2), nil),
		v4opts(udp4),
		ipt.Echo(v4a, v4b, 1, 2, []byte("ping")),
		ipt.Echo(v6a, v6b, 1, 2, []byte("ping")),
		ipt.Unreachable(v4b, v4a, udp4),
		ipt.Unreachable(v4b, v4a, tcp4[:28]),
		ipt.Unreachable(v6b, v6a, tcp6[:48]),
		ipt.Unreachable(v6b, v6a, udp6),
		ipt.ICMP(v4b, v4a, 11, 0, 0, ipt.Echo(v4a, v4b, 1, 2, nil)),
		v6ext(udp6, []uint8{0, 60, 44}, [][]byte{optsHdr(), optsHdr(), fragHdr(0, true)}),
		v6ext(udp6, []uint8{44}, [][]byte{fragHdr(8, false)}),
		v6ext(udp6, []uint8{43}, [][]byte{routingHdr(1)}),
		with(udp4, func(b []byte) []byte { b[6] = 0x20; return fixSum4(b) }),
		ipt.IP(v6a, v6b, ippacket.ProtoP2PControl, []byte{2, 0, 0, 0, 0, 0, 0, 0}),
		{0x45}, {0x60}, {},
	}
}

// exercise calls every accessor of p, and of its quoted packet.
func exercise(p ippacket.Packet, depth int) {
	_ = p.Bytes()
	_, _ = p.Version(), p.Protocol()
	_, _ = p.HeaderLen(), p.Payload()
	_, _, _ = p.IsFragment(), p.FragmentOffset(), p.IsPartial()
	_, _ = p.Src(), p.Dst()
	_, _, _ = p.Ports()
	_, _ = p.UDPPayload()
	_, _, _ = p.ICMP()
	_, _ = p.EchoID()
	_ = p.IsICMPError()
	if q, err := p.Quoted(); err == nil && depth == 0 {
		exercise(q, 1)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ippacket.Parse(b)
		if err != nil {
			return
		}
		if len(p.Bytes()) > len(b) || p.HeaderLen() > len(p.Bytes()) {
			t.Fatalf("view of %d bytes, header %d, from %d", len(p.Bytes()), p.HeaderLen(), len(b))
		}
		exercise(p, 0)
		buf := make([]byte, 1500)
		if n, err := ippacket.BuildICMPProhibited(buf, p); err == nil {
			r, err := ippacket.Parse(buf[:n])
			if err != nil {
				t.Fatalf("built reply does not parse: %v", err)
			}
			if !ipt.SumsValid(r) {
				t.Fatalf("reply checksums invalid")
			}
			exercise(r, 0)
		}
	})
}

// FuzzRewrite rewrites arbitrary parsed packets (and their quoted packets)
// and back: no panic, the fields read back as written, checksums that were
// valid stay valid, and the bytes come back.
func FuzzRewrite(f *testing.F) {
	for i, s := range fuzzSeeds() {
		f.Add(s, []byte{byte(i), 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, uint16(i), uint16(1000+i), i%2 == 0)
	}
	f.Fuzz(func(t *testing.T, b []byte, addr []byte, port, id uint16, quoted bool) {
		orig := append([]byte(nil), b...)
		outer, err := ippacket.Parse(b)
		if err != nil {
			return
		}
		p := outer
		if quoted {
			if p, err = outer.Quoted(); err != nil {
				return
			}
		}
		valid := ipt.SumsValid(outer)
		var a netip.Addr
		if p.Version() == 4 {
			var a4 [4]byte
			copy(a4[:], addr)
			a = netip.AddrFrom4(a4)
		} else {
			var a16 [16]byte
			copy(a16[:], addr)
			a = netip.AddrFrom16(a16)
		}
		oldSrc, oldDst := p.Src(), p.Dst()
		dstOK := p.SetDst(oldDst) == nil // false with a routing header
		oldSP, oldDP, perr := p.Ports()
		oldID, eerr := p.EchoID()
		apply := func(src, dst netip.Addr, sp, dp, id uint16) {
			if err := p.SetSrc(src); err != nil {
				t.Fatalf("SetSrc: %v", err)
			}
			if err := p.SetDst(dst); dstOK && err != nil {
				t.Fatalf("SetDst: %v", err)
			}
			if perr == nil {
				if p.SetSrcPort(sp) != nil || p.SetDstPort(dp) != nil {
					t.Fatal("SetPort failed after Ports succeeded")
				}
			}
			if eerr == nil && p.SetEchoID(id) != nil {
				t.Fatal("SetEchoID failed after EchoID succeeded")
			}
		}
		apply(a, a, port, port, id)
		if p.Src() != a {
			t.Fatalf("Src %v after SetSrc(%v)", p.Src(), a)
		}
		if sp, dp, err := p.Ports(); perr == nil && (err != nil || sp != port || dp != port) {
			t.Fatalf("Ports %d %d %v after setting %d", sp, dp, err, port)
		}
		if got, err := p.EchoID(); eerr == nil && (err != nil || got != id) {
			t.Fatalf("EchoID %d %v after setting %d", got, err, id)
		}
		if valid && !ipt.SumsValid(outer) {
			t.Fatalf("checksums valid before rewrite, invalid after")
		}
		apply(oldSrc, oldDst, oldSP, oldDP, oldID)
		if valid && !ipt.SumsValid(outer) {
			t.Fatalf("checksums valid before rewrite, invalid after rewriting back")
		}
		if !bytes.Equal(b, orig) && !onlyZeroSums(b, orig) {
			t.Fatalf("rewrite back\n%x\noriginal\n%x", b, orig)
		}
	})
}

// onlyZeroSums reports whether a and b differ only in 16-bit words at even
// offsets that are 0x0000 in one and 0xFFFF in the other: the two one's
// complement zeros, which an incremental update may swap in a checksum
// field that held 0xFFFF (never produced by a from-scratch computation
// except over all-zero data) or in an unchecked field of an invalid packet.
func onlyZeroSums(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i+1 < len(a); i += 2 {
		x, y := binary.BigEndian.Uint16(a[i:]), binary.BigEndian.Uint16(b[i:])
		if x != y && x^y != 0xFFFF || x != y && x != 0 && y != 0 {
			return false
		}
	}
	return len(a)%2 == 0 || a[len(a)-1] == b[len(b)-1]
}
