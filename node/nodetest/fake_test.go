package nodetest_test

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/snowgate/snowgate/node"
	"github.com/snowgate/snowgate/node/nodetest"
)

func TestFakeRecordsCallsAndKeepsConnections(t *testing.T) {
	f := nodetest.NewFake()
	p := node.ConnectionParams{ID: "g1", RemoteKey: node.Key{1}, PresharedKey: node.Key{2}, Role: node.RoleControlling,
		Local: node.Credentials{Ufrag: "a", Password: "b"}, Remote: node.Credentials{Ufrag: "c", Password: "d"}}
	if err := f.UpsertConnection(p); err != nil {
		t.Fatal(err)
	}
	pfx := []netip.Prefix{netip.MustParsePrefix("100.64.0.2/32")}
	if err := f.SetAllowedIPs("g1", pfx); err != nil {
		t.Fatal(err)
	}
	if err := f.AddRemoteCandidate("g1", "cand1"); err != nil {
		t.Fatal(err)
	}
	if err := f.SetAllowedIPs("nope", pfx); !errors.Is(err, node.ErrUnknownConnection) {
		t.Fatalf("allowed IPs of an unknown connection: %v", err)
	}
	f.UpdateRelays([]string{"r0"}, []node.Relay{{ID: "r1"}})
	got, allowed, remote, ok := f.Connection("g1")
	if !ok || got != p || len(allowed) != 1 || len(remote) != 1 {
		t.Fatalf("connection %+v %v %v %v", got, allowed, remote, ok)
	}
	var methods []string
	for _, c := range f.Calls() {
		methods = append(methods, c.Method)
	}
	want := "[UpsertConnection SetAllowedIPs AddRemoteCandidate SetAllowedIPs UpdateRelays]"
	if fmt.Sprint(methods) != want {
		t.Fatalf("calls %v, want %s", methods, want)
	}
	if c := f.CallsOf("UpdateRelays"); len(c) != 1 || c[0].Remove[0] != "r0" || c[0].Add[0].ID != "r1" {
		t.Fatalf("UpdateRelays call %+v", c)
	}
	old := f.PublicKey()
	pub, err := f.Reset()
	if err != nil || pub == old || pub != f.PublicKey() {
		t.Fatalf("Reset: %v %v", pub, err)
	}
	if len(f.Stats()) != 0 {
		t.Fatal("connections survived Reset")
	}
}

func TestFakeInjectsErrorsAndEvents(t *testing.T) {
	f := nodetest.NewFake()
	f.FailNext("UpsertConnection", fmt.Errorf("upsert: %w", node.ErrNoRelays))
	p := node.ConnectionParams{ID: "g1"}
	if err := f.UpsertConnection(p); !errors.Is(err, node.ErrNoRelays) {
		t.Fatalf("first upsert: %v, want ErrNoRelays", err)
	}
	if err := f.UpsertConnection(p); err != nil {
		t.Fatalf("second upsert: %v", err)
	}
	if c := f.CallsOf("UpsertConnection"); !errors.Is(c[0].Err, node.ErrNoRelays) || c[1].Err != nil {
		t.Fatalf("recorded errors %v %v", c[0].Err, c[1].Err)
	}
	local, remote := netip.MustParseAddrPort("192.0.2.1:1"), netip.MustParseAddrPort("198.51.100.1:2")
	_ = f.Candidate("g1", "c1")
	_ = f.Establish("g1", node.PathServerReflexive, local, remote)
	_ = f.Fail("g1", nil)
	_ = f.NoRelays()
	kinds := []node.EventKind{node.EventCandidateAdded, node.EventConnectionEstablished, node.EventConnectionFailed, node.EventNoRelays}
	for _, k := range kinds {
		e := <-f.Events()
		if e.Kind != k {
			t.Fatalf("event %v, want %v", e.Kind, k)
		}
		if k == node.EventConnectionFailed && !errors.Is(e.Err, node.ErrICEFailed) {
			t.Fatalf("failure %v", e.Err)
		}
	}
	if err := f.Establish("g1", node.PathRelay, local, remote); err != nil {
		t.Fatal(err)
	}
	<-f.Events()
	if s := f.Stats(); len(s) != 1 || !s[0].Established || s[0].Path != node.PathRelay || s[0].RemoteAddr != remote {
		t.Fatalf("stats %+v", s)
	}
	_ = f.Close()
	if _, ok := <-f.Events(); ok {
		t.Fatal("events not closed")
	}
	if err := f.UpsertConnection(p); !errors.Is(err, node.ErrClosed) {
		t.Fatalf("upsert after Close: %v", err)
	}
	if err := f.Inject(node.Event{Kind: node.EventNoRelays}); !errors.Is(err, node.ErrClosed) {
		t.Fatalf("inject after Close: %v", err)
	}
}

// The fake is safe for concurrent use (run with -race): calls from several
// goroutines, events injected and consumed meanwhile.
func TestFakeConcurrent(t *testing.T) {
	f := nodetest.NewFake()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				id := fmt.Sprintf("c%d-%d", g, i%5)
				_ = f.UpsertConnection(node.ConnectionParams{ID: id})
				_ = f.AddRemoteCandidate(id, "x")
				_ = f.Candidate(id, "y")
				_ = f.Stats()
				_ = f.RemoveConnection(id)
			}
		}()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 200 {
			<-f.Events()
		}
	}()
	wg.Wait()
	<-done
	if n := len(f.CallsOf("UpsertConnection")); n != 200 {
		t.Fatalf("%d upserts recorded, want 200", n)
	}
	if _, ok := f.WaitCall(time.Second, func(c nodetest.Call) bool { return c.Method == "RemoveConnection" }); !ok {
		t.Fatal("WaitCall missed a recorded call")
	}
}
