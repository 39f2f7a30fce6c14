package udpbatch

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

// plainConn hides *net.UDPConn: the Conn falls back to one datagram per call.
type plainConn struct{ net.PacketConn }

func listen(t *testing.T, network, addr string) *net.UDPConn {
	t.Helper()
	pc, err := net.ListenPacket(network, addr)
	if err != nil {
		t.Skipf("no %s loopback: %v", network, err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	return pc.(*net.UDPConn)
}

// readAll reads k datagrams with r (each batch call may return several).
func readAll(t *testing.T, r *Reader, k int) map[string]netip.AddrPort {
	t.Helper()
	got := map[string]netip.AddrPort{}
	bufs := make([][]byte, 8)
	for i := range bufs {
		bufs[i] = make([]byte, 1500)
	}
	sizes, from := make([]int, 8), make([]netip.AddrPort, 8)
	for len(got) < k {
		n, err := r.Read(bufs, sizes, from)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		for i := 0; i < n; i++ {
			got[string(bufs[i][:sizes[i]])] = from[i]
		}
	}
	return got
}

func TestBatchedAndPlainRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		network, addr string
		family        int
	}{{"udp4", "127.0.0.1:0", 4}, {"udp6", "[::1]:0", 6}} {
		for _, plain := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s plain=%v", tc.network, plain), func(t *testing.T) {
				rx, tx := listen(t, tc.network, tc.addr), listen(t, tc.network, tc.addr)
				_ = rx.SetReadDeadline(time.Now().Add(5 * time.Second))
				var pc net.PacketConn = tx
				if plain {
					pc = plainConn{tx}
				}
				c := New(pc, tc.family)
				if c.Batched() == plain {
					t.Fatalf("Batched = %v for plain=%v", c.Batched(), plain)
				}
				dst := AddrPortOf(rx.LocalAddr())
				bufs := [][]byte{[]byte("one"), []byte("two"), []byte("three")}
				if err := c.WriteBatch(bufs, dst); err != nil {
					t.Fatal(err)
				}
				if _, err := c.WriteTo([]byte("four"), dst); err != nil {
					t.Fatal(err)
				}
				got := readAll(t, New(rx, tc.family).NewReader(8), 4)
				src := AddrPortOf(tx.LocalAddr())
				for _, want := range []string{"one", "two", "three", "four"} {
					if got[want].Port() != src.Port() {
						t.Fatalf("%q from %v, want port %d (got %v)", want, got[want], src.Port(), got)
					}
				}
			})
		}
	}
}

// WriteDatagrams sends to several destinations in one batch (DNS replies).
func TestWriteDatagramsManyDestinations(t *testing.T) {
	tx := listen(t, "udp4", "127.0.0.1:0")
	var dsts []*net.UDPConn
	var ds []Datagram
	for i := range 3 {
		rx := listen(t, "udp4", "127.0.0.1:0")
		_ = rx.SetReadDeadline(time.Now().Add(5 * time.Second))
		dsts = append(dsts, rx)
		ds = append(ds, Datagram{Payload: []byte{byte('a' + i)}, Addr: AddrPortOf(rx.LocalAddr())})
	}
	n, err := New(tx, 4).WriteDatagrams(ds)
	if err != nil || n != 3 {
		t.Fatalf("WriteDatagrams = %d, %v", n, err)
	}
	for i, rx := range dsts {
		got := readAll(t, New(rx, 4).NewReader(1), 1)
		if _, ok := got[string(rune('a'+i))]; !ok {
			t.Fatalf("destination %d got %v", i, got)
		}
	}
}

func TestAddrPortOf(t *testing.T) {
	for _, tc := range []struct {
		in   net.Addr
		want string
	}{
		{&net.UDPAddr{IP: net.ParseIP("192.0.2.1"), Port: 5}, "192.0.2.1:5"},
		{&net.UDPAddr{IP: net.ParseIP("::ffff:192.0.2.1"), Port: 5}, "192.0.2.1:5"},
		{&net.UDPAddr{IP: net.ParseIP("2001:db8::1"), Port: 5}, "[2001:db8::1]:5"},
		{&net.TCPAddr{IP: net.ParseIP("198.51.100.1"), Port: 7}, "198.51.100.1:7"},
		{nil, "invalid AddrPort"},
	} {
		if got := AddrPortOf(tc.in).String(); got != tc.want {
			t.Errorf("AddrPortOf(%v) = %s, want %s", tc.in, got, tc.want)
		}
	}
}
