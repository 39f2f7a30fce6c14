package userfwd

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.uber.org/goleak"
	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/snowgate/snowgate/internal/ippacket"
)

var _ tun.Device = (*Device)(nil)

func newDevice(t *testing.T, cfg Config) *Device {
	t.Helper()
	d, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// readPacket reads one packet from d (failing after a deadline).
func readPacket(t *testing.T, d *Device) ippacket.Packet {
	t.Helper()
	type res struct {
		b   []byte
		err error
	}
	ch := make(chan res, 1)
	go func() {
		buf := make([]byte, 65536)
		sizes := make([]int, 1)
		n, err := d.Read([][]byte{buf}, sizes, 0)
		if err != nil || n != 1 {
			ch <- res{nil, errors.Join(err, errors.New("no packet"))}
			return
		}
		ch <- res{buf[:sizes[0]], nil}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("Read: %v", r.err)
		}
		p, err := ippacket.Parse(r.b)
		if err != nil {
			t.Fatalf("parsing what Read returned: %v", err)
		}
		return p
	case <-time.After(10 * time.Second):
		d.Close() // unblocks the reader
		t.Fatal("no packet from Read")
	}
	return ippacket.Packet{}
}

func udpPacket(t *testing.T, src, dst netip.AddrPort, payload string) []byte {
	t.Helper()
	buf := make([]byte, 1500)
	n, err := ippacket.BuildUDP(buf, src, dst, []byte(payload))
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

func echoRequest(src, dst netip.Addr, id, seq uint16, data string) []byte {
	b := buildEchoReply(src, dst, id, seq, []byte(data))
	if src.Is4() {
		b[20] = 8
		return finishICMPv4(b, src, dst)
	}
	b[40] = 128
	return finishICMPv6(b, src, dst)
}

// TestProhibitedReplies: with AllowLoopback off, a packet to a loopback or unspecified address is answered
// with an administratively prohibited error that quotes it, and never reaches the stack.
func TestProhibitedReplies(t *testing.T) {
	tests := []struct {
		src, dst           string
		wantType, wantCode uint8
	}{
		{"192.0.2.2:5000", "127.0.0.1:53", 3, 13},
		{"192.0.2.2:5000", "127.9.9.9:53", 3, 13},
		{"192.0.2.2:5000", "0.0.0.0:53", 3, 13},
		{"[2001:db8::2]:5000", "[::1]:53", 1, 1},
		{"[2001:db8::2]:5000", "[::]:53", 1, 1},
		{"[2001:db8::2]:5000", "[::ffff:127.0.0.1]:53", 1, 1},
	}
	d := newDevice(t, Config{})
	for _, tt := range tests {
		src, dst := netip.MustParseAddrPort(tt.src), netip.MustParseAddrPort(tt.dst)
		pkt := udpPacket(t, src, dst, "query")
		if n, err := d.Write([][]byte{append(make([]byte, 16), pkt...)}, 16); n != 1 || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
		p := readPacket(t, d)
		typ, code, err := p.ICMP()
		if err != nil || typ != tt.wantType || code != tt.wantCode {
			t.Fatalf("%v: reply ICMP %d/%d (%v), want %d/%d", dst, typ, code, err, tt.wantType, tt.wantCode)
		}
		if p.Src() != dst.Addr() || p.Dst() != src.Addr() {
			t.Fatalf("%v: reply %v → %v", dst, p.Src(), p.Dst())
		}
		q, err := p.Quoted()
		if err != nil || q.Dst() != dst.Addr() {
			t.Fatalf("%v: quoted %v (%v)", dst, q.Dst(), err)
		}
	}
	if s := d.Stats().UDP; s.Failed[FailProhibited] != int64(len(tests)) || s.Opened != 0 {
		t.Fatalf("UDP stats = %+v", s)
	}
}

func TestICMPDisabledAnswersUnreachable(t *testing.T) {
	d := newDevice(t, Config{ICMP: ICMPDisabled})
	for _, pair := range [][2]string{{"192.0.2.2", "198.51.100.1"}, {"2001:db8::2", "2001:db8:1::1"}} {
		src, dst := netip.MustParseAddr(pair[0]), netip.MustParseAddr(pair[1])
		d.Write([][]byte{echoRequest(src, dst, 7, 1, "hi")}, 0)
		p := readPacket(t, d)
		typ, code, _ := p.ICMP()
		want := [2]uint8{3, 1}
		if dst.Is6() {
			want = [2]uint8{1, 3}
		}
		if [2]uint8{typ, code} != want || p.Src() != dst || p.Dst() != src {
			t.Fatalf("reply %v→%v ICMP %d/%d, want %v", p.Src(), p.Dst(), typ, code, want)
		}
	}
	if s := d.Stats().ICMP; s.Failed[FailUnavailable] != 2 {
		t.Fatalf("ICMP stats = %+v", s)
	}
}

func TestMalformedDropped(t *testing.T) {
	d := newDevice(t, Config{})
	bad := [][]byte{{}, {0x45}, {0x60, 0, 0}, []byte("not an IP packet at all"), {0x45, 0, 0, 20}}
	n, err := d.Write(bad, 0)
	if n != len(bad) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if n, err := d.Write([][]byte{{1, 2}}, 5); n != 1 || err != nil {
		t.Fatalf("Write with offset past the buffer = %d, %v", n, err)
	}
	if got := d.Stats().Malformed; got != int64(len(bad))+1 {
		t.Fatalf("Malformed = %d, want %d", got, len(bad)+1)
	}
}

func TestReadBatchAndSmallBuffers(t *testing.T) {
	d := newDevice(t, Config{ICMP: ICMPDisabled, BatchSize: 8})
	if d.BatchSize() != 8 {
		t.Fatalf("BatchSize = %d", d.BatchSize())
	}
	src, dst := netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("198.51.100.1")
	var pkts [][]byte
	for i := range 5 {
		pkts = append(pkts, echoRequest(src, dst, 7, uint16(i), "hi"))
	}
	d.Write(pkts, 0) // five synchronous unreachable replies, queued
	bufs := make([][]byte, 8)
	for i := range bufs {
		bufs[i] = make([]byte, 1500)
	}
	sizes := make([]int, 8)
	n, err := d.Read(bufs, sizes, 0)
	if err != nil || n != 5 {
		t.Fatalf("Read = %d, %v; want 5 packets in one batch", n, err)
	}
	for i := range n {
		if p, err := ippacket.Parse(bufs[i][:sizes[i]]); err != nil || p.Dst() != src {
			t.Fatalf("packet %d: %v", i, err)
		}
	}
	// A packet larger than the caller's buffer is dropped and counted; the next one is returned.
	big := echoRequest(src, dst, 7, 10, strings.Repeat("x", 1000))
	small := echoRequest(src, dst, 7, 11, "y")
	d.Write([][]byte{big, small}, 0)
	n, err = d.Read([][]byte{make([]byte, 200)}, sizes, 0)
	if err != nil || n != 1 {
		t.Fatalf("Read = %d, %v", n, err)
	}
	if got := d.Stats().QueueDrops; got != 1 {
		t.Fatalf("QueueDrops = %d, want 1", got)
	}
}

func TestCloseUnblocksAndRefuses(t *testing.T) {
	d, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if ev := <-d.Events(); ev != tun.EventUp {
		t.Fatalf("first event %v", ev)
	}
	if mtu, _ := d.MTU(); mtu != DefaultMTU {
		t.Fatalf("MTU %d", mtu)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := d.Read([][]byte{make([]byte, 1500)}, []int{0}, 0)
		errc <- err
	}()
	d.Close()
	if err := <-errc; !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Read after Close: %v", err)
	}
	if _, err := d.Write([][]byte{{0x45}}, 0); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Write after Close: %v", err)
	}
	if _, ok := <-d.Events(); ok {
		t.Fatal("Events not closed")
	}
	d.Close() // idempotent
}

// TestManyFlowsThenCloseNoLeaks opens TCP, UDP and ICMP flows, keeps them alive, closes everything and
// checks that no goroutine survives and every host socket is closed.
func TestManyFlowsThenCloseNoLeaks(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var srvWG sync.WaitGroup
	srvConns := make(chan net.Conn, 100)
	srvWG.Add(1)
	go func() {
		defer srvWG.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			srvConns <- c
		}
	}()
	udpSrv, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srvWG.Add(1)
	go func() {
		defer srvWG.Done()
		buf := make([]byte, 2000)
		for {
			n, from, err := udpSrv.ReadFrom(buf)
			if err != nil {
				return
			}
			udpSrv.WriteTo(buf[:n], from)
		}
	}()

	e := newEnv(t, Config{AllowLoopback: true})
	const flows = 30
	var conns []net.Conn
	tcpTarget := fakeOf(ln.Addr().(*net.TCPAddr).AddrPort())
	udpTarget := fakeOf(udpSrv.LocalAddr().(*net.UDPAddr).AddrPort())
	for range flows {
		c, err := e.tnet.DialContextTCPAddrPort(testCtx(t), tcpTarget)
		if err != nil {
			t.Fatalf("TCP dial: %v", err)
		}
		conns = append(conns, c)
		u, err := e.tnet.DialUDPAddrPort(netip.AddrPort{}, udpTarget)
		if err != nil {
			t.Fatalf("UDP dial: %v", err)
		}
		conns = append(conns, u)
		if _, err := u.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "all flows to open", func() bool {
		s := e.dev.Stats()
		return s.TCP.Active == flows && s.UDP.Active == flows
	})
	// An echo flow too, written past the pipe (wireguard-go's PingConn can miss replies).
	if e.dev.icmp[0] != ICMPDisabled {
		e.dev.Write([][]byte{echoRequest(client4, loop4, 1, 1, "x")}, 0)
		eventually(t, "the echo flow to open", func() bool { return e.dev.Stats().ICMP.Active == 1 })
	}
	e.dev.mu.Lock()
	hostSockets := len(e.dev.closers)
	e.dev.mu.Unlock()
	if hostSockets < 4*flows {
		t.Fatalf("%d closers registered, want at least %d", hostSockets, 4*flows)
	}

	if err := e.pipe.Close(); err != nil {
		t.Fatalf("closing: %v", err)
	}
	s := e.dev.Stats()
	if s.TCP.Active != 0 || s.UDP.Active != 0 || s.ICMP.Active != 0 {
		t.Fatalf("flows still active after Close: %+v", s)
	}
	e.dev.mu.Lock()
	left := len(e.dev.closers) + e.dev.flows
	e.dev.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d closers/flows left after Close", left)
	}
	// Every host TCP connection was closed: the server sees EOF on each.
	for range flows {
		c := <-srvConns
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("host connection still open after Close")
		}
		c.Close()
	}
	for _, c := range conns {
		c.Close()
	}
	ln.Close()
	udpSrv.Close()
	srvWG.Wait()
}

func TestMetrics(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	d := newDevice(t, Config{MeterProvider: mp})
	d.Write([][]byte{udpPacket(t, netip.MustParseAddrPort("192.0.2.2:1"), netip.MustParseAddrPort("127.0.0.1:53"), "q")}, 0)
	d.Write([][]byte{{0x45}}, 0)
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			var points []metricdata.DataPoint[int64]
			switch data := m.Data.(type) {
			case metricdata.Sum[int64]:
				points = data.DataPoints
			case metricdata.Gauge[int64]:
				points = data.DataPoints
			}
			for _, p := range points {
				key := m.Name
				for _, kv := range p.Attributes.ToSlice() {
					key += " " + string(kv.Key) + "=" + kv.Value.Emit()
				}
				got[key] = p.Value
			}
		}
	}
	for key, want := range map[string]int64{
		"snowgate.gateway.userfwd.flows.failed protocol=udp reason=prohibited": 1,
		"snowgate.gateway.userfwd.flows.opened protocol=tcp":                   0,
		"snowgate.gateway.userfwd.flows.active protocol=icmp":                  0,
		"snowgate.gateway.userfwd.packets.dropped reason=malformed":            1,
	} {
		if v, ok := got[key]; !ok || v != want {
			t.Errorf("%s = %d (present %v), want %d", key, v, ok, want)
		}
	}
}

// tcpSYN builds a TCP SYN from src to dst.
func tcpSYN(src, dst netip.AddrPort) []byte {
	const tcpLen = header.TCPMinimumSize
	s, d := tcpip.AddrFromSlice(src.Addr().AsSlice()), tcpip.AddrFromSlice(dst.Addr().AsSlice())
	var b []byte
	if src.Addr().Is4() {
		b = make([]byte, header.IPv4MinimumSize+tcpLen)
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: s, DstAddr: d})
		ip.SetChecksum(^ip.CalculateChecksum())
	} else {
		b = make([]byte, header.IPv6MinimumSize+tcpLen)
		header.IPv6(b).Encode(&header.IPv6Fields{PayloadLength: tcpLen, TransportProtocol: header.TCPProtocolNumber, HopLimit: 64, SrcAddr: s, DstAddr: d})
	}
	t := header.TCP(b[len(b)-tcpLen:])
	t.Encode(&header.TCPFields{SrcPort: src.Port(), DstPort: dst.Port(), SeqNum: 1000, DataOffset: tcpLen, Flags: header.TCPFlagSyn, WindowSize: 65535})
	t.SetChecksum(^t.CalculateChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, s, d, tcpLen)))
	return b
}

// TestTCPDialFailureICMPv6: over IPv6 the client gets an ICMPv6 destination unreachable (address unreachable
// for a host failure, no route for a network one) that quotes its SYN.
func TestTCPDialFailureICMPv6(t *testing.T) {
	for _, tt := range []struct {
		err  syscall.Errno
		code uint8
	}{{syscall.EHOSTUNREACH, 3}, {syscall.ENETUNREACH, 0}} {
		d := newDevice(t, Config{Dial: func(context.Context, string, string) (net.Conn, error) {
			return nil, &net.OpError{Op: "dial", Err: os.NewSyscallError("connect", tt.err)}
		}})
		src, dst := netip.MustParseAddrPort("[2001:db8::2]:40000"), netip.MustParseAddrPort("[2001:db8:1::1]:443")
		d.Write([][]byte{tcpSYN(src, dst)}, 0)
		p := readPacket(t, d)
		typ, code, err := p.ICMP()
		if err != nil || typ != 1 || code != tt.code || p.Src() != dst.Addr() || p.Dst() != src.Addr() {
			t.Fatalf("%v: reply %v→%v ICMPv6 %d/%d (%v), want 1/%d", tt.err, p.Src(), p.Dst(), typ, code, err, tt.code)
		}
		q, err := p.Quoted()
		if err != nil {
			t.Fatal(err)
		}
		if sp, dp, err := q.Ports(); err != nil || sp != src.Port() || dp != dst.Port() {
			t.Fatalf("quoted ports %d→%d (%v)", sp, dp, err)
		}
		if !validICMPChecksum(p) {
			t.Fatal("bad ICMPv6 checksum")
		}
	}
}
