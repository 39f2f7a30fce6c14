package core

import (
	"net/netip"

	"github.com/snowgate/snowgate/client/dns"
)

// The client's own actions (besides tunnel's common ones). The driver carries them out with its
// tunnel.DriverConfig.Exec, in the order the core emitted them.

// SetDNS points the system's resolver at the stub resolver: Servers are the sentinel addresses (port 53,
// one per upstream, see dns.Resolver.Sentinels), SearchDomain the portal's search domain (empty: none). The
// driver also listens for DNS over TCP on each sentinel (its tcpdns stack). Servers is empty while the core
// has no upstream resolver: the driver then restores the system's own configuration.
type SetDNS struct {
	Servers      []netip.Addr
	SearchDomain string
}

// Kind returns "set_dns".
func (SetDNS) Kind() string { return "set_dns" }

// SetRoutes replaces the routes through the TUN device. Routes are every CIDR resource's prefix, the DNS
// proxy ranges, the sentinel ranges and, while the Internet resource is present, 0.0.0.0/0 and ::/0.
// Excludes are prefixes that must keep using the physical network even then: the relays' addresses (/32,
// /128) while the Internet resource is present; the driver adds the portal's own address. Both are sorted
// and free of duplicates.
type SetRoutes struct {
	Routes   []netip.Prefix
	Excludes []netip.Prefix
}

// Kind returns "set_routes".
func (SetRoutes) Kind() string { return "set_routes" }

// DNSForward asks the driver to send a query to an upstream resolver (see dns.Forward: UDP or TCP,
// ThroughTunnel when the upstream lies inside a CIDR resource, i.e. dialled through the TUN device so that
// its packets come back to the core as ordinary resource traffic). The driver reports the outcome with
// Client.HandleDNSResponse(Forward.ID, …).
type DNSForward struct {
	Forward dns.Forward
}

// Kind returns "dns_forward".
func (DNSForward) Kind() string { return "dns_forward" }

// DNSCancel tells the driver to abandon the upstream exchanges of these forwards (close their sockets,
// forget their pending UDP queries): nobody waits for their answers any more (the application closed its
// TCP connection, or the client roamed).
type DNSCancel struct {
	IDs []dns.ForwardID
}

// Kind returns "dns_cancel".
func (DNSCancel) Kind() string { return "dns_cancel" }

// DNSRoam tells the driver that the network changed: it resets its upstream DNS sockets, so that later
// queries go out from new sockets with new local ports.
type DNSRoam struct{}

// Kind returns "dns_roam".
func (DNSRoam) Kind() string { return "dns_roam" }

// DNSTCPPacket hands the driver's DNS-over-TCP stack (client/dns/tcpdns) a TCP packet an application sent
// to a sentinel's port 53. Packet is the core's own copy. The stack answers the handshake itself; the driver
// reports accepted connections, their queries and their end with Client.HandleDNSTCPAccept,
// HandleDNSTCPQuery and HandleDNSTCPClose.
type DNSTCPPacket struct {
	Packet []byte
}

// Kind returns "dns_tcp_packet".
func (DNSTCPPacket) Kind() string { return "dns_tcp_packet" }

// DNSTCPReply is a DNS answer (without the two-byte length prefix) to write on the application's
// DNS-over-TCP connection Handle.
type DNSTCPReply struct {
	Handle  uint64
	Payload []byte
}

// Kind returns "dns_tcp_reply".
func (DNSTCPReply) Kind() string { return "dns_tcp_reply" }
