//go:build !relay_portable

package relay

import (
	"net"
	"sync"
	"testing"
	"time"
)

// handled records, in order, which socket a worker handed datagrams from.
type handled struct {
	mu  sync.Mutex
	log []handledBatch
}

type handledBatch struct {
	sock string
	n    int
}

func (h *handled) handler(name string) func(*recvBatch, int, *sendBatch) {
	return func(_ *recvBatch, n int, _ *sendBatch) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.log = append(h.log, handledBatch{name, n})
	}
}

func (h *handled) total(name string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	t := 0
	for _, b := range h.log {
		if b.sock == name {
			t += b.n
		}
	}
	return t
}

// openTestSocket opens a loopback socket and a sender connected to it.
func openTestSocket(t *testing.T) (*udpSocket, *net.UDPConn) {
	t.Helper()
	s, err := openUDP("udp4", mustAddrPort("127.0.0.1:0"), socketOptions{buffer: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.close() })
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(s.local))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return s, c
}

// TestWorkerFairness: a socket with a deep backlog does not hold up another
// socket's datagram: each round reads one batch per readable socket, so the
// lone datagram is handled within the first round, not after the backlog.
func TestWorkerFairness(t *testing.T) {
	const batch, backlog = 8, 2000
	busy, busySender := openTestSocket(t)
	quiet, quietSender := openTestSocket(t)
	w, err := newWorker(batch, newStats(1), true)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	h := &handled{}
	if _, err := w.add(busy, h.handler("busy"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := w.add(quiet, h.handler("quiet"), nil); err != nil {
		t.Fatal(err)
	}
	// Hold the worker (it waits for busy before reading) while both
	// sockets fill, so that it finds the backlog and the lone datagram
	// together.
	w.busy.Lock()
	for range backlog {
		if _, err := busySender.Write([]byte("flood")); err != nil {
			w.busy.Unlock()
			t.Fatal(err)
		}
	}
	if _, err := quietSender.Write([]byte("hello")); err != nil {
		w.busy.Unlock()
		t.Fatal(err)
	}
	w.busy.Unlock()
	waitFor(t, 5*time.Second, "both sockets drained", func() bool {
		return h.total("busy") == backlog && h.total("quiet") == 1
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	before := 0
	for _, b := range h.log {
		if b.n > batch {
			t.Fatalf("a batch of %d datagrams, more than %d", b.n, batch)
		}
		if b.sock == "quiet" {
			break
		}
		before += b.n
	}
	if before > 2*batch {
		t.Fatalf("the quiet socket's datagram waited for %d of the busy socket's", before)
	}
}

// TestWorkerRemoveUnderLoad closes sockets while senders flood them and the
// worker reads them; run with -race. Nothing may panic, no datagram may be
// handled for a socket after its removal returned (remove waits for a batch
// being handled), and Close must stop the
// worker's goroutine (the package's TestMain checks for leaks).
func TestWorkerRemoveUnderLoad(t *testing.T) {
	w, err := newWorker(16, newStats(1), true)
	if err != nil {
		t.Fatal(err)
	}
	const sockets = 16
	h := &handled{}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	type entry struct {
		sock *udpSocket
		slot int32
		name string
	}
	var entries []entry
	for i := range sockets {
		s, sender := openTestSocket(t)
		name := string(rune('a' + i))
		slot, err := w.add(s, h.handler(name), nil)
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, entry{s, slot, name})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20000 { // bounded
				select {
				case <-stop:
					return
				default:
				}
				_, _ = sender.Write([]byte("load"))
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	for _, e := range entries {
		w.remove(e.slot)
		if err := e.sock.close(); err != nil {
			t.Fatal(err)
		}
		// remove waits for a batch of the socket being handled: from
		// here on, nothing more.
		after := h.total(e.name)
		time.Sleep(10 * time.Millisecond)
		if got := h.total(e.name); got != after {
			t.Fatalf("socket %s: %d datagrams handled after its removal", e.name, got-after)
		}
	}
	close(stop)
	wg.Wait()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.add(entries[0].sock, h.handler("late"), nil); err == nil {
		t.Fatal("add after Close succeeded")
	}
}
