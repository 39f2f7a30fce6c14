package socks5

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

// startServer serves s on a loopback listener until the test ends and returns the listener's address.
func startServer(t testing.TB, s *Server) string {
	t.Helper()
	return startServerOn(t, s, "tcp4", "127.0.0.1:0")
}

func startServerOn(t testing.TB, s *Server, network, addr string) string {
	t.Helper()
	if s.Logger == nil {
		s.Logger = discardLogger()
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return ln.Addr().String()
}

// hostDial is a Server.Dial through the host's network.
func hostDial(ctx context.Context, network, addr string) (net.Conn, error) {
	return (&net.Dialer{}).DialContext(ctx, network, addr)
}

func hostListenPacket(ctx context.Context, network, addr string) (net.PacketConn, error) {
	return (&net.ListenConfig{}).ListenPacket(ctx, network, addr)
}

// fakeResolver resolves the names in m and nothing else.
func fakeResolver(m map[string][]netip.Addr) func(context.Context, string) ([]netip.Addr, error) {
	return func(_ context.Context, host string) ([]netip.Addr, error) {
		if a, ok := m[host]; ok {
			return a, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
}

// handshake connects to the proxy and negotiates "no authentication".
func handshake(t testing.TB, proxy string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatalf("dial proxy: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte{5, 1, 0}); err != nil {
		t.Fatal(err)
	}
	var m [2]byte
	if _, err := io.ReadFull(c, m[:]); err != nil || m != [2]byte{5, 0} {
		t.Fatalf("method selection %v, %v", m, err)
	}
	return c
}

// request sends a request on a negotiated connection and reads the reply.
func request(t testing.TB, c net.Conn, cmd Command, target Addr) (Reply, Addr) {
	t.Helper()
	b, err := AppendRequest(nil, Request{cmd, target})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	rep, bnd, err := readReply(c)
	if err != nil {
		t.Fatalf("reading reply: %v", err)
	}
	return rep, bnd
}

func readReply(r io.Reader) (Reply, Addr, error) {
	buf := make([]byte, 5, 4+1+255+2)
	if _, err := io.ReadFull(r, buf); err != nil {
		return 0, Addr{}, err
	}
	n, err := addrLen(buf[3], buf[4])
	if err != nil {
		return 0, Addr{}, err
	}
	buf = buf[:3+n]
	if _, err := io.ReadFull(r, buf[5:]); err != nil {
		return 0, Addr{}, err
	}
	rep, a, _, err := ParseReply(buf)
	return rep, a, err
}

// connect negotiates and sends a CONNECT; on success the connection is relayed to target.
func connect(t testing.TB, proxy string, target Addr) (net.Conn, Reply) {
	t.Helper()
	c := handshake(t, proxy)
	rep, _ := request(t, c, CommandConnect, target)
	return c, rep
}

func httpGet(t testing.TB, c net.Conn, host string) string {
	t.Helper()
	fmt.Fprintf(c, "GET /hello HTTP/1.0\r\nHost: %s\r\n\r\n", host)
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	return string(b)
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
