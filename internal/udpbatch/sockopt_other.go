//go:build !linux

package udpbatch

import "net"

// forceBuffers is a no-op outside Linux.
func forceBuffers(*net.UDPConn, int) {}
