package filter_test

import (
	"cmp"
	"net/netip"
	"slices"
	"testing"

	"pgregory.net/rapid"

	"github.com/snowgate/snowgate/gateway/filter"
	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/portalapi"
)

// naiveAllows is the reference: the raw filter list, scanned.
func naiveAllows(fs []portalapi.Filter, proto ippacket.Protocol, port uint16) bool {
	if len(fs) == 0 {
		return true
	}
	for _, f := range fs {
		switch {
		case f.Protocol == portalapi.ProtocolICMP && (proto == ippacket.ProtoICMP || proto == ippacket.ProtoICMPv6):
			return true
		case f.Protocol == portalapi.ProtocolTCP && proto == ippacket.ProtoTCP,
			f.Protocol == portalapi.ProtocolUDP && proto == ippacket.ProtoUDP:
			if f.PortRangeStart <= port && port <= f.PortRangeEnd {
				return true
			}
		}
	}
	return false
}

// genPort favours a small window and the edges so that ranges overlap.
var genPort = rapid.OneOf(rapid.Uint16Range(0, 40), rapid.SampledFrom([]uint16{0, 1, 65534, 65535}), rapid.Uint16())

func genFilter(t *rapid.T, label string) portalapi.Filter {
	proto := rapid.SampledFrom([]portalapi.Protocol{portalapi.ProtocolTCP, portalapi.ProtocolUDP, portalapi.ProtocolICMP}).Draw(t, label+"proto")
	if proto == portalapi.ProtocolICMP {
		return portalapi.Filter{Protocol: proto}
	}
	x, y := genPort.Draw(t, label+"x"), genPort.Draw(t, label+"y")
	return portalapi.Filter{Protocol: proto, PortRangeStart: min(x, y), PortRangeEnd: max(x, y)}
}

func genFilters(t *rapid.T, label string) []portalapi.Filter {
	n := rapid.IntRange(0, 6).Draw(t, label+"n")
	fs := make([]portalapi.Filter, n)
	for i := range fs {
		fs[i] = genFilter(t, label)
	}
	return fs
}

var genProto = rapid.SampledFrom([]ippacket.Protocol{ippacket.ProtoTCP, ippacket.ProtoUDP, ippacket.ProtoICMP, ippacket.ProtoICMPv6, 132, 47})

func checkNormalised(t *rapid.T, rs []filter.PortRange) {
	for i, r := range rs {
		if r.First > r.Last {
			t.Fatalf("range %v inverted", r)
		}
		if i > 0 && int(rs[i-1].Last)+1 >= int(r.First) {
			t.Fatalf("ranges %v and %v overlap or touch", rs[i-1], r)
		}
	}
}

func TestPropertySetMatchesNaive(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		fs := genFilters(t, "a")
		gs := genFilters(t, "b")
		s := filter.MustCompile(fs)
		g := filter.MustCompile(gs)
		u := filter.Union(s, g)
		back := filter.MustCompile(s.Filters())
		checkNormalised(t, s.TCP())
		checkNormalised(t, s.UDP())
		checkNormalised(t, u.TCP())
		checkNormalised(t, u.UDP())
		for i := range 50 {
			_ = i
			proto := genProto.Draw(t, "proto")
			port := genPort.Draw(t, "port")
			want := naiveAllows(fs, proto, port)
			if got := s.Allows(proto, port); got != want {
				t.Fatalf("Compile(%v).Allows(%d, %d) = %v, naive %v (set %v)", fs, proto, port, got, want, s)
			}
			if got := back.Allows(proto, port); got != want {
				t.Fatalf("round trip of %v disagrees at %d/%d", fs, proto, port)
			}
			// Union is the union of the lists, except that Union keeps an
			// empty list's permit-all: that is the table's rule.
			if got, want := u.Allows(proto, port), naiveAllows(fs, proto, port) || naiveAllows(gs, proto, port); got != want {
				t.Fatalf("Union(%v, %v).Allows(%d, %d) = %v, want %v", fs, gs, proto, port, got, want)
			}
		}
	})
}

// refResource is a resource as the reference implementation sees it.
type refResource struct {
	id      string
	kind    filter.Kind
	dsts    []netip.Prefix
	filters []portalapi.Filter
}

var refExclude = netip.MustParsePrefix("192.0.2.128/25")

// refLookup is the linear-scan reference of Table.Lookup followed by
// Set.Allows: the longest prefix containing dst wins (then DNS over CIDR over
// Internet, then the smallest id); a DNS entry uses the DNS resources on that
// exact address, a CIDR entry the CIDR and Internet resources containing it.
func refLookup(rs []refResource, dst netip.Addr, proto ippacket.Protocol, port uint16) (string, bool, bool) {
	prio := map[filter.Kind]int{filter.KindDNS: 3, filter.KindCIDR: 2, filter.KindInternet: 1}
	type cand struct {
		r refResource
		p netip.Prefix
	}
	var best *cand
	for _, r := range rs {
		dsts := r.dsts
		if r.kind == filter.KindInternet {
			if refExclude.Contains(dst) {
				continue
			}
			dsts = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
		}
		for _, q := range dsts {
			q = q.Masked()
			if !q.Contains(dst) {
				continue
			}
			c := cand{r, q}
			switch {
			case best == nil,
				q.Bits() > best.p.Bits(),
				q.Bits() == best.p.Bits() && prio[r.kind] > prio[best.r.kind],
				q.Bits() == best.p.Bits() && prio[r.kind] == prio[best.r.kind] && r.id < best.r.id:
				best = &c
			}
		}
	}
	if best == nil {
		return "", false, false
	}
	allowed := false
	for _, r := range rs {
		switch {
		case best.r.kind == filter.KindInternet:
			allowed = true
		case best.r.kind == filter.KindDNS && r.kind == filter.KindDNS:
			if slices.Contains(r.dsts, best.p) && naiveAllows(r.filters, proto, port) {
				allowed = true
			}
		case best.r.kind == filter.KindCIDR && r.kind == filter.KindInternet:
			// The Internet resource lifts a CIDR resource's filters only where it covers all of its prefix.
			if !refExclude.Overlaps(best.p) {
				allowed = true
			}
		case best.r.kind == filter.KindCIDR && r.kind == filter.KindCIDR:
			for _, q := range r.dsts {
				q = q.Masked()
				if q.Bits() <= best.p.Bits() && q.Contains(best.p.Addr()) && naiveAllows(r.filters, proto, port) {
					allowed = true
				}
			}
		}
	}
	return best.r.id, allowed, true
}

// genLow draws the last byte of addresses from a small set so that prefixes
// nest and collide, on both sides of refExclude's boundary.
var genLow = rapid.SampledFrom([]byte{0, 1, 2, 3, 7, 8, 64, 127, 128, 129, 200, 255})

// genAddr draws from a small address space so that prefixes nest and collide.
func genAddr(t *rapid.T, label string) netip.Addr {
	if rapid.Bool().Draw(t, label+"v6") {
		b := netip.MustParseAddr("2001:db8::").As16()
		b[15] = genLow.Draw(t, label+"lo")
		return netip.AddrFrom16(b)
	}
	return netip.AddrFrom4([4]byte{192, 0, 2, genLow.Draw(t, label+"lo")})
}

func genPrefix(t *rapid.T, label string, host bool) netip.Prefix {
	addr := genAddr(t, label)
	if host {
		return netip.PrefixFrom(addr, addr.BitLen())
	}
	var bits int
	if addr.Is4() {
		bits = rapid.SampledFrom([]int{0, 8, 24, 25, 26, 28, 30, 31, 32, 32, 32}).Draw(t, label+"bits")
	} else {
		bits = rapid.SampledFrom([]int{0, 32, 120, 121, 124, 127, 128, 128, 128}).Draw(t, label+"bits")
	}
	return netip.PrefixFrom(addr, bits) // not masked: Set masks
}

func TestPropertyTableMatchesLinearScan(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		tb, err := filter.NewTable(filter.Options{InternetExcludes: []netip.Prefix{refExclude}})
		if err != nil {
			t.Fatal(err)
		}
		live := map[string]refResource{}
		ops := rapid.IntRange(1, 12).Draw(t, "ops")
		for range ops {
			id := rapid.SampledFrom([]string{"a", "b", "c", "d", "e", "f"}).Draw(t, "id")
			if rapid.IntRange(0, 5).Draw(t, "remove") == 0 {
				_, had := live[id]
				if tb.Remove(id) != had {
					t.Fatalf("Remove(%s) disagrees", id)
				}
				delete(live, id)
				continue
			}
			r := refResource{id: id, kind: rapid.SampledFrom([]filter.Kind{filter.KindCIDR, filter.KindCIDR, filter.KindDNS, filter.KindInternet}).Draw(t, "kind")}
			if r.kind != filter.KindInternet {
				n := rapid.IntRange(0, 3).Draw(t, "ndst")
				for range n {
					r.dsts = append(r.dsts, genPrefix(t, "dst", r.kind == filter.KindDNS))
				}
				r.filters = genFilters(t, "f")
			}
			if err := tb.Set(r.id, r.kind, r.dsts, r.filters); err != nil {
				t.Fatal(err)
			}
			live[id] = r
		}
		rs := make([]refResource, 0, len(live))
		for _, r := range live {
			rs = append(rs, r)
		}
		slices.SortFunc(rs, func(x, y refResource) int { return cmp.Compare(x.id, y.id) })
		if tb.Len() != len(rs) {
			t.Fatalf("Len = %d, want %d", tb.Len(), len(rs))
		}
		for range 40 {
			dst := genAddr(t, "probe")
			proto := genProto.Draw(t, "proto")
			port := genPort.Draw(t, "port")
			wantID, wantAllow, wantOK := refLookup(rs, dst, proto, port)
			id, set, ok := tb.Lookup(dst)
			if ok != wantOK || id != wantID {
				t.Fatalf("Lookup(%v) = %q %v, want %q %v", dst, id, ok, wantID, wantOK)
			}
			if ok && set.Allows(proto, port) != wantAllow {
				t.Fatalf("Lookup(%v) set %v Allows(%d, %d) = %v, want %v", dst, set, proto, port, !wantAllow, wantAllow)
			}
		}
	})
}
