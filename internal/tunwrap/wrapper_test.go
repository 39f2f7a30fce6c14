package tunwrap

import (
	"bytes"
	"errors"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.zx2c4.com/wireguard/tun"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeDev is an in-memory tun.Device: Read hands out up to a batch of queued packets at once, Write records.
type fakeDev struct {
	batch   int
	in      chan []byte // packets the "OS" produces
	readErr chan error
	closed  chan struct{}
	once    sync.Once

	mu      sync.Mutex
	written [][]byte
	offsets []int
}

func newFakeDev(batch int) *fakeDev {
	return &fakeDev{batch: batch, in: make(chan []byte, 1024), readErr: make(chan error, 1), closed: make(chan struct{})}
}

func (d *fakeDev) File() *os.File { return nil }

func (d *fakeDev) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case <-d.closed:
		return 0, os.ErrClosed
	case err := <-d.readErr:
		return 0, err
	case p := <-d.in:
		n := 0
		sizes[n] = copy(bufs[n][offset:], p)
		n++
		for n < len(bufs) && n < d.batch {
			select {
			case p := <-d.in:
				sizes[n] = copy(bufs[n][offset:], p)
				n++
			default:
				return n, nil
			}
		}
		return n, nil
	}
}

func (d *fakeDev) Write(bufs [][]byte, offset int) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, b := range bufs {
		d.written = append(d.written, append([]byte(nil), b[offset:]...))
		d.offsets = append(d.offsets, offset)
	}
	return len(bufs), nil
}

func (d *fakeDev) writes() [][]byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.written)
}

func (d *fakeDev) MTU() (int, error)        { return 1280, nil }
func (d *fakeDev) Name() (string, error)    { return "fake0", nil }
func (d *fakeDev) Events() <-chan tun.Event { return nil }
func (d *fakeDev) BatchSize() int           { return d.batch }
func (d *fakeDev) Close() error {
	d.once.Do(func() { close(d.closed) })
	return nil
}

// dropOdd drops packets whose first byte is odd and upper-cases the second byte of the others.
type dropOdd struct{ mu sync.Mutex }

func (f *dropOdd) filter(pkts [][]byte, keep []bool) {
	for i, p := range pkts {
		if p[0]%2 == 1 {
			keep[i] = false
			continue
		}
		if len(p) > 1 {
			p[1] = bytes.ToUpper(p[1:2])[0]
		}
	}
}
func (f *dropOdd) Outbound(pkts [][]byte, keep []bool) { f.filter(pkts, keep) }
func (f *dropOdd) Inbound(pkts [][]byte, keep []bool)  { f.filter(pkts, keep) }

// readAll reads from w until want packets arrived (or fails after a generous deadline).
func readAll(t *testing.T, w *Wrapper, want, bufCount int) [][]byte {
	t.Helper()
	type res struct {
		pkts [][]byte
		err  error
	}
	ch := make(chan res, 1)
	go func() {
		var got [][]byte
		bufs := make([][]byte, bufCount)
		for i := range bufs {
			bufs[i] = make([]byte, 2048)
		}
		sizes := make([]int, bufCount)
		for len(got) < want {
			n, err := w.Read(bufs, sizes, 16)
			for i := 0; i < n; i++ {
				got = append(got, append([]byte(nil), bufs[i][16:16+sizes[i]]...))
			}
			if err != nil {
				ch <- res{got, err}
				return
			}
		}
		ch <- res{got, nil}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("Read: %v (after %d packets)", r.err, len(r.pkts))
		}
		return r.pkts
	case <-time.After(10 * time.Second):
		t.Fatalf("Read: fewer than %d packets", want)
	}
	return nil
}

func TestOutboundFilterAndOrder(t *testing.T) {
	for _, bufCount := range []int{1, 3, 128} {
		dev := newFakeDev(8)
		w := New(dev, &dropOdd{})
		var want [][]byte
		for i := range 40 {
			p := []byte{byte(i), 'x', byte(i)}
			dev.in <- p
			if i%2 == 0 {
				want = append(want, []byte{byte(i), 'X', byte(i)})
			}
		}
		got := readAll(t, w, len(want), bufCount)
		if !slices.EqualFunc(got, want, bytes.Equal) {
			t.Fatalf("bufs=%d: got %v, want %v", bufCount, got, want)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestInboundFilter(t *testing.T) {
	dev := newFakeDev(4)
	w := New(dev, &dropOdd{})
	defer w.Close()
	var bufs [][]byte
	for i := range 5 {
		b := make([]byte, 16+3)
		copy(b[16:], []byte{byte(i), 'y', 7})
		bufs = append(bufs, b)
	}
	n, err := w.Write(bufs, 16)
	if err != nil || n != 5 {
		t.Fatalf("Write = %d, %v; want 5, nil", n, err)
	}
	want := [][]byte{{0, 'Y', 7}, {2, 'Y', 7}, {4, 'Y', 7}}
	if got := dev.writes(); !slices.EqualFunc(got, want, bytes.Equal) {
		t.Fatalf("written %v, want %v", got, want)
	}
	// Everything dropped: nothing reaches the device, and the call still reports the batch consumed.
	n, err = w.Write([][]byte{append(make([]byte, 16), 1, 2)}, 16)
	if err != nil || n != 1 || len(dev.writes()) != 3 {
		t.Fatalf("all-dropped Write = %d, %v; device has %d packets", n, err, len(dev.writes()))
	}
}

func TestNilFilterPassesEverything(t *testing.T) {
	dev := newFakeDev(4)
	w := New(dev, nil)
	defer w.Close()
	dev.in <- []byte{1, 2, 3}
	if got := readAll(t, w, 1, 4); !bytes.Equal(got[0], []byte{1, 2, 3}) {
		t.Fatalf("got %v", got)
	}
	if _, err := w.Write([][]byte{append(make([]byte, 16), 9)}, 16); err != nil {
		t.Fatal(err)
	}
	if got := dev.writes(); len(got) != 1 || got[0][0] != 9 {
		t.Fatalf("written %v", got)
	}
}

func TestInjectWakesBlockedRead(t *testing.T) {
	dev := newFakeDev(4)
	w := New(dev, &dropOdd{})
	defer w.Close()
	done := make(chan [][]byte)
	go func() { done <- readAll(t, w, 2, 4) }()
	// The OS device has nothing; the injected packets must arrive anyway, unfiltered (odd first byte).
	if err := w.InjectOutbound([]byte{1, 'a'}, []byte{3, 'b'}); err != nil {
		t.Fatal(err)
	}
	got := <-done
	want := [][]byte{{1, 'a'}, {3, 'b'}}
	if !slices.EqualFunc(got, want, bytes.Equal) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestInjectedBeforeOSPackets(t *testing.T) {
	dev := newFakeDev(4)
	w := New(dev, nil)
	defer w.Close()
	if err := w.InjectOutbound([]byte{100}); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, w, 1, 4)
	if got[0][0] != 100 {
		t.Fatalf("got %v", got)
	}
	dev.in <- []byte{7}
	if got := readAll(t, w, 1, 4); got[0][0] != 7 {
		t.Fatalf("got %v", got)
	}
}

func TestInjectQueueBound(t *testing.T) {
	dev := newFakeDev(4)
	w := New(dev, nil)
	defer w.Close()
	pkts := make([][]byte, maxInjected)
	for i := range pkts {
		pkts[i] = []byte{byte(i)}
	}
	if err := w.InjectOutbound(pkts...); err != nil {
		t.Fatal(err)
	}
	if err := w.InjectOutbound([]byte{1}); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("over the bound: %v, want ErrQueueFull", err)
	}
	if got := readAll(t, w, maxInjected, 128); len(got) != maxInjected {
		t.Fatalf("read %d", len(got))
	}
	if err := w.InjectOutbound([]byte{1}); err != nil {
		t.Fatalf("after draining: %v", err)
	}
}

func TestWriteTUNLeavesHeadroom(t *testing.T) {
	dev := newFakeDev(4)
	w := New(dev, &dropOdd{})
	defer w.Close()
	// Not filtered: an odd first byte goes through.
	if err := w.WriteTUN([]byte{1, 'z'}, []byte{3, 'w'}); err != nil {
		t.Fatal(err)
	}
	got := dev.writes()
	if len(got) != 2 || !bytes.Equal(got[0], []byte{1, 'z'}) || !bytes.Equal(got[1], []byte{3, 'w'}) {
		t.Fatalf("written %v", got)
	}
	for _, off := range dev.offsets {
		if off != Headroom {
			t.Fatalf("offset %d, want %d", off, Headroom)
		}
	}
}

func TestCloseUnblocksRead(t *testing.T) {
	dev := newFakeDev(4)
	w := New(dev, nil)
	errc := make(chan error, 1)
	go func() {
		bufs := [][]byte{make([]byte, 100)}
		_, err := w.Read(bufs, make([]int, 1), 0)
		errc <- err
	}()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Read after Close: %v, want os.ErrClosed", err)
	}
	if err := w.InjectOutbound([]byte{1}); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("InjectOutbound after Close: %v", err)
	}
	if err := w.WriteTUN([]byte{1}); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("WriteTUN after Close: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestReadErrorAfterPackets(t *testing.T) {
	dev := newFakeDev(4)
	w := New(dev, nil)
	defer w.Close()
	dev.in <- []byte{1}
	got := readAll(t, w, 1, 4)
	if got[0][0] != 1 {
		t.Fatalf("got %v", got)
	}
	boom := errors.New("boom")
	dev.readErr <- boom
	bufs := [][]byte{make([]byte, 100)}
	if _, err := w.Read(bufs, make([]int, 1), 0); !errors.Is(err, boom) {
		t.Fatalf("Read: %v, want boom", err)
	}
}

func TestTooManySegmentsKeepsReading(t *testing.T) {
	dev := newFakeDev(4)
	w := New(dev, nil)
	defer w.Close()
	dev.readErr <- tun.ErrTooManySegments
	bufs := [][]byte{make([]byte, 100)}
	if _, err := w.Read(bufs, make([]int, 1), 0); !errors.Is(err, tun.ErrTooManySegments) {
		t.Fatalf("Read: %v, want ErrTooManySegments", err)
	}
	dev.in <- []byte{5}
	if got := readAll(t, w, 1, 1); got[0][0] != 5 {
		t.Fatalf("after ErrTooManySegments: %v", got)
	}
}
