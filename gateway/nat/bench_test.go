package nat_test

import (
	"net/netip"
	"testing"

	"github.com/snowgate/snowgate/gateway/nat"
)

// BenchmarkExistingFlow measures the per-packet path of an established
// session (the packet is restored from a template each iteration; the copy is
// included).
func BenchmarkExistingFlow(b *testing.B) {
	for _, k := range kinds {
		for _, fam := range []struct{ proxy, real netip.Addr }{{pA4a, r4a}, {pA6a, r6a}} {
			tb := newTable(b, nat.Config{})
			configure(b, tb, "a.example", []netip.Addr{fam.proxy}, []netip.Addr{fam.real}, t0)
			cl := clientOf(fam.proxy)
			out := k.out(cl, fam.proxy, 1000)
			in := k.reply(fam.real, cl, 1000)
			buf := make([]byte, max(len(out), len(in)))
			copy(buf, out)
			if v, err := tb.TranslateOutgoing(buf[:len(out)], t0); v != nat.Translated {
				b.Fatal(v, err)
			}
			name := k.name + "/v4"
			if fam.proxy.Is6() {
				name = k.name + "/v6"
			}
			b.Run(name+"/outgoing", func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(out)))
				for b.Loop() {
					copy(buf, out)
					if v, _ := tb.TranslateOutgoing(buf[:len(out)], t0); v != nat.Translated {
						b.Fatal(v)
					}
				}
			})
			b.Run(name+"/incoming", func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(in)))
				for b.Loop() {
					copy(buf, in)
					if v, _ := tb.TranslateIncoming(buf[:len(in)], t0); v != nat.Translated {
						b.Fatal(v)
					}
				}
			})
		}
	}
}
