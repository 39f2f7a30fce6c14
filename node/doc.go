// Package node is the shared connectivity library of the client and the
// gateway: sockets and demux, TURN allocations, ICE, the WireGuard device and
// the idle-aware timers (seed: snownet's Node).
//
// # Data path
//
// The node owns one UDP socket per address family, both on the same port
// (Config.Port; DefaultPort for daemons, 0 for any), with 7 MiB buffers and
// batched I/O (recvmmsg/sendmmsg, internal/udpbatch). The sockets come
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
// UpdateRelays keeps one TURN client and one UDP allocation per (relay,
// family) on the shared socket. pion refreshes the allocation (lifetime/2),
// permissions (2 min) and channel bindings itself; the node sends a STUN
// keepalive to each relay every KeepaliveInterval (25 s) on the idle
// scheduler's tick, which also measures the RTT used to sample relays. A relay
// missing two keepalives, or removed, is dropped: its candidates are
// invalidated (EventCandidateInvalidated) and connections whose path used it
// re-run ICE on another relay; until the new path is nominated their
// WireGuard traffic waits in the pending buffer (the allocation it went
// through is closed). Losing the last relay is EventNoRelays.
//
// # Structure
//
// The node is a shell around sans-IO cores; it owns the sockets, the
// goroutines and the libraries, the cores own the decisions:
//
//   - internal/connsm, one per connection: its lifecycle (ICE runs and
//     re-runs, nomination → established or failed, path checks, its relay,
//     its local and remote candidates, roaming) as a state machine.
//     Handle…(…, now) in; PollAction, PollEvent and PollTimeout out.
//   - internal/wgtrack, one per connection: WireGuard's handshakes followed
//     from the type and index fields of the messages the bind sees (when a
//     handshake completed, its round trip, the peer's session indices).
//   - node/idle, one per node: idle transitions and every periodic job,
//     coalesced into as few wake-ups as possible.
//
// Three libraries sit behind small interfaces (ifaces.go), and only the
// adapters there know their types: iceAgent (pion's ice.Agent, one per ICE
// run), turnClient (pion's turn.Client, one per allocation) and wgDevice /
// wgPeer (wireguard-go's peers, through its typed methods: SetPrivateKey,
// NewPeer, RemovePeer, SetEndpointFromPacket, SendKeepalive,
// SendHandshakeInitiation). wireguard-go has no typed setter for a peer's
// pre-shared key or access to its AllowedIPs table: those two are the only
// UAPI text the node writes (one IpcSet per peer update, never a read). The
// node never parses wireguard-go's text or its own endpoint strings.
//
// Node.mu guards the cores and the connection table. The public methods and
// the loop goroutine feed the cores under it and carry out their actions
// (driveLocked): create, feed and close agents, point the WireGuard peer at
// a path, flush, force a handshake, send a keepalive, emit events. Nothing
// that pion or wireguard-go runs on its own goroutines takes Node.mu: the
// agents' callbacks and the results of blocking TURN transactions (Allocate,
// the relays' keepalive probes) are posted to the loop, which applies them;
// the data path (the bind's receive and send functions) only touches
// atomics, the handshake tracker's small lock and copy-on-write maps, and
// pokes the loop when a packet changes something (idle → active, a
// handshake completed, a roam). node/nodetest runs real nodes in a
// simulated network with simulated time (synctest), so tests of minutes of
// behaviour take milliseconds.
//
// # Connections
//
// UpsertConnection creates a wireguard-go peer (remote key, PSK) and a core
// whose first action starts one ICE agent: host candidates from the shared
// mux, the node-wide server-reflexive addresses (independent of
// allocations), and the relay candidate of the relay sampled for the
// connection (lowest RTT; only that relay's, added with
// Agent.AddVirtualCandidate over a per-connection view of the shared
// relayed conn). Without any allocation it returns ErrNoRelays. Upserting
// the same keys, PSK and credentials keeps the connection (candidates
// re-signalled, woken from idle, ICE re-run without a new handshake);
// anything else replaces it.
//
// Remote candidates for a connection id the node does not know yet are
// queued (bounded: 32 per id, 64 ids, 60 s, expired lazily without a timer)
// and applied when UpsertConnection creates it: the portal forwards a
// gateway's candidates as soon as the gateway has the connection, possibly
// before the client has it. Adding or removing a remote candidate is
// handled at once, timeouts included (as the seed runs its timeout handling
// right after): invalidating the candidate the path uses starts a new path
// search immediately.
//
// While ICE runs, what wireguard-go sends (its handshake initiation) is
// buffered and flushed to the nominated pair; only the controlling side
// forces a handshake on nomination. The connection is established once the
// handshake tracker saw WireGuard's handshake complete on it within
// Config.HandshakeTimeout (20 s: four of wireguard-go's initiations, one per
// 5 s at most; otherwise it fails with ErrHandshakeTimeout) (a handshake
// along the pair before our side nominated it is replayed from the stray
// log, roam.go). The ICE agent then stays up for a 2 s grace (the peer's
// agent may still need our answers) and is closed, since pion agents wake
// every 2 s while alive. ICE re-runs when the path fails (we keep sending,
// nothing comes back for 1.5 keepalive intervals), when its relay goes
// away, when the peer invalidates the candidate in use, and on an
// idempotent upsert. A re-run on a connection that was up keeps the
// WireGuard session: the new path is used at once. A new agent with the
// same local ufrag (every re-run) starts once the previous one is closed
// and the shared mux forgot it (20 ms).
//
// Stats().RTT is the path's current round-trip time: ICE's measure of the
// pair when it is (re-)nominated, then WireGuard's at every handshake
// (initiation → response on the initiator, response → the initiator's
// first transport message on the responder), i.e. at least every two
// minutes while traffic flows, as WireGuard rekeys, and every few minutes
// on an idle connection, whose NAT keepalives trigger the rekey.
//
// A remote whose NAT remaps its mapping mid-connection keeps its
// connection: wireguard-go moves its peer to the source of every
// authenticated packet, and the demux hands up a WireGuard message from an
// address that is no connection's path with a stray endpoint. When
// wireguard-go then sends a transport message along it to one of the
// peer's session indices (known from the handshakes), the node ties the
// address to that connection (roam.go): its counters and idle state follow
// the traffic again and its path names the new remote address (reported as
// srflx: it is peer-reflexive). The packets before that (a few
// milliseconds) are not counted. ICE is not re-run for it: the agents are
// closed, and the remote's authenticated packets already prove the address.
//
// # Timers
//
// One goroutine (the loop) sleeps on one timer until the node/idle scheduler
// or a connection's core says something is due: idle transitions (20 s
// without traffic), the NAT keepalive of all idle connections together (one
// wake-up per 25 s however many there are), path checks of active
// connections and relay keepalives on the same ticks; the cores' own
// deadlines (an agent's grace, WireGuard's handshake on a nominated pair)
// only exist while a connection is being set up. Packets on an idle
// connection make it active at once: the data path clears the connection's
// idle flag itself (Stats and metrics see it from that packet on) and the
// loop then moves it from the keepalive batch back to the active one. There
// is no per-peer persistent keepalive.
// Node.Wakeups and the scheduler's snowgate.node.wakeups counter measure the
// wake-ups.
//
// # Deviations
//
//   - pion's own TURN refresh timers (3 per allocation) are not on the idle
//     scheduler's grid.
//   - Two connection ids with the same remote public key share one
//     wireguard-go peer; callers use one connection per peer.
//   - The responder side of a WireGuard handshake counts it complete when
//     the initiator's first transport message to its index arrives
//     (wgtrack): wireguard-go's own criterion minus the authentication tag,
//     which it does not expose.
//   - A path failure is detected by each side on its own keepalive tick;
//     with the default timings the two may re-run ICE up to 25 s apart, and
//     an agent alone gives up after 15 s + 5 s: the connection then fails
//     (EventConnectionFailed) and the caller sets it up again, as in the
//     seed.
package node
