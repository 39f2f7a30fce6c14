// Package dialerr classifies the error of a failed dial (or of a socket operation that reports a dial's
// outcome later, such as a connected UDP socket's read) into the few kinds a forwarder answers differently:
// refused, network or host unreachable, timed out, prohibited. It understands the host's errors (syscall
// errnos inside *net.OpError, context and deadline errors) and the errors of gVisor's gonet adapter, which
// wireguard-go's tun/netstack returns and which carry only the gVisor error's text (errors.New(err.String())).
//
// Both userspace data paths use it: the gateway's forwarder (gateway/userfwd) to choose between a TCP RST and
// an ICMP unreachable, and the client's SOCKS5 proxy (client/socks5) to choose the RFC 1928 reply code.
package dialerr

import (
	"context"
	"errors"
	"net"
	"os"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// Kind is the class of a dial error.
type Kind int

// Kinds of dial errors.
const (
	// None: no error.
	None Kind = iota
	// Refused: the destination answered with a TCP RST or an ICMP port unreachable.
	Refused
	// NetworkUnreachable: no route to the destination's network.
	NetworkUnreachable
	// HostUnreachable: no route to the destination host, or it is down.
	HostUnreachable
	// Timeout: the attempt timed out (deadline, context deadline, ETIMEDOUT).
	Timeout
	// Prohibited: the local host refused the operation (EACCES, EPERM: a firewall, a broadcast address).
	Prohibited
	// Canceled: the dial's context was canceled.
	Canceled
	// Other: anything else.
	Other
)

var kindNames = [...]string{"none", "refused", "network_unreachable", "host_unreachable", "timeout", "prohibited", "canceled", "other"}

func (k Kind) String() string {
	if k < 0 || int(k) >= len(kindNames) {
		return "unknown"
	}
	return kindNames[k]
}

// gVisor's error texts, as gonet returns them.
var gvisorKinds = map[string]Kind{
	(&tcpip.ErrConnectionRefused{}).String():  Refused,
	(&tcpip.ErrNetworkUnreachable{}).String(): NetworkUnreachable,
	(&tcpip.ErrNoNet{}).String():              NetworkUnreachable,
	(&tcpip.ErrHostUnreachable{}).String():    HostUnreachable,
	(&tcpip.ErrHostDown{}).String():           HostUnreachable,
	(&tcpip.ErrTimeout{}).String():            Timeout,
}

// Classify returns the kind of err; nil is None.
func Classify(err error) Kind {
	if err == nil {
		return None
	}
	switch {
	case errors.Is(err, context.Canceled):
		return Canceled
	case errors.Is(err, syscall.ECONNREFUSED):
		return Refused
	case errors.Is(err, syscall.ENETUNREACH):
		return NetworkUnreachable
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.EHOSTDOWN):
		return HostUnreachable
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.Is(err, syscall.ETIMEDOUT):
		return Timeout
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return Prohibited
	}
	if k, ok := gvisorKind(err); ok {
		return k
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return Timeout
	}
	return Other
}

// gvisorKind walks err's chain for an error whose text is one of gVisor's.
func gvisorKind(err error) (Kind, bool) {
	stack := []error{err}
	for len(stack) > 0 && len(stack) < 64 {
		e := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if e == nil {
			continue
		}
		if k, ok := gvisorKinds[e.Error()]; ok {
			return k, true
		}
		switch u := e.(type) {
		case interface{ Unwrap() error }:
			stack = append(stack, u.Unwrap())
		case interface{ Unwrap() []error }:
			stack = append(stack, u.Unwrap()...)
		}
	}
	return Other, false
}
