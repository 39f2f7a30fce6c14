package relay

import (
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"
)

// openFDs counts the process's open file descriptors (Linux; -1 elsewhere).
func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}

// TestAllocationsExpireWithoutLeaks: 1,000 allocations from 1,000 client addresses (in four waves of 250;
// the client sockets are closed once all are made, so that no 5-tuple is reused while its allocation
// lives, and nothing is refreshed) all expire, and the relay returns to its baseline: no allocation, its
// goroutines and file descriptors back where they were, every relayed port free again.
func TestAllocationsExpireWithoutLeaks(t *testing.T) {
	if testing.Short() {
		t.Skip("leak check: 1,000 allocations and their expiry take about 15 s")
	}
	cfg := loopbackConfig()
	cfg.MaxAllocationsPerUser = 1
	s := startRelay(t, cfg)
	time.Sleep(100 * time.Millisecond) // the workers are up
	baseG, baseFD := runtime.NumGoroutine(), openFDs()

	const waves, perWave = 4, 250
	const lifetime = 10 * time.Second
	var relayed []netip.AddrPort
	var clients []*rawClient
	for w := range waves {
		for i := range perWave {
			user, pass := firezoneCreds(s, fmt.Sprintf("salt-%d-%d", w, i), time.Hour)
			c := newRawClient(t, s.Addr(), user, pass)
			a, err := c.allocate(lifetimeAttr(lifetime))
			if err != nil {
				t.Fatalf("wave %d, client %d: %v", w, i, err)
			}
			relayed = append(relayed, a)
			clients = append(clients, c)
		}
	}
	for _, c := range clients {
		_ = c.conn.Close()
	}
	if n := s.Allocations(); n < waves*perWave/2 {
		t.Fatalf("%d live allocations right after making %d", n, waves*perWave)
	}
	t.Logf("%d allocations made, %d live; goroutines %d (baseline %d), fds %d (baseline %d)",
		len(relayed), s.Allocations(), runtime.NumGoroutine(), baseG, openFDs(), baseFD)

	if own, ok := ownUDPPorts(); ok && !own[relayed[0].Port()] {
		t.Fatalf("ownUDPPorts does not list the live relayed port %v", relayed[0])
	}
	waitFor(t, lifetime+30*time.Second, "every allocation to expire", func() bool { return s.Allocations() == 0 })
	waitFor(t, 10*time.Second, fmt.Sprintf("goroutines back to %d", baseG), func() bool { return runtime.NumGoroutine() <= baseG })
	if baseFD >= 0 {
		waitFor(t, 10*time.Second, fmt.Sprintf("file descriptors back to %d", baseFD), func() bool { return openFDs() <= baseFD })
	}
	own, ok := ownUDPPorts()
	for _, a := range relayed {
		if ok && own[a.Port()] || !ok && !portFree(a) {
			t.Fatalf("relayed port %v still bound after its allocation expired", a)
		}
	}
}
