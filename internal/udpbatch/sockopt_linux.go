//go:build linux

package udpbatch

import (
	"net"

	"golang.org/x/sys/unix"
)

// forceBuffers raises the socket buffers past net.core.{r,w}mem_max when the
// process may (CAP_NET_ADMIN); SetReadBuffer/SetWriteBuffer are capped there.
func forceBuffers(c *net.UDPConn, size int) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size)
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, size)
	})
}
