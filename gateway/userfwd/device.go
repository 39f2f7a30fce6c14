package userfwd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"

	"go.opentelemetry.io/otel/metric"
	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/snowgate/snowgate/internal/ippacket"
)

// ErrClosed is returned by Read and Write after Close; it wraps os.ErrClosed, which wireguard-go's device
// recognises as the end of its TUN reader.
var ErrClosed = fmt.Errorf("userfwd: %w", os.ErrClosed)

const nicID = 1

// Device is a wireguard-go tun.Device whose "kernel" is a userspace gVisor stack that terminates the
// clients' TCP, UDP and ICMP echo flows to any destination and re-originates them from host sockets. It is
// safe for concurrent use. See the package documentation.
type Device struct {
	cfg    Config
	log    *slog.Logger
	s      *stack.Stack
	ep     *channel.Endpoint
	tcpFwd *tcp.Forwarder
	udpFwd *udp.Forwarder
	icmp   [2]ICMPMode // effective mode for IPv4 ([0]) and IPv6 ([1])
	// dialPing opens a ping socket (dialPingSocket; tests open it in another network namespace).
	dialPing func(dst netip.Addr) (net.PacketConn, error)
	events   chan tun.Event
	reg      metric.Registration
	c        counters

	// ctx is canceled by Close; it bounds host dials and the blocking Read.
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	closed  bool
	flows   int                                  // live flows of all protocols (MaxFlows)
	pending map[stack.TransportEndpointID][]byte // quoted SYN of each TCP flow whose dial is in progress
	closers map[io.Closer]struct{}               // host sockets and stack connections of live flows
	echo    map[echoKey]*echoFlow
	rawIDs  map[rawIDKey]struct{} // echo identifiers in use on raw sockets, per destination

	wg        sync.WaitGroup // every goroutine the device starts or adopts (tcp.Forwarder's)
	closeOnce sync.Once
}

// New builds a Device. It sends tun.EventUp on Events at once.
func New(cfg Config) (*Device, error) {
	cfg = cfg.withDefaults()
	// Packets to loopback addresses arriving on a non-loopback NIC are martians to gVisor unless allowed.
	loop4 := ipv4.NewProtocolWithOptions(ipv4.Options{AllowExternalLoopbackTraffic: cfg.AllowLoopback})
	loop6 := ipv6.NewProtocolWithOptions(ipv6.Options{AllowExternalLoopbackTraffic: cfg.AllowLoopback})
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{loop4, loop6},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	ctx, cancel := context.WithCancel(context.Background())
	d := &Device{
		cfg:     cfg,
		log:     cfg.Logger,
		s:       s,
		ep:      channel.New(cfg.QueueLen, uint32(cfg.MTU), ""),
		events:  make(chan tun.Event, 1),
		ctx:     ctx,
		cancel:  cancel,
		pending: make(map[stack.TransportEndpointID][]byte),
		closers: make(map[io.Closer]struct{}),
		echo:    make(map[echoKey]*echoFlow),
		rawIDs:  make(map[rawIDKey]struct{}),

		dialPing: dialPingSocket,
	}
	if err := d.setupStack(); err != nil {
		cancel()
		s.Close()
		d.ep.Close()
		s.Wait()
		return nil, err
	}
	reg, err := registerMetrics(cfg.MeterProvider, &d.c)
	if err != nil {
		cancel()
		s.Close()
		d.ep.Close()
		s.Wait()
		return nil, fmt.Errorf("userfwd: %w", err)
	}
	d.reg = reg
	d.icmp[0] = probeICMP(cfg.ICMP, false)
	d.icmp[1] = probeICMP(cfg.ICMP, true)
	d.log.Info("userfwd: userspace forwarder ready", "mtu", cfg.MTU, "icmp4", d.icmp[0], "icmp6", d.icmp[1],
		"allow_loopback", cfg.AllowLoopback, "max_flows", cfg.MaxFlows)
	d.events <- tun.EventUp
	return d, nil
}

func (d *Device) setupStack() error {
	sack := tcpip.TCPSACKEnabled(true)
	if err := d.s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); err != nil {
		return fmt.Errorf("userfwd: enabling TCP SACK: %s", err)
	}
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	if err := d.s.SetTransportProtocolOption(tcp.ProtocolNumber, &moderate); err != nil {
		return fmt.Errorf("userfwd: enabling TCP receive buffer auto-tuning: %s", err)
	}
	def := min(tcp.DefaultReceiveBufferSize, d.cfg.TCPBufferSize)
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: def, Max: max(d.cfg.TCPBufferSize, tcp.MinBufferSize)}
	if err := d.s.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv); err != nil {
		return fmt.Errorf("userfwd: setting TCP receive buffer range: %s", err)
	}
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: tcp.MinBufferSize, Default: def, Max: max(d.cfg.TCPBufferSize, tcp.MinBufferSize)}
	if err := d.s.SetTransportProtocolOption(tcp.ProtocolNumber, &snd); err != nil {
		return fmt.Errorf("userfwd: setting TCP send buffer range: %s", err)
	}
	if err := d.s.CreateNIC(nicID, d.ep); err != nil {
		return fmt.Errorf("userfwd: creating NIC: %s", err)
	}
	// Promiscuous: accept packets to any destination; spoofing: answer from that destination.
	if err := d.s.SetPromiscuousMode(nicID, true); err != nil {
		return fmt.Errorf("userfwd: enabling promiscuous mode: %s", err)
	}
	if err := d.s.SetSpoofing(nicID, true); err != nil {
		return fmt.Errorf("userfwd: enabling spoofing: %s", err)
	}
	d.s.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: nicID},
		{Destination: header.IPv6EmptySubnet, NIC: nicID},
	})
	// The forwarder's own in-flight bound is a backstop: handleTCP enforces MaxPendingTCP first.
	d.tcpFwd = tcp.NewForwarder(d.s, 0, 2*d.cfg.MaxPendingTCP, d.forwardTCP)
	d.s.SetTransportProtocolHandler(tcp.ProtocolNumber, d.handleTCP)
	d.udpFwd = udp.NewForwarder(d.s, d.forwardUDP)
	d.s.SetTransportProtocolHandler(udp.ProtocolNumber, d.udpFwd.HandlePacket)
	return nil
}

// Stats returns a snapshot of the device's counters.
func (d *Device) Stats() Stats { return d.c.snapshot() }

// File implements tun.Device; there is no file descriptor.
func (d *Device) File() *os.File { return nil }

// Name implements tun.Device.
func (d *Device) Name() (string, error) { return "userfwd", nil }

// MTU implements tun.Device.
func (d *Device) MTU() (int, error) { return d.cfg.MTU, nil }

// BatchSize implements tun.Device: Read returns at most this many packets.
func (d *Device) BatchSize() int { return d.cfg.BatchSize }

// Events implements tun.Device: tun.EventUp once, closed by Close.
func (d *Device) Events() <-chan tun.Event { return d.events }

// Read implements tun.Device: it blocks until the stack emits at least one IP packet towards the clients and
// returns up to len(bufs) of them, each written at offset. A packet larger than its buffer is dropped and
// counted (Stats.QueueDrops). After Close it returns ErrClosed.
func (d *Device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	for {
		pkt := d.ep.ReadContext(d.ctx)
		if pkt == nil {
			return 0, ErrClosed
		}
		n := 0
		for pkt != nil {
			if d.copyOut(pkt, bufs[n], offset, &sizes[n]) {
				n++
			}
			if n == len(bufs) {
				break
			}
			pkt = d.ep.Read()
		}
		if n > 0 {
			return n, nil
		}
	}
}

// copyOut copies pkt into buf at offset, sets *size and releases pkt. It reports false (and counts a drop)
// when the packet does not fit.
func (d *Device) copyOut(pkt *stack.PacketBuffer, buf []byte, offset int, size *int) bool {
	defer pkt.DecRef()
	if pkt.Size() > len(buf)-offset {
		d.c.queueDrops.Add(1)
		return false
	}
	n := 0
	for _, s := range pkt.AsSlices() {
		n += copy(buf[offset+n:], s)
	}
	*size = n
	return true
}

// Write implements tun.Device: each buffer holds, from offset, one IP packet from a client, already
// authorised, filtered and NATed by the gateway. ICMP echo requests are answered through host ICMP sockets;
// packets to the host's loopback or unspecified addresses are answered with an ICMP prohibited unless
// AllowLoopback; everything else enters the userspace stack. Malformed packets are dropped and counted; they
// do not fail the batch. It returns len(bufs), or ErrClosed after Close.
func (d *Device) Write(bufs [][]byte, offset int) (int, error) {
	if d.ctx.Err() != nil {
		return 0, ErrClosed
	}
	for _, b := range bufs {
		if offset > len(b) {
			d.c.malformed.Add(1)
			continue
		}
		d.writeOne(b[offset:])
	}
	return len(bufs), nil
}

func (d *Device) writeOne(b []byte) {
	p, err := ippacket.Parse(b)
	if err != nil {
		d.c.malformed.Add(1)
		return
	}
	if !d.cfg.AllowLoopback && isHostLocal(p.Dst()) {
		d.c.proto[protocolOf(p)].failed[FailProhibited].Add(1)
		d.replyICMPError(p.Bytes(), icmpProhibited)
		return
	}
	if isEchoRequest(p) {
		d.handleEcho(p)
		return
	}
	proto := header.IPv4ProtocolNumber
	if p.Version() == 6 {
		proto = header.IPv6ProtocolNumber
	}
	pkb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(p.Bytes())})
	d.ep.InjectInbound(proto, pkb)
	pkb.DecRef()
}

// protocolOf is the Stats protocol a packet is counted under.
func protocolOf(p ippacket.Packet) Protocol {
	switch p.Protocol() {
	case ippacket.ProtoTCP:
		return TCP
	case ippacket.ProtoUDP:
		return UDP
	default:
		return ICMP
	}
}

// isHostLocal reports the destinations AllowLoopback guards: loopback and unspecified addresses, also in
// their IPv4-mapped IPv6 form (which a host dial treats as IPv4).
func isHostLocal(a netip.Addr) bool {
	u := a.Unmap()
	return u.IsLoopback() || u.IsUnspecified()
}

// emit queues an IP packet built by the device (an ICMP reply or error) towards the clients.
func (d *Device) emit(b []byte) {
	pkb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
	defer pkb.DecRef()
	var l stack.PacketBufferList
	l.PushBack(pkb)
	if n, _ := d.ep.WritePackets(l); n == 0 {
		d.c.queueDrops.Add(1)
	}
}

// track registers a goroutine the device will wait for in Close; it reports false once the device is
// closing (the goroutine must then not start, or return at once).
func (d *Device) track() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false
	}
	d.wg.Add(1)
	return true
}

// acquireFlow takes one of the MaxFlows slots; false means the limit is reached or the device is closing.
func (d *Device) acquireFlow() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed || d.flows >= d.cfg.MaxFlows {
		return false
	}
	d.flows++
	return true
}

func (d *Device) releaseFlow() {
	d.mu.Lock()
	d.flows--
	d.mu.Unlock()
}

// adopt registers closers to be closed by Close; false means the device is closing (they are closed now).
func (d *Device) adopt(cs ...io.Closer) bool {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		d.closers[c] = struct{}{}
	}
	d.mu.Unlock()
	return true
}

// release forgets closers registered with adopt and closes them.
func (d *Device) release(cs ...io.Closer) {
	d.mu.Lock()
	for _, c := range cs {
		delete(d.closers, c)
	}
	d.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
}

// Close implements tun.Device: it stops the stack, closes every host socket and stack connection, waits for
// every goroutine of the device and closes the Events channel. It is idempotent.
func (d *Device) Close() error {
	d.closeOnce.Do(func() {
		d.mu.Lock()
		d.closed = true
		closers := make([]io.Closer, 0, len(d.closers))
		for c := range d.closers {
			closers = append(closers, c)
		}
		d.mu.Unlock()
		d.cancel()
		for _, c := range closers {
			c.Close()
		}
		d.s.Close()
		d.ep.Close()
		d.s.Wait()
		d.wg.Wait()
		if d.reg != nil {
			if err := d.reg.Unregister(); err != nil {
				d.log.Debug("userfwd: unregistering metrics", "error", err)
			}
		}
		close(d.events)
	})
	return nil
}

var errUnsupported = errors.New("userfwd: unsupported")
