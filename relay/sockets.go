package relay

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// socketOptions are applied to a socket before bind.
type socketOptions struct {
	reusePort bool
	buffer    int // SO_RCVBUF and SO_SNDBUF; 0 leaves the kernel default
}

// control returns a net.ListenConfig Control function. Buffer sizes try the
// FORCE variants first (they bypass net.core.[rw]mem_max but need
// CAP_NET_ADMIN) and fall back to the plain ones, which the kernel caps.
func (o socketOptions) control() func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var sockErr error
		err := c.Control(func(fd uintptr) {
			if o.reusePort {
				if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
					sockErr = fmt.Errorf("set SO_REUSEPORT: %w", err)
					return
				}
			}
			if o.buffer > 0 {
				if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, o.buffer) != nil {
					_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, o.buffer)
				}
				if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, o.buffer) != nil {
					_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, o.buffer)
				}
			}
		})
		if err != nil {
			return fmt.Errorf("raw conn control: %w", err)
		}
		return sockErr
	}
}

// listenUDP binds one UDP socket of network ("udp4"/"udp6") on addr.
func listenUDP(ctx context.Context, network string, addr netip.AddrPort, o socketOptions) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: o.control()}
	pc, err := lc.ListenPacket(ctx, network, addr.String())
	if err != nil {
		return nil, fmt.Errorf("listen %s %s: %w", network, addr, err)
	}
	return pc.(*net.UDPConn), nil
}

// listenGroup binds n SO_REUSEPORT sockets on the same address; with port 0
// the first socket picks the port and the others join it.
func listenGroup(ctx context.Context, network string, addr netip.AddrPort, n int, o socketOptions) ([]*net.UDPConn, error) {
	o.reusePort = true
	conns := make([]*net.UDPConn, 0, n)
	closeAll := func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}
	for i := 0; i < n; i++ {
		c, err := listenUDP(ctx, network, addr, o)
		if err != nil {
			closeAll()
			return nil, err
		}
		if i == 0 && addr.Port() == 0 {
			addr = netip.AddrPortFrom(addr.Addr(), uint16(c.LocalAddr().(*net.UDPAddr).Port))
		}
		conns = append(conns, c)
	}
	return conns, nil
}
