// Package tunnelsim holds the whole-tunnel scenario test (issue 14): a rapid state machine that runs the
// real client daemon core and the real gateway cores, each under internal/tunnel's RunDaemon (driver, TUN
// wrapper, phoenix client, node), over real node.Node instances on a pion vnet internet with NATs
// (node/nodetest's World), TURN relays and the mock portal, all inside one testing/synctest bubble, so
// every timer (ICE, WireGuard, heartbeats, flow timeouts, relay refreshes) runs on simulated time.
//
// The package has no non-test code. What runs for real, and what stands in:
//
//   - Client and gateways: clcore.Client and gwcore.Gateway under tunnel.RunDaemon, exactly as the
//     daemons wire them, except for the operating system: the TUN devices are in-memory (tuntest), the
//     client's routes and DNS settings are recorded, and the resources behind the gateways are a fake
//     network that answers ICMP echo, UDP and TCP SYNs (with a SYN-ACK), and DNS queries on the upstream
//     resolver inside a CIDR resource.
//   - DNS (dns_test.go): applications query the client's sentinels; the stub resolver answers resource
//     names itself (proxy IPs) and forwards other names as the client's driver would: an upstream inside a
//     resource the client may reach through the TUN device and the tunnel (the real path, answered by the
//     resource network), the internet upstream in place (a fake resolver), a private upstream the client
//     may not reach nowhere. The gateways resolve DNS-resource names with a fixed table of the resource
//     network's hosts instead of the host's resolver.
//   - Portal: a real portalmock.Server (its core, authentication, presence, flows, signalling, admin
//     changes), reached through portalmock's in-memory sessions (Server.DialMemory) by the real
//     internal/phoenix client (phoenix.ClientConfig.Transport): only the WebSocket is left out.
//   - Relays: pion/turn servers on the vnet (nodetest's relays), checking credentials with the relay
//     package's Authenticator (Firezone scheme, a fresh stamp secret per boot) and peers with its
//     PeerPolicy, and registered with the portal over the phoenix client like snowgate-relay. The relay
//     package's own data path cannot run here: it owns kernel sockets (epoll, recvmmsg, GSO on Linux;
//     net.ListenConfig on the portable path) and has no way to take a vnet; what it adds over pion's server
//     (the channel fast path, quotas, draining) is covered by its own tests.
//   - Roaming: the client core's HandleRoam, which resets the node (new key, new sockets, so new NAT
//     mappings); the host keeps its LAN address (vnet cannot move a host to another router).
package tunnelsim
