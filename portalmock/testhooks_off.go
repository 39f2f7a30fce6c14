//go:build !snowgate_testhooks

package portalmock

import "github.com/snowgate/snowgate/internal/phoenix"

// testFrameHook is the core's frame hook of production builds: none.
func testFrameHook() func(*session, phoenix.Message) { return nil }
