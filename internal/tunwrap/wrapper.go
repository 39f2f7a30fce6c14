// Package tunwrap is the TUN wrapper between the operating system's TUN device (or a userspace netstack)
// and wireguard-go: every packet that crosses it in either direction is shown to a [Filter] first, which
// may pass it on (possibly rewritten in place) or take it out of the stream; and the daemon can inject
// packets of its own in both directions.
//
//	OS TUN ──Read──▶ Filter.Outbound ──▶ wireguard-go (encrypt, route by AllowedIPs) ──▶ node
//	OS TUN ◀─Write── Filter.Inbound  ◀── wireguard-go (decrypted, source checked)     ◀── node
//
// The client's filter intercepts DNS queries to the sentinels, routes packets to resources (buffering them
// while a flow is set up) and answers denied ones locally; the gateway's checks the client's authorisation
// and filters, runs the DNS-resource NAT and the in-tunnel control protocol.
//
// Batching is kept end to end: wireguard-go reads and writes batches (BatchSize, up to 128 packets, with the
// kernel TUN's GSO/GRO offloads), the filter sees whole batches, and dropped packets are compacted out of a
// batch without copying. Reading happens on a goroutine of the wrapper's own, so that packets injected with
// [Wrapper.InjectOutbound] reach wireguard-go at once even while the OS device has nothing to read (a
// blocked TUN read cannot be interrupted portably); each packet read is copied once into wireguard-go's
// buffer, as Tailscale's wrapper does.
package tunwrap

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.zx2c4.com/wireguard/tun"
)

// Headroom is the number of bytes kept free in front of every packet the wrapper writes to the OS device
// itself: a kernel TUN with offloads needs room for its virtio-net header there, and wireguard-go leaves
// the same 16 bytes (device.MessageTransportOffsetContent).
const Headroom = 16

// bufSize is the size of each read buffer: a whole IP packet of the largest size (the OS device splits
// offloaded super-packets into MTU-sized ones, but an unsplit packet can be up to 64 KiB).
const bufSize = Headroom + 65535

// maxInjected bounds the queue of packets injected towards wireguard-go and not yet read by it.
const maxInjected = 4096

// ErrQueueFull is returned by InjectOutbound when wireguard-go has not read the packets injected before.
var ErrQueueFull = errors.New("tunwrap: injection queue full")

// ErrClosed is returned after Close.
var ErrClosed = fmt.Errorf("tunwrap: %w", os.ErrClosed)

// Filter sees every packet that crosses the wrapper. Packets are IP packets without any header; the filter
// may rewrite them in place (same length) but must not keep them after it returns. keep has the length of
// pkts and is all true on entry: setting keep[i] to false takes pkts[i] out of the stream (dropped, or
// copied and handled by the filter).
type Filter interface {
	// Outbound is called with a batch read from the OS device, on its way into the tunnel, on the wrapper's
	// reading goroutine.
	Outbound(pkts [][]byte, keep []bool)
	// Inbound is called with a batch wireguard-go decrypted, on its way to the OS device. wireguard-go calls
	// it from its per-peer receive goroutines, so calls may be concurrent.
	Inbound(pkts [][]byte, keep []bool)
}

// Wrapper is a tun.Device for wireguard-go that wraps the OS (or netstack) device. Close closes the wrapped
// device and stops the reading goroutine.
type Wrapper struct {
	dev    tun.Device
	filter Filter
	batch  int

	reads   chan *readBatch // a filtered batch from the reading goroutine
	current *readBatch      // the batch Read is handing out (only Read touches it)

	injMu    sync.Mutex
	injected [][]byte
	injReady chan struct{} // has a token while injected is not empty

	closeOnce  sync.Once
	closed     chan struct{}
	readerDone chan struct{}

	pool sync.Pool // *writeScratch for Write
}

// readBatch is one batch read from the OS device and filtered; next is the index of the first packet not
// handed to wireguard-go yet. done is signalled when the batch is consumed.
type readBatch struct {
	bufs  [][]byte
	sizes []int
	keep  []bool
	pkts  [][]byte
	n     int
	next  int
	err   error
	done  chan struct{}
}

type writeScratch struct {
	pkts [][]byte
	keep []bool
	out  [][]byte
}

// New wraps dev. The filter may be nil (everything passes). The reading goroutine starts at once.
func New(dev tun.Device, filter Filter) *Wrapper {
	batch := dev.BatchSize()
	if batch < 1 {
		batch = 1
	}
	w := &Wrapper{
		dev:        dev,
		filter:     filter,
		batch:      batch,
		reads:      make(chan *readBatch),
		injReady:   make(chan struct{}, 1),
		closed:     make(chan struct{}),
		readerDone: make(chan struct{}),
	}
	w.pool.New = func() any { return &writeScratch{} }
	go w.readLoop()
	return w
}

// readLoop reads batches from the OS device, filters them and hands them to Read, one at a time.
func (w *Wrapper) readLoop() {
	defer close(w.readerDone)
	rb := &readBatch{
		bufs:  make([][]byte, w.batch),
		sizes: make([]int, w.batch),
		keep:  make([]bool, w.batch),
		pkts:  make([][]byte, w.batch),
		done:  make(chan struct{}),
	}
	for i := range rb.bufs {
		rb.bufs[i] = make([]byte, bufSize)
	}
	for {
		n, err := w.dev.Read(rb.bufs, rb.sizes, Headroom)
		rb.n, rb.next, rb.err = 0, 0, err
		if n > 0 {
			for i := 0; i < n; i++ {
				rb.pkts[i] = rb.bufs[i][Headroom : Headroom+rb.sizes[i]]
				rb.keep[i] = true
			}
			if w.filter != nil {
				w.filter.Outbound(rb.pkts[:n], rb.keep[:n])
			}
			// Compact: kept packets first, in order.
			for i := 0; i < n; i++ {
				if rb.keep[i] {
					rb.pkts[rb.n] = rb.pkts[i]
					rb.n++
				}
			}
		}
		if rb.n == 0 && err == nil {
			continue
		}
		select {
		case w.reads <- rb:
		case <-w.closed:
			return
		}
		select {
		case <-rb.done:
		case <-w.closed:
			return
		}
		if err != nil && !errors.Is(err, tun.ErrTooManySegments) {
			return
		}
	}
}

// Read hands wireguard-go the next packets: injected ones first, then what the OS device produced.
func (w *Wrapper) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	for {
		if n := w.readInjected(bufs, sizes, offset); n > 0 {
			return n, nil
		}
		if w.current != nil {
			return w.readCurrent(bufs, sizes, offset)
		}
		select {
		case rb := <-w.reads:
			w.current = rb
		case <-w.injReady:
		case <-w.closed:
			return 0, ErrClosed
		}
	}
}

// readCurrent copies packets of the current OS batch into bufs; the batch is released once consumed.
func (w *Wrapper) readCurrent(bufs [][]byte, sizes []int, offset int) (int, error) {
	rb := w.current
	n := 0
	for rb.next < rb.n && n < len(bufs) {
		p := rb.pkts[rb.next]
		if len(p) > len(bufs[n])-offset {
			rb.next++ // cannot happen with wireguard-go's buffers; never hand out a cut packet
			continue
		}
		sizes[n] = copy(bufs[n][offset:], p)
		n++
		rb.next++
	}
	if rb.next < rb.n {
		return n, nil
	}
	err := rb.err
	w.current = nil
	rb.done <- struct{}{}
	if err != nil && !errors.Is(err, tun.ErrTooManySegments) && n > 0 {
		// Deliver the packets now; the error comes with the next Read (the reader has stopped).
		w.current = &readBatch{err: err, done: make(chan struct{}, 1)}
		return n, nil
	}
	return n, err
}

// readInjected moves injected packets into bufs.
func (w *Wrapper) readInjected(bufs [][]byte, sizes []int, offset int) int {
	w.injMu.Lock()
	defer w.injMu.Unlock()
	n := 0
	for n < len(bufs) && len(w.injected) > 0 {
		p := w.injected[0]
		w.injected[0] = nil
		w.injected = w.injected[1:]
		if len(p) > len(bufs[n])-offset {
			continue
		}
		sizes[n] = copy(bufs[n][offset:], p)
		n++
	}
	if len(w.injected) == 0 {
		w.injected = nil
	} else {
		w.signalInjected()
	}
	return n
}

func (w *Wrapper) signalInjected() {
	select {
	case w.injReady <- struct{}{}:
	default:
	}
}

// InjectOutbound queues IP packets for wireguard-go as if the OS device had produced them, without showing
// them to the filter: wireguard-go encrypts each and sends it to the peer whose AllowedIPs hold its
// destination. The packets are copied. It returns ErrQueueFull (and queues none) when wireguard-go is far
// behind, and ErrClosed after Close.
func (w *Wrapper) InjectOutbound(pkts ...[]byte) error {
	select {
	case <-w.closed:
		return ErrClosed
	default:
	}
	w.injMu.Lock()
	defer w.injMu.Unlock()
	if len(w.injected)+len(pkts) > maxInjected {
		return ErrQueueFull
	}
	for _, p := range pkts {
		w.injected = append(w.injected, append([]byte(nil), p...))
	}
	w.signalInjected()
	return nil
}

// InjectedPending returns how many injected packets wireguard-go has not read yet.
func (w *Wrapper) InjectedPending() int {
	w.injMu.Lock()
	defer w.injMu.Unlock()
	return len(w.injected)
}

// Write filters a batch wireguard-go decrypted and writes what the filter kept to the OS device.
func (w *Wrapper) Write(bufs [][]byte, offset int) (int, error) {
	if w.filter == nil {
		return w.dev.Write(bufs, offset)
	}
	s := w.pool.Get().(*writeScratch)
	defer w.pool.Put(s)
	s.pkts, s.keep, s.out = s.pkts[:0], s.keep[:0], s.out[:0]
	for _, b := range bufs {
		s.pkts = append(s.pkts, b[offset:])
		s.keep = append(s.keep, true)
	}
	w.filter.Inbound(s.pkts, s.keep)
	for i, b := range bufs {
		if s.keep[i] {
			s.out = append(s.out, b)
		}
	}
	clear(s.pkts)
	if len(s.out) == 0 {
		return len(bufs), nil
	}
	_, err := w.dev.Write(s.out, offset)
	clear(s.out)
	return len(bufs), err
}

// WriteTUN writes IP packets of the daemon's own (local answers, the DNS stack's TCP segments, packets a
// core released) straight to the OS device, without showing them to the filter. The packets are copied.
func (w *Wrapper) WriteTUN(pkts ...[]byte) error {
	if len(pkts) == 0 {
		return nil
	}
	select {
	case <-w.closed:
		return ErrClosed
	default:
	}
	bufs := make([][]byte, 0, len(pkts))
	for _, p := range pkts {
		b := make([]byte, Headroom+len(p))
		copy(b[Headroom:], p)
		bufs = append(bufs, b)
	}
	if _, err := w.dev.Write(bufs, Headroom); err != nil {
		return fmt.Errorf("tunwrap: write to TUN: %w", err)
	}
	return nil
}

// File returns the wrapped device's file (nil for a netstack).
func (w *Wrapper) File() *os.File { return w.dev.File() }

// MTU returns the wrapped device's MTU.
func (w *Wrapper) MTU() (int, error) { return w.dev.MTU() }

// Name returns the wrapped device's name.
func (w *Wrapper) Name() (string, error) { return w.dev.Name() }

// Events returns the wrapped device's events.
func (w *Wrapper) Events() <-chan tun.Event { return w.dev.Events() }

// BatchSize returns the wrapped device's batch size.
func (w *Wrapper) BatchSize() int { return w.batch }

// Close closes the wrapped device and waits for the reading goroutine. Later calls return nil.
func (w *Wrapper) Close() error {
	var err error
	w.closeOnce.Do(func() {
		close(w.closed)
		err = w.dev.Close()
		<-w.readerDone
	})
	return err
}
