//go:build (unix && !linux) || relay_portable

package relay

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
)

// worker is the portable data path's worker (see datapath.go): each
// registered socket gets a reader goroutine that hands its datagrams, one
// at a time, to the socket's handler. A reader ends when its socket is
// closed (normally by the socket's owner; Close closes what is left).
type worker struct {
	stats *stats

	mu      sync.Mutex
	readers map[int32]*workerReader
	next    int32
	closed  bool
	wg      sync.WaitGroup
}

type workerReader struct {
	sock    *udpSocket
	busy    sync.Mutex // held while handling a datagram; remove waits for it
	removed atomic.Bool
}

func newWorker(_ int, st *stats, _ bool) (*worker, error) {
	return &worker{stats: st, readers: map[int32]*workerReader{}}, nil
}

// add starts sock's reader; handle receives its datagrams.
func (w *worker) add(sock *udpSocket, handle func(*recvBatch, int, *sendBatch), readErr func(error)) (int32, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, fmt.Errorf("register socket: %w", errSocketClosed)
	}
	slot := w.next
	w.next++
	r := &workerReader{sock: sock}
	w.readers[slot] = r
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		b, out := newRecvBatch(), newSendBatch(1, w.stats, false)
		for {
			if err := b.read(sock); err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				if readErr != nil {
					readErr(err)
				}
				continue
			}
			r.busy.Lock()
			if !r.removed.Load() {
				handle(b, 1, out)
			}
			r.busy.Unlock()
		}
	}()
	return slot, nil
}

// remove stops handing sock's datagrams on: when it returns, none is being
// handled any more. Closing the socket ends its reader.
func (w *worker) remove(slot int32) {
	w.mu.Lock()
	r := w.readers[slot]
	delete(w.readers, slot)
	w.mu.Unlock()
	if r != nil {
		r.busy.Lock() // wait for a handler under way
		r.removed.Store(true)
		r.busy.Unlock()
	}
}

// Close stops the readers and waits for them: sockets still registered
// (their owners have not closed them yet) are closed here, since a reader
// blocked in a read only ends with its socket; their owners' Close then
// reports them closed.
func (w *worker) Close() error {
	w.mu.Lock()
	w.closed = true
	left := make([]*udpSocket, 0, len(w.readers))
	for _, r := range w.readers {
		left = append(left, r.sock)
	}
	w.mu.Unlock()
	for _, s := range left {
		_ = s.close()
	}
	w.wg.Wait()
	return nil
}
