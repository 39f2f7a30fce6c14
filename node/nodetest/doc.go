// Package nodetest helps test code built on package node.
//
// Fake is a stand-in for *node.Node with the methods the client and gateway
// daemons use: it records every call, lets a test inject events (candidates,
// a connection established on a path, failed, no relays) and errors (e.g.
// node.ErrNoRelays from UpsertConnection), and is safe for concurrent use.
//
// World is a simulated network for real nodes: a pion vnet "internet"
// (198.18.0.0/15) with TURN relays (pion/turn servers) and nodes, each on a
// LAN of its own behind a NAT of a chosen type (or on the internet itself).
// It is meant to run inside a testing/synctest bubble: every goroutine (the
// nodes', pion's, wireguard-go's, the vnet's) is in the bubble and time is
// simulated, so ICE runs, relay losses and idle periods of minutes take
// milliseconds and no test sleeps for real:
//
//	func TestX(t *testing.T) {
//		synctest.Test(t, func(t *testing.T) {
//			w := nodetest.NewWorld(t)
//			w.AddRelay("r1")
//			a := w.AddNode(nodetest.NodeOptions{Name: "client", NAT: nodetest.NATEndpointIndependent})
//			b := w.AddNode(nodetest.NodeOptions{Name: "gateway"})
//			w.GiveRelays(a, b)
//			w.Connect(a, b, "c1")
//			a.WriteTUN(ping)      // into a's tunnel
//			got := b.ReadTUN(5 * time.Second) // out of b's tunnel
//		})
//	}
//
// Each Peer records its node's events and, like the portal, forwards
// candidate events of the connections World.Connect set up to the other
// side. Tests of the daemons can instead run their own event loops on the
// nodes (NodeOptions.OwnEvents) and pass their own TUN devices
// (NodeOptions.Config).
//
// The network can be changed while the nodes run: Partition and Heal cut the
// direct path between two nodes, Relay.Block makes a relay unreachable,
// Peer.SetLatency delays a node's outgoing packets, and World.Observe sees
// every datagram that crosses the internet.
package nodetest
