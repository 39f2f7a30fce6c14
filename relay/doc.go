// Package relay is snowgate's TURN relay server: pion/turn v5 configured with
// the portal's credential scheme (or coturn's TURN REST scheme), a peer policy
// that keeps relayed traffic away from the relay's own networks, SO_REUSEPORT
// listener sockets on every core, allocation quotas, portal registration over
// the Phoenix channel, a drain on shutdown, and cheap counters exported
// through OpenTelemetry.
//
// Embedding (dev stack, tests): relay.New(cfg) validates the config and draws
// the per-boot stamp secret (StampSecret); Start binds the sockets (Addr,
// Addr6 report them; ListenPort -1 picks an ephemeral port); Run(ctx) also
// registers with the portal when cfg.Portal is set and serves until ctx ends,
// then drains and closes. Loopback peers are refused by default; tests allow
// them with AllowPeers (e.g. 127.0.0.0/8 and ::1/128).
//
// Behaviour worth knowing:
//   - Binding requests are answered without authentication; every other
//     request needs long-term credentials in realm "firezone" (or Realm).
//   - Peer policy precedence: --deny-peer > --allow-peer > default-denied
//     ranges (loopback, unspecified, link-local incl. 169.254.169.254,
//     multicast, broadcast, RFC 1918, CG-NAT, ULA, the relay's own
//     addresses) > allowed. Refusals answer 403 to CreatePermission and
//     ChannelBind and count in relay.peers.refused.
//   - Channel data of bound channels is forwarded by the relay itself (see
//     fastPath); everything else is pion's.
//   - pion caps the allocation lifetime below one hour: a requested LIFETIME
//     of 3600 s or more gets the default lifetime (600 s).
//   - Draining (Run's context ended) answers new Allocate requests with 486
//     and keeps existing allocations until they end or DrainTimeout passes.
package relay
