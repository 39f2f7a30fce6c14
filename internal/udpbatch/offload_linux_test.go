//go:build linux

package udpbatch

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// datagrams returns payloads of the given sizes, each filled with its own index so that order and
// content can be checked.
func datagrams(sizes ...int) [][]byte {
	out := make([][]byte, len(sizes))
	for i, n := range sizes {
		out[i] = bytes.Repeat([]byte{byte(i + 1)}, n)
	}
	return out
}

func repeat(n, size int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = size
	}
	return out
}

// offloadPattern has runs that coalesce, a shorter datagram ending a run, a longer one starting a
// new run, an empty datagram, and more equal datagrams than one GSO send may hold.
func offloadPattern() [][]byte {
	var sizes []int
	sizes = append(sizes, repeat(20, 1312)...)
	sizes = append(sizes, 300)
	sizes = append(sizes, repeat(3, 1312)...)
	sizes = append(sizes, 0, 77)
	sizes = append(sizes, repeat(90, 200)...)
	return datagrams(sizes...)
}

// receiveAll reads len(want) datagrams with r, nbufs at a time, and checks order, content and source.
// afterFirst (if not nil) runs after the first Read.
func receiveAll(t *testing.T, r *Reader, nbufs int, want [][]byte, src netip.AddrPort, afterFirst func()) {
	t.Helper()
	bufs := make([][]byte, nbufs)
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	sizes, from := make([]int, nbufs), make([]netip.AddrPort, nbufs)
	got := 0
	for got < len(want) {
		n, err := r.Read(bufs, sizes, from)
		if err != nil {
			t.Fatalf("read after %d of %d datagrams: %v", got, len(want), err)
		}
		if afterFirst != nil {
			afterFirst()
			afterFirst = nil
		}
		for i := 0; i < n; i++ {
			if got == len(want) {
				t.Fatalf("more datagrams than sent")
			}
			if !bytes.Equal(bufs[i][:sizes[i]], want[got]) {
				t.Fatalf("datagram %d: %d bytes of %v, want %d bytes of %d", got, sizes[i], firstByte(bufs[i][:sizes[i]]), len(want[got]), got+1)
			}
			if from[i].Port() != src.Port() {
				t.Fatalf("datagram %d from %v, want port %d", got, from[i], src.Port())
			}
			got++
		}
	}
}

func firstByte(b []byte) any {
	if len(b) == 0 {
		return "nothing"
	}
	return b[0]
}

var families = []struct {
	network, addr string
	family        int
}{{"udp4", "127.0.0.1:0", 4}, {"udp6", "[::1]:0", 6}}

// GSO sends arrive as the datagrams they were, at a receiver without GRO, at one with GRO (which
// gets them coalesced and splits them), and through Readers with fewer buffers than a coalesced
// message holds (the rest waits for the next Read).
func TestOffloadRoundTrip(t *testing.T) {
	for _, fam := range families {
		for _, tc := range []struct {
			gro   bool
			nbufs int
		}{{false, 128}, {true, 128}, {true, 3}, {true, 1}} {
			t.Run(fmt.Sprintf("%s gro=%v bufs=%d", fam.network, tc.gro, tc.nbufs), func(t *testing.T) {
				rx, tx := listen(t, fam.network, fam.addr), listen(t, fam.network, fam.addr)
				SetBuffers(rx, 4<<20)
				_ = rx.SetReadDeadline(time.Now().Add(5 * time.Second))
				c := New(tx, fam.family)
				if gso, _ := c.EnableOffload(); !gso {
					t.Skip("no UDP GSO on this kernel")
				}
				rc := New(rx, fam.family)
				if tc.gro {
					if _, gro := rc.EnableOffload(); !gro {
						t.Skip("no UDP GRO on this kernel")
					}
				}
				want := offloadPattern()
				if err := c.WriteBatch(want, AddrPortOf(rx.LocalAddr())); err != nil {
					t.Fatal(err)
				}
				if gso, _ := c.Offload(); !gso {
					t.Fatal("GSO turned itself off on loopback")
				}
				r := rc.NewReader(tc.nbufs)
				var check func()
				if tc.gro {
					// The first run of 20 equal datagrams was sent as one message and, the receiver
					// having GRO, delivered as one: the Reader got it coalesced.
					check = func() {
						if r.pend[0].size != 1312 {
							t.Fatalf("first message not coalesced: runs %+v", r.pend)
						}
					}
				}
				receiveAll(t, r, tc.nbufs, want, AddrPortOf(tx.LocalAddr()), check)
			})
		}
	}
}

// A path that refuses UDP_SEGMENT (SO_NO_CHECK makes the kernel refuse it with EINVAL) gets every
// datagram one by one, and GSO stays off afterwards.
func TestOffloadRefusedFallsBack(t *testing.T) {
	for _, fam := range families[:1] {
		rx, tx := listen(t, fam.network, fam.addr), listen(t, fam.network, fam.addr)
		SetBuffers(rx, 4<<20)
		_ = rx.SetReadDeadline(time.Now().Add(5 * time.Second))
		c := New(tx, fam.family)
		if gso, _ := c.EnableOffload(); !gso {
			t.Skip("no UDP GSO on this kernel")
		}
		raw, err := tx.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		_ = raw.Control(func(fd uintptr) {
			err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_NO_CHECK, 1)
		})
		if err != nil {
			t.Fatal(err)
		}
		want := offloadPattern()
		if err := c.WriteBatch(want, AddrPortOf(rx.LocalAddr())); err != nil {
			t.Fatal(err)
		}
		if gso, _ := c.Offload(); gso {
			t.Fatal("GSO still on after the kernel refused it")
		}
		receiveAll(t, New(rx, fam.family).NewReader(8), 8, want, AddrPortOf(tx.LocalAddr()), nil)
	}
}

// A Conn that is not a kernel socket has no offload.
func TestOffloadNeedsKernelSocket(t *testing.T) {
	tx := listen(t, "udp4", "127.0.0.1:0")
	if gso, gro := New(plainConn{tx}, 4).EnableOffload(); gso || gro {
		t.Fatalf("EnableOffload on a plain conn = %v, %v", gso, gro)
	}
}
