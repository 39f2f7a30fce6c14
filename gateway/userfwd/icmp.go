package userfwd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"

	"github.com/snowgate/snowgate/internal/dialerr"
	"github.com/snowgate/snowgate/internal/ippacket"
)

// ICMP protocol numbers for icmp.ParseMessage.
const (
	protoICMPv4 = 1
	protoICMPv6 = 58
)

// echoKey identifies an echo flow: the client's address, the destination and the client's identifier.
type echoKey struct {
	src, dst netip.Addr
	id       uint16
}

// rawIDKey is an echo identifier the device sends with on a raw socket to dst.
type rawIDKey struct {
	dst netip.Addr
	id  uint16
}

// echoFlow is one ICMP echo flow: a host ICMP socket connected to the destination.
type echoFlow struct {
	key  echoKey
	conn net.PacketConn
	raw  bool
	// sockID is the identifier the device sends with on a raw socket (ping sockets get theirs from the
	// kernel, which also filters the replies by it).
	sockID uint16
	last   atomic.Int64 // UnixNano of the last request or reply
}

func (f *echoFlow) Close() error { return f.conn.Close() }

// isEchoRequest reports an ICMP or ICMPv6 echo request (first fragment or unfragmented).
func isEchoRequest(p ippacket.Packet) bool {
	typ, code, err := p.ICMP()
	if err != nil || code != 0 {
		return false
	}
	return (p.Protocol() == ippacket.ProtoICMP && typ == 8) || (p.Protocol() == ippacket.ProtoICMPv6 && typ == 128)
}

// handleEcho sends a client's echo request from the host, on the socket of its flow (opened on first use).
// When ICMP cannot leave the host, or the request is fragmented, the client gets a destination unreachable.
func (d *Device) handleEcho(p ippacket.Packet) {
	msg := p.Payload()
	if p.IsFragment() || len(msg) < ippacket.ICMPHeaderLen {
		d.c.proto[ICMP].failed[FailOther].Add(1)
		return
	}
	id := binary.BigEndian.Uint16(msg[4:6])
	seq := binary.BigEndian.Uint16(msg[6:8])
	mode := d.icmp[0]
	if p.Version() == 6 {
		mode = d.icmp[1]
	}
	if mode == ICMPDisabled {
		d.c.proto[ICMP].failed[FailUnavailable].Add(1)
		d.replyICMPError(p.Bytes(), icmpHostUnreachable)
		return
	}
	f := d.echoFlow(echoKey{src: p.Src(), dst: p.Dst(), id: id}, mode, p.Bytes())
	if f == nil {
		return
	}
	if err := f.send(seq, msg[ippacket.ICMPHeaderLen:]); err != nil {
		d.log.Debug("userfwd: sending echo request", "dst", f.key.dst, "error", err)
		switch dialerr.Classify(err) {
		case dialerr.NetworkUnreachable:
			d.replyICMPError(p.Bytes(), icmpNetUnreachable)
		case dialerr.HostUnreachable:
			d.replyICMPError(p.Bytes(), icmpHostUnreachable)
		}
	}
}

// echoFlow returns the flow of key, opening it (and starting its reader) if needed; nil when it cannot be
// opened (counted, and the client answered).
func (d *Device) echoFlow(key echoKey, mode ICMPMode, pkt []byte) *echoFlow {
	d.mu.Lock()
	f := d.echo[key]
	d.mu.Unlock()
	if f != nil {
		return f
	}
	if !d.acquireFlow() {
		d.c.proto[ICMP].failed[FailLimit].Add(1)
		return nil
	}
	if !d.track() {
		d.releaseFlow()
		return nil
	}
	f, err := d.openEcho(key, mode)
	if err != nil {
		d.releaseFlow()
		d.wg.Done()
		d.c.proto[ICMP].failed[FailUnavailable].Add(1)
		d.log.Debug("userfwd: opening ICMP socket", "dst", key.dst, "mode", mode, "error", err)
		d.replyICMPError(pkt, icmpHostUnreachable)
		return nil
	}
	d.mu.Lock()
	if other := d.echo[key]; other != nil || d.closed {
		d.forgetRawIDLocked(f)
		d.mu.Unlock()
		f.Close()
		d.releaseFlow()
		d.wg.Done()
		return other
	}
	d.echo[key] = f
	d.closers[f] = struct{}{}
	d.mu.Unlock()
	d.c.proto[ICMP].opened.Add(1)
	d.c.proto[ICMP].active.Add(1)
	go d.runEcho(f)
	return f
}

// openEcho opens the host socket of an echo flow to key.dst.
func (d *Device) openEcho(key echoKey, mode ICMPMode) (*echoFlow, error) {
	f := &echoFlow{key: key, raw: mode == ICMPRaw}
	f.last.Store(time.Now().UnixNano())
	dst := key.dst
	if f.raw {
		network := "ip4:icmp"
		if dst.Is6() {
			network = "ip6:ipv6-icmp"
		}
		c, err := net.DialIP(network, nil, &net.IPAddr{IP: dst.AsSlice(), Zone: dst.Zone()})
		if err != nil {
			return nil, fmt.Errorf("opening raw ICMP socket to %s: %w", dst, err)
		}
		f.conn = c
		d.mu.Lock()
		for {
			f.sockID = uint16(rand.Uint32())
			k := rawIDKey{dst, f.sockID}
			if _, used := d.rawIDs[k]; !used {
				d.rawIDs[k] = struct{}{}
				break
			}
		}
		d.mu.Unlock()
		return f, nil
	}
	c, err := d.dialPing(dst)
	if err != nil {
		return nil, err
	}
	f.conn = c
	return f, nil
}

// forgetRawIDLocked releases a raw flow's identifier. d.mu must be held.
func (d *Device) forgetRawIDLocked(f *echoFlow) {
	if f.raw {
		delete(d.rawIDs, rawIDKey{f.key.dst, f.sockID})
	}
}

// send writes one echo request with the client's sequence number and data.
func (f *echoFlow) send(seq uint16, data []byte) error {
	m := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: int(f.sockID), Seq: int(seq), Data: data}}
	if f.key.dst.Is6() {
		m.Type = ipv6.ICMPTypeEchoRequest // the kernel computes the ICMPv6 checksum
	}
	b, err := m.Marshal(nil)
	if err != nil {
		return fmt.Errorf("encoding echo request: %w", err)
	}
	f.last.Store(time.Now().UnixNano())
	if _, err := f.conn.(net.Conn).Write(b); err != nil {
		return fmt.Errorf("sending echo request: %w", err)
	}
	return nil
}

// runEcho reads a flow's echo replies and sends each to the client with its original identifier, until the
// flow has been idle for ICMPIdleTimeout or the device closes.
func (d *Device) runEcho(f *echoFlow) {
	defer d.wg.Done()
	defer d.releaseFlow()
	defer d.c.proto[ICMP].active.Add(-1)
	defer func() {
		d.mu.Lock()
		delete(d.echo, f.key)
		delete(d.closers, f)
		d.forgetRawIDLocked(f)
		d.mu.Unlock()
		f.Close()
	}()
	proto, replyType := protoICMPv4, icmp.Type(ipv4.ICMPTypeEchoReply)
	if f.key.dst.Is6() {
		proto, replyType = protoICMPv6, ipv6.ICMPTypeEchoReply
	}
	idle := d.cfg.ICMPIdleTimeout
	buf := make([]byte, d.cfg.MTU+ippacket.IPv6HeaderLen)
	for {
		if err := f.conn.SetReadDeadline(time.Unix(0, f.last.Load()).Add(idle)); err != nil {
			return
		}
		n, _, err := f.conn.ReadFrom(buf)
		if err != nil {
			switch {
			case dialerr.Classify(err) == dialerr.Timeout:
				if time.Since(time.Unix(0, f.last.Load())) < idle {
					continue
				}
				return
			case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EHOSTUNREACH),
				errors.Is(err, syscall.ENETUNREACH):
				continue // an ICMP error reported on the socket; the next reply may still come
			}
			return
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil || m.Type != replyType {
			continue
		}
		echo, ok := m.Body.(*icmp.Echo)
		if !ok || (f.raw && uint16(echo.ID) != f.sockID) {
			continue
		}
		f.last.Store(time.Now().UnixNano())
		d.emit(buildEchoReply(f.key.dst, f.key.src, f.key.id, uint16(echo.Seq), echo.Data))
	}
}

// dialPingSocket opens an unprivileged ICMP socket (SOCK_DGRAM, IPPROTO_ICMP or IPPROTO_ICMPV6) connected
// to dst. The kernel picks the echo identifier and delivers only the replies that carry it.
func dialPingSocket(dst netip.Addr) (net.PacketConn, error) {
	family, proto := unix.AF_INET, unix.IPPROTO_ICMP
	var sa unix.Sockaddr = &unix.SockaddrInet4{Addr: dst.As4()}
	if dst.Is6() {
		family, proto = unix.AF_INET6, unix.IPPROTO_ICMPV6
		sa = &unix.SockaddrInet6{Addr: dst.As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return nil, fmt.Errorf("opening ICMP ping socket: %w", os.NewSyscallError("socket", err))
	}
	if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		unix.Close(fd)
		return nil, fmt.Errorf("connecting ICMP ping socket to %s: %w", dst, os.NewSyscallError("connect", err))
	}
	file := os.NewFile(uintptr(fd), "icmp-ping")
	c, err := net.FileConn(file)
	file.Close()
	if err != nil {
		return nil, fmt.Errorf("wrapping ICMP ping socket: %w", err)
	}
	pc, ok := c.(net.PacketConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("ICMP ping socket is a %T", c)
	}
	return pc, nil
}

// probeICMP decides the effective ICMP mode of one address family by opening (and closing) a socket.
func probeICMP(mode ICMPMode, v6 bool) ICMPMode {
	family, proto := unix.AF_INET, unix.IPPROTO_ICMP
	if v6 {
		family, proto = unix.AF_INET6, unix.IPPROTO_ICMPV6
	}
	can := func(typ int) bool {
		fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return false
		}
		unix.Close(fd)
		return true
	}
	switch mode {
	case ICMPAuto:
		if can(unix.SOCK_DGRAM) {
			return ICMPPingSocket
		}
		if can(unix.SOCK_RAW) {
			return ICMPRaw
		}
	case ICMPPingSocket:
		if can(unix.SOCK_DGRAM) {
			return ICMPPingSocket
		}
	case ICMPRaw:
		if can(unix.SOCK_RAW) {
			return ICMPRaw
		}
	}
	return ICMPDisabled
}
