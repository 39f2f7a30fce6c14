//go:build linux

package tundev

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ipNet converts a prefix to the net.IPNet netlink wants (4-byte IP for IPv4).
func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// prefixOf converts a net.IPNet to a masked-or-not prefix (an address's own prefix length kept).
func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	addr, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	addr = addr.Unmap()
	ones, bits := n.Mask.Size()
	if bits != addr.BitLen() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(addr, ones), true
}

// familyOf returns unix.AF_INET or unix.AF_INET6.
func familyOf(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// routePrefix returns a route's destination; a route without Dst is its family's default route.
func routePrefix(r *netlink.Route) (netip.Prefix, bool) {
	if r.Dst == nil {
		switch r.Family {
		case unix.AF_INET:
			return netip.PrefixFrom(netip.IPv4Unspecified(), 0), true
		case unix.AF_INET6:
			return netip.PrefixFrom(netip.IPv6Unspecified(), 0), true
		}
		return netip.Prefix{}, false
	}
	p, ok := prefixOf(r.Dst)
	if !ok {
		return netip.Prefix{}, false
	}
	return p.Masked(), true
}

// isDefaultRoute reports whether r is a default route (0.0.0.0/0 or ::/0).
func isDefaultRoute(r *netlink.Route) bool {
	p, ok := routePrefix(r)
	return ok && p.Bits() == 0
}

// tableRoutes lists the routes of one routing table, IPv4 and IPv6.
func tableRoutes(h *netlink.Handle, table int) ([]netlink.Route, error) {
	routes, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
	if errors.Is(err, netlink.ErrDumpInterrupted) {
		// The table changed during the dump; one retry gives a consistent view in practice.
		routes, err = h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
	}
	return routes, err
}

// ourRoutes lists the routes of both tables of cfg (Table and the Internet table).
func ourRoutes(h *netlink.Handle, cfg Config) ([]netlink.Route, error) {
	var out []netlink.Route
	for _, table := range []int{cfg.Table, internetTable(cfg)} {
		routes, err := tableRoutes(h, table)
		if err != nil {
			return nil, fmt.Errorf("tundev: list routes of table %d: %w", table, err)
		}
		out = append(out, routes...)
	}
	return out, nil
}

// isNotFound reports the errors netlink returns for deleting something that is not there.
func isNotFound(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.EADDRNOTAVAIL) || errors.Is(err, unix.ENODEV)
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

func sortedPrefixes(set map[netip.Prefix]bool) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	slices.SortFunc(out, comparePrefix)
	return out
}
