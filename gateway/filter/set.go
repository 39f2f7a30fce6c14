package filter

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/portalapi"
)

// PortRange is an inclusive range of TCP or UDP ports.
type PortRange struct {
	// First is the lowest port of the range.
	First uint16
	// Last is the highest port of the range, First <= Last.
	Last uint16
}

// Set is a compiled filter list: what one resource (or the union of the
// resources that cover a destination) lets through. A Set is immutable once
// built and safe for concurrent use. The nil *Set permits nothing, like a
// filter list that names no protocol.
type Set struct {
	all  bool
	icmp bool
	tcp  []PortRange // sorted, disjoint, non-adjacent
	udp  []PortRange // sorted, disjoint, non-adjacent
}

// PermitAll returns a Set that allows every packet: what an empty filter list
// compiles to.
func PermitAll() *Set { return &Set{all: true} }

// Compile validates filters and compiles them into a Set. An empty (or nil)
// list permits everything. Overlapping and adjacent port ranges of a protocol
// are merged. An invalid filter fails the whole list with an error wrapping
// ErrInvalidFilter, naming its index.
func Compile(filters []portalapi.Filter) (*Set, error) {
	if len(filters) == 0 {
		return PermitAll(), nil
	}
	s := &Set{}
	for i, f := range filters {
		if err := f.Validate(); err != nil {
			return nil, fmt.Errorf("%w %d: %w", ErrInvalidFilter, i, err)
		}
		switch f.Protocol {
		case portalapi.ProtocolICMP:
			s.icmp = true
		case portalapi.ProtocolTCP:
			s.tcp = append(s.tcp, PortRange{f.PortRangeStart, f.PortRangeEnd})
		case portalapi.ProtocolUDP:
			s.udp = append(s.udp, PortRange{f.PortRangeStart, f.PortRangeEnd})
		}
	}
	s.tcp = normalise(s.tcp)
	s.udp = normalise(s.udp)
	return s, nil
}

// MustCompile is Compile for filter lists known to be valid (tests, constants);
// it panics on an invalid filter.
func MustCompile(filters []portalapi.Filter) *Set {
	s, err := Compile(filters)
	if err != nil {
		panic(err)
	}
	return s
}

// Union returns a Set that allows what any of sets allows. A nil element
// allows nothing; an element that permits all makes the union permit all.
// With no element, Union returns a Set that allows nothing.
func Union(sets ...*Set) *Set {
	u := &Set{}
	for _, s := range sets {
		if s == nil {
			continue
		}
		if s.all {
			return PermitAll()
		}
		u.icmp = u.icmp || s.icmp
		u.tcp = append(u.tcp, s.tcp...)
		u.udp = append(u.udp, s.udp...)
	}
	u.tcp = normalise(u.tcp)
	u.udp = normalise(u.udp)
	return u
}

// normalise sorts ranges and merges the overlapping and adjacent ones in place.
func normalise(rs []PortRange) []PortRange {
	if len(rs) == 0 {
		return nil
	}
	slices.SortFunc(rs, func(a, b PortRange) int { return int(a.First) - int(b.First) })
	out := rs[:1]
	for _, r := range rs[1:] {
		last := &out[len(out)-1]
		if int(r.First) <= int(last.Last)+1 {
			last.Last = max(last.Last, r.Last)
			continue
		}
		out = append(out, r)
	}
	return slices.Clip(out)
}

// contains reports whether port lies in one of the sorted disjoint ranges.
func contains(rs []PortRange, port uint16) bool {
	lo, hi := 0, len(rs)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		switch {
		case port < rs[m].First:
			hi = m
		case port > rs[m].Last:
			lo = m + 1
		default:
			return true
		}
	}
	return false
}

// PermitsAll reports whether s allows every packet (it came from an empty
// filter list, or a union that included one).
func (s *Set) PermitsAll() bool { return s != nil && s.all }

// ICMP reports whether s allows ICMP and ICMPv6 messages.
func (s *Set) ICMP() bool { return s != nil && (s.all || s.icmp) }

// TCP returns the merged TCP port ranges s allows (nil when it permits all:
// check PermitsAll). The slice is shared: do not modify it.
func (s *Set) TCP() []PortRange {
	if s == nil {
		return nil
	}
	return s.tcp
}

// UDP returns the merged UDP port ranges s allows (nil when it permits all:
// check PermitsAll). The slice is shared: do not modify it.
func (s *Set) UDP() []PortRange {
	if s == nil {
		return nil
	}
	return s.udp
}

// Allows reports whether s lets through a packet of IP protocol proto to
// destination port dstPort (ignored unless proto is TCP or UDP). ICMP and
// ICMPv6 are both allowed by an ICMP filter; other protocols only by a Set that
// permits all.
func (s *Set) Allows(proto ippacket.Protocol, dstPort uint16) bool {
	switch {
	case s == nil:
		return false
	case s.all:
		return true
	}
	switch proto {
	case ippacket.ProtoTCP:
		return contains(s.tcp, dstPort)
	case ippacket.ProtoUDP:
		return contains(s.udp, dstPort)
	case ippacket.ProtoICMP, ippacket.ProtoICMPv6:
		return s.icmp
	}
	return false
}

// AllowsPacket reports whether s lets pkt through, checking its protocol and,
// for TCP and UDP, its destination port. ICMP counts only in IPv4 packets and
// ICMPv6 only in IPv6 packets; a TCP or UDP packet whose ports cannot be read
// (non-first fragment, truncated header) is denied unless s permits all.
// It does not allocate.
func (s *Set) AllowsPacket(pkt ippacket.Packet) bool {
	switch {
	case s == nil:
		return false
	case s.all:
		return true
	}
	switch proto := pkt.Protocol(); proto {
	case ippacket.ProtoTCP, ippacket.ProtoUDP:
		_, dst, err := pkt.Ports()
		if err != nil {
			return false
		}
		return s.Allows(proto, dst)
	case ippacket.ProtoICMP:
		return s.icmp && pkt.Version() == 4
	case ippacket.ProtoICMPv6:
		return s.icmp && pkt.Version() == 6
	}
	return false
}

// Filters returns s as a normalised filter list (ICMP first, then TCP and UDP
// ranges in port order); an empty list for a Set that permits all, and nil for
// the nil Set. Compile(s.Filters()) allows what s allows.
func (s *Set) Filters() []portalapi.Filter {
	if s == nil {
		return nil
	}
	out := []portalapi.Filter{}
	if s.all {
		return out
	}
	if s.icmp {
		out = append(out, portalapi.Filter{Protocol: portalapi.ProtocolICMP})
	}
	for _, r := range s.tcp {
		out = append(out, portalapi.Filter{Protocol: portalapi.ProtocolTCP, PortRangeStart: r.First, PortRangeEnd: r.Last})
	}
	for _, r := range s.udp {
		out = append(out, portalapi.Filter{Protocol: portalapi.ProtocolUDP, PortRangeStart: r.First, PortRangeEnd: r.Last})
	}
	return out
}

// String formats s for logs: "all", "none", or e.g. "icmp tcp:80,443-444 udp:53".
func (s *Set) String() string {
	switch {
	case s == nil:
		return "none"
	case s.all:
		return "all"
	}
	var b strings.Builder
	if s.icmp {
		b.WriteString("icmp")
	}
	writeRanges := func(name string, rs []PortRange) {
		if len(rs) == 0 {
			return
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(name)
		b.WriteByte(':')
		for i, r := range rs {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.Itoa(int(r.First)))
			if r.Last != r.First {
				b.WriteByte('-')
				b.WriteString(strconv.Itoa(int(r.Last)))
			}
		}
	}
	writeRanges("tcp", s.tcp)
	writeRanges("udp", s.udp)
	if b.Len() == 0 {
		return "none"
	}
	return b.String()
}
