package netlab

import (
	"errors"
	"fmt"
	"net/netip"
)

// ErrPrefixNotAllowed is returned (wrapped) when a network prefix lies outside the address ranges
// reserved for snowgate's tests (see AllowedPrefixes).
var ErrPrefixNotAllowed = errors.New("netlab: prefix outside the test address ranges")

// ErrAddrExhausted is returned (wrapped) when a network has no free address left to hand out.
var ErrAddrExhausted = errors.New("netlab: no free address in prefix")

// AllowedPrefixes returns the ranges netlab accepts for its networks: 198.18.0.0/15 (benchmarking,
// used as "the internet"), the three IPv4 documentation /24s (LANs) and 2001:db8::/32 (IPv6
// documentation). 10/8, 172.16/12 and 192.168/16 are refused so that a lab can never shadow a
// real private network of the machine it runs on.
func AllowedPrefixes() []netip.Prefix {
	return []netip.Prefix{
		netip.MustParsePrefix("198.18.0.0/15"),
		netip.MustParsePrefix("192.0.2.0/24"),
		netip.MustParsePrefix("198.51.100.0/24"),
		netip.MustParsePrefix("203.0.113.0/24"),
		netip.MustParsePrefix("2001:db8::/32"),
	}
}

// ParseLabPrefix parses s as a CIDR prefix and checks that it is canonical (no host bits set), small
// enough to leave room for hosts, and inside one of AllowedPrefixes.
func ParseLabPrefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("netlab: parse prefix %q: %w", s, err)
	}
	if p.Addr().Zone() != "" || p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("netlab: prefix %q: zones and 4-in-6 addresses are not supported", s)
	}
	if p != p.Masked() {
		return netip.Prefix{}, fmt.Errorf("netlab: prefix %q has host bits set (want %s)", s, p.Masked())
	}
	if p.Addr().BitLen()-p.Bits() < 2 {
		return netip.Prefix{}, fmt.Errorf("netlab: prefix %q is too small for a network", s)
	}
	for _, a := range AllowedPrefixes() {
		if a.Addr().BitLen() == p.Addr().BitLen() && p.Bits() >= a.Bits() && a.Contains(p.Addr()) {
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("%w: %s (allowed: %v)", ErrPrefixNotAllowed, p, AllowedPrefixes())
}

// allocator hands out host addresses from one prefix: lowest free address first, never the network
// address and, for IPv4, never the broadcast address. It is not safe for concurrent use.
type allocator struct {
	prefix netip.Prefix
	used   map[netip.Addr]bool
	next   netip.Addr
}

func newAllocator(p netip.Prefix) *allocator {
	return &allocator{prefix: p, used: map[netip.Addr]bool{}, next: p.Addr().Next()}
}

// valid reports whether a may be given to a host.
func (a *allocator) valid(addr netip.Addr) bool {
	if !a.prefix.Contains(addr) || addr == a.prefix.Addr() {
		return false
	}
	if addr.Is4() && addr == lastAddr(a.prefix) {
		return false
	}
	return true
}

// reserve marks addr as taken; it fails if addr is outside the prefix, is the network or broadcast
// address, or is already taken.
func (a *allocator) reserve(addr netip.Addr) error {
	if !a.valid(addr) {
		return fmt.Errorf("netlab: address %s is not a usable host address of %s", addr, a.prefix)
	}
	if a.used[addr] {
		return fmt.Errorf("netlab: address %s is already in use in %s", addr, a.prefix)
	}
	a.used[addr] = true
	return nil
}

// take returns and reserves the lowest free address at or after the cursor.
func (a *allocator) take() (netip.Addr, error) {
	for addr := a.next; addr.IsValid() && a.prefix.Contains(addr); addr = addr.Next() {
		if a.valid(addr) && !a.used[addr] {
			a.used[addr] = true
			a.next = addr.Next()
			return addr, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%w %s", ErrAddrExhausted, a.prefix)
}

// lastAddr returns the highest address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 1 << (7 - uint(i%8))
	}
	addr, _ := netip.AddrFromSlice(b)
	return addr
}
