package relay

import (
	"log/slog"
	"testing"
	"time"
)

// TestStatsAttrs: the stats line reports a live allocation.
func TestStatsAttrs(t *testing.T) {
	srv := startRelay(t, loopbackConfig())
	user, pass := firezoneCreds(srv, "stats-salt", time.Hour)
	c := newRawClient(t, srv.Addr(), user, pass)
	if _, err := c.allocate(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "allocations_ipv4=1 in the stats line", func() bool {
		for _, a := range srv.StatsAttrs() {
			if a.Key == "allocations_ipv4" {
				return a.Value.Kind() == slog.KindInt64 && a.Value.Int64() == 1
			}
		}
		return false
	})
}
