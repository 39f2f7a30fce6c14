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
//
// The queue is a slice that grows only while datagrams wait and is given
// back once it drains, and the wake-up channel holds one token: an idle
// allocation's inbox costs a few words, not a channel buffer of size
// pointers (a relay holds one inbox per allocation, issue 13).
type inbox struct {
	size   int
	shared *inboxBudget
	ready  chan struct{} // one token: the queue may be non-empty
	done   chan struct{}
	once   sync.Once

	mu     sync.Mutex
	queue  []*queuedDatagram
	head   int // queue[head:] wait
	closed bool
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

// keptQueue is the most queue capacity an empty inbox keeps; a larger
// queue (after a burst) is given back when it drains.
const keptQueue = 8

func newInbox(size int, shared *inboxBudget) *inbox {
	return &inbox{size: size, shared: shared, ready: make(chan struct{}, 1), done: make(chan struct{})}
}

// push copies p into the inbox; false if it is full or closed.
func (q *inbox) push(p []byte, from netip.AddrPort) bool {
	b := q.shared
	q.mu.Lock()
	if q.closed || len(q.queue)-q.head >= q.size {
		q.mu.Unlock()
		return false
	}
	if b.queued.Add(1) > b.limit {
		b.queued.Add(-1)
		q.mu.Unlock()
		return false
	}
	d := b.pool.Get().(*queuedDatagram)
	d.n = copy(d.buf[:], p)
	d.from = from
	if q.head > 0 && len(q.queue) == cap(q.queue) { // slide the waiting ones to the front
		k := copy(q.queue, q.queue[q.head:])
		clear(q.queue[k:])
		q.queue, q.head = q.queue[:k], 0
	}
	q.queue = append(q.queue, d)
	q.mu.Unlock()
	q.signal()
	return true
}

// signal leaves the wake-up token (one is enough: pop re-checks the queue).
func (q *inbox) signal() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// pop waits for a datagram and copies it into p. A datagram longer than p
// reports its full length (n > len(p)) with the first len(p) bytes copied,
// so that pion drops it as oversized. After close it returns errSocketClosed.
func (q *inbox) pop(p []byte) (int, netip.AddrPort, error) {
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return 0, netip.AddrPort{}, errSocketClosed
		}
		if q.head < len(q.queue) {
			d := q.queue[q.head]
			q.queue[q.head] = nil
			q.head++
			more := q.head < len(q.queue)
			if !more {
				q.head = 0
				if cap(q.queue) > keptQueue {
					q.queue = nil
				} else {
					q.queue = q.queue[:0]
				}
			}
			q.mu.Unlock()
			if more { // another reader may be waiting for the token this one took
				q.signal()
			}
			copy(p, d.buf[:d.n])
			n, from := d.n, d.from
			q.shared.pool.Put(d)
			q.shared.queued.Add(-1)
			return n, from, nil
		}
		q.mu.Unlock()
		select {
		case <-q.ready:
		case <-q.done:
		}
	}
}

// close wakes pop for good and gives back the budget of what is queued.
func (q *inbox) close() {
	q.once.Do(func() {
		q.mu.Lock()
		q.closed = true
		waiting := q.queue[q.head:]
		q.queue, q.head = nil, 0
		q.mu.Unlock()
		for _, d := range waiting {
			q.shared.pool.Put(d)
			q.shared.queued.Add(-1)
		}
		close(q.done)
	})
}
