//go:build linux

package xdppass

import (
	"fmt"
	"net"
	"testing"

	"github.com/snowgate/snowgate/internal/netlab"
)

// AttachBridgeEnd attaches the pass program to the bridge end of lk (see netlab.Link.BridgeEnd)
// and detaches it when the test ends. Failures are fatal.
func AttachBridgeEnd(tb testing.TB, lk *netlab.Link) {
	tb.Helper()
	ns, dev := lk.BridgeEnd()
	var c interface{ Close() error }
	err := ns.Do(func() error {
		ifc, err := net.InterfaceByName(dev)
		if err != nil {
			return fmt.Errorf("xdppass: %s: %w", dev, err)
		}
		c, err = Attach(ifc.Index)
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Close() })
}
