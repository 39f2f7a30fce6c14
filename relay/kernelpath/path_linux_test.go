//go:build linux

package kernelpath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snowgate/snowgate/internal/netlab"
	"github.com/snowgate/snowgate/internal/xdppass"
)

// bed is a relay namespace with the program attached to its interface, and
// a client and a peer namespace on the same switch. The relay's sockets
// exist (so that passed datagrams have somewhere to go, as in the relay)
// but nothing relays in userspace: what arrives was relayed by the program.
type bed struct {
	lab                  *netlab.Lab
	inet                 *netlab.Network
	relay, client, peer  *netlab.Host
	path                 *Path
	listen4, listen6     *net.UDPConn // the relay's TURN sockets
	relaySock4, relSock6 *net.UDPConn // an allocation's relay sockets
}

const relayPort = 50000

func newBed(t *testing.T, max int) *bed {
	t.Helper()
	lab := netlab.New(t)
	inet := lab.Internet()
	b := &bed{lab: lab, inet: inet}
	b.relay = lab.Host("relay", inet, "198.18.0.101")
	b.client = lab.Host("client", inet, "198.18.0.102")
	b.peer = lab.Host("peer", inet, "198.18.0.103")
	xdppass.AttachBridgeEnd(t, b.relay.Link())
	for _, h := range []*netlab.Host{b.client, b.peer} {
		if err := h.Link().SetTxChecksumOffload(false); err != nil {
			t.Fatal(err)
		}
	}
	listen := func(a netip.Addr, port int) *net.UDPConn {
		c, err := b.relay.ListenUDP(network(a), netip.AddrPortFrom(a, uint16(port)).String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	b.listen4, b.listen6 = listen(b.relay.Addr4(), 3478), listen(b.relay.Addr6(), 3478)
	b.relaySock4, b.relSock6 = listen(b.relay.Addr4(), relayPort), listen(b.relay.Addr6(), relayPort)
	err := b.relay.Do(func() error {
		var err error
		b.path, err = Open(Config{
			LowestPort: 49152, HighestPort: 65535,
			Addrs: []netip.Addr{b.relay.Addr4(), b.relay.Addr6()}, MaxChannels: max,
		})
		return err
	})
	if err != nil {
		t.Fatalf("open the kernel path as root: %v", err)
	}
	t.Cleanup(func() { _ = b.path.Close() })
	// Resolve the neighbours both ways (the relay's sockets send first, as
	// the relay does before any channel data). A first datagram may wait
	// for ARP/ND, so each exchange is tried a few times.
	for _, h := range []*netlab.Host{b.client, b.peer} {
		for _, a := range []netip.Addr{h.Addr4(), h.Addr6()} {
			c := b.socket(t, h, a)
			from := b.listenSock(a)
			exchange(t, from, c)
			exchange(t, c, from)
		}
	}
	return b
}

// exchange sends from one socket to the other until a datagram arrives
// (at most 5 tries of a second).
func exchange(t *testing.T, from, to *net.UDPConn) {
	t.Helper()
	for try := 0; ; try++ {
		if _, err := from.WriteToUDPAddrPort([]byte("hello"), localAddr(to)); err != nil {
			t.Fatal(err)
		}
		_, _, err := read(to, time.Second)
		if err == nil {
			return
		}
		if try == 4 {
			t.Fatalf("%v → %v: %v", localAddr(from), localAddr(to), err)
		}
	}
}

func (b *bed) socket(t *testing.T, h *netlab.Host, a netip.Addr) *net.UDPConn {
	t.Helper()
	c, err := h.ListenUDP(network(a), netip.AddrPortFrom(a, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func (b *bed) listenSock(a netip.Addr) *net.UDPConn {
	if a.Is4() {
		return b.listen4
	}
	return b.listen6
}

func (b *bed) relaySock(a netip.Addr) *net.UDPConn {
	if a.Is4() {
		return b.relaySock4
	}
	return b.relSock6
}

func (b *bed) addr(h *netlab.Host, v6 bool) netip.Addr {
	if v6 {
		return h.Addr6()
	}
	return h.Addr4()
}

func network(a netip.Addr) string {
	if a.Is4() {
		return "udp4"
	}
	return "udp6"
}

func localAddr(c *net.UDPConn) netip.AddrPort {
	ap := c.LocalAddr().(*net.UDPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func read(c *net.UDPConn, timeout time.Duration) ([]byte, netip.AddrPort, error) {
	buf := make([]byte, 4096)
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, netip.AddrPort{}, err
	}
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	return buf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), nil
}

// expectNothing checks that no datagram waits on c.
func expectNothing(t *testing.T, c *net.UDPConn, what string) {
	t.Helper()
	if b, from, err := read(c, 50*time.Millisecond); err == nil {
		t.Errorf("%s received %d bytes from %v; the program should have relayed them", what, len(b), from)
	}
}

func channelData(ch uint16, payload []byte, pad byte, padTo4 bool) []byte {
	out := binary.BigEndian.AppendUint16(nil, ch)
	out = binary.BigEndian.AppendUint16(out, uint16(len(payload)))
	out = append(out, payload...)
	for padTo4 && len(out)%4 != 0 {
		out = append(out, pad)
	}
	return out
}

// udpChecksumErrors reads h's UDP counters and the lab's link counters,
// for failure messages.
func (b *bed) diag(t *testing.T, h *netlab.Host) string {
	t.Helper()
	out, _ := h.Exec(t.Context(), "sh", "-c", "nstat -az | grep -v ' 0 '")
	s := string(out)
	for _, ns := range b.lab.NamespaceNames() {
		o, _ := exec.Command("ip", "-n", ns, "-s", "link").CombinedOutput()
		s += "\n" + ns + ":\n" + string(o)
	}
	return s
}

// TestKernelPathCombinations relays both ways in all four family
// combinations, with padded and unpadded ChannelData of odd and even
// lengths, and checks what arrives: payload, source address and port,
// ChannelData framing; the receivers' kernels verify the UDP checksums
// the program computed (a wrong one is dropped). Counters must match.
// Needs root.
func TestKernelPathCombinations(t *testing.T) {
	b := newBed(t, 64)
	var ch uint16 = 0x4000
	for _, clientV6 := range []bool{false, true} {
		for _, peerV6 := range []bool{false, true} {
			name := fmt.Sprintf("client_ipv%d_peer_ipv%d", map[bool]int{false: 4, true: 6}[clientV6], map[bool]int{false: 4, true: 6}[peerV6])
			ch++
			t.Run(name, func(t *testing.T) {
				client := b.socket(t, b.client, b.addr(b.client, clientV6))
				peer := b.socket(t, b.peer, b.addr(b.peer, peerV6))
				listenAt := localAddr(b.listenSock(b.addr(b.relay, clientV6)))
				relayAt := localAddr(b.relaySock(b.addr(b.relay, peerV6)))
				bind := Binding{Client: localAddr(client), Listen: listenAt, Peer: localAddr(peer), Relay: relayAt, Channel: ch}
				if err := b.path.Add(bind); err != nil {
					t.Fatal(err)
				}
				if toPeer, toClient := b.path.Installed(bind); !toPeer || !toClient {
					t.Fatalf("installed to peer %v, to client %v; want both (neighbours are resolved)", toPeer, toClient)
				}
				var want Counters
				for i, n := range []int{0, 1, 5, 6, 7, 8, 100, 1201} {
					payload := bytes.Repeat([]byte{byte(i + 1)}, n)
					for j := range payload {
						payload[j] ^= byte(j)
					}
					padded := i%2 == 0
					if _, err := client.WriteToUDPAddrPort(channelData(ch, payload, 0xa5, padded), listenAt); err != nil {
						t.Fatal(err)
					}
					got, from, err := read(peer, 2*time.Second)
					if err != nil {
						t.Fatalf("peer, %d bytes (padded %v): %v; diagnostics: %s; passed: %+v", n, padded, err,
							b.diag(t, b.peer), b.path.Passed())
					}
					if !bytes.Equal(got, payload) || from != relayAt {
						t.Fatalf("peer got %x from %v, want %x from %v", got, from, payload, relayAt)
					}
					want.ToPeerPackets++
					want.ToPeerBytes += uint64(n)

					if _, err := peer.WriteToUDPAddrPort(payload, relayAt); err != nil {
						t.Fatal(err)
					}
					got, from, err = read(client, 2*time.Second)
					if err != nil {
						t.Fatalf("client, %d bytes: %v; diagnostics: %s; passed: %+v", n, err,
							b.diag(t, b.client), b.path.Passed())
					}
					if wantCD := channelData(ch, payload, 0, false); !bytes.Equal(got, wantCD) || from != listenAt {
						t.Fatalf("client got %x from %v, want %x from %v", got, from, wantCD, listenAt)
					}
					want.ToClientPackets++
					want.ToClientBytes += uint64(n)
				}
				expectNothing(t, b.listenSock(listenAt.Addr()), "the relay's TURN socket")
				expectNothing(t, b.relaySock(relayAt.Addr()), "the relay socket")
				if got, ok := b.path.Counters(bind); !ok || got != want {
					t.Fatalf("counters %+v (%v), want %+v", got, ok, want)
				}
				if c, ok := b.path.Remove(bind); !ok || c != want {
					t.Fatalf("Remove returned %+v (%v), want %+v", c, ok, want)
				}
				if c2p, p2c := b.path.MapEntries(); c2p != 0 || p2c != 0 {
					t.Fatalf("after Remove the maps hold %d and %d entries", c2p, p2c)
				}
				// Unbound now: the datagram reaches the relay's socket.
				if _, err := client.WriteToUDPAddrPort(channelData(ch, []byte("late"), 0, true), listenAt); err != nil {
					t.Fatal(err)
				}
				if got, _, err := read(b.listenSock(listenAt.Addr()), 2*time.Second); err != nil || !bytes.Equal(got, channelData(ch, []byte("late"), 0, true)) {
					t.Fatalf("after Remove the relay's socket read %x, %v", got, err)
				}
			})
		}
	}
	tot := b.path.Totals()
	if tot.ToPeerPackets != 4*8 || tot.ToClientPackets != 4*8 {
		t.Fatalf("totals %+v, want 32 packets each way", tot)
	}
}

// TestKernelPathPasses: what the program must leave to the stack reaches
// the relay's sockets unchanged — datagrams with a partial checksum (a
// local sender's offload), IPv4 without a checksum bound for IPv6,
// malformed ChannelData, traffic of unknown channels — and IPv4 without a
// checksum bound for IPv4 is relayed without one. Needs root.
func TestKernelPathPasses(t *testing.T) {
	b := newBed(t, 8)
	client := b.socket(t, b.client, b.client.Addr4())
	peer4 := b.socket(t, b.peer, b.peer.Addr4())
	peer6 := b.socket(t, b.peer, b.peer.Addr6())
	listenAt := localAddr(b.listen4)
	bind4 := Binding{Client: localAddr(client), Listen: listenAt, Peer: localAddr(peer4), Relay: localAddr(b.relaySock4), Channel: 0x4001}
	bind6 := Binding{Client: localAddr(client), Listen: listenAt, Peer: localAddr(peer6), Relay: localAddr(b.relSock6), Channel: 0x4002}
	for _, bd := range []Binding{bind4, bind6} {
		if err := b.path.Add(bd); err != nil {
			t.Fatal(err)
		}
	}
	sendExpectPassed := func(t *testing.T, msg []byte) {
		t.Helper()
		if _, err := client.WriteToUDPAddrPort(msg, listenAt); err != nil {
			t.Fatal(err)
		}
		got, _, err := read(b.listen4, 2*time.Second)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("the relay's socket read %x, %v; want %x", got, err, msg)
		}
	}
	t.Run("unknown channel", func(t *testing.T) {
		sendExpectPassed(t, channelData(0x4003, []byte("x"), 0, true))
	})
	t.Run("malformed", func(t *testing.T) {
		before := b.path.Passed().Malformed
		sendExpectPassed(t, channelData(0x4001, []byte("toolong"), 0, false)[:8])           // length beyond the datagram
		sendExpectPassed(t, append(channelData(0x4001, []byte("ab"), 0, true), 1, 2, 3, 4)) // more than padding
		if got := b.path.Passed().Malformed - before; got != 2 {
			t.Fatalf("malformed passes %d, want 2", got)
		}
	})
	t.Run("partial checksum", func(t *testing.T) {
		if err := b.client.Link().SetTxChecksumOffload(true); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = b.client.Link().SetTxChecksumOffload(false) }()
		before := b.path.Passed().PartialChecksum
		sendExpectPassed(t, channelData(0x4001, []byte("offloaded"), 0, true))
		if got := b.path.Passed().PartialChecksum - before; got != 1 {
			t.Fatalf("partial-checksum passes %d, want 1", got)
		}
	})
	t.Run("no checksum", func(t *testing.T) {
		raw, err := client.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		setNoCheck := func(on int) {
			var serr error
			if err := raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_NO_CHECK, on) }); err != nil || serr != nil {
				t.Fatal(err, serr)
			}
		}
		setNoCheck(1)
		defer setNoCheck(0)
		// To an IPv4 peer: relayed, still without a checksum.
		msg := []byte("no checksum")
		if _, err := client.WriteToUDPAddrPort(channelData(0x4001, msg, 0, true), listenAt); err != nil {
			t.Fatal(err)
		}
		if got, _, err := read(peer4, 2*time.Second); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("peer read %q, %v", got, err)
		}
		// To an IPv6 peer: IPv6 needs a checksum, so the stack gets it.
		before := b.path.Passed().NoChecksum
		sendExpectPassed(t, channelData(0x4002, msg, 0, true))
		if got := b.path.Passed().NoChecksum - before; got != 1 {
			t.Fatalf("no-checksum passes %d, want 1", got)
		}
	})
}

// TestKernelPathPendingNeighbour: a peer the relay has never talked to has
// no neighbour entry; that direction stays out of the maps (userspace
// sends resolve it) and is installed by a retry once the entry exists.
// Needs root.
func TestKernelPathPendingNeighbour(t *testing.T) {
	b := newBed(t, 8)
	fresh := b.lab.Host("fresh", b.inet, "198.18.0.104")
	if err := fresh.Link().SetTxChecksumOffload(false); err != nil {
		t.Fatal(err)
	}
	client := b.socket(t, b.client, b.client.Addr4())
	peer := b.socket(t, fresh, fresh.Addr4())
	bind := Binding{Client: localAddr(client), Listen: localAddr(b.listen4), Peer: localAddr(peer), Relay: localAddr(b.relaySock4), Channel: 0x4001}
	if err := b.path.Add(bind); err != nil {
		t.Fatal(err)
	}
	if toPeer, toClient := b.path.Installed(bind); toPeer || !toClient {
		t.Fatalf("installed to peer %v, to client %v; want only to the client", toPeer, toClient)
	}
	if s := b.path.Status(); s.Pending != 1 || s.Installed != 1 {
		t.Fatalf("status %+v", s)
	}
	// The relay's userspace send resolves the neighbour.
	if _, err := b.relaySock4.WriteToUDPAddrPort([]byte("hi"), localAddr(peer)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := read(peer, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if toPeer, _ := b.path.Installed(bind); toPeer {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the peer direction was never installed: %+v", b.path.Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestKernelPathFull: Add refuses bindings beyond MaxChannels with
// ErrFull and accepts again after a Remove. Needs root.
func TestKernelPathFull(t *testing.T) {
	b := newBed(t, 2)
	client := b.socket(t, b.client, b.client.Addr4())
	mk := func(ch uint16) Binding {
		return Binding{Client: localAddr(client), Listen: localAddr(b.listen4), Peer: netip.MustParseAddrPort("198.18.0.103:4000"),
			Relay: localAddr(b.relaySock4), Channel: ch}
	}
	for ch := uint16(0x4000); ch < 0x4002; ch++ {
		if err := b.path.Add(mk(ch)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.path.Add(mk(0x4002)); !errors.Is(err, ErrFull) {
		t.Fatalf("third binding: %v, want ErrFull", err)
	}
	_, _ = b.path.Remove(mk(0x4000))
	if err := b.path.Add(mk(0x4002)); err != nil {
		t.Fatal(err)
	}
}
