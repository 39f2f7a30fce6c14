//go:build snowgate_testhooks

package portalmock

import "github.com/snowgate/snowgate/internal/phoenix"

// testPanicEvent is the event that makes a binary built with -tags snowgate_testhooks panic while handling
// the frame (with the server lock held), to test that one connection's panic does not take the portal
// down. Production builds have no such hook.
const testPanicEvent = "snowgate_test_panic"

// testFrameHook panics on testPanicEvent.
func testFrameHook() func(*session, phoenix.Message) {
	return func(_ *session, msg phoenix.Message) {
		if msg.Event == testPanicEvent {
			panic("portalmock: test hook panic on topic " + msg.Topic)
		}
	}
}
