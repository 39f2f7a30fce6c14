//go:build !linux

package node

import "net"

// forceBuffers is a no-op outside Linux.
func forceBuffers(*net.UDPConn, int) {}
