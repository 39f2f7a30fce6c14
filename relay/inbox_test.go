package relay

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"testing"
)

// TestInbox: per-inbox and shared bounds drop instead of blocking, pop
// copies (and reports an oversized length), and close wakes pop and gives
// the shared budget back.
func TestInbox(t *testing.T) {
	budget := newInboxBudget(5)
	a, b := newInbox(3, budget), newInbox(10, budget)
	from := mustAddrPort("192.0.2.1:9")
	for i := range 4 {
		if got := a.push([]byte{byte(i)}, from); got != (i < 3) {
			t.Fatalf("push %d into a = %v", i, got)
		}
	}
	for i := range 3 {
		if got := b.push([]byte{byte(i)}, from); got != (i < 2) {
			t.Fatalf("push %d into b = %v (shared budget 5, 3 used by a)", i, got)
		}
	}
	p := make([]byte, 16)
	n, src, err := a.pop(p)
	if err != nil || n != 1 || p[0] != 0 || src != from {
		t.Fatalf("pop = %d %v %v %x", n, src, err, p[:n])
	}
	if !b.push([]byte("x"), from) {
		t.Fatal("a pop must free budget for b")
	}
	long := bytes.Repeat([]byte{7}, 100)
	c := newInbox(1, newInboxBudget(10))
	c.push(long, from)
	if n, _, _ := c.pop(p); n != 100 || !bytes.Equal(p, long[:16]) {
		t.Fatalf("oversized pop = %d", n)
	}
	a.close()
	if _, _, err := a.pop(p); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("pop after close: %v", err)
	}
	if a.push([]byte("late"), from) {
		t.Fatal("push after close succeeded")
	}
	b.close()
	if q := budget.queued.Load(); q != 0 {
		t.Fatalf("%d datagrams still counted after both inboxes closed", q)
	}
}

// TestInboxGivesBackItsQueue: an inbox holds queue memory only while
// datagrams wait (the relay keeps one per allocation), and a drained burst
// gives back what it grew.
func TestInboxGivesBackItsQueue(t *testing.T) {
	q := newInbox(128, newInboxBudget(1000))
	if cap(q.queue) != 0 {
		t.Fatalf("new inbox holds a queue of %d", cap(q.queue))
	}
	from := mustAddrPort("192.0.2.1:9")
	for i := range 100 {
		if !q.push([]byte{byte(i)}, from) {
			t.Fatalf("push %d refused", i)
		}
	}
	p := make([]byte, 4)
	for i := range 100 {
		if n, _, err := q.pop(p); err != nil || n != 1 || p[0] != byte(i) {
			t.Fatalf("pop %d = %d %v %x (order must be kept)", i, n, err, p[:n])
		}
	}
	if cap(q.queue) > keptQueue {
		t.Fatalf("drained inbox keeps a queue of %d", cap(q.queue))
	}
	if got := q.shared.queued.Load(); got != 0 {
		t.Fatalf("budget still counts %d", got)
	}
}

// TestInboxConcurrent: datagrams pushed while readers wait each reach
// exactly one reader, none is lost or duplicated, and close ends every
// waiting reader.
func TestInboxConcurrent(t *testing.T) {
	const n, readers = 5000, 3
	q := newInbox(64, newInboxBudget(1<<20))
	from := mustAddrPort("192.0.2.1:9")
	got := make(chan int, n)
	var wg sync.WaitGroup
	for range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, 4)
			for {
				k, _, err := q.pop(p)
				if err != nil {
					return
				}
				got <- int(binary.BigEndian.Uint16(p[:k]))
			}
		}()
	}
	seen := make([]bool, n)
	received := 0
	take := func() {
		k := <-got
		if seen[k] {
			t.Fatalf("datagram %d popped twice", k)
		}
		seen[k] = true
		received++
	}
	for i := 0; i < n; {
		var b [2]byte
		binary.BigEndian.PutUint16(b[:], uint16(i))
		if q.push(b[:], from) {
			i++
			continue
		}
		take() // full: wait for a reader to take one
	}
	for received < n {
		take()
	}
	q.close()
	wg.Wait()
}
