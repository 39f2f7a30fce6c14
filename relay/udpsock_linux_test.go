//go:build !relay_portable

package relay

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snowgate/snowgate/internal/netlab"
)

// TestSendBatch sends bursts through a sendBatch and checks that every
// datagram arrives whole, in order and on its own, whether the batch
// coalesced it into a UDP GSO send or not, and that the counters match.
func TestSendBatch(t *testing.T) {
	type frame struct {
		to   int // receiver index
		size int
	}
	burst := func(n, size int) []frame {
		f := make([]frame, n)
		for i := range f {
			f[i] = frame{0, size}
		}
		return f
	}
	for _, tc := range []struct {
		name     string
		gso      bool
		noCheck  bool // SO_NO_CHECK makes the kernel refuse GSO (EINVAL): the fallback path
		frames   []frame
		wantMsgs int // messages queued before the flush
	}{
		{"one datagram", true, false, burst(1, 100), 1},
		{"burst coalesced", true, false, burst(20, 1204), 1},
		{"shorter last segment", true, false, append(burst(5, 1204), frame{0, 300}), 1},
		{"shorter segment ends the run", true, false, append(append(burst(3, 1204), frame{0, 300}), burst(2, 1204)...), 2},
		{"longer segment starts a run", true, false, append(burst(3, 200), burst(3, 1204)...), 2},
		{"two destinations", true, false, []frame{{0, 500}, {0, 500}, {1, 500}, {1, 500}, {0, 500}}, 3},
		{"more than a GSO send holds", true, false, burst(80, 900), 2},
		{"without GSO", false, false, burst(10, 1204), 10},
		{"GSO refused", true, true, burst(10, 1204), 1},
	} {
		for _, fam := range []struct{ network, addr string }{{"udp4", "127.0.0.1"}, {"udp6", "::1"}} {
			t.Run(tc.name+" "+fam.network, func(t *testing.T) {
				st := newStats(1)
				sock, err := openUDP(fam.network, netip.AddrPortFrom(netip.MustParseAddr(fam.addr), 0), socketOptions{buffer: 4 << 20})
				if err != nil {
					t.Fatal(err)
				}
				defer sock.close()
				if tc.noCheck {
					if err := unix.SetsockoptInt(sock.fd, unix.SOL_SOCKET, unix.SO_NO_CHECK, 1); err != nil {
						t.Fatal(err)
					}
				}
				var rx [2]*net.UDPConn
				for i := range rx {
					c, err := net.ListenUDP(fam.network, &net.UDPAddr{IP: net.ParseIP(fam.addr)})
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					_ = c.SetReadBuffer(4 << 20)
					rx[i] = c
				}
				b := newSendBatch(128, st, tc.gso)
				shard := st.shard(0)
				var want [2][][]byte
				payloadBytes := 0
				for i, f := range tc.frames {
					p := bytes.Repeat([]byte{byte(i)}, f.size)
					copy(p, fmt.Sprintf("#%d", i))
					want[f.to] = append(want[f.to], p)
					b.add(sock, p, rx[f.to].LocalAddr().(*net.UDPAddr).AddrPort(), f.size-4, shard, true)
					payloadBytes += f.size - 4
				}
				if b.nmsg != tc.wantMsgs {
					t.Errorf("queued %d messages, want %d", b.nmsg, tc.wantMsgs)
				}
				b.flush()
				for i, c := range rx {
					for j, w := range want[i] {
						buf := make([]byte, 65536)
						_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
						n, err := c.Read(buf)
						if err != nil {
							t.Fatalf("receiver %d datagram %d: %v", i, j, err)
						}
						if !bytes.Equal(buf[:n], w) {
							t.Fatalf("receiver %d datagram %d: got %d bytes %q…, want %d bytes %q…", i, j, n, buf[:min(n, 4)], len(w), w[:4])
						}
					}
				}
				tr := st.traffic()
				if tr.toClientPackets != uint64(len(tc.frames)) || tr.toClientBytes != uint64(payloadBytes) {
					t.Fatalf("counted %d datagrams %d bytes, want %d and %d", tr.toClientPackets, tr.toClientBytes, len(tc.frames), payloadBytes)
				}
				if d := st.dropped[dropSend].Load(); d != 0 {
					t.Fatalf("%d send drops", d)
				}
				if tc.noCheck && sock.noGSO.Load() {
					t.Fatal("EINVAL must not turn GSO off for good (only EIO does)")
				}
			})
		}
	}
}

// TestSendBatchClosedSocket: datagrams queued for a socket closed before
// the flush are dropped and counted, and nothing is sent on a stale
// descriptor.
func TestSendBatchClosedSocket(t *testing.T) {
	st := newStats(1)
	sock, err := openUDP("udp4", mustAddrPort("127.0.0.1:0"), socketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b := newSendBatch(8, st, true)
	b.add(sock, []byte("hello"), netip.MustParseAddrPort("127.0.0.1:9"), 5, st.shard(0), false)
	b.add(sock, []byte("hello"), netip.MustParseAddrPort("127.0.0.1:9"), 5, st.shard(0), false)
	if err := sock.close(); err != nil {
		t.Fatal(err)
	}
	b.flush()
	if d := st.dropped[dropSend].Load(); d != 2 {
		t.Fatalf("dropped %d, want 2", d)
	}
	if b.ndgram != 0 || b.nmsg != 0 {
		t.Fatal("batch not reset")
	}
}

// TestSendBatchOverVeth runs bursts over a real veth link whose MTU (1280)
// is below some of the datagrams: bursts that fit go out as GSO sends and
// are split on the way; bursts that do not fit make the kernel refuse GSO
// (EMSGSIZE), and the batch falls back to one sendto per datagram, which the
// kernel fragments. Every datagram must arrive whole and in order. Needs
// root (network namespaces; skipped otherwise).
func TestSendBatchOverVeth(t *testing.T) {
	lab := netlab.New(t)
	inet := lab.Internet()
	a := lab.Host("a", inet, "198.18.0.1")
	b := lab.Host("b", inet, "198.18.0.2")
	if out, err := a.Exec(t.Context(), "ip", "link", "set", a.Iface(inet).Name, "mtu", "1280"); err != nil {
		t.Fatalf("set MTU: %v: %s", err, out)
	}
	var sock *udpSocket
	if err := a.Do(func() error {
		var err error
		sock, err = openUDP("udp4", netip.AddrPortFrom(a.Addr4(), 0), socketOptions{buffer: 4 << 20})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sock.close()
	rx, err := b.ListenUDP("udp4", netip.AddrPortFrom(b.Addr4(), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	_ = rx.SetReadBuffer(4 << 20)
	to := rx.LocalAddr().(*net.UDPAddr).AddrPort()
	for _, size := range []int{1000, 1400} {
		st := newStats(1)
		batch := newSendBatch(64, st, true)
		var want [][]byte
		for i := range 20 {
			p := bytes.Repeat([]byte{byte(i)}, size)
			copy(p, fmt.Sprintf("#%d/%d", i, size))
			want = append(want, p)
			batch.add(sock, p, to, size, st.shard(0), false)
		}
		batch.flush()
		for i, w := range want {
			buf := make([]byte, 65536)
			_ = rx.SetReadDeadline(time.Now().Add(3 * time.Second))
			n, err := rx.Read(buf)
			if err != nil {
				t.Fatalf("size %d, datagram %d: %v", size, i, err)
			}
			if !bytes.Equal(buf[:n], w) {
				t.Fatalf("size %d, datagram %d: got %d bytes %q…", size, i, n, buf[:min(n, 8)])
			}
		}
		if tr := st.traffic(); tr.toPeerPackets != 20 || st.dropped[dropSend].Load() != 0 {
			t.Fatalf("size %d: counted %d sent, %d dropped", size, tr.toPeerPackets, st.dropped[dropSend].Load())
		}
	}
	if sock.noGSO.Load() {
		t.Fatal("EMSGSIZE turned GSO off for good")
	}
}
