//go:build !relay_portable

package relay

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// worker reads a set of sockets (one listener socket per family and the
// relay sockets of the allocations made through them) from one goroutine.
//
// The sockets sit in the worker's own level-triggered epoll set; that epoll
// descriptor is the only thing registered with Go's netpoller, so an idle
// worker is one parked goroutine and a busy one never parks. A round asks
// the set which sockets are readable (epoll_wait with a zero timeout), reads
// one recvmmsg batch from each and hands it to the socket's handler, which
// relays it (fast path) or queues it for pion. One batch per socket per
// round keeps a flooded socket from starving the others; a yield to the Go
// scheduler every yieldEvery datagrams keeps a saturated worker from
// starving pion's goroutines (requests, refreshes, timers).
//
// A worker's methods are safe for concurrent use; handlers run on the
// worker's goroutine.
type worker struct {
	epfd int
	ep   *os.File // epfd, registered with the netpoller
	rc   syscall.RawConn

	// busy is held while the worker reads and handles one socket's batch;
	// remove takes it once, so that when remove returns no batch of that
	// socket is being handled any more.
	busy sync.Mutex

	mu     sync.Mutex
	slots  []workerSlot // by the slot number in each epoll event
	free   []int32
	closed bool // epfd is closed (its number may be reused): no more epoll_ctl

	// Used by the worker goroutine only.
	batch      *recvBatch
	send       *sendBatch
	events     []unix.EpollEvent
	sinceYield int

	done chan struct{}
}

// workerSlot is a registered socket and what handles its datagrams.
type workerSlot struct {
	sock   *udpSocket
	handle func(b *recvBatch, n int, out *sendBatch)
	// readErr handles a read error other than "nothing waiting" (counted
	// and cleared); nil ignores it.
	readErr func(error)
}

// yieldEvery is how many datagrams a busy worker handles between yields.
const yieldEvery = 128

// newWorker creates a worker reading batch datagrams per recvmmsg and
// starts its goroutine; Close stops it.
func newWorker(batch int, st *stats, gso bool) (*worker, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		_ = unix.Close(epfd)
		return nil, fmt.Errorf("epoll non-blocking: %w", err)
	}
	// A non-blocking descriptor makes os.NewFile register it with the
	// netpoller: RawConn.Read then parks until the epoll set has an event.
	ep := os.NewFile(uintptr(epfd), "relay-epoll")
	rc, err := ep.SyscallConn()
	if err != nil {
		_ = ep.Close()
		return nil, fmt.Errorf("epoll raw conn: %w", err)
	}
	w := &worker{
		epfd:   epfd,
		ep:     ep,
		rc:     rc,
		batch:  newRecvBatch(max(batch, 1), maxReadBuffer, channelDataHeader),
		send:   newSendBatch(max(batch, 1), st, gso),
		events: make([]unix.EpollEvent, 64),
		done:   make(chan struct{}),
	}
	go w.run()
	return w, nil
}

// add registers sock; handle receives its datagrams on the worker's
// goroutine. It returns the slot to pass to remove.
func (w *worker) add(sock *udpSocket, handle func(*recvBatch, int, *sendBatch), readErr func(error)) (int32, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, fmt.Errorf("register socket: %w", errSocketClosed)
	}
	var slot int32
	if n := len(w.free); n > 0 {
		slot = w.free[n-1]
		w.free = w.free[:n-1]
	} else {
		slot = int32(len(w.slots)) //nolint:gosec // bounded by the allocation quota
		w.slots = append(w.slots, workerSlot{})
	}
	w.slots[slot] = workerSlot{sock: sock, handle: handle, readErr: readErr}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: slot}
	if err := unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, sock.fd, &ev); err != nil {
		w.slots[slot] = workerSlot{}
		w.free = append(w.free, slot)
		return 0, fmt.Errorf("epoll add: %w", err)
	}
	return slot, nil
}

// remove unregisters the socket in slot; call it before closing the socket.
// When it returns, the worker is not handling a batch of that socket and
// never will again. A round already under way may still look the slot up
// and find it empty (or reused by a new socket, which then gets a harmless
// empty read). Not to be called from a handler.
func (w *worker) remove(slot int32) {
	w.busy.Lock() // wait for a batch being handled (lock order: busy, then mu)
	defer w.busy.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.slots[slot]
	if s.sock == nil {
		return
	}
	s.sock.mu.RLock()
	if !s.sock.closed && !w.closed {
		_ = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, s.sock.fd, nil)
	}
	s.sock.mu.RUnlock()
	w.slots[slot] = workerSlot{}
	w.free = append(w.free, slot)
}

func (w *worker) slot(i int32) workerSlot {
	w.mu.Lock()
	defer w.mu.Unlock()
	if int(i) >= len(w.slots) {
		return workerSlot{}
	}
	return w.slots[i]
}

func (w *worker) run() {
	defer close(w.done)
	for {
		if err := w.rc.Read(w.round); err != nil {
			return // Close
		}
		if w.sinceYield >= yieldEvery {
			w.sinceYield = 0
			runtime.Gosched()
		}
	}
}

// round is the RawConn.Read callback. It reads one batch from each readable
// socket and returns true (go round again) only if there may be more: a
// batch came back full, or more sockets were ready than one epoll_wait
// reports. Otherwise every readable socket was drained and it returns false,
// parking the worker; a datagram that arrived during the round has already
// re-armed the netpoller (each arrival wakes the parent of an epoll set), so
// parking loses nothing.
func (w *worker) round(uintptr) bool {
	var n uintptr
	var errno syscall.Errno
	for {
		n, _, errno = unix.RawSyscall6(unix.SYS_EPOLL_WAIT, uintptr(w.epfd), uintptr(unsafe.Pointer(&w.events[0])),
			uintptr(len(w.events)), 0, 0, 0)
		if errno != unix.EINTR {
			break
		}
	}
	if errno != 0 || n == 0 {
		return false
	}
	more := int(n) == len(w.events)
	for _, ev := range w.events[:n] {
		if w.handleEvent(ev.Fd) {
			more = true
		}
	}
	return more
}

// handleEvent reads and handles one batch of the socket in slot; true if
// the socket may have more.
func (w *worker) handleEvent(slot int32) bool {
	w.busy.Lock()
	defer w.busy.Unlock()
	s := w.slot(slot)
	if s.sock == nil {
		return false
	}
	more := false
	got, err := w.batch.read(s.sock)
	if got > 0 {
		s.handle(w.batch, got, w.send)
		w.send.flush() // before the next read reuses the buffers
		w.sinceYield += got
		more = got == len(w.batch.msgs)
	}
	if err != nil {
		more = true // let run yield now and then: a socket stuck in an error state must not spin
		w.sinceYield++
		w.clearError(s)
		if s.readErr != nil {
			s.readErr(err)
		}
	}
	return more
}

// clearError reads SO_ERROR, which resets a pending socket error.
func (w *worker) clearError(s workerSlot) {
	s.sock.mu.RLock()
	defer s.sock.mu.RUnlock()
	if !s.sock.closed {
		_, _ = unix.GetsockoptInt(s.sock.fd, unix.SOL_SOCKET, unix.SO_ERROR)
	}
}

// Close stops the worker and waits for its goroutine. Registered sockets
// are not closed; their owners close them.
func (w *worker) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	w.mu.Unlock()
	err := w.ep.Close()
	<-w.done
	if err != nil {
		return fmt.Errorf("close worker: %w", err)
	}
	return nil
}
