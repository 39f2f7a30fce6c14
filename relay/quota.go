package relay

import (
	"sync"
	"time"
)

// quota tracks live allocations per user id and in total. pion asks admit
// before creating an allocation and reports its creation through the event
// handler, in the same request; the listener sockets run in parallel, so
// admit reserves a place that created turns into an allocation. A
// reservation whose allocation failed (no free port, say) is never claimed
// and lapses after reservationTTL.
type quota struct {
	perUser, max int

	mu       sync.Mutex
	users    map[string]int // live allocations per user
	allocs   map[string]allocEntry
	reserved []reservation // admitted, not created yet; oldest first
}

type allocEntry struct {
	user string
	v6   bool
}

type reservation struct {
	user    string
	expires time.Time
}

// reservationTTL bounds how long an admitted Allocate may take to create
// its allocation (pion does it within the request, in milliseconds).
const reservationTTL = 10 * time.Second

func newQuota(perUser, maxTotal int) *quota {
	return &quota{perUser: perUser, max: maxTotal, users: map[string]int{}, allocs: map[string]allocEntry{}}
}

// admit reserves a place for an allocation of user if the quotas allow one.
func (q *quota) admit(user string, now time.Time) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.expire(now)
	mine := q.users[user]
	for _, r := range q.reserved {
		if r.user == user {
			mine++
		}
	}
	if len(q.allocs)+len(q.reserved) >= q.max || mine >= q.perUser {
		return false
	}
	q.reserved = append(q.reserved, reservation{user: user, expires: now.Add(reservationTTL)})
	return true
}

// expire drops lapsed reservations (q.mu held).
func (q *quota) expire(now time.Time) {
	i := 0
	for i < len(q.reserved) && !now.Before(q.reserved[i].expires) {
		i++
	}
	q.reserved = q.reserved[i:]
}

// created records an allocation, claiming user's oldest reservation; false
// if key was already recorded.
func (q *quota) created(key, user string, v6 bool) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, r := range q.reserved {
		if r.user == user {
			q.reserved = append(q.reserved[:i], q.reserved[i+1:]...)
			break
		}
	}
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
