package userfwd

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// udpEchoServer echoes every datagram on a loopback socket until the test ends.
func udpEchoServer(t *testing.T, network, addr string) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket(network, addr)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

func TestUDPEcho(t *testing.T) {
	for _, network := range []string{"udp4", "udp6"} {
		t.Run(network, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if network == "udp6" {
				if !hasIPv6Loopback() {
					t.Skip("no IPv6 loopback on this host")
				}
				addr = "[::1]:0"
			}
			srv := udpEchoServer(t, network, addr)
			e := newEnv(t, Config{AllowLoopback: true, UDPIdleTimeout: 300 * time.Millisecond})
			c, err := e.tnet.DialUDPAddrPort(netip.AddrPort{}, fakeOf(srv))
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer c.Close()
			buf := make([]byte, 2000)
			for i, size := range []int{1, 100, 1200} {
				msg := bytes.Repeat([]byte{byte('a' + i)}, size)
				if _, err := c.Write(msg); err != nil {
					t.Fatalf("write: %v", err)
				}
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				n, from, err := c.ReadFrom(buf)
				if err != nil {
					t.Fatalf("read: %v", err)
				}
				if !bytes.Equal(buf[:n], msg) {
					t.Fatalf("echo %d: got %d bytes, want %d", i, n, size)
				}
				if got := from.(*net.UDPAddr).AddrPort(); got != fakeOf(srv) {
					t.Fatalf("reply from %v, want %v", got, fakeOf(srv))
				}
			}
			if s := e.dev.Stats().UDP; s.Opened != 1 || s.Active != 1 {
				t.Fatalf("UDP stats = %+v, want one flow", s)
			}
			eventually(t, "the idle UDP flow to end", func() bool { return e.dev.Stats().UDP.Active == 0 })
			// A new datagram after the idle timeout opens a new flow.
			if _, err := c.Write([]byte("again")); err != nil {
				t.Fatalf("write: %v", err)
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if n, err := c.Read(buf); err != nil || string(buf[:n]) != "again" {
				t.Fatalf("read after idle: %q, %v", buf[:n], err)
			}
			if s := e.dev.Stats().UDP; s.Opened != 2 {
				t.Fatalf("UDP stats = %+v, want a second flow", s)
			}
		})
	}
}

// TestUDPPortUnreachable: the host's ECONNREFUSED becomes an ICMP port unreachable for the client.
func TestUDPPortUnreachable(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	pc.Close()
	e := newEnv(t, Config{AllowLoopback: true})
	c, err := e.tnet.DialUDPAddrPort(netip.AddrPort{}, fakeOf(closed))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	refused := func(err error) bool {
		return err != nil && strings.Contains(err.Error(), (&tcpip.ErrConnectionRefused{}).String())
	}
	buf := make([]byte, 100)
	deadline := time.Now().Add(10 * time.Second)
	for {
		// The first datagram may go before the host socket exists; send until the refusal comes back.
		// gVisor reports it on the next write or read of the connected socket.
		_, err := c.Write([]byte("anyone?"))
		if refused(err) {
			break
		}
		if err != nil {
			t.Fatalf("write: %v", err)
		}
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err = c.Read(buf); refused(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no refusal: last read error %v", err)
		}
	}
	if s := e.dev.Stats().UDP; s.Opened != 1 {
		t.Fatalf("UDP stats = %+v, want the flow to stay", s)
	}
}

func TestUDPMaxFlowsDrops(t *testing.T) {
	srv := udpEchoServer(t, "udp4", "127.0.0.1:0")
	e := newEnv(t, Config{AllowLoopback: true, MaxFlows: 1})
	buf := make([]byte, 100)
	c1, err := e.tnet.DialUDPAddrPort(netip.AddrPort{}, fakeOf(srv))
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	c1.Write([]byte("one"))
	c1.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c1.Read(buf); err != nil {
		t.Fatalf("first flow: %v", err)
	}
	c2, err := e.tnet.DialUDPAddrPort(netip.AddrPort{}, fakeOf(srv))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.Write([]byte("two"))
	eventually(t, "the second flow to be refused", func() bool { return e.dev.Stats().UDP.Failed[FailLimit] == 1 })
	if s := e.dev.Stats().UDP; s.Opened != 1 {
		t.Fatalf("UDP stats = %+v", s)
	}
}
