// Package userfwd is the userspace gateway's forwarder: a wireguard-go tun.Device that needs no root, no
// kernel TUN and no kernel forwarding. Like Tailscale's userspace subnet routing, a gVisor stack terminates
// the clients' TCP, UDP and ICMP echo flows to any destination and re-originates them from ordinary host
// sockets towards the resources.
//
//	dev, err := userfwd.New(userfwd.Config{MeterProvider: mp, Logger: log})
//	// the gateway core wraps dev (its filters, DNS-resource NAT) and gives it to wireguard-go's device
//	...
//	dev.Close() // stops every goroutine, closes every host socket
//
// # Packets
//
// Write takes IP packets from the clients, already authorised, filtered and DNS-NATed by the gateway core,
// and Read returns the IP packets the device sends back (MTU 1280 by default, up to BatchSize per Read). The
// stack is built on a channel link endpoint with IPv4 and IPv6, no addresses of its own, promiscuous mode
// (it accepts packets to any destination) and spoofing (it answers from that destination), in the way
// wireguard-go's tun/netstack and client/dns/tcpdns build theirs. Write answers two cases before the stack:
//
//   - A packet to the gateway host's own loopback or unspecified addresses (127.0.0.0/8, ::1, 0.0.0.0, ::
//     and their IPv4-mapped forms) is answered with an ICMP "administratively prohibited" (type 3 code 13,
//     ICMPv6 type 1 code 1) and counted as FailProhibited, unless Config.AllowLoopback. Other addresses of
//     the gateway host are ordinary destinations: the gateway core's filters decide what a client reaches.
//   - An ICMP or ICMPv6 echo request is sent from the host (see ICMP below).
//
// Malformed packets are dropped and counted (Stats.Malformed); they never fail a Write.
//
// # TCP
//
// A tcp.Forwarder receives each new SYN. The device dials the destination from the host (Config.Dial,
// default net.Dialer, bounded by Config.DialTimeout, 10 s) before it answers the client:
//
//   - connected: the client's handshake completes (SYN-ACK) and the two connections are spliced both ways;
//     a direction that ends with EOF half-closes the other side (FIN), an error aborts both (RST both ways);
//     stack-side keepalive is on, so a vanished client does not hold the flow forever;
//   - refused (ECONNREFUSED): the client gets a RST, i.e. "connection refused";
//   - network unreachable (ENETUNREACH): an ICMP network unreachable (type 3 code 0; ICMPv6 type 1 code 0);
//   - anything else — host unreachable, timeout, other errors: an ICMP host unreachable (type 3 code 1;
//     ICMPv6 type 1 code 3, address unreachable) quoting the client's SYN, so a kernel client's connect fails
//     at once with EHOSTUNREACH instead of retransmitting for two minutes. A gVisor client (another
//     netstack) ignores ICMPv6 codes other than 0 and 4, so over IPv6 it waits for its own timeout.
//
// While a dial is in progress the client's retransmitted SYNs are ignored; at most Config.MaxPendingTCP
// dials run at once (further SYNs are dropped and the client retransmits them).
//
// # UDP
//
// A udp.Forwarder receives the first datagram of each (client address, destination) pair. The flow gets a
// connected endpoint in the stack and a connected host socket (Config.Dial with "udp4"/"udp6"); datagrams
// are copied both ways, the replies leave the stack from the destination's address and port to the client's.
// A flow ends after Config.UDPIdleTimeout (2 min, the NAT table's UDP TTL) without a datagram either way. When
// the host socket reports ECONNREFUSED (the destination answered with an ICMP port unreachable) the client
// gets an ICMP port unreachable and the flow stays up.
//
// # ICMP
//
// Echo requests are not given to the stack. Each (client address, destination, identifier) is a flow with
// its own host ICMP socket connected to the destination, ended after Config.ICMPIdleTimeout without a request
// or a reply. Config.ICMP chooses the socket (ICMPAuto decides in New, per family):
//
//   - an unprivileged "ping" socket (SOCK_DGRAM, IPPROTO_ICMP/ICMPV6) when net.ipv4.ping_group_range
//     includes the process's group; the kernel picks the identifier and filters replies by it;
//   - else a raw ICMP socket when the process may open one (root or CAP_NET_RAW); the device picks a random
//     identifier per flow, unique per destination, and keeps the replies that carry it;
//   - else none: every echo request is answered with an ICMP host unreachable and counted as
//     FailUnavailable.
//
// Replies are rebuilt towards the client from the destination, with the client's identifier and sequence
// number and the reply's data. Fragmented echo requests are dropped. ICMP errors the host receives about
// echo requests are not relayed.
//
// # Resources
//
// At most Config.MaxFlows flows (all protocols) live at once (a TCP SYN over the limit gets a RST, a UDP
// datagram or echo request is dropped). Each TCP flow's stack buffers auto-tune up to Config.TCPBufferSize
// (1 MiB) per direction plus two 64 KiB copy buffers; each UDP flow has two 64 KiB read buffers; each echo
// flow one MTU-sized buffer. At most Config.QueueLen packets wait for Read (then the stack's packets are
// dropped, and TCP retransmits). Close cancels the dials in progress, closes every host socket and stack
// connection, stops the stack and waits for every goroutine, including those the tcp.Forwarder starts.
//
// # Metrics
//
// With Config.MeterProvider: snowgate.gateway.userfwd.flows.opened{protocol},
// snowgate.gateway.userfwd.flows.failed{protocol,reason} (reasons: see FailReason),
// snowgate.gateway.userfwd.flows.active{protocol} and snowgate.gateway.userfwd.packets.dropped{reason}
// (malformed, queue). Stats returns the same counters.
package userfwd
