// Package relay is snowgate's TURN relay server: pion/turn v5 configured with
// the portal's credential scheme (or coturn's TURN REST scheme), a peer policy
// that keeps relayed traffic away from the relay's own networks, SO_REUSEPORT
// listener sockets on every core, allocation quotas, portal registration over
// the Phoenix channel, a drain on shutdown, and cheap counters exported
// through OpenTelemetry. Its fast data path is Linux's (epoll,
// recvmmsg/sendmmsg, UDP GSO), like the relay fleet it is meant for; other
// Unix systems build a portable path (datapath.go) so that the dev stack and
// the tests that embed a relay run there too.
//
// Data path: pion handles requests and the rules, the relay moves the bytes.
// Every socket (listener and relay) is a raw non-blocking UDP socket owned by
// one worker (worker.go): one per listener socket of a family, each reading
// its sockets from its own epoll set with recvmmsg batches. Channel data of
// bound channels is relayed right there (fastPath), in both directions, and
// bursts to one destination leave as one UDP GSO send (sendBatch); all other
// datagrams (STUN requests, Send/Data indications, unbound channels) go to
// pion's read loops through bounded inboxes, and pion's sends go straight to
// the sockets. Drops inside the relay (oversized, backlog, send failures)
// count in relay.datagrams.dropped.
//
// Kernel path (Linux; package kernelpath): in front of all that, an XDP
// program on the relay's interfaces relays the channel data of bound
// channels inside the kernel, in both directions and across address
// families, and counts it per channel. The server installs each channel
// pion binds (after the same checks as the fast path) and removes it when
// pion deletes it; what the program cannot handle it passes to the stack,
// and the paths above take it. --no-kernel-path turns it off; where it
// cannot attach (not Linux, no BPF capability, loopback only) the relay
// runs without it (one WARN; INFO for loopback). Its counters are part of
// relay.relayed.* and also reported as relay.kernel.*.
//
// Embedding (dev stack, tests): relay.New(cfg) validates the config and draws
// the per-boot stamp secret (StampSecret); Start binds the sockets (Addr,
// Addr6 report them; ListenPort -1 picks an ephemeral port; with no listen
// address it binds the public address if the host has it, else all) in the
// network namespace of the thread that calls it — allocations' sockets
// too, so a test bed can start relays inside netlab namespaces; Run(ctx) also
// registers with the portal when cfg.Portal is set and serves until ctx ends,
// then drains and closes. Loopback peers are refused by default; tests allow
// them with AllowPeers (e.g. 127.0.0.0/8 and ::1/128).
//
// Behaviour worth knowing:
//   - Binding requests are answered without authentication; every other
//     request needs long-term credentials in realm "firezone" (or Realm).
//   - Peer policy precedence: --deny-peer > the relay's own addresses
//     (allowed, port-restricted, below) > --allow-peer > default-denied
//     ranges (loopback, unspecified, link-local incl. 169.254.169.254,
//     multicast, broadcast, RFC 1918, CG-NAT, ULA) > allowed. Refusals
//     answer 403 to CreatePermission and ChannelBind and count in
//     relay.peers.refused.
//   - Same-relay paths: the relay's own addresses (public and bound) are
//     allowed as peers, so a client and a gateway that both allocate here
//     can use their relay↔relay candidate pair (as on Firezone's relay). But
//     datagrams to an own address are delivered only when the destination
//     port is inside the relay port range [LowestPort, HighestPort], i.e. to
//     another allocation; anything else to an own address (the TURN port,
//     the health port, any other local service) is dropped and counted in
//     relay.peers.refused, in every send path (pion's Send indications and
//     ChannelData through the relay socket's WriteTo; the fast path never
//     takes such a channel), even if --allow-peer covers the address. The
//     datagram goes through the kernel (relay socket to relay socket), so the
//     public address must be local to the host or hairpinned by its NAT.
//   - Channel data of bound channels is forwarded by the relay itself (see
//     fastPath); everything else is pion's. Datagrams longer than 2048 bytes
//     (1600 on pion's paths) are dropped, not truncated.
//   - Known deviation (pion/turn v5.1.3, internal/server/util.go
//     allocationLifeTime, used by Allocate and Refresh): the granted lifetime
//     is the requested LIFETIME if it is below one hour
//     (maximumAllocationLifetime, a constant), else Config.AllocationLifetime
//     (default 600 s); no LIFETIME also gets Config.AllocationLifetime.
//     RFC 8656 §7.2/§7.3 grant max(default, min(requested, maximum)). So a
//     request of 3600 s or more gets 600 s instead of 3600 s, and a request
//     below 600 s (e.g. 60 s) gets what it asked for instead of 600 s. The
//     response's LIFETIME states the granted value, so RFC clients refresh in
//     time either way. It cannot be fixed by configuration: setting
//     AllocationLifetime to 3600 s would fix large requests but make every
//     allocation without LIFETIME last an hour. TestLifetimeNegotiation pins
//     the behaviour so that a pion upgrade that changes it is noticed.
//   - Draining (Run's context ended) answers new Allocate requests with 486
//     and keeps existing allocations until they end or DrainTimeout passes.
package relay
