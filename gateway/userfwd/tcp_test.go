package userfwd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
)

func loopbackServer(t *testing.T, network string) *httptest.Server {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "tcp6" {
		addr = "[::1]:0"
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.URL.Path)
	}))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

func TestHTTPGetThroughForwarder(t *testing.T) {
	for _, network := range []string{"tcp4", "tcp6"} {
		t.Run(network, func(t *testing.T) {
			if network == "tcp6" && !hasIPv6Loopback() {
				t.Skip("no IPv6 loopback on this host")
			}
			srv := loopbackServer(t, network)
			e := newEnv(t, Config{AllowLoopback: true})
			target := fakeOf(netip.MustParseAddrPort(srv.Listener.Addr().String()))
			hc := &http.Client{Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					return e.tnet.DialContext(ctx, "tcp", target.String())
				},
				DisableKeepAlives: true,
			}}
			resp, err := hc.Get("http://resource.test/path")
			if err != nil {
				t.Fatalf("GET: %v", err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatalf("reading body: %v", err)
			}
			if resp.StatusCode != 200 || string(body) != "hello /path" {
				t.Fatalf("got %d %q, want 200 %q", resp.StatusCode, body, "hello /path")
			}
			eventually(t, "the flow to end", func() bool { return e.dev.Stats().TCP.Active == 0 })
			if s := e.dev.Stats().TCP; s.Opened != 1 || s.FailedTotal() != 0 {
				t.Fatalf("TCP stats = %+v, want 1 opened, none failed", s)
			}
		})
	}
}

// TestTCPHalfClose: the client closes its write side; the server still answers and then closes.
func TestTCPHalfClose(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		data, err := io.ReadAll(c) // until the client's FIN
		if err != nil {
			done <- err
			return
		}
		_, err = c.Write([]byte(strings.ToUpper(string(data))))
		done <- err
	}()
	e := newEnv(t, Config{AllowLoopback: true})
	c, err := e.tnet.DialContextTCPAddrPort(testCtx(t), fakeOf(ln.Addr().(*net.TCPAddr).AddrPort()))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("half closed")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading after half-close: %v", err)
	}
	if string(got) != "HALF CLOSED" {
		t.Fatalf("got %q", got)
	}
	if err := <-done; err != nil {
		t.Fatalf("server: %v", err)
	}
}

func TestTCPRefusedGetsRST(t *testing.T) {
	e := newEnv(t, Config{AllowLoopback: true})
	port := freePort(t, "tcp4", "127.0.0.1:0")
	_, err := e.tnet.DialContextTCPAddrPort(testCtx(t), fakeOf(port))
	if err == nil || !strings.Contains(err.Error(), (&tcpip.ErrConnectionRefused{}).String()) {
		t.Fatalf("dial to a closed port: %v, want connection refused", err)
	}
	if s := e.dev.Stats().TCP; s.Failed[FailRefused] != 1 || s.Opened != 0 {
		t.Fatalf("TCP stats = %+v, want one refused", s)
	}
}

// TestTCPDialFailures: failures other than a refusal reach the client as ICMP unreachable, which makes its
// connect fail at once (gVisor maps ICMP host unreachable to "no route to host").
func TestTCPDialFailures(t *testing.T) {
	tests := []struct {
		name       string
		err        error
		wantClient tcpip.Error
		reason     FailReason
	}{
		{"host unreachable", os.NewSyscallError("connect", syscall.EHOSTUNREACH), &tcpip.ErrHostUnreachable{}, FailUnreachable},
		{"network unreachable", os.NewSyscallError("connect", syscall.ENETUNREACH), &tcpip.ErrNetworkUnreachable{}, FailUnreachable},
		{"timeout", context.DeadlineExceeded, &tcpip.ErrHostUnreachable{}, FailTimeout},
		{"other", errors.New("boom"), &tcpip.ErrHostUnreachable{}, FailOther},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dialed := make(chan string, 1)
			e := newEnv(t, Config{Dial: func(_ context.Context, network, addr string) (net.Conn, error) {
				dialed <- network + " " + addr
				return nil, &net.OpError{Op: "dial", Net: network, Err: tt.err}
			}})
			target := netip.MustParseAddrPort("198.51.100.7:443")
			_, err := e.tnet.DialContextTCPAddrPort(testCtx(t), target)
			if err == nil || !strings.Contains(err.Error(), tt.wantClient.String()) {
				t.Fatalf("dial: %v, want %q", err, tt.wantClient)
			}
			if got := <-dialed; got != "tcp4 198.51.100.7:443" {
				t.Fatalf("host dial = %q", got)
			}
			if s := e.dev.Stats().TCP; s.Failed[tt.reason] != 1 {
				t.Fatalf("TCP stats = %+v, want one %v", s, tt.reason)
			}
		})
	}
}

func TestLoopbackRefusedByDefault(t *testing.T) {
	srv := loopbackServer(t, "tcp4")
	var dials atomic.Int32
	e := newEnv(t, Config{Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}})
	target := fakeOf(netip.MustParseAddrPort(srv.Listener.Addr().String()))
	_, err := e.tnet.DialContextTCPAddrPort(testCtx(t), target)
	// ICMP administratively prohibited: gVisor reports it as host unreachable.
	if err == nil || !strings.Contains(err.Error(), (&tcpip.ErrHostUnreachable{}).String()) {
		t.Fatalf("dial to loopback: %v, want host unreachable", err)
	}
	if n := dials.Load(); n != 0 {
		t.Fatalf("the host dialed %d times", n)
	}
	if s := e.dev.Stats().TCP; s.Failed[FailProhibited] == 0 {
		t.Fatalf("TCP stats = %+v, want prohibited", s)
	}
}

func TestMaxFlows(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	e := newEnv(t, Config{AllowLoopback: true, MaxFlows: 2})
	target := fakeOf(ln.Addr().(*net.TCPAddr).AddrPort())
	for i := range 2 {
		c, err := e.tnet.DialContextTCPAddrPort(testCtx(t), target)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		defer c.Close()
	}
	_, err = e.tnet.DialContextTCPAddrPort(testCtx(t), target)
	if err == nil || !strings.Contains(err.Error(), (&tcpip.ErrConnectionRefused{}).String()) {
		t.Fatalf("third dial: %v, want refused", err)
	}
	eventually(t, "two active flows", func() bool { return e.dev.Stats().TCP.Active == 2 })
	if s := e.dev.Stats().TCP; s.Failed[FailLimit] != 1 {
		t.Fatalf("TCP stats = %+v, want 1 over the limit", s)
	}
}
