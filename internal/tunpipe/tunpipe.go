// Package tunpipe joins two wireguard-go tun.Devices back to back: every packet one device emits (Read) is
// written into the other (Write). Tests use it to put a client netstack (tun/netstack.CreateNetTUN) in front of
// a device under test (the userspace gateway forwarder, another netstack) without WireGuard in between; the
// dev stack may use it the same way.
package tunpipe

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/tun"
)

// bufSize is the size of each packet buffer; wireguard-go's own devices never emit more than 64 KiB at once.
const bufSize = 1 << 16

// Pipe is a running join of two devices. It owns both devices from Join on.
type Pipe struct {
	a, b tun.Device

	closeOnce sync.Once
	closing   atomic.Bool
	wg        sync.WaitGroup

	mu  sync.Mutex
	err error
}

// Join starts copying packets from a to b and from b to a, each direction in its own goroutine, and returns
// at once. The pipe owns a and b: Close closes them. hook, when not nil, sees every packet before it is
// forwarded (from is the device that emitted it); it may rewrite the packet in place (a test NAT) and drop it
// by returning false. It runs on the copying goroutines, concurrently for the two directions, and must not
// keep pkt.
func Join(a, b tun.Device, hook func(from tun.Device, pkt []byte) bool) *Pipe {
	p := &Pipe{a: a, b: b}
	p.wg.Add(2)
	go p.copy(a, b, hook)
	go p.copy(b, a, hook)
	return p
}

func (p *Pipe) copy(from, to tun.Device, hook func(tun.Device, []byte) bool) {
	defer p.wg.Done()
	n := max(from.BatchSize(), 1)
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, bufSize)
	}
	sizes := make([]int, n)
	out := make([][]byte, 0, n)
	for {
		count, err := from.Read(bufs, sizes, 0)
		if err != nil {
			if !p.closing.Load() && !errors.Is(err, os.ErrClosed) {
				p.setErr(err)
			}
			return
		}
		out = out[:0]
		for i := range count {
			pkt := bufs[i][:sizes[i]]
			if hook != nil && !hook(from, pkt) {
				continue
			}
			out = append(out, pkt)
		}
		if len(out) == 0 {
			continue
		}
		if _, err := to.Write(out, 0); err != nil && !p.closing.Load() && !errors.Is(err, os.ErrClosed) {
			// A device may refuse one batch (a packet it cannot parse); keep going like a real TUN would.
			p.setErr(err)
		}
	}
}

func (p *Pipe) setErr(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err == nil {
		p.err = err
	}
}

// Err returns the first unexpected Read or Write error seen so far (nil if none). Errors after Close are not
// recorded.
func (p *Pipe) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Close closes both devices, waits for the copying goroutines to return and returns the first error closing
// a device.
func (p *Pipe) Close() error {
	var err error
	p.closeOnce.Do(func() {
		p.closing.Store(true)
		err = errors.Join(p.a.Close(), p.b.Close())
		p.wg.Wait()
	})
	return err
}
