package userfwd

import (
	"context"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/snowgate/snowgate/internal/dialerr"
	"github.com/snowgate/snowgate/internal/splice"
)

// handleTCP is the stack's TCP handler for segments that match no endpoint. It keeps a copy of each new SYN
// (to quote it in an ICMP error if the dial fails), enforces MaxPendingTCP and hands the segment to the
// tcp.Forwarder, which answers anything but a SYN with a RST.
func (d *Device) handleTCP(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	h := header.TCP(pkt.TransportHeader().Slice())
	if len(h) < header.TCPMinimumSize || !h.Flags().Contains(header.TCPFlagSyn) || h.Flags().Contains(header.TCPFlagAck) {
		return d.tcpFwd.HandlePacket(id, pkt)
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return true
	}
	_, dup := d.pending[id]
	if !dup {
		if len(d.pending) >= d.cfg.MaxPendingTCP {
			d.mu.Unlock()
			d.c.proto[TCP].failed[FailLimit].Add(1)
			return true // dropped: the client retransmits its SYN
		}
		v := stack.PayloadSince(pkt.NetworkHeader())
		d.pending[id] = append([]byte(nil), v.AsSlice()...)
		v.Release()
	}
	d.mu.Unlock()
	ok := d.tcpFwd.HandlePacket(id, pkt)
	if !ok && !dup {
		d.mu.Lock()
		delete(d.pending, id)
		d.mu.Unlock()
	}
	return ok
}

// forwardTCP runs on a goroutine the tcp.Forwarder starts for each new SYN: it dials the destination from
// the host, then completes the client's handshake and splices the two connections, or refuses the client.
func (d *Device) forwardTCP(r *tcp.ForwarderRequest) {
	id := r.ID()
	defer func() {
		d.mu.Lock()
		delete(d.pending, id)
		d.mu.Unlock()
	}()
	if !d.track() {
		r.Complete(true)
		return
	}
	defer d.wg.Done()
	if !d.acquireFlow() {
		d.c.proto[TCP].failed[FailLimit].Add(1)
		r.Complete(true)
		return
	}
	defer d.releaseFlow()

	dst := netip.AddrPortFrom(addrFrom(id.LocalAddress), id.LocalPort)
	network := "tcp4"
	if dst.Addr().Is6() {
		network = "tcp6"
	}
	ctx, cancel := context.WithTimeout(d.ctx, d.cfg.DialTimeout)
	hc, err := d.cfg.Dial(ctx, network, dst.String())
	cancel()
	if err != nil {
		d.refuseTCP(r, id, dst, err)
		return
	}
	var wq waiter.Queue
	ep, tErr := r.CreateEndpoint(&wq)
	if tErr != nil {
		d.c.proto[TCP].failed[FailOther].Add(1)
		r.Complete(true)
		hc.Close()
		d.log.Debug("userfwd: completing TCP handshake", "dst", dst, "error", tErr.String())
		return
	}
	r.Complete(false)
	ep.SocketOptions().SetKeepAlive(true)
	cc := gonet.NewTCPConn(&wq, ep)
	if !d.adopt(cc, hc) {
		return
	}
	d.c.proto[TCP].opened.Add(1)
	d.c.proto[TCP].active.Add(1)
	defer d.c.proto[TCP].active.Add(-1)
	// EOF half-closes (FIN), an error resets both sides.
	splice.Conns(cc, hc, func() {
		ep.Abort()
		splice.Reset(hc)
	})
	d.release(cc, hc)
}

// refuseTCP answers a client whose flow could not be dialed: a RST when the destination refused, else an
// ICMP destination unreachable quoting the SYN (network unreachable when the host has no route to the
// network, host/address unreachable otherwise, timeouts included), so the client's connect fails at once
// with the matching error instead of retransmitting its SYN.
func (d *Device) refuseTCP(r *tcp.ForwarderRequest, id stack.TransportEndpointID, dst netip.AddrPort, err error) {
	if d.ctx.Err() != nil {
		r.Complete(true)
		return
	}
	kind := dialerr.Classify(err)
	reason, icmpKind := FailOther, icmpHostUnreachable
	switch kind {
	case dialerr.Refused:
		reason = FailRefused
	case dialerr.NetworkUnreachable:
		reason, icmpKind = FailUnreachable, icmpNetUnreachable
	case dialerr.HostUnreachable:
		reason = FailUnreachable
	case dialerr.Timeout:
		reason = FailTimeout
	case dialerr.Prohibited:
		reason, icmpKind = FailProhibited, icmpProhibited
	}
	d.c.proto[TCP].failed[reason].Add(1)
	d.log.Debug("userfwd: TCP dial failed", "dst", dst, "reason", reason, "error", err)
	if reason == FailRefused {
		r.Complete(true)
		return
	}
	r.Complete(false)
	d.mu.Lock()
	quote := d.pending[id]
	d.mu.Unlock()
	if quote == nil {
		return
	}
	d.replyICMPError(quote, icmpKind)
}

func addrFrom(a tcpip.Address) netip.Addr {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return ip
}
