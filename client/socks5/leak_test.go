package socks5

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

// TestCloseNoLeaks: Close ends relays, UDP associations and handshakes in progress, and every goroutine of
// the server returns.
func TestCloseNoLeaks(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	target, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var held []net.Conn
	var mu sync.Mutex
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := target.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	echo, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}

	srv := &Server{Dial: hostDial, ListenPacket: hostListenPacket, Logger: discardLogger()}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), ln) }()
	proxy := ln.Addr().String()

	var clients []net.Conn
	for range 10 {
		c, rep := connect(t, proxy, AddrFromAddrPort(netip.MustParseAddrPort(target.Addr().String())))
		if rep != ReplySucceeded {
			t.Fatalf("reply %v", rep)
		}
		clients = append(clients, c)
	}
	for range 3 {
		c, relay := udpAssociate(t, proxy, Addr{IP: netip.IPv4Unspecified()})
		clients = append(clients, c)
		u := listenUDP(t, "127.0.0.1:0")
		sendDatagram(t, u, relay, Datagram{Addr: AddrFromAddrPort(echo.LocalAddr().(*net.UDPAddr).AddrPort()), Payload: []byte("x")})
	}
	clients = append(clients, handshake(t, proxy)) // stuck before its request
	eventually(t, "all connections handled", func() bool { return srv.Stats().Active == len(clients) })

	srv.Close()
	<-served
	for _, c := range clients {
		c.Close()
	}
	target.Close()
	echo.Close()
	wg.Wait()
	mu.Lock()
	for _, c := range held {
		c.Close()
	}
	mu.Unlock()
}
