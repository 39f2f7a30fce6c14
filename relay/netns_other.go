//go:build (unix && !linux) || relay_portable

package relay

import "net/netip"

// socketOpener opens relay sockets (network namespaces are Linux's; see
// netns_linux.go).
type socketOpener struct{}

func newSocketOpener() (*socketOpener, error) { return &socketOpener{}, nil }

func (*socketOpener) open(network string, addr netip.AddrPort, opts socketOptions) (*udpSocket, error) {
	return openUDP(network, addr, opts)
}

func (*socketOpener) close() {}
