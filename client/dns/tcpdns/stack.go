// Package tcpdns terminates DNS over TCP on the sentinel addresses inside the client, with a userspace TCP
// stack (gVisor netstack). The client feeds the raw IP packets it reads from its TUN device for a sentinel
// into WritePacket and writes what ReadPacket returns back to the TUN; Listen gives net.Listeners whose
// connections can be reset (RST), as refusing a connection over the per-sentinel limit requires.
//
// The stack is built directly on gvisor.dev/gvisor (the same stack wireguard-go's tun/netstack wraps) because
// wireguard-go's gonet connections hide their endpoint, so they cannot send a reset.
package tcpdns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// ErrClosed is returned by operations on a closed Stack or Listener; it wraps net.ErrClosed.
var ErrClosed = fmt.Errorf("tcpdns: %w", net.ErrClosed)

// ErrNotIP is returned by WritePacket for a packet that is neither IPv4 nor IPv6.
var ErrNotIP = errors.New("tcpdns: not an IP packet")

const nicID = 1

// Stack is a userspace IPv4/IPv6 TCP stack owning the sentinel addresses.
type Stack struct {
	s  *stack.Stack
	ep *channel.Endpoint

	closeOnce sync.Once
}

// New creates a stack that owns addrs (the sentinel addresses) with the given MTU (1280 on the client TUN).
func New(addrs []netip.Addr, mtu int) (*Stack, error) {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	ep := channel.New(512, uint32(mtu), "")
	st := &Stack{s: s, ep: ep}
	if err := s.CreateNIC(nicID, ep); err != nil {
		st.Close()
		return nil, fmt.Errorf("tcpdns: creating NIC: %s", err)
	}
	var has4, has6 bool
	for _, a := range addrs {
		proto := ipv4.ProtocolNumber
		if a.Is6() {
			proto, has6 = ipv6.ProtocolNumber, true
		} else {
			has4 = true
		}
		pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: tcpip.AddrFromSlice(a.AsSlice()).WithPrefix()}
		if err := s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			st.Close()
			return nil, fmt.Errorf("tcpdns: adding address %s: %s", a, err)
		}
	}
	if has4 {
		s.AddRoute(tcpip.Route{Destination: header.IPv4EmptySubnet, NIC: nicID})
	}
	if has6 {
		s.AddRoute(tcpip.Route{Destination: header.IPv6EmptySubnet, NIC: nicID})
	}
	return st, nil
}

// WritePacket injects one IP packet read from the TUN into the stack. The stack copies it.
func (st *Stack) WritePacket(pkt []byte) error {
	if len(pkt) == 0 {
		return ErrNotIP
	}
	var proto tcpip.NetworkProtocolNumber
	switch pkt[0] >> 4 {
	case 4:
		proto = header.IPv4ProtocolNumber
	case 6:
		proto = header.IPv6ProtocolNumber
	default:
		return ErrNotIP
	}
	pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt)})
	st.ep.InjectInbound(proto, pb)
	pb.DecRef()
	return nil
}

// ReadPacket blocks until the stack emits an IP packet (to be written to the TUN) and copies it into buf.
// It returns ctx.Err() when ctx ends and ErrClosed after Close.
func (st *Stack) ReadPacket(ctx context.Context, buf []byte) (int, error) {
	pkt := st.ep.ReadContext(ctx)
	if pkt == nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, ErrClosed
	}
	defer pkt.DecRef()
	n := 0
	for _, s := range pkt.AsSlices() {
		n += copy(buf[n:], s)
	}
	return n, nil
}

// Listen listens for TCP connections on addr (a sentinel address and port 53).
func (st *Stack) Listen(addr netip.AddrPort) (*Listener, error) {
	proto := ipv4.ProtocolNumber
	if addr.Addr().Is6() {
		proto = ipv6.ProtocolNumber
	}
	var wq waiter.Queue
	ep, err := st.s.NewEndpoint(tcp.ProtocolNumber, proto, &wq)
	if err != nil {
		return nil, fmt.Errorf("tcpdns: new endpoint: %s", err)
	}
	fa := tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFromSlice(addr.Addr().AsSlice()), Port: addr.Port()}
	if err := ep.Bind(fa); err != nil {
		ep.Close()
		return nil, fmt.Errorf("tcpdns: bind %s: %s", addr, err)
	}
	if err := ep.Listen(64); err != nil {
		ep.Close()
		return nil, fmt.Errorf("tcpdns: listen %s: %s", addr, err)
	}
	return &Listener{ep: ep, wq: &wq, addr: addr, done: make(chan struct{})}, nil
}

// Close tears the stack down; pending ReadPacket calls return ErrClosed.
func (st *Stack) Close() {
	st.closeOnce.Do(func() {
		st.s.Close()
		st.ep.Close()
		st.s.Wait()
	})
}

// Listener accepts DNS-over-TCP connections inside the stack.
type Listener struct {
	ep   tcpip.Endpoint
	wq   *waiter.Queue
	addr netip.AddrPort

	closeOnce sync.Once
	done      chan struct{}
}

// Accept waits for the next connection; it returns a *Conn.
func (l *Listener) Accept() (net.Conn, error) {
	entry, notify := waiter.NewChannelEntry(waiter.ReadableEvents)
	l.wq.EventRegister(&entry)
	defer l.wq.EventUnregister(&entry)
	for {
		n, wq, err := l.ep.Accept(nil)
		if err == nil {
			return &Conn{TCPConn: gonet.NewTCPConn(wq, n), ep: n}, nil
		}
		if _, ok := err.(*tcpip.ErrWouldBlock); !ok {
			select {
			case <-l.done:
				return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: ErrClosed}
			default:
			}
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: errors.New(err.String())}
		}
		select {
		case <-l.done:
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: ErrClosed}
		case <-notify:
		}
	}
}

// Close stops accepting.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() {
		close(l.done)
		l.ep.Close()
	})
	return nil
}

// Addr returns the listening address.
func (l *Listener) Addr() net.Addr { return net.TCPAddrFromAddrPort(l.addr) }

// Conn is one accepted connection.
type Conn struct {
	*gonet.TCPConn
	ep tcpip.Endpoint
}

// Reset aborts the connection with a TCP RST and releases it.
func (c *Conn) Reset() error {
	c.ep.Abort()
	return c.TCPConn.Close()
}
