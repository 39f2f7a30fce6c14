package userfwd

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/tunpipe"
)

// The client netstack's addresses, and the "resource" addresses the test NAT maps onto the host's loopback:
// gVisor will not send to a loopback address over its (non-loopback) NIC, so the client dials fake4/fake6
// and the pipe rewrites them, the way the gateway core's DNS-resource NAT rewrites proxy IPs to real IPs.
var (
	client4 = netip.MustParseAddr("192.0.2.2")
	client6 = netip.MustParseAddr("2001:db8::2")
	fake4   = netip.MustParseAddr("198.18.0.1")
	fake6   = netip.MustParseAddr("2001:db8:ffff::1")
	loop4   = netip.MustParseAddr("127.0.0.1")
	loop6   = netip.IPv6Loopback()
)

// env is a client netstack joined to a Device by a packet pipe with a NAT (fake ↔ loopback).
type env struct {
	dev  *Device
	tnet *netstack.Net
	pipe *tunpipe.Pipe
}

func newEnv(t testing.TB, cfg Config) *env {
	t.Helper()
	dev, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctun, tnet, err := netstack.CreateNetTUN([]netip.Addr{client4, client6}, nil, DefaultMTU)
	if err != nil {
		dev.Close()
		t.Fatalf("CreateNetTUN: %v", err)
	}
	e := &env{dev: dev, tnet: tnet}
	e.pipe = tunpipe.Join(ctun, dev, func(from tun.Device, pkt []byte) bool {
		natLoopback(pkt, from == tun.Device(dev))
		return true
	})
	t.Cleanup(func() {
		e.pipe.Close()
		if err := e.pipe.Err(); err != nil {
			t.Errorf("pipe: %v", err)
		}
	})
	return e
}

// natLoopback rewrites fake → loopback destinations on the way to the device and loopback → fake sources
// (and the quoted destination of ICMP errors) on the way back.
func natLoopback(pkt []byte, fromDevice bool) {
	p, err := ippacket.Parse(pkt)
	if err != nil {
		return
	}
	if !fromDevice {
		switch p.Dst() {
		case fake4:
			p.SetDst(loop4)
		case fake6:
			p.SetDst(loop6)
		}
		return
	}
	switch p.Src() {
	case loop4:
		p.SetSrc(fake4)
	case loop6:
		p.SetSrc(fake6)
	}
	if p.IsICMPError() {
		if q, err := p.Quoted(); err == nil {
			switch q.Dst() {
			case loop4:
				q.SetDst(fake4)
			case loop6:
				q.SetDst(fake6)
			}
		}
	}
}

// fakeOf maps a loopback address port to the address the client dials.
func fakeOf(ap netip.AddrPort) netip.AddrPort {
	if ap.Addr().Is4() {
		return netip.AddrPortFrom(fake4, ap.Port())
	}
	return netip.AddrPortFrom(fake6, ap.Port())
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// hasIPv6Loopback reports whether the host can listen on [::1].
func hasIPv6Loopback() bool {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// freePort returns a loopback port nothing listens on (it was just released).
func freePort(t testing.TB, network, addr string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}
