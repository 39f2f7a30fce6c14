package relay

import (
	"bytes"
	"errors"
	"net"
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
