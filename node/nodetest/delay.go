package nodetest

import (
	"net"
	"reflect"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/pion/transport/v5"
	"github.com/pion/transport/v5/vnet"
)

// delayNet is a node's vnet whose UDP sockets delay what they send by the
// peer's latency (Peer.SetLatency).
type delayNet struct {
	*vnet.Net
	latency atomic.Int64 // ns
}

func (d *delayNet) ListenUDP(network string, laddr *net.UDPAddr) (transport.UDPConn, error) {
	c, err := d.Net.ListenUDP(network, laddr)
	if err != nil {
		return nil, err
	}
	return newDelayConn(c, &d.latency), nil
}

func (d *delayNet) ListenPacket(network, address string) (net.PacketConn, error) {
	c, err := d.Net.ListenPacket(network, address)
	if err != nil {
		return nil, err
	}
	if uc, ok := c.(transport.UDPConn); ok {
		return newDelayConn(uc, &d.latency), nil
	}
	return c, nil
}

// retained keeps the wireguard-go peers whose finalizers could not be disarmed (see RetainWireGuardPeer)
// reachable for the life of the test binary. It is the package's only package-level state, and stays empty
// with the wireguard-go version in go.mod.
var retained struct {
	sync.Mutex
	peers []any
}

// RetainWireGuardPeer implements the node's optional peer hook. wireguard-go drains a peer's two queues
// from finalizers, which run outside the synctest bubble the queues' channels belong to: touching them
// from there is fatal. The hook clears those finalizers (the queues are garbage like the rest of the peer
// then, nothing needs draining), so the peer and its device can be collected. Should wireguard-go's peer
// no longer have the queues where the hook looks for them, the peer is kept forever instead: safe, but a
// long simulation then grows by the device's buffers with every node (gigabytes over thousands of
// scenarios, as internal/tunnelsim found).
func (d *delayNet) RetainWireGuardPeer(p any) {
	if disarmQueueFinalizers(p) {
		return
	}
	retained.Lock()
	retained.peers = append(retained.peers, p)
	retained.Unlock()
}

// disarmQueueFinalizers clears the finalizers of a *device.Peer's queue.outbound and queue.inbound (the
// autodraining queues) and reports whether it found both.
func disarmQueueFinalizers(p any) bool {
	v := reflect.ValueOf(p)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return false
	}
	q := v.Elem().FieldByName("queue")
	if !q.IsValid() || q.Kind() != reflect.Struct {
		return false
	}
	var queues []any
	for _, name := range []string{"outbound", "inbound"} {
		f := q.FieldByName(name)
		if !f.IsValid() || f.Kind() != reflect.Pointer || f.IsNil() {
			return false
		}
		// An unexported field: read it through its address (the pointer keeps its dynamic type, which
		// SetFinalizer needs).
		queues = append(queues, reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Interface())
	}
	for _, obj := range queues {
		runtime.SetFinalizer(obj, nil)
	}
	return true
}

// delayConn sends through a queue served by its own goroutine (started with
// the first delayed datagram, stopped by Close), in order.
type delayConn struct {
	transport.UDPConn
	latency *atomic.Int64

	mu      sync.Mutex
	queue   []delayed
	running bool
	wake    chan struct{}
	done    chan struct{}
	once    sync.Once
}

type delayed struct {
	b  []byte
	to net.Addr
	at time.Time
}

func newDelayConn(c transport.UDPConn, latency *atomic.Int64) *delayConn {
	return &delayConn{UDPConn: c, latency: latency, wake: make(chan struct{}, 1), done: make(chan struct{})}
}

func (c *delayConn) WriteTo(b []byte, to net.Addr) (int, error) {
	d := time.Duration(c.latency.Load())
	c.mu.Lock()
	if d <= 0 && len(c.queue) == 0 {
		c.mu.Unlock()
		return c.UDPConn.WriteTo(b, to)
	}
	select {
	case <-c.done:
		c.mu.Unlock()
		return 0, net.ErrClosed
	default:
	}
	c.queue = append(c.queue, delayed{b: append([]byte(nil), b...), to: to, at: time.Now().Add(d)})
	if !c.running {
		c.running = true
		go c.send()
	}
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return len(b), nil
}

func (c *delayConn) WriteToUDP(b []byte, to *net.UDPAddr) (int, error) { return c.WriteTo(b, to) }

// send writes the queue out, each datagram at its time.
func (c *delayConn) send() {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		c.mu.Lock()
		if len(c.queue) == 0 {
			c.mu.Unlock()
			select {
			case <-c.wake:
				continue
			case <-c.done:
				return
			}
		}
		head := c.queue[0]
		c.mu.Unlock()
		if wait := time.Until(head.at); wait > 0 {
			t.Reset(wait)
			select {
			case <-t.C:
			case <-c.done:
				return
			}
		}
		_, _ = c.UDPConn.WriteTo(head.b, head.to)
		c.mu.Lock()
		c.queue = c.queue[1:]
		c.mu.Unlock()
	}
}

func (c *delayConn) Close() error {
	c.once.Do(func() {
		c.mu.Lock()
		close(c.done)
		c.mu.Unlock()
	})
	return c.UDPConn.Close()
}
