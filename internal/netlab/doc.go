// Package netlab is the network-namespace test bed for snowgate's end-to-end tests and benchmarks:
// an "internet" switch, hosts on it, NAT routers with LANs behind them, and ways to run processes
// and Go code on any of those nodes. It is the in-process counterpart of Firezone's docker-compose
// stack (reference/firezone.md §1), without containers.
//
// # Requirements
//
// Root (network namespaces), iproute2 (`ip`, and `tc` for impairments), nftables (`nft`) for
// routers, and kernel support for veth, bridge, nf_tables with NAT and conntrack. sch_netem is
// optional: Link.SetImpairment returns ErrNetemUnavailable without it (check Lab.NetemAvailable).
// New skips the test with a clear message when not root or when `ip` is missing; NATRouter skips
// when `nft` is missing. CI (.ci/run) runs as root and needs the Debian packages iproute2 and
// nftables.
//
// # Topology API
//
//	lab := netlab.New(t)                                   // cleanup registered with t.Cleanup
//	inet := lab.Internet()                                 // 198.18.0.0/15 + 2001:db8:ffff::/64
//	relay := lab.Host("relay1", inet, "198.18.0.101")      // on the internet, fixed IPv4, auto IPv6
//	lan := lab.NATRouter("r1", inet, netlab.NATSymmetric, "192.0.2.0/24", "2001:db8:1::/64")
//	client := lab.Host("client", lan)                      // 192.0.2.2, 2001:db8:1::2, default via r1
//	_ = lan.Router().ForwardPort("udp", 3478, client, 3478)
//	_ = lan.Router().WAN().Link.SetImpairment(netlab.Impairment{Delay: 5 * time.Millisecond, Loss: 1})
//
// Every network is a Linux bridge in some namespace (a switch's own namespace, or the router's for
// a LAN); every interface is one end of a veth pair whose other end is a port of that bridge. Nodes
// get the lowest free addresses unless given explicit ones; routers take the first address of each
// LAN prefix. Hosts behind a router get default routes through it; hosts and routers on a switch
// reach the switch's prefixes on-link and nothing else (the internet has no default route).
// Routers may be chained (a router's WAN on another router's LAN) for double NAT. A host can be
// plugged into further networks with Lab.Attach (no default route through those).
//
// Knobs for scenarios: Router.ForwardPort / ForwardPorts (port forwards), Router.SetUDPTimeout
// (let NAT mappings expire in a second instead of 30/120 s), Link.SetImpairment (netem delay,
// jitter, loss per direction), Link.SetUp (pull and re-plug a cable; default routes come back),
// Router.DroppedUnsolicited (what the firewall dropped).
//
// # NAT behaviour
//
// A router's nftables table "inet netlab" follows Firezone's scripts/router/router.nft: LAN traffic
// leaving the WAN is masqueraded — `masquerade` for NATEndpointIndependent, `masquerade random` for
// NATSymmetric — and inbound traffic is dropped unless it belongs to a LAN-initiated flow, is ICMP to
// the router itself, or matches a port forward. Unlike Firezone's compose routers, the forward
// chain is stateful too, so nothing unsolicited reaches the LAN even if someone adds a route to it.
// Linux conntrack filters by the full remote ip:port, so the endpoint-independent router is a
// port-restricted cone: a mapping made towards relay1 does not admit packets from relay2.
// Router.DroppedUnsolicited counts the dropped packets. Hairpinning (LAN to the router's own public
// address) is not set up.
//
// IPv6 is NATed exactly like IPv4 (NAT66 masquerade of the LAN's 2001:db8:… prefix to the router's
// public IPv6 address, same NAT type): this mirrors the compose routers, gives symmetric-NAT tests
// the same behaviour on both families, and means no internet host needs a route to any LAN.
//
// # Addresses
//
// Only 198.18.0.0/15 (the internet), 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 and
// 2001:db8::/32 are accepted (ParseLabPrefix); 10/8, 172.16/12 and 192.168/16 are refused. LAN
// prefixes may repeat across routers, as real home networks do. Forwarding is enabled only inside
// router namespaces (written to /proc/sys from a thread inside the namespace), never on the host;
// IPv6 DAD and router advertisements are off in every lab namespace so addresses work at once.
//
// # Names and cleanup
//
// Every namespace is named Lab.ID() + "-" + node, where the ID is "nl" plus six random hex digits,
// so parallel tests and parallel test binaries do not collide. Interface names inside the
// namespaces are fixed and short ("nleth0", "nlwan", "nllan", "nlbr0", "nlp<n>" for bridge ports);
// veth pairs are created inside the bridge's namespace with the peer placed directly in the node's
// namespace, so no interface ever appears in the host namespace. Lab.Close (run by t.Cleanup, also
// after t.Fatal) kills processes started with Run and deletes the namespaces by name, which
// destroys their interfaces.
//
// # Implementation choice
//
// Topology is built by shelling out to iproute2 (`ip -n <ns> -batch -`), `nft -f -` and `tc`
// rather than through vishvananda/netlink: the commands are exactly what one would type to debug a
// lab by hand, and a failure's error carries the command and its output. Go code runs inside a
// namespace through Namespace.Do, which uses setns(2) from golang.org/x/sys/unix.
//
// # Running code on a node
//
// Namespace.Exec runs a command and returns its output; Namespace.Run starts a long-running one
// (killed by process group when the test ends). Namespace.Do runs a Go function on a locked OS
// thread switched into the namespace. Sockets created inside Do stay in the namespace for their
// whole life, so the usual pattern is: create the socket inside Do (or with the ListenUDP,
// ListenTCP, DialTCP, DialUDP helpers), then use it from any goroutine. Goroutines started inside
// the function run on other threads, in the test process's own namespace: never create sockets
// from them, and use IP literals rather than host names.
//
// # Mirroring Firezone's docker-compose.yml
//
// StandardTopology builds the compose topology in one call (see Standard for the address plan):
//
//	compose                              netlab
//	internet network                     s.Internet (198.18.0.0/15, 2001:db8:ffff::/64)
//	portal (+ portal router, :8081 fwd)  s.Portal on the internet
//	relay-1, relay-2 (port-forwarded)    s.Relay1, s.Relay2 directly on the internet
//	client-1 + client router             s.Client behind s.RC (ClientNAT; "random" = NATSymmetric)
//	gateway + gateway router             s.Gateway behind s.RG (GatewayNAT)
//	resources network, httpbin           s.Resources switch with s.Resource (203.0.113.100);
//	                                     the gateway is attached to it as in compose
//	{EDGE,RELAY,PORTAL}_ROUTER_LATENCY   StandardOptions.{Edge,Relay,Portal}Latency (netem)
//	relay-only scenario                  ClientNAT and GatewayNAT NATSymmetric, stop relay2's server
//	download-ipv4-only                   StandardOptions.NoIPv6
//	download-packet-loss (20%)           s.RC.WAN().Link.SetImpairment(Impairment{Loss: 20})
//
// The relays sit directly on the internet rather than behind port-forwarding routers: a
// port-forwarded relay with its own public address behaves the same to clients, and a relay that
// must learn its public address differently can be put behind a router with NATRouter plus
// ForwardPort (udp/3478 and its relay port range one by one). A second client is one more
// NATRouter plus Host.
package netlab
