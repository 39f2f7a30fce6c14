// Package fifo is the output queue of snowgate's sans-IO state machines: a core appends what it produced
// (packets to send, events, upstream queries) with Push, and its Poll… methods hand them out in order with
// Pop. One type for every core instead of a hand-written slice queue in each.
//
// The zero Queue is empty and ready to use. A Queue reuses its storage: once drained it starts again at
// the front of the same array, and a queue that is never quite drained compacts itself when it is full, so
// a steady flow of Push and Pop allocates nothing. Popped and deleted slots are zeroed, so the queue keeps
// no references to what it handed out. A Queue is not safe for concurrent use.
package fifo

import "slices"

// Queue is a first-in first-out queue of T.
type Queue[T any] struct {
	buf  []T // buf[head:] holds the queued elements, oldest first
	head int
}

// Push appends v at the back.
func (q *Queue[T]) Push(v T) {
	if q.head > 0 && len(q.buf) == cap(q.buf) && q.head >= len(q.buf)/2 {
		q.compact()
	}
	q.buf = append(q.buf, v)
}

// compact moves the queued elements to the front of buf.
func (q *Queue[T]) compact() {
	n := copy(q.buf, q.buf[q.head:])
	clear(q.buf[n:])
	q.buf = q.buf[:n]
	q.head = 0
}

// Pop removes and returns the front element; ok is false when the queue is empty.
func (q *Queue[T]) Pop() (v T, ok bool) {
	if q.head == len(q.buf) {
		return v, false
	}
	v = q.buf[q.head]
	var zero T
	q.buf[q.head] = zero
	q.head++
	if q.head == len(q.buf) {
		q.buf, q.head = q.buf[:0], 0
	}
	return v, true
}

// Peek returns the front element without removing it; ok is false when the queue is empty.
func (q *Queue[T]) Peek() (v T, ok bool) {
	if q.head == len(q.buf) {
		return v, false
	}
	return q.buf[q.head], true
}

// Len returns the number of queued elements.
func (q *Queue[T]) Len() int { return len(q.buf) - q.head }

// DeleteFunc removes every queued element for which del returns true, keeping the others in order, and
// returns how many it removed.
func (q *Queue[T]) DeleteFunc(del func(T) bool) int {
	live := q.buf[q.head:]
	kept := slices.DeleteFunc(live, del) // zeroes the slots it frees
	q.buf = q.buf[:q.head+len(kept)]
	if q.head == len(q.buf) {
		q.buf, q.head = q.buf[:0], 0
	}
	return len(live) - len(kept)
}

// Clear removes every queued element.
func (q *Queue[T]) Clear() {
	clear(q.buf)
	q.buf, q.head = q.buf[:0], 0
}
