package idle_test

import (
	"fmt"
	"time"

	"github.com/snowgate/snowgate/node/idle"
)

// A node drives the Scheduler from one timer: sleep until NextWake, Poll, act, repeat. Here the clock is
// fake: three connections go quiet and from then on cost one wake-up per keepalive period together.
func ExampleScheduler() {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := idle.New(idle.Config{IdleAfter: 20 * time.Second, KeepaliveInterval: 25 * time.Second, ActiveInterval: -1})
	for _, id := range []string{"a", "b", "c"} {
		s.Add(id, start)
	}
	for range 4 {
		now, ok := s.NextWake() // a real node: timer.Reset(time.Until(now)), then wait for it
		if !ok {
			break
		}
		for _, due := range s.Poll(now) {
			fmt.Println(now.Sub(start), due.Job)
		}
	}
	fmt.Println("wake-ups:", s.Wakeups())
	// Output:
	// 20s went-idle/a
	// 20s went-idle/b
	// 20s went-idle/c
	// 25s nat-keepalive/a
	// 25s nat-keepalive/b
	// 25s nat-keepalive/c
	// 50s nat-keepalive/a
	// 50s nat-keepalive/b
	// 50s nat-keepalive/c
	// 1m15s nat-keepalive/a
	// 1m15s nat-keepalive/b
	// 1m15s nat-keepalive/c
	// wake-ups: 4
}
