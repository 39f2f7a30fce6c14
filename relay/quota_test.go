package relay

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestQuotaReservations: concurrent admits of one user never pass the
// per-user limit (they reserve), created claims the reservation, and a
// reservation nobody claims (the allocation failed) lapses.
func TestQuotaReservations(t *testing.T) {
	now := time.Unix(1000, 0)
	q := newQuota(3, 5)
	var admitted atomic.Int32
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if q.admit("alice", now) {
				admitted.Add(1)
			}
		}()
	}
	wg.Wait()
	if admitted.Load() != 3 {
		t.Fatalf("admitted %d concurrent Allocates of one user, limit 3", admitted.Load())
	}
	// Two allocations get created; the third failed and never is.
	for i := range 2 {
		if !q.created(fmt.Sprint("a", i), "alice", false) {
			t.Fatal("created refused")
		}
	}
	if q.admit("alice", now.Add(time.Second)) {
		t.Fatal("admitted while the failed Allocate's reservation holds")
	}
	if !q.admit("alice", now.Add(reservationTTL)) {
		t.Fatal("the lapsed reservation still counts")
	}
	// Total limit (5): alice has 2 live + 1 reserved; bob gets 2 more.
	for i := range 2 {
		if !q.admit("bob", now.Add(reservationTTL)) {
			t.Fatalf("bob's Allocate %d refused below the total limit", i)
		}
	}
	if q.admit("carol", now.Add(reservationTTL)) {
		t.Fatal("admitted above the total limit")
	}
	if found, _ := q.deleted("a0"); !found {
		t.Fatal("delete of a live allocation not found")
	}
	if !q.admit("carol", now.Add(reservationTTL)) {
		t.Fatal("a deleted allocation did not free its place")
	}
}
