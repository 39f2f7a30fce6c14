package relay

import (
	"net"
	"net/netip"
)

// defaultDeniedPeers are the ranges a relay refuses as peers unless an
// --allow-peer prefix covers them: relaying there would let any TURN user
// reach the relay host itself or the networks behind it.
var defaultDeniedPeers = []string{
	"0.0.0.0/8",          // "this network", includes unspecified
	"127.0.0.0/8",        // loopback
	"169.254.0.0/16",     // link-local, includes cloud metadata 169.254.169.254
	"224.0.0.0/4",        // multicast
	"255.255.255.255/32", // limited broadcast
	"10.0.0.0/8",         // RFC 1918
	"172.16.0.0/12",      // RFC 1918
	"192.168.0.0/16",     // RFC 1918
	"100.64.0.0/10",      // CG-NAT (RFC 6598)
	"::/128",             // unspecified
	"::1/128",            // loopback
	"fe80::/10",          // link-local
	"ff00::/8",           // multicast
	"fc00::/7",           // ULA
}

// PeerPolicy decides which peer addresses a client may create permissions and
// channels to, and which destinations the relay may send datagrams to.
// Precedence, highest first:
//
//  1. an explicit deny prefix (--deny-peer) refuses;
//  2. the relay's own addresses (public and bound) are permitted as peers,
//     but datagrams to them are delivered only to ports inside the relay port
//     range (another allocation on this relay: the relay↔relay path when
//     client and gateway allocate on the same relay); anything else to an own
//     address (the TURN port, the health port, sshd …) is dropped
//     (AllowedDest), even when an allow prefix covers the address;
//  3. an explicit allow prefix (--allow-peer) permits, even inside a default-denied range;
//  4. the default-denied ranges refuse;
//  5. everything else is permitted.
//
// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
// PeerPolicy is immutable and safe for concurrent use.
type PeerPolicy struct {
	deny, allow, defaults []netip.Prefix
	own                   []netip.Addr
	low, high             uint16
}

// NewPeerPolicy builds a policy; own are the relay's own addresses (public
// and bound) and [low, high] the relay port range, the only ports of an own
// address that datagrams may go to.
func NewPeerPolicy(allow, deny []netip.Prefix, own []netip.Addr, low, high uint16) *PeerPolicy {
	p := &PeerPolicy{
		allow: normalizePrefixes(allow),
		deny:  normalizePrefixes(deny),
		low:   low,
		high:  high,
	}
	for _, s := range defaultDeniedPeers {
		p.defaults = append(p.defaults, netip.MustParsePrefix(s))
	}
	for _, a := range own {
		if a.IsValid() && !a.IsUnspecified() {
			p.own = append(p.own, a.Unmap().WithZone(""))
		}
	}
	return p
}

func normalizePrefixes(in []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(in))
	for _, p := range in {
		if !p.IsValid() {
			continue
		}
		a := p.Addr()
		bits := p.Bits()
		if a.Is4In6() && bits >= 96 {
			a, bits = a.Unmap(), bits-96
		}
		out = append(out, netip.PrefixFrom(a, bits).Masked())
	}
	return out
}

// Allowed reports whether peer may get permissions and channel bindings.
// An own address is allowed here; AllowedDest restricts its ports.
func (p *PeerPolicy) Allowed(peer netip.Addr) bool {
	if !peer.IsValid() {
		return false
	}
	peer = peer.Unmap().WithZone("")
	if containsAddr(p.deny, peer) {
		return false
	}
	if p.isOwn(peer) || containsAddr(p.allow, peer) {
		return true
	}
	return !containsAddr(p.defaults, peer)
}

// AllowedIP is Allowed for a net.IP (pion's PermissionHandler argument).
func (p *PeerPolicy) AllowedIP(ip net.IP) bool {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return false
	}
	return p.Allowed(a)
}

// OwnOutsideRange reports whether dst is one of the relay's own addresses
// with a port outside the relay port range: a destination the relay never
// sends to, whatever the permissions say.
func (p *PeerPolicy) OwnOutsideRange(dst netip.AddrPort) bool {
	if len(p.own) == 0 {
		return false
	}
	if port := dst.Port(); port >= p.low && port <= p.high {
		return false
	}
	return p.isOwn(dst.Addr().Unmap().WithZone(""))
}

// AllowedDest reports whether a datagram may be sent to dst: Allowed for its
// address and, for an own address, a port inside the relay port range.
func (p *PeerPolicy) AllowedDest(dst netip.AddrPort) bool {
	return p.Allowed(dst.Addr()) && !p.OwnOutsideRange(dst)
}

func (p *PeerPolicy) isOwn(a netip.Addr) bool {
	for _, o := range p.own {
		if o == a {
			return true
		}
	}
	return false
}

func containsAddr(prefixes []netip.Prefix, a netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
