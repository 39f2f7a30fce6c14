// Package nat is the gateway's DNS-resource NAT: a sans-IO, per-client table
// that maps the proxy IPs a client assigned to a DNS resource's domain onto
// the real IPs the gateway resolved for it, and translates packets in place.
//
// It follows Firezone's gateway (`nat_table.rs`, `client_on_gateway.rs`):
//
//   - A client's packet to a proxy IP is a NAT flow. Its session is keyed by
//     the "inside" (L4 protocol, client source port or ICMP echo id, proxy IP)
//     and bound to an "outside" (protocol, port, real IP). The outside port is
//     the client's own port unless another session of the same client already
//     holds (protocol, port, real IP), which happens when two proxy IPs map to
//     the same real IP; then the next free port is taken (wrapping, 0 skipped)
//     and the source port is rewritten. Replies are looked up by their outside
//     (protocol, destination port or echo id, source IP), so they map back to
//     the proxy IP (and port) the client used without ambiguity.
//   - Real IPs are assigned round-robin within the same family: the sorted
//     proxy IPs of a family take the sorted real IPs of that family in turn.
//     A proxy IP whose family has no real IP is "unreachable": the caller sees
//     it in [Setup.Mappings] when it configures, and every packet to it gets
//     [Unreachable] with [ErrNoRealIP]; a proxy IP in the proxy ranges that
//     the client never assigned gets [Unreachable] with [ErrNoTranslation].
//     There is no NAT64/46 (Firezone removed it).
//   - Sessions expire 2 h 4 min (TCP) or 2 min (UDP, ICMP) after their last
//     packet, 60 s after the last outgoing packet while no reply was seen,
//     5 s after FINs were seen in both directions and at once after a RST.
//     A reply for a session that expired is dropped ([ErrExpiredSession]);
//     a packet that matches no session and never did is not NAT traffic.
//   - ICMP errors from the resource's side that quote a translated packet are
//     translated too: the quoted destination goes back to the proxy IP, the
//     quoted source port or echo id back to the client's, and the outer
//     source becomes the proxy IP, so the client's cryptokey routing accepts
//     it (Firezone rebuilds the error from the proxy IP; snowgate rewrites it
//     in place, with the same result).
//
// Re-configuration: a new assignment for the same (resource, domain) updates
// the proxy → real mapping for new sessions; existing sessions keep the real
// IP they were bound to until they expire. (Firezone keeps the old mapping
// for a proxy IP as long as any session uses it, so new flows also go to the
// old real IP; snowgate stores the real IP per session and lets new flows use
// the new one.) Proxy IPs that a client re-assigns to another resource or
// domain (it re-numbers after signing in again) lose their sessions at once;
// Firezone resets the client's whole table in that case, snowgate only the
// re-assigned proxy IPs. Proxy IPs missing from a newer assignment keep their
// translation, as in Firezone. [Table.RemoveClient] drops all of a client's
// state; [Table.Remove] drops one domain's.
//
// Source check: the gateway accepts a client's packets only from that
// client's tunnel IPs. wireguard-go enforces it first (cryptokey routing
// drops a decrypted packet whose source is not in the sending peer's
// AllowedIPs, which the tunnel layer sets to the client's tunnel IPs); this
// table, which finds the client by the packet's source, drops any packet to a
// proxy IP whose source is not a registered client's tunnel IP
// ([ErrUnknownClient]).
//
// Memory is bounded: at most [Config.MaxSessionsPerClient] sessions and
// [Config.MaxProxyIPsPerClient] translations per client. At the session limit
// the table first expires what is due; if it is still full the new flow is
// dropped ([ErrTableFull]) and existing flows are untouched, so a client that
// opens too many flows only hurts itself.
//
// Verdicts: [Table.TranslateOutgoing] and [Table.TranslateIncoming] rewrite
// the packet in place and return [Translated], [NotNAT] (not DNS-resource
// traffic: unchanged, the rest of the pipeline decides), [Drop] or
// [Unreachable] (answer with [BuildUnreachable]); the error of the last two
// says why. The per-packet path of an existing session does not allocate.
//
// Metrics (Config.MeterProvider): snowgate.gateway.nat.packets.dropped
// (counter, attribute reason: unknown_client, no_translation, no_real_ip,
// unsupported_protocol, table_full, expired_session, malformed, other),
// snowgate.gateway.nat.sessions.created (counter) and
// snowgate.gateway.nat.sessions (gauge of live sessions).
//
// The table is sans-IO: callers pass the clock to every method, call
// [Table.HandleTimeout] when [Table.PollTimeout] says, and own all sockets. It
// is not safe for concurrent use.
package nat
