package ippacket_test

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"

	"github.com/snowgate/snowgate/internal/ippacket"
	ipt "github.com/snowgate/snowgate/internal/ippacket/ippackettest"
)

func TestBuildUDP(t *testing.T) {
	for _, c := range []struct {
		name     string
		src, dst netip.AddrPort
		payload  []byte
	}{
		{"v4", ap(netip.MustParseAddr("100.100.111.1"), 53), ap(v4a, 5353), []byte("dns reply")},
		{"v4 empty", ap(v4b, 1), ap(v4a, 2), nil},
		{"v6", ap(netip.MustParseAddr("fd00:2021:1111:8000:100:100:111:1"), 53), ap(v6a, 5353), []byte("odd")},
		{"v6 1212", ap(v6b, 53), ap(v6a, 1), bytes.Repeat([]byte{0xAB}, 1212)},
	} {
		t.Run(c.name, func(t *testing.T) {
			buf := make([]byte, 1280)
			n, err := ippacket.BuildUDP(buf, c.src, c.dst, c.payload)
			if err != nil {
				t.Fatal(err)
			}
			b := buf[:n]
			if err := ipt.Verify(b, ipt.AllowZeroUDPChecksum); err != nil {
				t.Fatal(err)
			}
			p := mustParse(t, b)
			sp, dp, _ := p.Ports()
			pl, err := p.UDPPayload()
			if err != nil || p.Src() != c.src.Addr() || p.Dst() != c.dst.Addr() || sp != c.src.Port() || dp != c.dst.Port() || !bytes.Equal(pl, c.payload) {
				t.Fatalf("parsed back %v:%d → %v:%d %q %v", p.Src(), sp, p.Dst(), dp, pl, err)
			}
			// Same bytes as gVisor's encoding, but for the fields gVisor's
			// helper sets differently (IPv4 ID, flags).
			want := ipt.UDP(c.src, c.dst, c.payload)
			if c.src.Addr().Is4() {
				b = append([]byte(nil), b...)
				copy(b[4:8], want[4:8])
				fixSum4(b)
			}
			if !bytes.Equal(b, want) {
				t.Fatalf("built\n%x\ngVisor\n%x", b, want)
			}
		})
	}
	buf := make([]byte, 100)
	if _, err := ippacket.BuildUDP(buf, ap(v4a, 1), ap(v6a, 1), nil); !errors.Is(err, ippacket.ErrFamily) {
		t.Errorf("mixed families: %v", err)
	}
	if _, err := ippacket.BuildUDP(buf, ap(v4a, 1), ap(v4b, 1), make([]byte, 73)); !errors.Is(err, ippacket.ErrBufferTooSmall) {
		t.Errorf("small buffer: %v", err)
	}
	if _, err := ippacket.BuildUDP(make([]byte, 70000), ap(v4a, 1), ap(v4b, 1), make([]byte, 65508)); !errors.Is(err, ippacket.ErrTooLarge) {
		t.Errorf("too large: %v", err)
	}
}

func TestBuildICMPProhibited(t *testing.T) {
	big6 := ipt.UDP(ap(v6a, 1), ap(v6c, 2), make([]byte, 1232)) // 1280 bytes
	for _, c := range []struct {
		name      string
		in        []byte
		typ, code uint8
		quote     int
	}{
		{"tcp4", ipt.TCP(ap(v4a, 40000), ap(v4c, 22), 1, 0, ipt.ACK|ipt.PSH, nil), 3, 13, 40},
		{"udp4 big", ipt.UDP(ap(v4a, 1), ap(v4c, 2), make([]byte, 1000)), 3, 13, 548},
		{"echo6", ipt.Echo(v6a, v6c, 9, 9, []byte("x")), 1, 1, 49},
		{"udp6 mtu", big6, 1, 1, 1232},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := mustParse(t, c.in)
			buf := make([]byte, 1500)
			n, err := ippacket.BuildICMPProhibited(buf, p)
			if err != nil {
				t.Fatal(err)
			}
			r := buf[:n]
			if err := ipt.Verify(r, ipt.AllowZeroUDPChecksum); err != nil {
				t.Fatal(err)
			}
			rp := mustParse(t, r)
			typ, code, _ := rp.ICMP()
			if rp.Src() != p.Dst() || rp.Dst() != p.Src() || typ != c.typ || code != c.code || len(rp.Payload()) != 8+c.quote {
				t.Fatalf("reply %v→%v type %d code %d quote %d", rp.Src(), rp.Dst(), typ, code, len(rp.Payload())-8)
			}
			if !bytes.Equal(rp.Payload()[8:], c.in[:c.quote]) {
				t.Fatal("quote differs")
			}
			q, err := rp.Quoted()
			if err != nil || q.Src() != p.Src() || q.Dst() != p.Dst() {
				t.Fatalf("quoted %v→%v %v", q.Src(), q.Dst(), err)
			}
			// In place, in the denied packet's own buffer.
			own := make([]byte, 1500)
			copy(own, c.in)
			m, err := ippacket.BuildICMPProhibited(own, mustParse(t, own[:len(c.in)]))
			if err != nil || !bytes.Equal(own[:m], r) {
				t.Fatalf("in place: %v", err)
			}
		})
	}
	e := mustParse(t, ipt.Unreachable(v4b, v4a, ipt.UDP(ap(v4a, 1), ap(v4b, 2), nil)))
	if _, err := ippacket.BuildICMPProhibited(make([]byte, 1500), e); !errors.Is(err, ippacket.ErrUnsupported) {
		t.Errorf("reply to an ICMP error: %v", err)
	}
	q, _ := e.Quoted()
	if _, err := ippacket.BuildICMPProhibited(make([]byte, 1500), q); !errors.Is(err, ippacket.ErrUnsupported) {
		t.Errorf("reply to a quoted packet: %v", err)
	}
	lf := mustParse(t, with(ipt.UDP(ap(v4a, 1), ap(v4b, 2), nil), func(b []byte) []byte { b[7] = 1; return fixSum4(b) }))
	if _, err := ippacket.BuildICMPProhibited(make([]byte, 1500), lf); !errors.Is(err, ippacket.ErrFragment) {
		t.Errorf("reply to a later fragment: %v", err)
	}
	if _, err := ippacket.BuildICMPProhibited(make([]byte, 50), mustParse(t, ipt.TCP(ap(v4a, 1), ap(v4b, 2), 0, 0, ipt.ACK|ipt.PSH, nil))); !errors.Is(err, ippacket.ErrBufferTooSmall) {
		t.Errorf("small buffer: %v", err)
	}
	if _, err := ippacket.BuildICMPProhibited(make([]byte, 1500), ippacket.Packet{}); !errors.Is(err, ippacket.ErrUnsupported) {
		t.Errorf("zero Packet: %v", err)
	}
}

func TestZeroPacket(t *testing.T) {
	var p ippacket.Packet
	if p.Src().IsValid() || p.Dst().IsValid() || p.IsICMPError() || len(p.Payload()) != 0 {
		t.Fatal("zero Packet has content")
	}
	if _, _, err := p.Ports(); err == nil {
		t.Error("Ports of the zero Packet")
	}
	if _, err := p.Quoted(); err == nil {
		t.Error("Quoted of the zero Packet")
	}
	if err := p.SetSrc(v6a); !errors.Is(err, ippacket.ErrUnsupported) {
		t.Errorf("SetSrc of the zero Packet: %v", err)
	}
	if err := p.SetEchoID(1); err == nil {
		t.Error("SetEchoID of the zero Packet")
	}
}
