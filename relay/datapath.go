package relay

import (
	"errors"
	"net"
)

// Shared by both data path implementations: udpsock_linux.go and
// worker_linux.go (epoll, recvmmsg, sendmmsg, UDP GSO; the relay fleet's
// platform) and udpsock_other.go and worker_other.go (a goroutine per
// socket on the netpoller, so that the dev stack and the tests that embed a
// relay run on other Unix systems too; on Linux the build tag relay_portable
// selects it, which is how its tests run here: go test -tags relay_portable).

// maxReadBuffer is the largest datagram the relay receives whole (payload
// bytes, after the headroom); longer ones are dropped. pion's own buffers
// are 1600 bytes.
const maxReadBuffer = 2048

// channelDataHeader is the headroom kept in front of each received payload
// so that a datagram from a peer becomes ChannelData in place.
const channelDataHeader = 4

// errSocketClosed is returned by calls on a closed udpSocket.
var errSocketClosed = net.ErrClosed

// errUnreachableFamily: the destination is not of the socket's family.
var errUnreachableFamily = errors.New("destination address family does not match the socket")
