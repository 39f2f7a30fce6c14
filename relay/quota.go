package relay

import "sync"

// quota tracks live allocations per user id and in total. pion asks admit
// before creating an allocation and reports creation and deletion through its
// event handler. The listener sockets run in parallel, so concurrent Allocate
// requests of one user may overshoot the per-user limit by at most the
// number of listener sockets.
type quota struct {
	perUser, max int

	mu     sync.Mutex
	users  map[string]int
	allocs map[string]allocEntry
}

type allocEntry struct {
	user string
	v6   bool
}

func newQuota(perUser, maxTotal int) *quota {
	return &quota{perUser: perUser, max: maxTotal, users: map[string]int{}, allocs: map[string]allocEntry{}}
}

func (q *quota) admit(user string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.allocs) < q.max && q.users[user] < q.perUser
}

// created records an allocation; false if key was already recorded.
func (q *quota) created(key, user string, v6 bool) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, dup := q.allocs[key]; dup {
		return false
	}
	q.allocs[key] = allocEntry{user: user, v6: v6}
	q.users[user]++
	return true
}

func (q *quota) deleted(key string) (found, v6 bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	e, ok := q.allocs[key]
	if !ok {
		return false, false
	}
	delete(q.allocs, key)
	if q.users[e.user]--; q.users[e.user] <= 0 {
		delete(q.users, e.user)
	}
	return true, e.v6
}

func (q *quota) total() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.allocs)
}
