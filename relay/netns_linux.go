//go:build !relay_portable

package relay

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"

	"golang.org/x/sys/unix"
)

// socketOpener opens the relay sockets of allocations in the network
// namespace the server was started in.
//
// pion asks for an allocation's socket from its own goroutines, which may run
// on any thread of the process. In a normal deployment every thread is in
// the same namespace, but a server started from a thread switched into
// another namespace (a test bed running relays in-process, e.g.
// internal/netlab's Namespace.Do) would bind its relay sockets in the wrong
// one. So one goroutine, locked to its thread, opens them; if that thread is
// not in the server's namespace it switches (setns, which needs
// CAP_SYS_ADMIN — test beds have it, and a deployment never needs it). The
// cost is a channel round trip per allocation.
type socketOpener struct {
	reqs chan openRequest
	stop chan struct{}
	done chan struct{}
}

type openRequest struct {
	network string
	addr    netip.AddrPort
	opts    socketOptions
	res     chan openResult
}

type openResult struct {
	sock *udpSocket
	err  error
}

// newSocketOpener must run on the goroutine (thread) that started the server.
func newSocketOpener() (*socketOpener, error) {
	runtime.LockOSThread() // the namespace opened below must be this thread's
	fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	runtime.UnlockOSThread()
	if err != nil {
		return nil, fmt.Errorf("open network namespace: %w", err)
	}
	o := &socketOpener{reqs: make(chan openRequest), stop: make(chan struct{}), done: make(chan struct{})}
	ready := make(chan error, 1)
	go o.serve(fd, ready)
	if err := <-ready; err != nil {
		<-o.done
		return nil, err
	}
	return o, nil
}

// serve opens sockets on a thread in the namespace of fd until close. The
// thread stays locked: if it had to switch namespaces, Go ends it with the
// goroutine instead of reusing it elsewhere.
func (o *socketOpener) serve(fd int, ready chan<- error) {
	defer close(o.done)
	runtime.LockOSThread()
	err := enterNamespace(fd)
	_ = unix.Close(fd)
	if err != nil {
		ready <- err
		return
	}
	ready <- nil
	for {
		select {
		case req := <-o.reqs:
			s, err := openUDP(req.network, req.addr, req.opts)
			req.res <- openResult{s, err}
		case <-o.stop:
			return
		}
	}
}

// enterNamespace switches the calling (locked) thread into the network
// namespace fd unless it is there already.
func enterNamespace(fd int) error {
	var want, here unix.Stat_t
	if err := unix.Fstat(fd, &want); err != nil {
		return fmt.Errorf("stat the server's network namespace: %w", err)
	}
	if err := unix.Stat("/proc/thread-self/ns/net", &here); err != nil {
		return fmt.Errorf("stat this thread's network namespace: %w", err)
	}
	if want.Dev == here.Dev && want.Ino == here.Ino {
		return nil
	}
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("enter the server's network namespace: %w", err)
	}
	return nil
}

var errOpenerClosed = errors.New("relay socket opener closed")

// open binds a relay socket in the server's namespace.
func (o *socketOpener) open(network string, addr netip.AddrPort, opts socketOptions) (*udpSocket, error) {
	res := make(chan openResult, 1)
	select {
	case o.reqs <- openRequest{network, addr, opts, res}:
	case <-o.stop:
		return nil, errOpenerClosed
	}
	r := <-res // serve answers every request it takes
	return r.sock, r.err
}

// close stops the opener's goroutine; later opens fail.
func (o *socketOpener) close() {
	select {
	case <-o.stop:
	default:
		close(o.stop)
	}
	<-o.done
}
