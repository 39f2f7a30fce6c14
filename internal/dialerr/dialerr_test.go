package dialerr

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
)

func TestClassify(t *testing.T) {
	op := func(err error) error { return &net.OpError{Op: "dial", Net: "tcp", Err: err} }
	gv := func(e tcpip.Error) error { return op(errors.New(e.String())) }
	tests := []struct {
		name string
		err  error
		want Kind
	}{
		{"nil", nil, None},
		{"econnrefused", op(os.NewSyscallError("connect", syscall.ECONNREFUSED)), Refused},
		{"enetunreach", op(os.NewSyscallError("connect", syscall.ENETUNREACH)), NetworkUnreachable},
		{"ehostunreach", op(os.NewSyscallError("connect", syscall.EHOSTUNREACH)), HostUnreachable},
		{"ehostdown", syscall.EHOSTDOWN, HostUnreachable},
		{"etimedout", op(syscall.ETIMEDOUT), Timeout},
		{"context deadline", fmt.Errorf("dialing: %w", context.DeadlineExceeded), Timeout},
		{"os deadline", op(os.ErrDeadlineExceeded), Timeout},
		{"canceled", op(context.Canceled), Canceled},
		{"eacces", op(syscall.EACCES), Prohibited},
		{"gvisor refused", gv(&tcpip.ErrConnectionRefused{}), Refused},
		{"gvisor no route", gv(&tcpip.ErrHostUnreachable{}), HostUnreachable},
		{"gvisor net unreachable", gv(&tcpip.ErrNetworkUnreachable{}), NetworkUnreachable},
		{"gvisor timeout", gv(&tcpip.ErrTimeout{}), Timeout},
		{"gvisor in join", errors.Join(errors.New("x"), gv(&tcpip.ErrConnectionRefused{})), Refused},
		{"other", errors.New("boom"), Other},
		{"dns", &net.DNSError{Err: "no such host", IsNotFound: true}, Other},
		{"dns timeout", &net.DNSError{Err: "i/o timeout", IsTimeout: true}, Timeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Classify(tt.err); got != tt.want {
				t.Errorf("Classify(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}
