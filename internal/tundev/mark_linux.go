//go:build linux

package tundev

import (
	"context"
	"fmt"
	"net"
	"syscall"

	"github.com/pion/transport/v5"
	"github.com/pion/transport/v5/stdnet"
	"golang.org/x/sys/unix"
)

// MarkControl returns a Control function for net.Dialer and net.ListenConfig that sets SO_MARK to
// mark on every socket they create (needs CAP_NET_ADMIN). Packets of a marked socket skip the
// tunnel's policy rules and follow the main table, so the daemon's connections to relays, the
// portal and peers never loop into the tunnel, even under a default route through it.
func MarkControl(mark uint32) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		return setMark(c, mark)
	}
}

// MarkConn sets SO_MARK on an existing socket (e.g. a *net.UDPConn opened elsewhere).
func MarkConn(conn syscall.Conn, mark uint32) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("tundev: mark socket: %w", err)
	}
	return setMark(rc, mark)
}

func setMark(c syscall.RawConn, mark uint32) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
	}); err != nil {
		return fmt.Errorf("tundev: set SO_MARK: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("tundev: set SO_MARK %#x: %w", mark, serr)
	}
	return nil
}

// MarkedNet returns a pion transport.Net backed by the host's network stack (stdnet) whose
// sockets all carry SO_MARK=mark: ListenPacket, ListenUDP, ListenTCP, Dial, DialUDP, DialTCP and the
// dialers and listen configs it creates. Address resolution and interface listing are stdnet's
// (the interface list includes the TUN; filter it out of ICE gathering with an interface filter).
func MarkedNet(mark uint32) (transport.Net, error) {
	std, err := stdnet.NewNet()
	if err != nil {
		return nil, fmt.Errorf("tundev: marked net: %w", err)
	}
	return &markedNet{Net: std, control: MarkControl(mark)}, nil
}

type controlFunc = func(network, address string, c syscall.RawConn) error

type markedNet struct {
	*stdnet.Net
	control controlFunc
}

func (n *markedNet) listenConfig() *net.ListenConfig { return &net.ListenConfig{Control: n.control} }
func (n *markedNet) dialer() *net.Dialer             { return &net.Dialer{Control: n.control} }

func (n *markedNet) ListenPacket(network, address string) (net.PacketConn, error) {
	return n.listenConfig().ListenPacket(context.Background(), network, address)
}

func (n *markedNet) ListenUDP(network string, laddr *net.UDPAddr) (transport.UDPConn, error) {
	if !isUDP(network) {
		return nil, &net.OpError{Op: "listen", Net: network, Addr: laddr, Err: net.UnknownNetworkError(network)}
	}
	address := ""
	if laddr != nil {
		address = laddr.String()
	}
	pc, err := n.listenConfig().ListenPacket(context.Background(), network, address)
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

func (n *markedNet) ListenTCP(network string, laddr *net.TCPAddr) (transport.TCPListener, error) {
	if !isTCP(network) {
		return nil, &net.OpError{Op: "listen", Net: network, Addr: laddr, Err: net.UnknownNetworkError(network)}
	}
	address := ""
	if laddr != nil {
		address = laddr.String()
	}
	l, err := n.listenConfig().Listen(context.Background(), network, address)
	if err != nil {
		return nil, err
	}
	return tcpListener{l.(*net.TCPListener)}, nil
}

func (n *markedNet) Dial(network, address string) (net.Conn, error) {
	return n.dialer().Dial(network, address)
}

func (n *markedNet) DialUDP(network string, laddr, raddr *net.UDPAddr) (transport.UDPConn, error) {
	if !isUDP(network) {
		return nil, &net.OpError{Op: "dial", Net: network, Err: net.UnknownNetworkError(network)}
	}
	if raddr == nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: errMissingAddress}
	}
	d := n.dialer()
	if laddr != nil {
		d.LocalAddr = laddr
	}
	c, err := d.Dial(network, raddr.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.UDPConn), nil
}

func (n *markedNet) DialTCP(network string, laddr, raddr *net.TCPAddr) (transport.TCPConn, error) {
	if !isTCP(network) {
		return nil, &net.OpError{Op: "dial", Net: network, Err: net.UnknownNetworkError(network)}
	}
	if raddr == nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: errMissingAddress}
	}
	d := n.dialer()
	if laddr != nil {
		d.LocalAddr = laddr
	}
	c, err := d.Dial(network, raddr.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// CreateDialer returns a dialer like d whose sockets are also marked (d's own Control or
// ControlContext still runs, after the mark is set). d is copied, not modified.
func (n *markedNet) CreateDialer(d *net.Dialer) transport.Dialer {
	cp := *d
	if cp.ControlContext != nil {
		inner := cp.ControlContext
		cp.ControlContext = func(ctx context.Context, network, address string, c syscall.RawConn) error {
			if err := n.control(network, address, c); err != nil {
				return err
			}
			return inner(ctx, network, address, c)
		}
	} else {
		cp.Control = chainControl(n.control, cp.Control)
	}
	return &cp
}

// CreateListenConfig returns a listen config like lc whose sockets are also marked. lc is copied.
func (n *markedNet) CreateListenConfig(lc *net.ListenConfig) transport.ListenConfig {
	cp := *lc
	cp.Control = chainControl(n.control, cp.Control)
	return &cp
}

func chainControl(first, second controlFunc) controlFunc {
	if second == nil {
		return first
	}
	return func(network, address string, c syscall.RawConn) error {
		if err := first(network, address, c); err != nil {
			return err
		}
		return second(network, address, c)
	}
}

type tcpListener struct{ *net.TCPListener }

func (l tcpListener) AcceptTCP() (transport.TCPConn, error) { return l.TCPListener.AcceptTCP() }

var errMissingAddress = fmt.Errorf("missing address")

func isUDP(network string) bool {
	return network == "udp" || network == "udp4" || network == "udp6"
}

func isTCP(network string) bool {
	return network == "tcp" || network == "tcp4" || network == "tcp6"
}
