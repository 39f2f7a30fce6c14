package relay

import (
	"net/netip"
	"sync"
	"sync/atomic"
)

// inbox hands the datagrams the fast path does not take from a worker to
// pion's read loop for that socket (ReadFrom). It is bounded twice: per
// inbox, and by a budget shared by all of a server's inboxes (so that many
// allocations whose pion loops fall behind cannot pin unbounded memory).
// When either is full, new datagrams are dropped (and counted) rather than
// stall the worker and every other socket it reads.
type inbox struct {
	ch     chan *queuedDatagram
	done   chan struct{}
	once   sync.Once
	shared *inboxBudget
}

// inboxBudget is what a server's inboxes share: the datagram pool and the
// count of datagrams queued in all of them.
type inboxBudget struct {
	pool   sync.Pool // of *queuedDatagram
	queued atomic.Int64
	limit  int64
}

// maxQueuedDatagrams bounds the datagrams waiting for pion across a
// server's inboxes (each holds a maxReadBuffer array: 128 MiB at most).
const maxQueuedDatagrams = 1 << 16

func newInboxBudget(limit int64) *inboxBudget {
	return &inboxBudget{pool: sync.Pool{New: func() any { return new(queuedDatagram) }}, limit: limit}
}

// queuedDatagram is one datagram waiting in an inbox.
type queuedDatagram struct {
	buf  [maxReadBuffer]byte
	n    int
	from netip.AddrPort
}

func newInbox(size int, shared *inboxBudget) *inbox {
	return &inbox{ch: make(chan *queuedDatagram, size), done: make(chan struct{}), shared: shared}
}

// push copies p into the inbox; false if it is full or closed.
func (q *inbox) push(p []byte, from netip.AddrPort) bool {
	select {
	case <-q.done:
		return false
	default:
	}
	b := q.shared
	if b.queued.Add(1) > b.limit {
		b.queued.Add(-1)
		return false
	}
	d := b.pool.Get().(*queuedDatagram)
	d.n = copy(d.buf[:], p)
	d.from = from
	select {
	case q.ch <- d:
	default:
		b.pool.Put(d)
		b.queued.Add(-1)
		return false
	}
	select {
	case <-q.done: // closed meanwhile: give back what close may have missed
		q.drain()
		return false
	default:
		return true
	}
}

// pop waits for a datagram and copies it into p. A datagram longer than p
// reports its full length (n > len(p)) with the first len(p) bytes copied,
// so that pion drops it as oversized. After close it returns errSocketClosed.
func (q *inbox) pop(p []byte) (int, netip.AddrPort, error) {
	select {
	case d := <-q.ch:
		copy(p, d.buf[:d.n])
		n, from := d.n, d.from
		q.shared.pool.Put(d)
		q.shared.queued.Add(-1)
		return n, from, nil
	case <-q.done:
		return 0, netip.AddrPort{}, errSocketClosed
	}
}

// close wakes pop for good and gives back the budget of what is queued.
func (q *inbox) close() {
	q.once.Do(func() {
		close(q.done)
		q.drain()
	})
}

func (q *inbox) drain() {
	for {
		select {
		case d := <-q.ch:
			q.shared.pool.Put(d)
			q.shared.queued.Add(-1)
		default:
			return
		}
	}
}
