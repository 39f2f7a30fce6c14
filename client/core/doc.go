// Package core is the client's sans-IO core, Firezone's ClientState in Go: a [Client] implements
// tunnel.Core, so the tunnel.Driver runs it behind the TUN wrapper, and everything it decides comes out as
// actions — tunnel's common ones (portal pushes, node calls, packets to the tunnel or the TUN device) and
// the client's own ([tunnel.SetInterface], [SetDNS], [SetRoutes], [DNSForward], [DNSCancel], [DNSRoam],
// [DNSTCPPacket], [DNSTCPReply]), which the driver's Exec carries out.
//
// # Portal
//
// init sets the tunnel addresses ([tunnel.SetInterface]), the stub resolver (client/dns, with the portal's
// upstreams, else Config.SystemResolvers; its sentinels go out as [SetDNS]), the resources and the relays
// (tunnel.MergeRelays → tunnel.NodeRelays). A repeated init (portal reconnect) keeps connections, flows and
// proxy IPs of the resources still present, and adds relays without removing any (Firezone's connlib: a
// restarted portal names only the relays registered again so far; relays_presence removes relays). resource_created_or_updated and resource_deleted apply at
// once: routing is recomputed (overlapping CIDRs: the most specific prefix wins), DNS resources are given
// to the resolver (proxy IPs already handed out never change), and nothing is routed to a removed resource
// from the next packet on (its gateway's AllowedIPs shrink). A change of a resource's address, type, IP
// stack or sites drops its flow (as Firezone); a change of name or filters applies in place. A gateway
// left with no resource keeps its connection until it fails or the client roams (its AllowedIPs are then
// just its tunnel addresses). config_changed applies a new interface; relays_presence goes to the node.
//
// [SetRoutes] carries every CIDR prefix, the proxy ranges, the sentinel ranges and, with the Internet
// resource, 0.0.0.0/0 and ::/0 plus the relays' addresses as excludes.
//
// # Flows
//
// Routing: a proxy IP of a name routes to the name's DNS resource (its own filters, a gateway/filter Set);
// anything else goes through gateway/filter's Table: CIDR prefixes by longest prefix (filters: the union of
// the resources containing the prefix), the Internet resource below everything; the proxy, sentinel and
// tunnel ranges are never the Internet's. (Proxy IPs are kept out of the Table because a Table change
// rebuilds it whole: a thousand names cost 25 ms per new name that way.) A packet from the TUN device goes:
//
//   - to a sentinel (port 53): DNS, see below;
//   - from an address that is not ours: dropped;
//   - to a gateway's tunnel address: to that gateway, if connected;
//   - to no resource: dropped (counted);
//   - denied by the resource's filters: answered with ICMP administratively prohibited, never sent;
//   - to a resource without flow: buffered (up to Config.MaxFlowPackets, the oldest dropped beyond) and
//     create_flow pushed — one per resource, resent every FlowRetryInterval while the packets wait and
//     the portal is joined; after FlowTimeout without flow_created the packets are answered with ICMP
//     unreachable (host unreachable; administratively prohibited when the portal says forbidden);
//   - to a resource whose gateway is still connecting: buffered until the node reports the connection
//     established, then sent in order (SendToTunnel);
//   - to a proxy IP whose name the gateway has not confirmed: held (up to MaxNATPackets) while the
//     control protocol (internal/p2pcontrol) tells the gateway the name's proxy IPs, released on
//     DomainStatus Active, answered ICMP unreachable on Inactive or when the client gives up;
//   - otherwise: passed to wireguard-go, whose AllowedIPs route it to the right gateway.
//
// flow_created upserts the gateway connection (node.RoleControlling, the client's ICE credentials as Local)
// with AllowedIPs = everything routed to the gateway: the CIDR prefixes of its resources, the proxy IPs of
// the names of its DNS resources, 0.0.0.0/0 and ::/0 for the Internet resource, its tunnel addresses. Each
// destination belongs to one gateway only (wireguard-go would move a prefix to the last peer given it):
// of two resources with the same prefix only the routing table's owner (lowest id) contributes it.
//
// # Faults
//
//   - Connection failed (node event, or ConnectTimeout): the gateway's state is dropped (NodeRemove), its
//     waiting packets answered unreachable; the next packet creates the flow again.
//   - Goodbye from the gateway (control protocol): the same, but the waiting packets are routed again, so
//     new flows are requested at once (the portal picks the site's other gateway).
//   - No relays (NodeUpsert failing with node.ErrNoRelays, or node.EventNoRelays): the portal is
//     reconnected (at most once per ReconnectInterval) for fresh relays; the flows of the failed
//     connection keep their packets and are requested again once the portal is back (within FlowTimeout
//     of their first packet, else answered unreachable).
//   - Portal away: connections, flows and DNS for known names keep working; create_flow and ICE candidates
//     wait for the portal (candidates are held and flushed on rejoin).
//   - Roaming ([Client.HandleRoam]): NodeReset (new key; the driver reconnects the portal with it), the
//     resolver's exchanges abandoned ([DNSCancel], [DNSRoam]), control-protocol state cleared, every
//     gateway forgotten, routes sent again. Waiting packets wait on for new flows, requested with the new
//     key once the portal is back; a flow_created for a create_flow sent before the roam is ignored.
//
// # DNS
//
// The core owns a *dns.Resolver. UDP queries to a sentinel's port 53 are answered from it: local answers
// are written to the TUN device as UDP packets from the sentinel; forwards become [DNSForward] actions,
// whose outcome the driver reports with [Client.HandleDNSResponse]; asynchronous replies go back the way
// the query came (a UDP packet, or a [DNSTCPReply]). TCP packets to a sentinel's port 53 go to the driver's
// DNS-over-TCP stack ([DNSTCPPacket]); it reports connections and their queries with
// [Client.HandleDNSTCPAccept], [Client.HandleDNSTCPQuery] and [Client.HandleDNSTCPClose]. An upstream
// inside a CIDR resource is dialled by the driver through the TUN device (dns.Forward.ThroughTunnel): its
// packets come back here as ordinary traffic to that resource, and its answers through HandleNetworkInput.
// Names the resolver assigns proxy IPs to are routed at once, before the answer reaches the application.
//
// When the upstreams change, client/dns offers no way to change them on a live Resolver, so the core
// builds a new one and replays the known names into it in their original order (allocation is sequential,
// so every name keeps its proxy IPs; the core checks it). Forward IDs carry the resolver's generation so
// that an answer for the old resolver's forward is dropped.
//
// # Observability
//
// [Client.Status] is a JSON-friendly snapshot. Metrics (Config.MeterProvider): snowgate.client.flows by
// outcome, snowgate.client.packets.buffered by kind, snowgate.client.packets.dropped by reason,
// snowgate.client.icmp.sent by type, snowgate.client.packets.tunneled; the resolver's own DNS metrics.
//
// # Known window
//
// The driver carries actions out after the core's lock is released, while the TUN wrapper keeps handing it
// packets: a packet passed right after a resource change can reach wireguard-go before the NodeAllowedIPs
// that follows the change (it is then routed by the previous AllowedIPs, or dropped by wireguard-go), and a
// packet passed right after a flow came up may overtake the buffered ones injected with SendToTunnel.
package core
