package tundev

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if a test leaves a goroutine behind (watchers, TUN readers, netlink
// subscriptions must all stop with their owner).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
