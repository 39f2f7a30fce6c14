package socks5

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func helloServer(t *testing.T) netip.AddrPort {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s", r.Host)
	}))
	t.Cleanup(srv.Close)
	return netip.MustParseAddrPort(srv.Listener.Addr().String())
}

func TestConnectByIP(t *testing.T) {
	web := helloServer(t)
	proxy := startServer(t, &Server{Dial: hostDial})
	c, rep := connect(t, proxy, AddrFromAddrPort(web))
	if rep != ReplySucceeded {
		t.Fatalf("reply %v", rep)
	}
	if got := httpGet(t, c, "ip.test"); !strings.HasSuffix(got, "hello from ip.test") {
		t.Fatalf("response %q", got)
	}
}

func TestConnectByName(t *testing.T) {
	web := helloServer(t)
	var resolved atomic.Int32
	resolve := fakeResolver(map[string][]netip.Addr{"demo.snowgate.test": {web.Addr()}})
	proxy := startServer(t, &Server{Dial: hostDial, Resolve: func(ctx context.Context, host string) ([]netip.Addr, error) {
		resolved.Add(1)
		return resolve(ctx, host)
	}})
	c, rep := connect(t, proxy, Addr{Name: "demo.snowgate.test", Port: web.Port()})
	if rep != ReplySucceeded {
		t.Fatalf("reply %v", rep)
	}
	if got := httpGet(t, c, "demo.snowgate.test"); !strings.HasSuffix(got, "hello from demo.snowgate.test") {
		t.Fatalf("response %q", got)
	}
	// An IP literal sent as a name is not resolved.
	c, rep = connect(t, proxy, Addr{Name: web.Addr().String(), Port: web.Port()})
	if rep != ReplySucceeded {
		t.Fatalf("reply for an IP literal name: %v", rep)
	}
	c.Close()
	if n := resolved.Load(); n != 1 {
		t.Fatalf("Resolve called %d times, want 1", n)
	}
}

func TestConnectReplies(t *testing.T) {
	closed := func() netip.AddrPort {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return netip.MustParseAddrPort(ln.Addr().String())
	}()
	failing := func(err error) func(context.Context, string, string) (net.Conn, error) {
		return func(context.Context, string, string) (net.Conn, error) {
			return nil, &net.OpError{Op: "dial", Net: "tcp", Err: err}
		}
	}
	tests := []struct {
		name    string
		srv     *Server
		target  Addr
		want    Reply
		cmd     Command
		noResol bool
	}{
		{"refused port", &Server{Dial: hostDial}, AddrFromAddrPort(closed), ReplyConnectionRefused, CommandConnect, false},
		{"unknown name", &Server{Dial: hostDial}, Addr{Name: "nxdomain.snowgate.test", Port: 80}, ReplyHostUnreachable, CommandConnect, false},
		{"name without resolver", &Server{Dial: hostDial}, Addr{Name: "demo.snowgate.test", Port: 80}, ReplyAddressTypeNotSupported, CommandConnect, true},
		{"host unreachable", &Server{Dial: failing(os.NewSyscallError("connect", syscall.EHOSTUNREACH))}, Addr{IP: netip.MustParseAddr("198.51.100.1"), Port: 80}, ReplyHostUnreachable, CommandConnect, false},
		{"network unreachable", &Server{Dial: failing(os.NewSyscallError("connect", syscall.ENETUNREACH))}, Addr{IP: netip.MustParseAddr("198.51.100.1"), Port: 80}, ReplyNetworkUnreachable, CommandConnect, false},
		{"gvisor no route", &Server{Dial: failing(errors.New("no route to host"))}, Addr{IP: netip.MustParseAddr("198.51.100.1"), Port: 80}, ReplyHostUnreachable, CommandConnect, false},
		{"gvisor refused", &Server{Dial: failing(errors.New("connection was refused"))}, Addr{IP: netip.MustParseAddr("198.51.100.1"), Port: 80}, ReplyConnectionRefused, CommandConnect, false},
		{"timeout", &Server{Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}, DialTimeout: 50 * time.Millisecond}, Addr{IP: netip.MustParseAddr("198.51.100.1"), Port: 80}, ReplyTTLExpired, CommandConnect, false},
		{"not allowed", &Server{Dial: failing(syscall.EACCES)}, Addr{IP: netip.MustParseAddr("198.51.100.1"), Port: 80}, ReplyNotAllowed, CommandConnect, false},
		{"other", &Server{Dial: failing(errors.New("boom"))}, Addr{IP: netip.MustParseAddr("198.51.100.1"), Port: 80}, ReplyGeneralFailure, CommandConnect, false},
		{"bind", &Server{Dial: hostDial}, Addr{IP: netip.IPv4Unspecified()}, ReplyCommandNotSupported, CommandBind, false},
		{"udp without ListenPacket", &Server{Dial: hostDial}, Addr{IP: netip.IPv4Unspecified()}, ReplyCommandNotSupported, CommandUDPAssociate, false},
		{"unknown command", &Server{Dial: hostDial}, Addr{IP: netip.IPv4Unspecified()}, ReplyCommandNotSupported, Command(0x7f), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !tt.noResol {
				tt.srv.Resolve = fakeResolver(nil)
			}
			proxy := startServer(t, tt.srv)
			c := handshake(t, proxy)
			rep, _ := request(t, c, tt.cmd, tt.target)
			if rep != tt.want {
				t.Fatalf("reply %v, want %v", rep, tt.want)
			}
			// The server closes the connection after a failure reply.
			if n, err := c.Read(make([]byte, 1)); err != io.EOF {
				t.Fatalf("after the reply: %d, %v; want EOF", n, err)
			}
		})
	}
}

func TestBadAddressTypeReply(t *testing.T) {
	proxy := startServer(t, &Server{Dial: hostDial})
	c := handshake(t, proxy)
	c.Write([]byte{5, 1, 0, 9, 1, 2, 3, 4, 0, 80})
	rep, _, err := readReply(c)
	if err != nil || rep != ReplyAddressTypeNotSupported {
		t.Fatalf("reply %v, %v; want address type not supported", rep, err)
	}
}

func TestNoAcceptableMethod(t *testing.T) {
	proxy := startServer(t, &Server{Dial: hostDial})
	for _, greeting := range [][]byte{{5, 1, 2}, {5, 2, 1, 2}, {5, 0}} {
		c, err := net.Dial("tcp", proxy)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write(greeting)
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || string(got) != string([]byte{5, 0xFF}) {
			t.Fatalf("greeting %v: got %v, %v; want [5 255] then close", greeting, got, err)
		}
	}
}

func TestHandshakeTimeout(t *testing.T) {
	proxy := startServer(t, &Server{Dial: hostDial, HandshakeTimeout: 100 * time.Millisecond})
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{5}) // and nothing more
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read: %v, want EOF (the server gave up)", err)
	}
}

// TestHappyEyeballs: addresses are tried IPv4 first, alternating families; an attempt that hangs does not
// hold the next one back longer than AttemptDelay, the first success wins and the losers are canceled.
func TestHappyEyeballs(t *testing.T) {
	web := helloServer(t)
	hang4 := netip.MustParseAddr("198.51.100.1")
	hang6 := netip.MustParseAddr("2001:db8::1")
	var mu sync.Mutex
	var order []string
	var canceled atomic.Int32
	srv := &Server{
		Resolve: fakeResolver(map[string][]netip.Addr{"multi.snowgate.test": {hang6, hang4, web.Addr()}}),
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			mu.Lock()
			order = append(order, network+" "+addr)
			mu.Unlock()
			ap := netip.MustParseAddrPort(addr)
			if ap.Addr() == web.Addr() {
				return hostDial(ctx, "tcp4", web.String())
			}
			<-ctx.Done() // a black hole
			canceled.Add(1)
			return nil, ctx.Err()
		},
	}
	proxy := startServer(t, srv)
	start := time.Now()
	c, rep := connect(t, proxy, Addr{Name: "multi.snowgate.test", Port: web.Port()})
	if rep != ReplySucceeded {
		t.Fatalf("reply %v", rep)
	}
	if got := httpGet(t, c, "multi"); !strings.HasSuffix(got, "hello from multi") {
		t.Fatalf("response %q", got)
	}
	if d := time.Since(start); d > DefaultDialTimeout/2 {
		t.Fatalf("connect took %v", d)
	}
	mu.Lock()
	defer mu.Unlock()
	p := fmt.Sprint(web.Port())
	want := []string{"tcp4 198.51.100.1:" + p, "tcp6 [2001:db8::1]:" + p, "tcp4 " + web.String()}
	if fmt.Sprint(order) != fmt.Sprint(want) {
		t.Fatalf("attempt order %v, want %v", order, want)
	}
	if n := canceled.Load(); n != 2 {
		t.Fatalf("%d losing attempts canceled, want 2", n)
	}
}

// TestHalfCloseRelay: the client half-closes; the target still answers through the proxy.
func TestHalfCloseRelay(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		c.Write([]byte(strings.ToUpper(string(b))))
	}()
	proxy := startServer(t, &Server{Dial: hostDial})
	c, rep := connect(t, proxy, AddrFromAddrPort(netip.MustParseAddrPort(ln.Addr().String())))
	if rep != ReplySucceeded {
		t.Fatalf("reply %v", rep)
	}
	c.Write([]byte("shout"))
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "SHOUT" {
		t.Fatalf("got %q, %v", got, err)
	}
}

func TestMaxConnsAndClose(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var targets []net.Conn
	var tmu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tmu.Lock()
			targets = append(targets, c)
			tmu.Unlock()
		}
	}()
	srv := &Server{Dial: hostDial, MaxConns: 2, Logger: discardLogger()}
	pl, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), pl) }()
	target := AddrFromAddrPort(netip.MustParseAddrPort(ln.Addr().String()))
	var clients []net.Conn
	for range 2 {
		c, rep := connect(t, pl.Addr().String(), target)
		if rep != ReplySucceeded {
			t.Fatalf("reply %v", rep)
		}
		clients = append(clients, c)
	}
	over, err := net.Dial("tcp", pl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	over.SetReadDeadline(time.Now().Add(10 * time.Second))
	over.Write([]byte{5, 1, 0})
	if _, err := over.Read(make([]byte, 2)); err == nil {
		t.Fatal("a connection over MaxConns was served")
	}
	if s := srv.Stats(); s.Active != 2 || s.Rejected != 1 || s.Accepted != 2 {
		t.Fatalf("stats %+v", s)
	}
	// Close ends the relays: clients and targets see their connections closed.
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve returned %v", err)
	}
	if s := srv.Stats(); s.Active != 0 {
		t.Fatalf("stats after Close %+v", s)
	}
	for _, c := range clients {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("client connection still open after Close")
		}
	}
	tmu.Lock()
	defer tmu.Unlock()
	for _, c := range targets {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("target connection still open after Close")
		}
	}
	if err := srv.Serve(context.Background(), pl); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve after Close: %v", err)
	}
}

func TestServeContextCancel(t *testing.T) {
	srv := &Server{Dial: hostDial, Logger: discardLogger()}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	c := handshake(t, ln.Addr().String()) // a connection in progress
	cancel()
	if err := <-served; !errors.Is(err, context.Canceled) {
		t.Fatalf("Serve returned %v", err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection open after Serve returned")
	}
	if err := (&Server{}).Serve(ctx, ln); !errors.Is(err, ErrNoDial) {
		t.Fatalf("Serve without Dial: %v", err)
	}
}
