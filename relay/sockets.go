package relay

import (
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// socketOptions are applied to a socket before bind.
type socketOptions struct {
	reusePort bool
	buffer    int // SO_RCVBUF and SO_SNDBUF; 0 leaves the kernel default
}

// apply sets the options on fd. Buffer sizes try the FORCE variants first
// (they bypass net.core.[rw]mem_max but need CAP_NET_ADMIN) and fall back to
// the plain ones, which the kernel caps.
func (o socketOptions) apply(fd int) error {
	if o.reusePort {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return fmt.Errorf("set SO_REUSEPORT: %w", err)
		}
	}
	if o.buffer > 0 {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, o.buffer) != nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, o.buffer)
		}
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, o.buffer) != nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, o.buffer)
		}
	}
	return nil
}

// listenGroup binds n SO_REUSEPORT sockets on the same address; with port 0
// the first socket picks the port and the others join it.
func listenGroup(network string, addr netip.AddrPort, n int, o socketOptions) ([]*udpSocket, error) {
	o.reusePort = true
	socks := make([]*udpSocket, 0, n)
	for i := 0; i < n; i++ {
		s, err := openUDP(network, addr, o)
		if err != nil {
			for _, s := range socks {
				_ = s.close()
			}
			return nil, err
		}
		if i == 0 && addr.Port() == 0 {
			addr = netip.AddrPortFrom(addr.Addr(), s.local.Port())
		}
		socks = append(socks, s)
	}
	return socks, nil
}
