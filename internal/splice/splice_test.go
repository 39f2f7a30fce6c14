package splice

import (
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// pair returns both ends of a loopback TCP connection.
func pair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

func TestHalfClose(t *testing.T) {
	client, a := pair(t)
	b, server := pair(t)
	var aborted atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		Conns(a, b, func() { aborted.Store(true); a.Close(); b.Close() })
	}()
	client.Write([]byte("request"))
	client.CloseWrite()
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(server) // ends at the spliced FIN
	if err != nil || string(got) != "request" {
		t.Fatalf("server read %q, %v", got, err)
	}
	server.Write([]byte("response")) // still flows after the client's half-close
	server.Close()
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err = io.ReadAll(client)
	if err != nil || string(got) != "response" {
		t.Fatalf("client read %q, %v", got, err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Conns did not return after both directions ended")
	}
	if aborted.Load() {
		t.Fatal("abort called on a clean close")
	}
}

func TestResetAborts(t *testing.T) {
	client, a := pair(t)
	b, server := pair(t)
	var aborted atomic.Int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		Conns(a, b, func() { aborted.Add(1); Reset(a); Reset(b) })
	}()
	client.Write([]byte("x"))
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(server, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	Reset(server) // RST towards b: the b→a direction fails
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Conns did not return after a reset")
	}
	if n := aborted.Load(); n != 1 {
		t.Fatalf("abort called %d times, want 1", n)
	}
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := client.Read(make([]byte, 1)); err == nil || err == io.EOF {
		t.Fatalf("client read after reset: %v, want a connection reset", err)
	}
}
