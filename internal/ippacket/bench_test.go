package ippacket_test

import (
	"testing"

	"github.com/snowgate/snowgate/internal/ippacket"
	ipt "github.com/snowgate/snowgate/internal/ippacket/ippackettest"
)

func BenchmarkParse(b *testing.B) {
	for _, c := range []struct {
		name string
		pkt  []byte
	}{
		{"udp4", ipt.UDP(ap(v4a, 5353), ap(v4c, 53), make([]byte, 1200))},
		{"tcp6", ipt.TCP(ap(v6a, 40000), ap(v6c, 443), 1, 0, ipt.ACK|ipt.PSH, make([]byte, 1200))},
		{"icmp4-error", ipt.Unreachable(v4b, v4a, ipt.UDP(ap(v4a, 5353), ap(v4c, 53), make([]byte, 100)))},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(c.pkt)))
			for b.Loop() {
				p, err := ippacket.Parse(c.pkt)
				if err != nil {
					b.Fatal(err)
				}
				if p.IsICMPError() {
					if p, err = p.Quoted(); err != nil {
						b.Fatal(err)
					}
				}
				if _, _, err := p.Ports(); err != nil {
					b.Fatal(err)
				}
				_ = p.Dst()
			}
		})
	}
}

func BenchmarkRewrite(b *testing.B) {
	for _, c := range []struct {
		name     string
		pkt      []byte
		from, to string
		quoted   bool
	}{
		{"udp4", ipt.UDP(ap(v4a, 5353), ap(v4c, 53), make([]byte, 1200)), "100.96.0.3", "198.51.100.7", false},
		{"tcp6", ipt.TCP(ap(v6a, 40000), ap(v6c, 443), 1, 0, ipt.ACK|ipt.PSH, make([]byte, 1200)), "fd00:2021:1111:8000::3", "2001:db8::7", false},
		{"icmp4-error", ipt.Unreachable(v4b, v4a, ipt.UDP(ap(v4a, 5353), ap(v4b, 53), make([]byte, 100))), "198.51.100.7", "100.96.0.3", true},
	} {
		b.Run(c.name, func(b *testing.B) {
			from, to := mustAddr(c.from), mustAddr(c.to)
			b.ReportAllocs()
			b.SetBytes(int64(len(c.pkt)))
			for b.Loop() {
				p, err := ippacket.Parse(c.pkt)
				if err != nil {
					b.Fatal(err)
				}
				if c.quoted {
					if p, err = p.Quoted(); err != nil {
						b.Fatal(err)
					}
				}
				if err := p.SetDst(to); err != nil {
					b.Fatal(err)
				}
				from, to = to, from
			}
		})
	}
}

func BenchmarkBuildUDP(b *testing.B) {
	buf := make([]byte, 1280)
	payload := make([]byte, 512)
	src, dst := ap(mustAddr("100.100.111.1"), 53), ap(v4a, 5353)
	b.ReportAllocs()
	b.SetBytes(int64(len(payload) + 28))
	for b.Loop() {
		if _, err := ippacket.BuildUDP(buf, src, dst, payload); err != nil {
			b.Fatal(err)
		}
	}
}
