//go:build !relay_portable

package relay

import (
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/snowgate/snowgate/internal/threadns"
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
	fd, err := threadns.Current()
	if err != nil {
		return nil, err
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

// serve opens sockets on a thread in the namespace of fd until close
// (threadns.Enter: the thread goes back to its namespace and to the pool
// at the end).
func (o *socketOpener) serve(fd int, ready chan<- error) {
	defer close(o.done)
	release, err := threadns.Enter(fd)
	_ = unix.Close(fd)
	if err != nil {
		ready <- fmt.Errorf("enter the server's network namespace: %w", err)
		return
	}
	defer release()
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
