// Package tunnel holds what the client and the gateway daemons share: the contract of their sans-IO cores
// ([Core], [Action], [Verdict]), the [Driver] that runs a core (its event loop, the node and portal glue,
// the TUN wrapper's filter), merging the portal's per-family relay objects ([MergeRelays]), the portal
// session glue ([Portal]) and the local status socket.
//
// # Cores
//
// A core is a plain struct, like Firezone's ClientState and GatewayState: portal messages, node events,
// packets from the TUN device (HandleTunInput) and packets the node decrypted from the network
// (HandleNetworkInput) go in with the current time; packets, portal pushes, node calls and the next deadline
// come out ([Core.PollAction], [Core.PollTimeout]). A core never blocks, never starts a goroutine, never
// reads a clock and calls nothing outside itself, so tests drive it deterministically.
//
// The two packet entry points return a [Verdict] for the packet at hand: Pass lets it go on its way
// (possibly rewritten in place: the gateway's DNS-resource NAT), Stop takes it out of the stream (dropped
// and counted, answered locally, or copied into a buffer until its flow is up). Everything else a packet
// causes (a create_flow, a local answer, an ICMP error) is an Action.
//
// # Driver
//
// The [Driver] owns one core behind a mutex and carries its actions out on one goroutine, in the order the
// core emitted them, always outside the core's lock: node calls such as RemoveConnection wait for
// wireguard-go's goroutines, which may themselves be waiting in the TUN wrapper for that lock. The data path
// takes the lock once per batch (wireguard-go reads and writes up to 128 packets at a time). Whatever
// happens on another goroutine (a DNS answer, a resolved name, a netlink event) enters the core through
// [Driver.Do].
//
// # Connection reports
//
// The driver wraps every core so that both daemons report their connections' paths to the portal
// (report_connections) from one place: a push when a connection is created, established, fails, loses its
// relay or is removed, at most every few seconds while traffic changes its figures, the whole picture again
// after every join of the portal channel, and nothing while the portal is away or the daemon is idle. See
// report.go and [DriverConfig.ReportInterval].
//
// The seed's relay-loss recovery lives here once for both daemons: a core that is told a connection could
// not be created for lack of relays (node.ErrNoRelays), or that the node lost its last relay
// (node.EventNoRelays), asks for [PortalReconnect]; the portal's next init carries fresh relays.
package tunnel
