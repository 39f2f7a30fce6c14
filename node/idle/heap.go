package idle

import "time"

// entry is one timer in the heap: a node job, or an active connection's idle deadline (c != nil).
type entry struct {
	at     time.Time
	id     JobID
	period time.Duration // > 0 for periodic node jobs
	c      *conn         // set for idle deadlines; at is then a lower bound of c.last+IdleAfter
	index  int
}

// timerHeap is a min-heap of entries by at (container/heap.Interface).
type timerHeap []*entry

func (h timerHeap) Len() int { return len(h) }

func (h timerHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }

func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}

func (h *timerHeap) Push(x any) {
	e := x.(*entry)
	e.index = len(*h)
	*h = append(*h, e)
}

func (h *timerHeap) Pop() any {
	old := *h
	n := len(old)
	e := old[n-1]
	old[n-1] = nil
	e.index = -1
	*h = old[:n-1]
	return e
}
