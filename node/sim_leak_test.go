package node_test

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/snowgate/snowgate/node"
	"github.com/snowgate/snowgate/node/nodetest"
)

// TestConnectionChurnWithoutLeaks: 200 connections come and go between two nodes behind NATs (each one
// established, used and removed on both sides, alternating direct and relayed paths); afterwards neither
// node keeps a connection, and the goroutines (ICE agents, wireguard-go peers, timers) are back to the
// baseline taken after the first one.
func TestConnectionChurnWithoutLeaks(t *testing.T) {
	sim(t, func(t *testing.T, w *nodetest.World) {
		a, b := pair(t, w, nodetest.NATEndpointIndependent, nil)
		baseG := -1
		for i := range 200 {
			id := fmt.Sprintf("c%d", i)
			if i%2 == 1 { // the direct path blocked: relayed
				w.Partition(a, b)
			}
			w.Connect(a, b, id)
			w.RoundTrip(a, b, 30*time.Second)
			// Data flows as soon as WireGuard's handshake is done; the node's loop reports the connection
			// established a moment later (it learns of the handshake from the data path's queue).
			for _, p := range []*nodetest.Peer{a, b} {
				if _, ok := p.WaitEvent(30*time.Second, func(e node.Event) bool {
					return e.Kind == node.EventConnectionEstablished && e.ConnectionID == id
				}); !ok {
					t.Fatalf("%s: connection %s carried data but was never reported established", p.Name(), id)
				}
			}
			for _, p := range []*nodetest.Peer{a, b} {
				if err := p.Node().RemoveConnection(id); err != nil {
					t.Fatalf("%s: remove %s: %v", p.Name(), id, err)
				}
			}
			w.Heal(a, b)
			advance(time.Second)
			if i == 0 {
				baseG = runtime.NumGoroutine()
			}
		}
		for _, p := range []*nodetest.Peer{a, b} {
			if s := p.Node().Stats(); len(s) != 0 {
				t.Fatalf("%s keeps %d connections", p.Name(), len(s))
			}
		}
		eventually(t, time.Minute, time.Second, func() bool { return runtime.NumGoroutine() <= baseG },
			func() string {
				return fmt.Sprintf("%d goroutines, %d after the first connection", runtime.NumGoroutine(), baseG)
			})
	})
}
