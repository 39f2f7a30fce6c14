package node

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"

	"github.com/pion/transport/v5"

	"github.com/snowgate/snowgate/internal/udpbatch"
)

// socketBufferSize is the receive/send buffer size requested for node sockets
// (default kernel buffers cap a single flow far below line rate).
const socketBufferSize = 7 << 20

// socket is one UDP socket of the node (one per address family), with
// batched I/O (internal/udpbatch) when it is a kernel socket.
type socket struct {
	family int // 4 or 6
	pc     net.PacketConn
	io     *udpbatch.Conn
	port   uint16
	// mapped is the socket's server-reflexive address as the relays see it
	// (learnt from their STUN keepalives): the node-wide srflx candidate,
	// kept when relays go away.
	mapped atomic.Pointer[netip.AddrPort]
	// closed is set before the node closes pc: a read error after it is
	// the end of the socket, whatever error the PacketConn returns.
	closed atomic.Bool
}

// listenSockets opens the v4 socket and, when possible, a v6 socket on the same
// port (the ICE mux advertises a single port for both families). v6 failing is
// not an error: the node runs IPv4-only.
func listenSockets(n transport.Net, port int, wantV6 bool) ([]*socket, error) {
	for attempt := 0; attempt < 8; attempt++ {
		s4, err := listenSocket(n, 4, port)
		if err != nil {
			return nil, err
		}
		if !wantV6 {
			return []*socket{s4}, nil
		}
		s6, err := listenSocket(n, 6, int(s4.port))
		if err == nil {
			return []*socket{s4, s6}, nil
		}
		if port == 0 && errors.Is(err, syscall.EADDRINUSE) {
			_ = s4.pc.Close()
			continue // ephemeral v4 port taken in v6: try another
		}
		return []*socket{s4}, nil
	}
	return nil, fmt.Errorf("listen: no port free in both families")
}

func listenSocket(n transport.Net, family, port int) (*socket, error) {
	network, ip := "udp4", net.IPv4zero
	if family == 6 {
		network, ip = "udp6", net.IPv6unspecified
	}
	uc, err := n.ListenUDP(network, &net.UDPAddr{IP: ip, Port: port})
	if err != nil {
		return nil, fmt.Errorf("listen %s port %d: %w", network, port, err)
	}
	s := &socket{family: family, pc: uc, io: udpbatch.New(uc, family)}
	if la, ok := uc.LocalAddr().(*net.UDPAddr); ok {
		s.port = uint16(la.Port)
	}
	if kc, ok := uc.(*net.UDPConn); ok {
		udpbatch.SetBuffers(kc, socketBufferSize)
		// UDP GSO and GRO, as wireguard-go's own bind has: a TCP flow through the TUN becomes
		// bursts of equal-size WireGuard messages to one peer, sent and received as one each.
		// Received datagrams are copied into wireguard-go's buffers (see udpbatch.Reader).
		s.io.EnableOffload()
	}
	return s, nil
}

// writeBatch sends every buffer to dst.
func (s *socket) writeBatch(bufs [][]byte, dst netip.AddrPort) error {
	return s.io.WriteBatch(bufs, dst)
}

func (s *socket) writeTo(b []byte, dst netip.AddrPort) (int, error) { return s.io.WriteTo(b, dst) }

func addrPortOf(a net.Addr) netip.AddrPort { return udpbatch.AddrPortOf(a) }
