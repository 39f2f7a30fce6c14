package socks5

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"
)

// recordingEcho is a UDP echo server that remembers every payload it received.
type recordingEcho struct {
	pc  net.PacketConn
	mu  sync.Mutex
	got []string
}

func newRecordingEcho(t *testing.T, network, addr string) *recordingEcho {
	t.Helper()
	pc, err := net.ListenPacket(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	e := &recordingEcho{pc: pc}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			e.mu.Lock()
			e.got = append(e.got, string(buf[:n]))
			e.mu.Unlock()
			pc.WriteTo(buf[:n], from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return e
}

func (e *recordingEcho) addr() netip.AddrPort { return e.pc.LocalAddr().(*net.UDPAddr).AddrPort() }

func (e *recordingEcho) received() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.got...)
}

// udpAssociate negotiates a UDP association and returns the control connection and the relay address.
func udpAssociate(t *testing.T, proxy string, from Addr) (net.Conn, netip.AddrPort) {
	t.Helper()
	c := handshake(t, proxy)
	rep, bnd := request(t, c, CommandUDPAssociate, from)
	if rep != ReplySucceeded {
		t.Fatalf("UDP ASSOCIATE reply %v", rep)
	}
	c.SetDeadline(time.Time{})
	return c, netip.AddrPortFrom(bnd.IP, bnd.Port)
}

func sendDatagram(t *testing.T, u *net.UDPConn, relay netip.AddrPort, d Datagram) {
	t.Helper()
	b, err := AppendDatagram(nil, d)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := u.WriteToUDPAddrPort(b, relay); err != nil {
		t.Fatal(err)
	}
}

func readDatagram(t *testing.T, u *net.UDPConn) Datagram {
	t.Helper()
	buf := make([]byte, 65536)
	u.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := u.Read(buf)
	if err != nil {
		t.Fatalf("reading from the relay: %v", err)
	}
	d, err := ParseDatagram(buf[:n])
	if err != nil {
		t.Fatalf("relay sent a bad datagram: %v", err)
	}
	return d
}

func listenUDP(t *testing.T, addr string) *net.UDPConn {
	t.Helper()
	u, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	return u
}

func TestUDPAssociateEcho(t *testing.T) {
	echo := newRecordingEcho(t, "udp4", "127.0.0.1:0")
	srv := &Server{Dial: hostDial, ListenPacket: hostListenPacket,
		Resolve: fakeResolver(map[string][]netip.Addr{"echo.snowgate.test": {echo.addr().Addr()}})}
	proxy := startServer(t, srv)
	_, relay := udpAssociate(t, proxy, Addr{IP: netip.IPv4Unspecified()})
	if relay.Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("relay bound on %v, want the address the client connected to", relay)
	}
	u := listenUDP(t, "127.0.0.1:0")
	for _, dst := range []Addr{AddrFromAddrPort(echo.addr()), {Name: "echo.snowgate.test", Port: echo.addr().Port()}} {
		for _, payload := range []string{"one", string(make([]byte, 1400))} {
			sendDatagram(t, u, relay, Datagram{Addr: dst, Payload: []byte(payload)})
			d := readDatagram(t, u)
			if string(d.Payload) != payload || d.Addr != AddrFromAddrPort(echo.addr()) || d.Frag != 0 {
				t.Fatalf("to %v: got %+v (%d bytes), want %q from %v", dst, d.Addr, len(d.Payload), payload[:min(10, len(payload))], echo.addr())
			}
		}
	}
}

func TestUDPAssociateIPv6(t *testing.T) {
	if ln, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Skip("no IPv6 loopback on this host")
	} else {
		ln.Close()
	}
	echo := newRecordingEcho(t, "udp6", "[::1]:0")
	srv := &Server{Dial: hostDial, ListenPacket: hostListenPacket}
	proxy := startServerOn(t, srv, "tcp6", "[::1]:0")
	_, relay := udpAssociate(t, proxy, Addr{IP: netip.IPv6Unspecified()})
	u := listenUDP(t, "[::1]:0")
	sendDatagram(t, u, relay, Datagram{Addr: AddrFromAddrPort(echo.addr()), Payload: []byte("six")})
	if d := readDatagram(t, u); string(d.Payload) != "six" || d.Addr != AddrFromAddrPort(echo.addr()) {
		t.Fatalf("got %+v %q", d.Addr, d.Payload)
	}
}

// TestUDPAssociateDrops: fragments, malformed headers, unresolvable names and datagrams from another port
// than the pinned one are dropped; the association keeps working.
func TestUDPAssociateDrops(t *testing.T) {
	echo := newRecordingEcho(t, "udp4", "127.0.0.1:0")
	proxy := startServer(t, &Server{Dial: hostDial, ListenPacket: hostListenPacket, Resolve: fakeResolver(nil)})
	_, relay := udpAssociate(t, proxy, Addr{IP: netip.IPv4Unspecified()})
	u := listenUDP(t, "127.0.0.1:0")
	intruder := listenUDP(t, "127.0.0.1:0")
	dst := AddrFromAddrPort(echo.addr())

	sendDatagram(t, u, relay, Datagram{Addr: dst, Payload: []byte("first")}) // pins u's port
	if d := readDatagram(t, u); string(d.Payload) != "first" {
		t.Fatalf("got %q", d.Payload)
	}
	sendDatagram(t, u, relay, Datagram{Frag: 1, Addr: dst, Payload: []byte("fragment")})
	u.WriteToUDPAddrPort([]byte{0, 0, 0, 9, 1}, relay)
	sendDatagram(t, u, relay, Datagram{Addr: Addr{Name: "nxdomain.test", Port: 9}, Payload: []byte("nowhere")})
	sendDatagram(t, intruder, relay, Datagram{Addr: dst, Payload: []byte("intruder")})
	sendDatagram(t, u, relay, Datagram{Addr: dst, Payload: []byte("last")})
	if d := readDatagram(t, u); string(d.Payload) != "last" {
		t.Fatalf("got %q, want the datagram after the dropped ones", d.Payload)
	}
	if got := echo.received(); len(got) != 2 || got[0] != "first" || got[1] != "last" {
		t.Fatalf("echo server received %q, want only first and last", got)
	}
}

// TestUDPAssociateAnnouncedPort: a port announced in the request is the only one accepted.
func TestUDPAssociateAnnouncedPort(t *testing.T) {
	echo := newRecordingEcho(t, "udp4", "127.0.0.1:0")
	proxy := startServer(t, &Server{Dial: hostDial, ListenPacket: hostListenPacket})
	u := listenUDP(t, "127.0.0.1:0")
	other := listenUDP(t, "127.0.0.1:0")
	_, relay := udpAssociate(t, proxy, AddrFromAddrPort(u.LocalAddr().(*net.UDPAddr).AddrPort()))
	dst := AddrFromAddrPort(echo.addr())
	sendDatagram(t, other, relay, Datagram{Addr: dst, Payload: []byte("other")})
	sendDatagram(t, u, relay, Datagram{Addr: dst, Payload: []byte("mine")})
	if d := readDatagram(t, u); string(d.Payload) != "mine" {
		t.Fatalf("got %q", d.Payload)
	}
	if got := echo.received(); len(got) != 1 || got[0] != "mine" {
		t.Fatalf("echo server received %q", got)
	}
}

func TestUDPAssociationEndsWithControl(t *testing.T) {
	echo := newRecordingEcho(t, "udp4", "127.0.0.1:0")
	srv := &Server{Dial: hostDial, ListenPacket: hostListenPacket}
	proxy := startServer(t, srv)
	c, relay := udpAssociate(t, proxy, Addr{IP: netip.IPv4Unspecified()})
	u := listenUDP(t, "127.0.0.1:0")
	sendDatagram(t, u, relay, Datagram{Addr: AddrFromAddrPort(echo.addr()), Payload: []byte("x")})
	readDatagram(t, u)
	c.Close()
	eventually(t, "the association to end", func() bool { return srv.Stats().Active == 0 })
	// The relay socket is closed: a datagram to it is refused (seen on a connected socket).
	late, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(relay))
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	b, _ := AppendDatagram(nil, Datagram{Addr: AddrFromAddrPort(echo.addr()), Payload: []byte("late")})
	late.Write(b)
	late.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := late.Read(make([]byte, 100)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("datagram to the relay after the control connection closed: %v, want connection refused", err)
	}
}

func TestUDPAssociationIdleTimeout(t *testing.T) {
	srv := &Server{Dial: hostDial, ListenPacket: hostListenPacket, UDPIdleTimeout: 200 * time.Millisecond}
	proxy := startServer(t, srv)
	c, _ := udpAssociate(t, proxy, Addr{IP: netip.IPv4Unspecified()})
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("control connection: %v, want EOF after the idle timeout", err)
	}
}
