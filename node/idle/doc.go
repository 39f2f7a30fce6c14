// Package idle is the node's idle-aware timer core: one sans-IO Scheduler that knows every connection's
// activity and every node-level periodic job (allocation refresh, channel refresh, relay STUN keepalive),
// and tells the node's single timer when it must wake next, and what is due when it does.
//
// The Scheduler has no goroutines, never reads the clock (every method that needs the time takes now) and
// is not safe for concurrent use: the node drives it under its own lock.
//
// # Connections
//
// A connection is Active from Add until IdleAfter (20 s) passes without Activity; it then goes Idle. Any
// Activity (any packet, an upsert) makes it Active again at once. Activity is O(1) on an active connection
// (it only stores the time), so it can be called for every packet; or the data path keeps the time itself
// (an atomic) and Config.LastActivity hands it over lazily. The timers a connection has:
//
//	Active  KindActiveCheck   every ActiveInterval (5 s), one shared phase for all active connections:
//	                          the node checks the path (WireGuard handshake age, consent) and re-runs ICE
//	                          if it failed; it may send a keepalive so the NAT binding never goes quiet.
//	        KindWentIdle      once, at lastActivity+IdleAfter: the connection is now Idle. The node sends
//	                          one NAT keepalive and switches the connection to its idle timings.
//	Idle    KindNATKeepalive  every KeepaliveInterval (25 s), one shared phase for ALL idle connections,
//	                          so 100 idle connections cost one wake-up per 25 s, not 100.
//
// A connection is in exactly one of the two batches. A batch timer is armed only while its batch is not
// empty, so with every connection idle and no node job due the node sleeps until the next keepalive tick.
//
// # Node jobs
//
// Node-level work is registered with Schedule (one shot) or Every (periodic), keyed by a typed JobID
// (Kind + Key, e.g. {KindAllocationRefresh, relayID}). NextTick and AlignBefore put jobs on the
// keepalive grid, so relay keepalives and refreshes ride the same wake-ups as the idle batch.
//
// # Coalescing
//
// Batch ticks lie on a grid Epoch + k*period (Epoch: Config.Epoch, or the first now
// given to Add, NextTick or AlignBefore).
// NextWake is the earliest instant anything is due; Poll(now) returns everything due at or before
// now+Slack. Work therefore runs at most Slack early and, if the driver polls at NextWake, never late.
// With the defaults (this exact run is the "package doc timeline" case of TestScripts):
//
//	seconds      0         10        20        30        40        50        60        70        80
//	             |....|....|....|....|....|....|....|....|....|....|....|....|....|....|....|....|
//	conn a       +=======p===================I   added at 0, packet at 8, idle at 28
//	conn b       +===================I           added at 0, idle at 20
//	active tick       c    c    c    c    c      KindActiveCheck: a and b, then a only, then none
//	idle tick                             k                        k                        k
//	relay k/a       r                        r                        r                        r
//	wake-ups        w w    w    w    w    w  w                     w  w                     w  w
//
// At 20 b goes idle and the idle tick is armed on its 25 s grid (25, 50, 75); at 25 the first NAT
// keepalive (b) shares the wake-up with a's active check; at 28 a goes idle in the same wake-up as the
// relay keepalive (r, which was registered on a phase of its own at 3 s). From then on the node wakes only
// for k and r. Had r been registered with Every(id, NextTick(now, KeepaliveInterval), KeepaliveInterval)
// it would fall on the k ticks too: one wake-up per 25 s for the whole node, however many connections
// are idle. AlignBefore does the same for refreshes that must happen before a deadline.
//
// # Driving it
//
// After every input that can make NextWake earlier (Add, an Activity that woke an idle connection,
// Schedule, Every, Poll), reset one time.Timer to NextWake; when it fires, Poll(now) and do what it
// returns. Packets on active connections only move deadlines later and need no reset. Wakeups counts Polls that returned work, Spurious the ones that did
// not; both are also exported as OpenTelemetry counters. See INTEGRATION.md.
package idle
