package relay

import "net/netip"

// socketOptions are applied to a socket before bind.
type socketOptions struct {
	reusePort bool
	buffer    int // SO_RCVBUF and SO_SNDBUF; 0 leaves the kernel default
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
