package tunpipe

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/netstack"
)

func TestJoinNetstacks(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	devA, netA, err := netstack.CreateNetTUN([]netip.Addr{a}, nil, 1280)
	if err != nil {
		t.Fatal(err)
	}
	devB, netB, err := netstack.CreateNetTUN([]netip.Addr{b}, nil, 1280)
	if err != nil {
		t.Fatal(err)
	}
	var fromA, dropped atomic.Int32
	p := Join(devA, devB, func(from tun.Device, pkt []byte) bool {
		if from == devA {
			fromA.Add(1)
		}
		if string(pkt[len(pkt)-4:]) == "drop" {
			dropped.Add(1)
			return false
		}
		return true
	})
	srv, err := netB.ListenUDPAddrPort(netip.AddrPortFrom(b, 9))
	if err != nil {
		t.Fatal(err)
	}
	c, err := netA.DialUDPAddrPort(netip.AddrPort{}, netip.AddrPortFrom(b, 9))
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("please drop"))
	c.Write([]byte("hello"))
	buf := make([]byte, 100)
	srv.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := srv.Read(buf)
	if err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("read %q, %v; want only the packet the hook kept", buf[:n], err)
	}
	if fromA.Load() != 2 || dropped.Load() != 1 {
		t.Fatalf("hook saw %d packets from a, dropped %d", fromA.Load(), dropped.Load())
	}
	c.Close()
	srv.Close()
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := p.Err(); err != nil {
		t.Fatalf("Err: %v", err)
	}
}
