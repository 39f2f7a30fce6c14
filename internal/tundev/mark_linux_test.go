//go:build linux

package tundev

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pion/transport/v5"
	"golang.org/x/sys/unix"

	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/netlab"
)

// udpEcho answers every datagram on conn with the same payload until conn is closed.
func udpEcho(t *testing.T, conn *net.UDPConn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = conn.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-done
	})
}

// TestMarkedSocketBypassesTunnel runs a client behind a NAT router whose only way to the internet
// is main's default route. With the Internet resource on (0.0.0.0/0 and ::/0 through the TUN), an
// unmarked socket's datagram to a peer on the internet comes out of the TUN, while a socket from
// MarkedNet reaches the peer through the router and gets its echo.
func TestMarkedSocketBypassesTunnel(t *testing.T) {
	lab := netlab.New(t)
	inet := lab.Internet()
	peer := lab.Host("peer", inet, "198.18.0.101")
	lan := lab.NATRouter("r1", inet, netlab.NATEndpointIndependent, "192.0.2.0/24", "2001:db8:1::/64")
	client := lab.Host("client", lan)

	cfg := testConfig(t, DNSModeDisabled)
	dev := create(t, client.Namespace, cfg)
	if err := dev.SetRoutes([]netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}); err != nil {
		t.Fatal(err)
	}
	r := startReader(t, dev.TUN())
	t.Cleanup(func() { dev.Close() })

	var pnet transport.Net
	do(t, client.Namespace, func() (err error) {
		pnet, err = MarkedNet(dev.Fwmark())
		return err
	})

	for _, fam := range []struct {
		network string
		peer    netip.Addr
	}{{"udp4", peer.Addr4()}, {"udp6", peer.Addr6()}} {
		t.Run(fam.network, func(t *testing.T) {
			echo, err := peer.ListenUDP(fam.network, netip.AddrPortFrom(fam.peer, 7).String())
			if err != nil {
				t.Fatal(err)
			}
			udpEcho(t, echo)
			dst := netip.AddrPortFrom(fam.peer, 7)

			// Unmarked: into the tunnel.
			plain, err := client.ListenUDP(fam.network, ":0")
			if err != nil {
				t.Fatal(err)
			}
			defer plain.Close()
			if _, err := plain.WriteToUDPAddrPort([]byte("unmarked"), dst); err != nil {
				t.Fatal(err)
			}
			r.await(t, "unmarked datagram", func(p []byte) bool {
				pkt, err := ippacket.Parse(p)
				if err != nil || pkt.Dst() != fam.peer {
					return false
				}
				payload, err := pkt.UDPPayload()
				return err == nil && string(payload) == "unmarked"
			})

			// Marked (MarkedNet.ListenUDP, as the node opens its sockets): around the tunnel.
			var marked transport.UDPConn
			do(t, client.Namespace, func() (err error) {
				marked, err = pnet.ListenUDP(fam.network, nil)
				return err
			})
			defer marked.Close()
			assertMark(t, marked.(syscall.Conn), DefaultFwmark)
			if _, err := marked.WriteTo([]byte("marked"), net.UDPAddrFromAddrPort(dst)); err != nil {
				t.Fatal(err)
			}
			_ = marked.SetReadDeadline(time.Now().Add(10 * time.Second))
			buf := make([]byte, 64)
			n, from, err := marked.ReadFrom(buf)
			if err != nil {
				t.Fatalf("marked socket got no echo from the peer (its datagram did not bypass the tunnel?): %v", err)
			}
			if string(buf[:n]) != "marked" || from.(*net.UDPAddr).AddrPort().Addr().Unmap() != fam.peer {
				t.Fatalf("echo %q from %s", buf[:n], from)
			}
		})
	}
}

// assertMark checks SO_MARK on a socket.
func assertMark(t *testing.T, c syscall.Conn, want uint32) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got int
	var gerr error
	if err := rc.Control(func(fd uintptr) { got, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil || uint32(got) != want {
		t.Fatalf("SO_MARK = %#x (%v), want %#x", got, gerr, want)
	}
}

// TestMarkedNetMarksEverySocket opens a socket through every socket-making method of MarkedNet
// and checks its mark (inside a namespace; no traffic needed).
func TestMarkedNetMarksEverySocket(t *testing.T) {
	lab := netlab.New(t)
	h := lab.Host("h", lab.Internet())
	const mark = 0x1234
	do(t, h.Namespace, func() error {
		n, err := MarkedNet(mark)
		if err != nil {
			return err
		}
		ln, err := n.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return err
		}
		defer ln.Close()
		lnAddr := ln.Addr().String()
		check := func(name string, c any, err error) {
			t.Helper()
			if err != nil {
				t.Errorf("%s: %v", name, err)
				return
			}
			sc, ok := c.(syscall.Conn)
			if !ok {
				t.Errorf("%s: %T has no SyscallConn", name, c)
				return
			}
			assertMark(t, sc, mark)
			if cl, ok := c.(interface{ Close() error }); ok {
				cl.Close()
			}
		}
		assertMark(t, ln.(syscall.Conn), mark) // ListenTCP
		pc, err := n.ListenPacket("udp4", "127.0.0.1:0")
		check("ListenPacket", pc, err)
		u, err := n.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
		check("ListenUDP", u, err)
		du, err := n.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9})
		check("DialUDP", du, err)
		dt, err := n.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
		check("DialTCP", dt, err)
		d, err := n.Dial("tcp4", lnAddr)
		check("Dial", d, err)
		called := false
		dialer := n.CreateDialer(&net.Dialer{Control: func(string, string, syscall.RawConn) error { called = true; return nil }})
		dd, err := dialer.Dial("udp4", "127.0.0.1:9")
		check("CreateDialer", dd, err)
		if !called {
			t.Error("CreateDialer dropped the dialer's own Control")
		}
		lc := n.CreateListenConfig(&net.ListenConfig{})
		lp, err := lc.ListenPacket(context.Background(), "udp4", "127.0.0.1:0")
		check("CreateListenConfig.ListenPacket", lp, err)
		ll, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
		check("CreateListenConfig.Listen", ll, err)
		if _, err := n.DialUDP("udp4", nil, nil); err == nil || !strings.Contains(err.Error(), "missing address") {
			t.Errorf("DialUDP without raddr: %v", err)
		}
		if _, err := n.ListenUDP("tcp", nil); err == nil {
			t.Error("ListenUDP accepted network tcp")
		}
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return err
		}
		defer c.Close()
		if err := MarkConn(c, mark); err != nil {
			return fmt.Errorf("MarkConn: %w", err)
		}
		assertMark(t, c, mark)
		return nil
	})
}
