package userfwd

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/snowgate/snowgate/internal/dialerr"
)

// udpBufSize is the read buffer of each direction of a UDP flow: the largest UDP payload.
const udpBufSize = 64 << 10

// forwardUDP runs on the writer's goroutine for the first datagram of a (client address, destination) pair
// that matches no endpoint. It creates the flow's connected endpoint in the stack (which receives that first
// datagram) and starts the flow's goroutine, which opens the host socket. Over MaxFlows the datagram is
// dropped.
func (d *Device) forwardUDP(r *udp.ForwarderRequest) {
	id := r.ID()
	if !d.acquireFlow() {
		d.c.proto[UDP].failed[FailLimit].Add(1)
		return
	}
	if !d.track() {
		d.releaseFlow()
		return
	}
	var wq waiter.Queue
	ep, err := r.CreateEndpoint(&wq)
	if err != nil {
		d.releaseFlow()
		d.wg.Done()
		d.c.proto[UDP].failed[FailOther].Add(1)
		d.log.Debug("userfwd: creating UDP endpoint", "error", err.String())
		return
	}
	cc := gonet.NewUDPConn(&wq, ep)
	client := netip.AddrPortFrom(addrFrom(id.RemoteAddress), id.RemotePort)
	dst := netip.AddrPortFrom(addrFrom(id.LocalAddress), id.LocalPort)
	go d.runUDP(cc, client, dst)
}

// runUDP owns one UDP flow: it dials the destination from the host and copies datagrams both ways until
// neither direction has carried one for UDPIdleTimeout, or the device closes.
func (d *Device) runUDP(cc *gonet.UDPConn, client, dst netip.AddrPort) {
	defer d.wg.Done()
	defer d.releaseFlow()
	if !d.adopt(cc) {
		return
	}
	defer d.release(cc)
	network := "udp4"
	if dst.Addr().Is6() {
		network = "udp6"
	}
	ctx, cancel := context.WithTimeout(d.ctx, d.cfg.DialTimeout)
	hc, err := d.cfg.Dial(ctx, network, dst.String())
	cancel()
	if err != nil {
		reason := FailOther
		switch dialerr.Classify(err) {
		case dialerr.NetworkUnreachable, dialerr.HostUnreachable:
			reason = FailUnreachable
		case dialerr.Timeout:
			reason = FailTimeout
		case dialerr.Prohibited:
			reason = FailProhibited
		}
		d.c.proto[UDP].failed[reason].Add(1)
		d.log.Debug("userfwd: UDP dial failed", "dst", dst, "error", err)
		return
	}
	if !d.adopt(hc) {
		return
	}
	defer d.release(hc)
	d.c.proto[UDP].opened.Add(1)
	d.c.proto[UDP].active.Add(1)
	defer d.c.proto[UDP].active.Add(-1)

	var last atomic.Int64 // UnixNano of the last datagram either way
	last.Store(time.Now().UnixNano())
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cc.Close()
			hc.Close()
		})
	}
	refused := func() { d.replyICMPError(udpQuote(client, dst), icmpPortUnreachable) }
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer stop()
		d.copyUDP(hc, cc, &last, nil, refused)
	}()
	d.copyUDP(cc, hc, &last, refused, nil)
	stop()
	wg.Wait()
}

// copyUDP copies datagrams from src to dst until a read or write fails or the flow has been idle for
// UDPIdleTimeout. A refusal (an ICMP port unreachable, reported as ECONNREFUSED by the host socket and as
// "connection was refused" by the stack's) does not end the flow: srcRefused or dstRefused, when not nil,
// is called when the refusal is reported on src's read or dst's write, and the copy goes on.
func (d *Device) copyUDP(dst, src net.Conn, last *atomic.Int64, srcRefused, dstRefused func()) {
	idle := d.cfg.UDPIdleTimeout
	buf := make([]byte, udpBufSize)
	call := func(f func()) {
		if f != nil {
			f()
		}
	}
	for {
		deadline := time.Unix(0, last.Load()).Add(idle)
		if err := src.SetReadDeadline(deadline); err != nil {
			return
		}
		n, err := src.Read(buf)
		if err != nil {
			switch dialerr.Classify(err) {
			case dialerr.Refused:
				call(srcRefused)
				continue
			case dialerr.Timeout:
				if time.Since(time.Unix(0, last.Load())) < idle {
					continue // the other direction was active
				}
			}
			return
		}
		last.Store(time.Now().UnixNano())
		if _, err := dst.Write(buf[:n]); err != nil {
			if dialerr.Classify(err) == dialerr.Refused {
				call(dstRefused)
				continue
			}
			return
		}
	}
}
