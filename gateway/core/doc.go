// Package core is the gateway's sans-IO core: [Gateway] implements tunnel.Core, like Firezone's
// GatewayState. Portal messages, node events and the packets crossing the gateway go in with the current
// time; node calls, portal pushes, packets for the tunnel and name resolutions ([ResolveName]) come out as
// actions, carried out in order by a tunnel.Driver (ResolveName by the daemon's DriverConfig.Exec, which
// hands the result back with [Gateway.HandleResolved] through Driver.Do).
//
// # Portal
//
// init gives the gateway its tunnel addresses (its IPv6 is the source of its control packets) and relays
// (tunnel.NodeRelays: all are added, none removed, as in Firezone's connlib: a restarted portal names only
// the relays registered again so far; relays_presence removes relays). A repeated init, after a portal
// reconnect, keeps every client and flow: existing connections keep working across portal outages.
//
// authorize_flow upserts the client's connection (tunnel.NodeUpsert with the gateway's credentials as
// Local, the client's as Remote, RoleControlled, AllowedIPs the client's tunnel /32 and /128) and
// authorises the resource until expires_at. The same flow twice emits the same, idempotent upsert and
// answers again. A client whose key or tunnel addresses changed (it roamed) loses its old state (NAT,
// control protocol, authorisations) and is rebuilt.
//
// flow_authorized (and the old protocol's connection_ready) travels in the upsert's Then: the driver pushes
// it only once the connection exists. A failed upsert skips it and drops the client's state, so a flow
// whose connection could not be created is never answered; with node.ErrNoRelays (or the node's EventNoRelays) the core
// also asks for tunnel.PortalReconnect, once until the next init, whose relays repair the node (the seed's
// relay-loss recovery: otherwise only a restart would).
//
// reject_access and an authorisation's expiry (a min-heap of expiries behind PollTimeout; the data path
// also checks it, so a late timer changes nothing) cut access at once: the resource leaves the client's
// filter table, the NAT of its domains goes (and is forgotten by the control protocol), and a client left
// with no resource is removed: it is told Goodbye at once, and its connection goes (NodeRemove) 5 s later,
// once wireguard-go has sent the Goodbye (removing the peer at once dropped it), unless the client is
// authorised again meanwhile. resource_updated applies a resource's
// new filters and address to every client authorised for it; a DNS resource's domains outside its new
// pattern lose their NAT. ICE candidates are passed to the node (NodeAddCandidate, NodeRemoveCandidate),
// and the node's candidates are broadcast to their client, held while the portal is away.
//
// The old, non-idempotent protocol stays supported: request_connection replaces the client's connection
// and state, with ICE credentials the gateway makes up (Config.Rand), and is answered connection_ready;
// allow_access authorises a resource for a client that has a connection. The domain either carries is set
// up as an AssignedIPs would be, without an answer.
//
// # Data path
//
// [Gateway.HandleNetworkInput] takes a client's packet after wireguard-go decrypted it and checked its
// source against the client's AllowedIPs. Control-protocol packets (p2pcontrol) must come from a known
// client's tunnel IPv6 to the gateway's. Other packets must come from a known client's tunnel address;
// the client's own filter table (gateway/filter: its authorised CIDR, DNS (by the proxy IPs it set up) and
// Internet resources) decides on the destination before NAT (seed #6806), then the DNS-resource NAT
// (gateway/nat) rewrites packets to proxy IPs in place and the packet goes on to the TUN device (Pass).
// A packet a filter denies is answered ICMP administratively prohibited (SendToTunnel); one for no
// resource is dropped. [Gateway.HandleTunInput] takes a resource's packet towards a client: the NAT
// restores the proxy IP of its replies, and anything but an ICMP error must come from a resource the
// client is authorised for (Firezone's check of replies). The gateway's own tunnel addresses are no
// resource: a client cannot reach services of the gateway host through the tunnel (Firezone lets it).
//
// # DNS-resource NAT
//
// A client's AssignedIPs (through p2pcontrol's Gateway, which makes set-ups idempotent) for a DNS resource
// it is authorised for, with a name inside the resource's address pattern (wildcards included, so a new
// name needs no portal round trip), becomes a [ResolveName]. [Gateway.HandleResolved] configures the NAT
// (a family with no address leaves its proxy IPs answering ICMP unreachable), lets the resource's filters
// cover the proxy IPs and answers DomainStatus Active; anything else (not authorised, resolution failure)
// is answered Inactive at once. A later AssignedIPs with a higher seq re-resolves.
//
// # Metrics
//
// Meter "github.com/snowgate/snowgate/gateway/core":
//   - snowgate.gateway.packets.dropped{reason}: dropped packets (those answered with ICMP unreachable
//     included): malformed, spoofed_source, icmp_error, peer_destination, unauthorized_destination,
//     internet_excluded, nat_unreachable, nat_drop, not_initialized, control_source, control_destination,
//     control_malformed, control_unknown (from clients); unknown_client, unauthorized_source,
//     control_from_tun, nat_expired (towards clients);
//   - snowgate.gateway.packets.filtered: packets denied by a filter (answered ICMP prohibited; not in
//     dropped);
//   - snowgate.gateway.packets.forwarded{direction=to_resource|to_client};
//   - snowgate.gateway.nat.assignments{result=active|unauthorized|resolve_failed|nat_failed|too_many_domains};
//   - gauges snowgate.gateway.clients, snowgate.gateway.authorizations, snowgate.gateway.nat.translations.
//
// The NAT table adds its own (snowgate.gateway.nat.packets.dropped, .sessions, .sessions.created).
package core
