// Package node is the shared connectivity library of the client and the
// gateway: sockets and demux, TURN allocations, ICE, the WireGuard device and
// the idle-aware timers (seed: snownet's Node).
//
// # Data path
//
// The node owns one UDP socket per address family, both on the same port
// (Config.Port; DefaultPort for daemons, 0 for any), with 7 MiB buffers and
// batched I/O (recvmmsg/sendmmsg through golang.org/x/net). The sockets come
// from Config.Net, so tests can run the node on a pion vnet. The node's
// conn.Bind hands them to wireguard-go: its receive functions classify every
// datagram once (classify.go):
//
//   - WireGuard (type 1–4, three zero bytes, ≥ 32 bytes) → wireguard-go;
//   - from a relay's address: ChannelData carrying WireGuard is unwrapped in
//     place and handed up as coming from the peer (the endpoint says "via
//     relay R"); other ChannelData and TURN/STUN messages go to that relay's
//     turn.Client (HandleInbound; the clients never Listen);
//   - other STUN → the node's single ice.UniversalUDPMux (one per node, shared
//     by both sockets, fed through a push-based PacketConn).
//
// Endpoints (bind.go) say which path a packet takes: pending (buffered until
// ICE nominates a pair), direct to an address, or through our allocation to
// the peer's address (relayed PacketConn WriteTo).
//
// # Relays
//
// UpdateRelays keeps one turn.Client and one UDP allocation per (relay,
// family) on the shared socket. pion refreshes the allocation (lifetime/2),
// permissions (2 min) and channel bindings itself; the node sends a STUN
// keepalive to each relay every KeepaliveInterval (25 s) on the idle
// scheduler's tick, which also measures the RTT used to sample relays. A relay
// missing two keepalives, or removed, is dropped: its candidates are
// invalidated (EventCandidateInvalidated) and connections whose path used it
// re-run ICE on another relay. Losing the last relay is EventNoRelays.
//
// # Connections
//
// UpsertConnection creates a wireguard-go peer (remote key, PSK) and one pion
// ice.Agent whose host and server-reflexive candidates come from the shared
// mux (node-wide, independent of allocations) and whose relay candidate is the
// sampled relay's allocation, added with Agent.AddVirtualCandidate over a
// per-connection view of the shared relayed conn. Without any allocation it
// returns ErrNoRelays. Upserting the same keys, PSK and credentials keeps the
// connection (candidates re-signalled, woken from idle, ICE re-run without a
// new handshake); anything else replaces it.
//
// Remote candidates for a connection id the node does not know yet are
// queued (bounded: 32 per id, 64 ids, 60 s, expired lazily without a timer)
// and applied when UpsertConnection creates it: the portal forwards a
// gateway's candidates as soon as the gateway has the connection, possibly
// before the client has it.
//
// While ICE runs, what wireguard-go sends (its handshake initiation) is
// buffered and flushed to the nominated pair; only the controlling side forces
// a handshake on nomination. The connection is established once wireguard-go
// authenticated the peer's reply on that path; the ICE agent is then closed
// (after a 2 s grace so the peer's agent can finish nominating), since pion
// agents wake every 2 s while alive. ICE re-runs when the path fails (we keep
// sending, nothing comes back for 1.5 keepalive intervals), when its relay
// goes away, when the peer invalidates the candidate in use, and on an
// idempotent upsert. A re-run on a connection that was up keeps the WireGuard
// session: the new path is used at once.
//
// A remote whose NAT remaps its mapping mid-connection keeps its connection:
// wireguard-go moves its peer to the source of every authenticated packet,
// and the demux hands up a WireGuard message from an address that is no
// connection's path with a stray endpoint (bound to no connection). When such
// messages arrive or are sent, the timer goroutine asks wireguard-go where
// each established connection's peer now is (one IpcGet, at most every 50 ms)
// and ties a new address to that connection (roam.go): its counters and idle
// state follow the traffic again and its path names the new remote address
// (reported as srflx: it is peer-reflexive). The packets before that (a few
// milliseconds) are not counted. ICE is not re-run for it: the agents are
// closed, and the remote's authenticated packets already prove the address.
//
// # Timers
//
// One goroutine sleeps on one timer until the node/idle scheduler says
// something is due: idle transitions (20 s without traffic), the NAT keepalive
// of all idle connections together (one wake-up per 25 s however many there
// are), path checks of active connections and relay keepalives on the same
// ticks. Packets on an idle connection make it active at once: the data path
// clears the connection's idle flag itself (Stats and metrics see it from
// that packet on) and the timer goroutine then moves it from the keepalive
// batch back to the active one. There is no per-peer persistent keepalive.
// Node.Wakeups and the scheduler's snowgate.node.wakeups counter measure the
// wake-ups.
//
// # Deviations
//
//   - pion's own TURN refresh timers (3 per allocation) are not on the idle
//     scheduler's grid.
//   - Two connection ids with the same remote public key share one
//     wireguard-go peer; callers use one connection per peer.
package node
