// Package ippacket parses, rewrites and builds IPv4 and IPv6 packets in place,
// without allocating.
//
// A [Packet] is a view over a caller's []byte: [Parse] validates the IP header
// (and, for IPv6, walks the common extension headers to the upper-layer
// protocol) and records offsets; accessors read addresses, ports, ICMP type,
// code and echo identifier straight from the bytes. The setters
// ([Packet.SetSrc], [Packet.SetDst], [Packet.SetSrcPort], [Packet.SetDstPort],
// [Packet.SetEchoID]) write the new value into the same bytes and update every
// checksum that covers it incrementally (RFC 1624): the IPv4 header checksum,
// the TCP, UDP and ICMPv6 checksums through their pseudo-header, and the ICMP
// checksum for echo identifiers.
//
// ICMP and ICMPv6 error messages quote the packet that caused them.
// [Packet.Quoted] returns that quoted packet as a partial [Packet] (quoted
// packets are usually truncated, see [Packet.IsPartial]); rewriting it also
// fixes the outer ICMP checksum, which is what a NAT needs when it translates
// an error on its way back.
//
// [BuildUDP] writes a complete UDP packet (used to answer intercepted DNS
// queries over the TUN device) and [BuildICMPProhibited] an "administratively
// prohibited" destination-unreachable reply to a given packet.
//
// Fragments are reported ([Packet.IsFragment], [Packet.FragmentOffset]) but
// not reassembled: upper-layer accessors work on a first fragment and return
// [ErrFragment] on the others, and address rewrites of a non-first fragment
// touch the IP header only.
package ippacket
