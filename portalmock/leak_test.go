package portalmock

import (
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/snowgate/snowgate/internal/portalapi"
)

// openFDs counts the process's open file descriptors (Linux; -1 elsewhere).
func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}

// TestClientChurnWithoutLeaks: 500 clients connect over WebSocket, join, create a flow, and go (50 at a
// time); the portal returns to its baseline: no client online, no pending flow, its goroutines and file
// descriptors back where they were.
func TestClientChurnWithoutLeaks(t *testing.T) {
	if testing.Short() {
		t.Skip("leak check: 500 WebSocket sessions")
	}
	f := DefaultFile()
	acc := &f.Accounts[0]
	const clients, batch = 500, 50
	for i := range clients {
		acc.Clients = append(acc.Clients, ClientConfig{ID: fmt.Sprintf("c1e40000-0000-4000-8000-%012d", i),
			Name: fmt.Sprintf("churn-%d", i), Token: fmt.Sprintf("churn-token-%d", i)})
	}
	s := startServer(t, f)
	gw := connectPeer(t, s, "gateway", DefaultGatewayToken1, newKey(t))
	gw.expect(portalapi.EventInit)
	time.Sleep(100 * time.Millisecond)
	baseG, baseFD := runtime.NumGoroutine(), openFDs()

	for start := 0; start < clients; start += batch {
		var ps []*peer
		for i := start; i < start+batch; i++ {
			p := connectPeer(t, s, "client", fmt.Sprintf("churn-token-%d", i), newKey(t))
			p.expect(portalapi.EventInit)
			p.send("client", portalapi.EventCreateFlow, portalapi.CreateFlow{ResourceID: resCIDR, ConnectedGatewayIDs: []string{}})
			ps = append(ps, p)
		}
		for range batch {
			gw.expect(portalapi.EventAuthorizeFlow) // never answered: the client leaves first
		}
		for _, p := range ps {
			p.close()
		}
	}
	waitGone := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitGone("every client to leave", func() bool {
		for _, c := range s.State().Clients {
			if c.Online {
				return false
			}
		}
		return true
	})
	var pending int
	s.locked(func() { pending = len(s.core.pending) + len(s.core.sessions) - 1 }) // the gateway's session stays
	if pending != 0 {
		t.Fatalf("%d pending flows and client sessions left", pending)
	}
	waitGone(fmt.Sprintf("goroutines back to %d", baseG), func() bool { return runtime.NumGoroutine() <= baseG })
	if baseFD >= 0 {
		waitGone(fmt.Sprintf("file descriptors back to %d", baseFD), func() bool { return openFDs() <= baseFD })
	}
}
