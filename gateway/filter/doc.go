// Package filter decides whether a packet from a client may reach a resource:
// the per-resource traffic filters of the portal, compiled, and a routing table
// from destination addresses to the resource (and the filters) that cover them.
//
// The client checks packets with it before sending them to a gateway, and the
// gateway checks every packet that arrives from a client, so that both agree
// (Firezone's filter_engine.rs and client_on_gateway.rs).
//
// # Filters
//
// [Compile] turns a resource's []portalapi.Filter into a [Set]: overlapping
// and adjacent TCP and UDP port ranges are merged per protocol, and an ICMP
// filter covers ICMP and ICMPv6. The semantics are Firezone's:
//
//   - an empty filter list permits everything, any protocol included;
//   - a TCP or UDP packet is allowed when its destination port lies in a range
//     of that protocol;
//   - an ICMP filter allows every ICMP (IPv4) and ICMPv6 (IPv6) message, echo
//     or not, errors included (Firezone: "we don't care about the specific
//     ICMP type");
//   - any other protocol (SCTP, GRE, ESP, ...) is denied by a non-empty list,
//     because no filter can name it (Firezone answers "unsupported protocol",
//     which is a denial);
//   - a TCP or UDP packet whose ports cannot be read (a non-first fragment, a
//     truncated header) is denied by a non-empty list; an ICMP fragment is
//     allowed when ICMP is.
//
// Firezone's gateway drops ICMP errors that a client sends before it looks at
// the filters, and lets ICMP errors towards the client through whatever the
// filters say; both are the caller's business (see [ippacket.Packet.IsICMPError]).
//
// # Table
//
// A [Table] maps destinations to resources:
//
//   - CIDR resources ([KindCIDR]) by longest-prefix match over IPv4 and IPv6.
//     Where CIDR resources overlap, the most specific one names the resource,
//     and its filters are the union of the filters of every CIDR or Internet
//     resource whose prefix contains it (Firezone's recalculate_cidr_filters:
//     a packet allowed by any resource that covers it passes; an empty list
//     among them permits all).
//   - DNS resources ([KindDNS]) by exact proxy IP, with their own filters only:
//     the client addresses a DNS resource through proxy IPs, so the check is on
//     the destination before the gateway's NAT (Firezone's
//     recalculate_dns_filters). A proxy IP beats a CIDR prefix that contains it.
//   - The Internet resource ([KindInternet]) covers 0.0.0.0/0 and ::/0, with
//     the lowest priority, permits everything (Firezone's Internet resource has
//     no filters) and, like Firezone's, does not cover the prefixes given as
//     [Options.InternetExcludes] (the DNS proxy ranges): a proxy IP the table
//     does not know is no resource even with the Internet resource present.
//
// [Table.SetResource] feeds a portalapi.Resource (with the proxy IPs of a DNS
// resource) to [Table.Set]. [Table.Check] and [Table.Allow] turn a packet into a [Verdict]: allowed,
// denied by a filter (answer with [ippacket.BuildICMPProhibited]) or no
// resource (drop). They do not allocate; [Table.Set] and [Table.Remove]
// rebuild the lookup structures and may.
//
// Neither type is safe for concurrent mutation; a Table may be read by many
// goroutines while nobody changes it.
package filter
