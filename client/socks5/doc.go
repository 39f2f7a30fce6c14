// Package socks5 is the userspace client's SOCKS5 proxy (RFC 1928). In --userspace mode the client has no
// TUN device the operating system routes into; applications reach the resources through this proxy
// instead, and the proxy's outgoing connections are made through the client's netstack
// (wireguard-go's tun/netstack), so they enter the tunnel:
//
//	tdev, tnet, _ := netstack.CreateNetTUN(tunnelIPs, sentinelIPs, 1280)
//	srv := &socks5.Server{
//		Dial: tnet.DialContext,
//		Resolve: func(ctx context.Context, host string) ([]netip.Addr, error) {
//			ss, err := tnet.LookupContextHost(ctx, host) // asks the DNS stub's sentinel, through the tunnel
//			... parse ss into netip.Addrs ...
//		},
//		ListenPacket: func(ctx context.Context, network, _ string) (net.PacketConn, error) {
//			// Bind to the tunnel address of the family: a gVisor socket bound to 0.0.0.0 or :: has no
//			// route ("no route to host"), and tun/netstack cannot open an unbound one.
//			return tnet.ListenUDPAddrPort(netip.AddrPortFrom(tunnelIPOf(network), 0))
//		},
//	}
//	ln, _ := net.Listen("tcp", "127.0.0.1:1080")
//	go srv.Serve(ctx, ln)
//	...
//	srv.Close() // closes the listeners and connections and waits for every goroutine
//
// so that `curl --socks5-hostname 127.0.0.1:1080 http://demo.snowgate.test/` resolves the name through the
// client's DNS stub (which hands out proxy IPs for DNS resources) and connects through the tunnel.
//
// # Protocol
//
// Only the "no authentication" method (0x00) is offered; a client that does not offer it gets 0xFF and the
// connection is closed. Commands:
//
//   - CONNECT to an IPv4, IPv6 or DOMAINNAME target. A domain name (or an IP literal sent as a name) is
//     resolved with Server.Resolve; the addresses are tried IPv4 first, then alternating families, at most
//     MaxAttempts, in a light Happy Eyeballs (RFC 8305): the next address starts AttemptDelay (250 ms)
//     after the previous one or as soon as it fails, the first connection wins and the others are canceled.
//     IPv4 goes first because a gateway answers a proxy IP whose resource lacks that family with an ICMPv6
//     unreachable that gVisor ignores, so an IPv6 attempt can hang until its timeout. The whole resolution
//     and dial is bounded by DialTimeout. Then both directions are relayed with half-close: EOF on one side
//     becomes a FIN (CloseWrite) on the other, an error resets both.
//   - UDP ASSOCIATE (§7): a relay socket is bound on the host address the client connected to (so a client
//     of 127.0.0.1:1080 sends to 127.0.0.1); only datagrams from the control connection's IP are accepted,
//     and only from one port: the one announced in the request, or else the first one seen. Datagrams carry
//     the SOCKS UDP header; destinations may be IPs or domain names (resolved once and cached per
//     association, at most 64 names); fragments (FRAG ≠ 0) and malformed headers are dropped. Each address
//     family gets one outgoing socket from Server.ListenPacket, opened on first use; replies go back to the
//     client with their source as the header's address. The association lives as long as the TCP control
//     connection and ends after UDPIdleTimeout (2 min) without a datagram either way.
//   - BIND and anything else: ReplyCommandNotSupported.
//
// Reply codes: failures to resolve a name are ReplyHostUnreachable (ReplyAddressTypeNotSupported when
// Resolve is nil, and for an unknown ATYP); dial errors are mapped by ReplyFor: refused →
// ReplyConnectionRefused, network unreachable → ReplyNetworkUnreachable, host unreachable →
// ReplyHostUnreachable, timeout → ReplyTTLExpired, EACCES/EPERM → ReplyNotAllowed, anything else →
// ReplyGeneralFailure. Both the host's errors and gVisor's (which gonet reports only as text) are understood
// (internal/dialerr).
//
// # Limits
//
// At most MaxConns client connections are handled at once (more are closed at once and counted in Stats);
// the negotiation, the request and the reply must each complete within HandshakeTimeout; a UDP association
// holds three sockets, three goroutines and three 64 KiB buffers.
//
// # Parsers
//
// The wire format is parsed by ParseGreeting, ParseRequest / ReadRequest, ParseReply and ParseDatagram and
// written by AppendRequest, AppendReply and AppendDatagram. Their errors wrap one of ErrTruncated,
// ErrVersion, ErrAddressType and ErrMalformed; a domain name must be 1 to 255 printable ASCII bytes without
// spaces. The fuzz targets check that whatever parses re-encodes to the same bytes (reserved bytes zeroed).
package socks5
