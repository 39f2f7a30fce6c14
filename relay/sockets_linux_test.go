//go:build !relay_portable

package relay

import (
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSocketOptions checks SO_REUSEPORT groups and buffer sizes: as root the
// FORCE variants give the full size; otherwise the kernel caps the plain
// option at net.core.rmem_max.
func TestSocketOptions(t *testing.T) {
	const want = 4 << 20
	conns, err := listenGroup("udp4", netip.MustParseAddrPort("127.0.0.1:0"), 3, socketOptions{buffer: want})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, c := range conns {
			_ = c.close()
		}
	}()
	port := conns[0].LocalAddr().String()
	for _, c := range conns[1:] {
		if c.LocalAddr().String() != port {
			t.Fatalf("group sockets on %s and %s", port, c.LocalAddr())
		}
	}
	limit := want
	if os.Geteuid() != 0 {
		if b, err := os.ReadFile("/proc/sys/net/core/rmem_max"); err == nil {
			if m, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && m < limit {
				limit = m
			}
		}
	}
	got, err := unix.GetsockoptInt(conns[0].fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
	if err != nil {
		t.Fatal(err)
	}
	// The kernel reports twice the set value (bookkeeping overhead).
	if got < limit {
		t.Fatalf("SO_RCVBUF = %d, want at least %d", got, limit)
	}
}
