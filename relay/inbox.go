package relay

import (
	"net/netip"
	"sync"
)

// inbox hands the datagrams the fast path does not take from a worker to
// pion's read loop for that socket (ReadFrom). It is bounded: when pion
// falls behind, new datagrams are dropped (and counted) rather than stall
// the worker and every other socket it reads.
type inbox struct {
	ch   chan *queuedDatagram
	done chan struct{}
	once sync.Once
	pool *sync.Pool // of *queuedDatagram, shared by the server's inboxes
}

// queuedDatagram is one datagram waiting in an inbox.
type queuedDatagram struct {
	buf  [maxReadBuffer]byte
	n    int
	from netip.AddrPort
}

func newDatagramPool() *sync.Pool {
	return &sync.Pool{New: func() any { return new(queuedDatagram) }}
}

func newInbox(size int, pool *sync.Pool) *inbox {
	return &inbox{ch: make(chan *queuedDatagram, size), done: make(chan struct{}), pool: pool}
}

// push copies p into the inbox; false if it is full or closed.
func (q *inbox) push(p []byte, from netip.AddrPort) bool {
	select {
	case <-q.done:
		return false
	default:
	}
	d := q.pool.Get().(*queuedDatagram)
	d.n = copy(d.buf[:], p)
	d.from = from
	select {
	case q.ch <- d:
		return true
	default:
		q.pool.Put(d)
		return false
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
		q.pool.Put(d)
		return n, from, nil
	case <-q.done:
		return 0, netip.AddrPort{}, errSocketClosed
	}
}

// close wakes pop for good; queued datagrams are left to the collector.
func (q *inbox) close() { q.once.Do(func() { close(q.done) }) }
