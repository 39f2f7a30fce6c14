package filter

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"

	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/portalapi"
)

// Kind says how a resource's destinations are matched.
type Kind uint8

// Resource kinds.
const (
	// KindCIDR is a CIDR resource: its prefixes are matched by longest prefix
	// and its filters are united with those of the resources containing it.
	KindCIDR Kind = iota + 1
	// KindDNS is a DNS resource: its destinations are the proxy IPs the client
	// assigned to its names, single addresses matched exactly, with the
	// resource's own filters only.
	KindDNS
	// KindInternet is the Internet resource: 0.0.0.0/0 and ::/0 at the lowest
	// priority, permitting everything.
	KindInternet
)

// String returns "cidr", "dns", "internet" or "kind(N)".
func (k Kind) String() string {
	switch k {
	case KindCIDR:
		return string(portalapi.ResourceCIDR)
	case KindDNS:
		return string(portalapi.ResourceDNS)
	case KindInternet:
		return string(portalapi.ResourceInternet)
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// priority orders kinds at the same prefix: a DNS proxy IP beats a host CIDR
// (Firezone installs DNS filters after CIDR ones), a CIDR beats the Internet.
func (k Kind) priority() int {
	switch k {
	case KindDNS:
		return 3
	case KindCIDR:
		return 2
	}
	return 1
}

// Verdict is the outcome of checking a packet against a Table.
type Verdict uint8

// Verdicts. The zero Verdict is VerdictNoResource.
const (
	// VerdictNoResource: no resource covers the destination; drop the packet.
	VerdictNoResource Verdict = iota
	// VerdictAllow: a resource covers the destination and its filters allow
	// the packet.
	VerdictAllow
	// VerdictDenied: a resource covers the destination but its filters deny
	// the packet; answer with ippacket.BuildICMPProhibited (which refuses ICMP
	// errors and non-first fragments: drop those).
	VerdictDenied
)

// String returns "allow", "denied" or "no-resource".
func (v Verdict) String() string {
	switch v {
	case VerdictAllow:
		return "allow"
	case VerdictDenied:
		return "denied"
	case VerdictNoResource:
		return "no-resource"
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// Options configures a Table.
type Options struct {
	// InternetExcludes are prefixes the Internet resource does not cover,
	// normally the DNS proxy ranges (100.96.0.0/11, fd00:2021:1111:8000::/107):
	// as in Firezone, a packet to a proxy IP that no DNS resource holds is for
	// no resource even when the Internet resource is authorised.
	InternetExcludes []netip.Prefix
}

// Table maps destination addresses to the resource that covers them and the
// filters that apply. The zero Table is empty and ready to use (with no
// InternetExcludes). Lookup, Check and Allow are one binary search over the
// flattened prefixes and do not allocate; Set and Remove rebuild the lookup
// structures from all resources (about 1.3 ms for 200 resources with 1000
// prefixes), so feed them changes, not packets.
type Table struct {
	excludes  []netip.Prefix
	resources map[string]resource
	entries   []entry
	v4, v6    family
}

type resource struct {
	kind Kind
	dsts []netip.Prefix
	set  *Set
}

// family is the lookup structure of one address family: the address space cut
// into intervals on which the longest-prefix match does not change, as sorted
// interval starts and, for each, the index of its entry in Table.entries (-1
// for none). A lookup is one binary search.
type family struct {
	starts []u128
	idx    []int32
}

type entry struct {
	id   string
	kind Kind
	set  *Set
}

// NewTable returns an empty Table with opts.
func NewTable(opts Options) (*Table, error) {
	t := &Table{}
	for _, p := range opts.InternetExcludes {
		if !p.IsValid() {
			return nil, fmt.Errorf("%w: internet exclude %v", ErrInvalidResource, p)
		}
		t.excludes = append(t.excludes, p.Masked())
	}
	return t, nil
}

// Set adds or replaces resource id with its kind, destinations and filters.
// CIDR resources take prefixes (masked here); DNS resources take single
// addresses (/32 or /128); the Internet resource ignores dsts (it covers
// 0.0.0.0/0 and ::/0) and filters (it permits all, as in Firezone). A DNS
// resource with no destination yet is kept but matches nothing. On error the
// table is unchanged.
func (t *Table) Set(id string, kind Kind, dsts []netip.Prefix, filters []portalapi.Filter) error {
	if id == "" {
		return fmt.Errorf("%w: empty id", ErrInvalidResource)
	}
	r := resource{kind: kind}
	switch kind {
	case KindInternet:
		r.dsts = []netip.Prefix{netip.PrefixFrom(netip.IPv4Unspecified(), 0), netip.PrefixFrom(netip.IPv6Unspecified(), 0)}
		r.set = PermitAll()
	case KindCIDR, KindDNS:
		for _, p := range dsts {
			if !p.IsValid() {
				return fmt.Errorf("%w %s: destination %v", ErrInvalidResource, id, p)
			}
			if kind == KindDNS && !p.IsSingleIP() {
				return fmt.Errorf("%w %s: dns destination %v is not a single address", ErrInvalidResource, id, p)
			}
			r.dsts = append(r.dsts, p.Masked())
		}
		set, err := Compile(filters)
		if err != nil {
			return fmt.Errorf("%w %s: %w", ErrInvalidResource, id, err)
		}
		r.set = set
	default:
		return fmt.Errorf("%w %s: unknown kind %v", ErrInvalidResource, id, kind)
	}
	if t.resources == nil {
		t.resources = make(map[string]resource)
	}
	t.resources[id] = r
	t.rebuild()
	return nil
}

// Remove removes resource id; it reports whether it was there.
func (t *Table) Remove(id string) bool {
	if _, ok := t.resources[id]; !ok {
		return false
	}
	delete(t.resources, id)
	t.rebuild()
	return true
}

// Len returns the number of resources in t.
func (t *Table) Len() int { return len(t.resources) }

// Has reports whether resource id is in t.
func (t *Table) Has(id string) bool {
	_, ok := t.resources[id]
	return ok
}

// Lookup returns the resource that covers dst and the filters that apply to
// packets to dst, or ok false when no resource covers it. It does not
// allocate. An IPv4-mapped IPv6 address is looked up as IPv6.
func (t *Table) Lookup(dst netip.Addr) (resourceID string, filters *Set, ok bool) {
	var i int32
	switch {
	case dst.Is4():
		i = t.v4.find(key(dst))
	case dst.Is6():
		i = t.v6.find(key(dst))
	default:
		return "", nil, false
	}
	if i < 0 {
		return "", nil, false
	}
	e := &t.entries[i]
	return e.id, e.set, true
}

// find returns the entry index of the interval that holds k, -1 for none.
func (f *family) find(k u128) int32 {
	// The interval is the last one whose start is <= k.
	lo, hi := 0, len(f.starts)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if k.less(f.starts[m]) {
			hi = m
		} else {
			lo = m + 1
		}
	}
	if lo == 0 {
		return -1
	}
	return f.idx[lo-1]
}

// overlapsExclude reports whether p and one of the Internet excludes share an address.
func (t *Table) overlapsExclude(p netip.Prefix) bool {
	for _, x := range t.excludes {
		if x.Overlaps(p) {
			return true
		}
	}
	return false
}

func (t *Table) excluded(a netip.Addr) bool {
	for _, p := range t.excludes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Check returns the resource that covers pkt's destination and the verdict of
// its filters on pkt. The resource id is empty for VerdictNoResource. It does
// not allocate.
func (t *Table) Check(pkt ippacket.Packet) (resourceID string, v Verdict) {
	id, set, ok := t.Lookup(pkt.Dst())
	if !ok {
		return "", VerdictNoResource
	}
	if set.AllowsPacket(pkt) {
		return id, VerdictAllow
	}
	return id, VerdictDenied
}

// Allow returns the verdict of t on pkt (see Check). It does not allocate.
func (t *Table) Allow(pkt ippacket.Packet) Verdict {
	_, v := t.Check(pkt)
	return v
}

// rebuild recomputes both families' lookup structures from t.resources.
// For every distinct destination prefix the entry is held by the resource of
// the highest kind priority (then the smallest id); its filters are:
//   - for a DNS entry, the union of the DNS resources with that exact address;
//   - for a CIDR entry, the union of the CIDR and Internet resources whose
//     destinations contain the prefix (Firezone's recalculate_cidr_filters),
//     leaving the Internet resource out when the prefix overlaps one of
//     Options.InternetExcludes: there the Internet resource covers nothing, so
//     its permit-all must not lift the CIDR resource's filters (a prefix only
//     partly inside an exclude keeps its own filters throughout: the stricter
//     reading);
//   - for an Internet entry, permit all.
func (t *Table) rebuild() {
	ids := make([]string, 0, len(t.resources))
	for id := range t.resources {
		ids = append(ids, id)
	}
	slices.Sort(ids)

	type holder struct {
		id   string
		kind Kind
	}
	winners := make(map[netip.Prefix]holder)
	dnsSets := make(map[netip.Prefix][]*Set) // DNS resources by proxy IP, in id order
	var covering []resource                  // CIDR and Internet resources, in id order
	for _, id := range ids {
		r := t.resources[id]
		if r.kind != KindDNS {
			covering = append(covering, r)
		}
		for _, p := range r.dsts {
			if r.kind == KindDNS {
				dnsSets[p] = append(dnsSets[p], r.set)
			}
			w, ok := winners[p]
			if !ok || r.kind.priority() > w.kind.priority() {
				winners[p] = holder{id, r.kind}
			}
		}
	}

	t.entries = nil
	byPrefix := make(map[netip.Prefix]int32, len(winners))
	for p, w := range winners {
		var set *Set
		switch w.kind {
		case KindInternet:
			set = PermitAll()
		case KindDNS:
			set = union(dnsSets[p])
		case KindCIDR:
			var parts []*Set
			for _, r := range covering {
				if r.kind == KindInternet && t.overlapsExclude(p) {
					continue // the Internet resource does not cover (all of) p: its permit-all must not lift p's filters
				}
				if slices.ContainsFunc(r.dsts, func(q netip.Prefix) bool { return containsPrefix(q, p) }) {
					parts = append(parts, r.set)
				}
			}
			set = union(parts)
		}
		byPrefix[p] = int32(len(t.entries))
		t.entries = append(t.entries, entry{id: w.id, kind: w.kind, set: set})
	}
	t.v4 = t.buildFamily(true, byPrefix)
	t.v6 = t.buildFamily(false, byPrefix)
}

// buildFamily flattens the entries of one family into intervals: every
// prefix (and exclusion) starts an interval at its first address and ends one
// after its last, and each interval takes the longest prefix containing its
// first address (none for the Internet resource on an excluded interval).
// Consecutive intervals with the same entry are merged. Prefixes are nested
// or disjoint, so one sweep with a stack of the open prefixes finds them.
func (t *Table) buildFamily(v4 bool, byPrefix map[netip.Prefix]int32) family {
	type item struct {
		first, last u128
		bits        int
		idx         int32
	}
	var items []item
	bounds := []u128{{}}
	for p, i := range byPrefix {
		if p.Addr().Is4() != v4 {
			continue
		}
		it := item{first: key(p.Addr()), last: key(lastAddr(p)), bits: p.Bits(), idx: i}
		items = append(items, it)
		bounds = append(bounds, it.first)
		if next, ok := it.last.inc(v4); ok {
			bounds = append(bounds, next)
		}
	}
	if len(items) == 0 {
		return family{}
	}
	for _, p := range t.excludes {
		if p.Addr().Is4() == v4 {
			bounds = append(bounds, key(p.Addr()))
			if next, ok := key(lastAddr(p)).inc(v4); ok {
				bounds = append(bounds, next)
			}
		}
	}
	slices.SortFunc(bounds, func(a, b u128) int { return a.cmp(b) })
	bounds = slices.Compact(bounds)
	// Parents before children: by first address, then shorter prefix first.
	slices.SortFunc(items, func(a, b item) int {
		if c := a.first.cmp(b.first); c != 0 {
			return c
		}
		return cmp.Compare(a.bits, b.bits)
	})

	var f family
	var stack []item
	j := 0
	for _, b := range bounds {
		for len(stack) > 0 && stack[len(stack)-1].last.less(b) {
			stack = stack[:len(stack)-1]
		}
		for j < len(items) && !b.less(items[j].first) {
			stack = append(stack, items[j])
			j++
		}
		idx := int32(-1)
		if len(stack) > 0 {
			idx = stack[len(stack)-1].idx
		}
		if idx >= 0 && t.entries[idx].kind == KindInternet && t.excluded(b.addr(v4)) {
			idx = -1
		}
		if n := len(f.idx); n > 0 && f.idx[n-1] == idx {
			continue
		}
		f.starts = append(f.starts, b)
		f.idx = append(f.idx, idx)
	}
	return f
}

// union is Union that returns the only element itself.
func union(parts []*Set) *Set {
	if len(parts) == 1 {
		return parts[0]
	}
	return Union(parts...)
}

// containsPrefix reports whether outer contains inner (same family, outer no
// longer than inner, inner's address inside outer).
func containsPrefix(outer, inner netip.Prefix) bool {
	return outer.Addr().Is4() == inner.Addr().Is4() && outer.Bits() <= inner.Bits() && outer.Contains(inner.Addr())
}

// lastAddr returns the last address of the masked prefix p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().As16()
	bits := p.Bits()
	if p.Addr().Is4() {
		bits += 96
	}
	for i := bits; i < 128; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a := netip.AddrFrom16(b)
	if p.Addr().Is4() {
		return a.Unmap()
	}
	return a
}

// u128 is an address as a 128-bit integer (an IPv4 address in lo), for
// ordered lookups.
type u128 struct{ hi, lo uint64 }

// key returns a as a u128 (a zone is ignored).
func key(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{lo: uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return u128{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:])}
}

func (k u128) less(o u128) bool { return k.hi < o.hi || k.hi == o.hi && k.lo < o.lo }

func (k u128) cmp(o u128) int {
	if c := cmp.Compare(k.hi, o.hi); c != 0 {
		return c
	}
	return cmp.Compare(k.lo, o.lo)
}

// inc returns k+1 within the family's address space, false on overflow.
func (k u128) inc(v4 bool) (u128, bool) {
	switch {
	case v4 && k.lo >= 0xFFFFFFFF, !v4 && k.hi == ^uint64(0) && k.lo == ^uint64(0):
		return k, false
	case k.lo == ^uint64(0):
		return u128{hi: k.hi + 1}, true
	}
	return u128{hi: k.hi, lo: k.lo + 1}, true
}

// addr turns k back into an address of its family.
func (k u128) addr(v4 bool) netip.Addr {
	if v4 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(k.lo))
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], k.hi)
	binary.BigEndian.PutUint64(b[8:], k.lo)
	return netip.AddrFrom16(b)
}

// KindOf returns the Kind of a portal resource type; false for a type this
// package does not know (receivers ignore unknown resource types).
func KindOf(t portalapi.ResourceType) (Kind, bool) {
	switch t {
	case portalapi.ResourceCIDR:
		return KindCIDR, true
	case portalapi.ResourceDNS:
		return KindDNS, true
	case portalapi.ResourceInternet:
		return KindInternet, true
	}
	return 0, false
}

// SetResource is Set for a portal resource: it validates r, takes a CIDR
// resource's prefix from its address, and a DNS resource's destinations from
// proxyIPs (the proxy IPs the client assigned to the resource's names so far;
// ignored for other kinds).
func (t *Table) SetResource(r portalapi.Resource, proxyIPs []netip.Addr) error {
	if err := r.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidResource, err)
	}
	kind, _ := KindOf(r.Type) // Validate rejected unknown types
	var dsts []netip.Prefix
	switch kind {
	case KindCIDR:
		p, err := r.Prefix()
		if err != nil {
			return fmt.Errorf("%w %s: %w", ErrInvalidResource, r.ID, err)
		}
		dsts = []netip.Prefix{p}
	case KindDNS:
		dsts = make([]netip.Prefix, 0, len(proxyIPs))
		for _, a := range proxyIPs {
			if !a.IsValid() {
				return fmt.Errorf("%w %s: invalid proxy IP", ErrInvalidResource, r.ID)
			}
			dsts = append(dsts, netip.PrefixFrom(a.WithZone(""), a.BitLen()))
		}
	}
	return t.Set(r.ID, kind, dsts, r.Filters)
}
