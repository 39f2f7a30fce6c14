//go:build linux && !relay_portable

// Not with relay_portable: the portable socket opener binds relay sockets in
// the calling thread's namespace (netns_other.go), so in-process relays in
// netlab namespaces cannot allocate there.

package relay

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v4"

	"github.com/snowgate/snowgate/internal/netlab"
	"github.com/snowgate/snowgate/internal/xdppass"
	"github.com/snowgate/snowgate/relay/kernelpath"
)

// kernelLab is a relay, a client and a peer host on one switch, set up so
// that the relay's XDP program sees datagrams as a NIC delivers them: the
// client and the peer send complete checksums (no transmit offload), and
// the relay's veth peer runs an XDP program so that XDP_TX frames leave.
type kernelLab struct {
	lab                 *netlab.Lab
	inet                *netlab.Network
	relay, client, peer *netlab.Host
}

func newKernelLab(t *testing.T) *kernelLab {
	t.Helper()
	if _, err := exec.LookPath("ping"); err != nil {
		t.Skip("ping (iputils-ping) not installed: cannot resolve the lab's neighbours before the test")
	}
	lab := netlab.New(t)
	inet := lab.Internet()
	k := &kernelLab{lab: lab, inet: inet}
	k.relay = lab.Host("relay", inet, "198.18.0.101")
	k.client = lab.Host("client", inet, "198.18.0.102")
	k.peer = lab.Host("peer", inet, "198.18.0.103")
	xdppass.AttachBridgeEnd(t, k.relay.Link())
	for _, h := range []*netlab.Host{k.client, k.peer} {
		if err := h.Link().SetTxChecksumOffload(false); err != nil {
			t.Fatal(err)
		}
	}
	// The relay knows its neighbours' MACs before the first channel is
	// bound, so every channel is installed in both directions at once and
	// all channel data goes through the kernel path (otherwise the first
	// datagrams to a new peer go through userspace while ARP resolves).
	for _, a := range []netip.Addr{k.client.Addr4(), k.client.Addr6(), k.peer.Addr4(), k.peer.Addr6()} {
		if out, err := k.relay.Exec(t.Context(), "ping", "-c", "1", "-W", "2", a.String()); err != nil {
			t.Fatalf("ping %s from the relay: %v\n%s", a, err, out)
		}
	}
	return k
}

// start runs a relay in the relay namespace (TURN REST secret "north");
// unbound, if set, gets each channel leaving the kernel path.
func (k *kernelLab) start(t *testing.T, mutate func(*Config), unbound func(kernelpath.Binding, kernelpath.Counters)) *Server {
	t.Helper()
	var s *Server
	err := k.relay.Do(func() error {
		cfg := Config{
			PublicIP4: k.relay.Addr4(), ListenAddr4: k.relay.Addr4(),
			PublicIP6: k.relay.Addr6(), ListenAddr6: k.relay.Addr6(),
			ListenPort: DefaultListenPort, Sockets: 2, DrainTimeout: -1,
			Auth: AuthTURNREST, RESTSecret: "north", MaxAllocationsPerUser: 100,
			Logger: testLogger(),
		}
		if mutate != nil {
			mutate(&cfg)
		}
		var err error
		if s, err = New(cfg); err != nil {
			return err
		}
		s.onKernelUnbind = unbound
		return s.Start(t.Context())
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// xdpAttached reports whether the relay's interface has an XDP program.
func (k *kernelLab) xdpAttached(t *testing.T) bool {
	t.Helper()
	out, err := k.relay.Exec(t.Context(), "ip", "link", "show", "dev", k.relay.Iface(k.inet).Name)
	if err != nil {
		t.Fatalf("ip link: %v\n%s", err, out)
	}
	return strings.Contains(string(out), "prog/xdp")
}

var uclientTotals = regexp.MustCompile(`tot_send_msgs=(\d+), tot_recv_msgs=(\d+)`)

// TestKernelPathTurnutils runs coturn's turnutils_uclient through the relay
// with the kernel path on and off, in all four combinations of client and
// peer address family (turnutils_peer echoes): every message comes back,
// and with the kernel path on, the kernel relayed all of them — its
// per-channel counters (read when each channel leaves the maps) count
// exactly each client's messages and bytes both ways, and its totals are
// what the relay's metrics report. Closing the relay removes every entry and detaches
// the program. Needs root and coturn's turnutils.
func TestKernelPathTurnutils(t *testing.T) {
	uclient, err1 := exec.LookPath("turnutils_uclient")
	peerBin, err2 := exec.LookPath("turnutils_peer")
	if err1 != nil || err2 != nil {
		t.Skip("turnutils_uclient/turnutils_peer not installed (Debian package coturn)")
	}
	k := newKernelLab(t)
	const peerPort = 3480
	for _, a := range []netip.Addr{k.peer.Addr4(), k.peer.Addr6()} {
		k.peer.Run(t, t.Context(), peerBin, "-L", a.String(), "-p", strconv.Itoa(peerPort))
	}
	const clients, msgs, length = 4, 100, 181 // odd length: padded ChannelData (-D)
	for _, kernel := range []bool{true, false} {
		for _, combo := range []struct {
			name         string
			server, peer netip.Addr
			flags        []string
		}{
			{"client_ipv4_peer_ipv4", k.relay.Addr4(), k.peer.Addr4(), nil},
			{"client_ipv4_peer_ipv6", k.relay.Addr4(), k.peer.Addr6(), []string{"-x"}},
			{"client_ipv6_peer_ipv4", k.relay.Addr6(), k.peer.Addr4(), []string{"-X"}},
			{"client_ipv6_peer_ipv6", k.relay.Addr6(), k.peer.Addr6(), nil},
		} {
			t.Run(fmt.Sprintf("kernel_%v/%s", kernel, combo.name), func(t *testing.T) {
				var mu sync.Mutex
				unbound := map[kernelpath.Binding]kernelpath.Counters{}
				s := k.start(t, func(c *Config) { c.DisableKernelPath = !kernel }, func(b kernelpath.Binding, c kernelpath.Counters) {
					mu.Lock()
					defer mu.Unlock()
					unbound[b] = c
				})
				if got := s.kernel != nil; got != kernel || k.xdpAttached(t) != kernel {
					t.Fatalf("kernel path %v, XDP attached %v; want %v", got, k.xdpAttached(t), kernel)
				}
				args := append([]string{"-W", "north", "-u", "interop", "-e", combo.peer.String(), "-r", strconv.Itoa(peerPort),
					"-p", strconv.Itoa(DefaultListenPort), "-n", strconv.Itoa(msgs), "-m", strconv.Itoa(clients),
					"-l", strconv.Itoa(length), "-D", "-z", "5", "-c"}, combo.flags...)
				args = append(args, combo.server.String())
				out, err := k.client.Exec(t.Context(), uclient, args...)
				if err != nil {
					t.Fatalf("turnutils_uclient: %v\n%s", err, out)
				}
				m := uclientTotals.FindAllStringSubmatch(string(out), -1)
				if len(m) == 0 {
					t.Fatalf("no totals in turnutils_uclient output:\n%s", out)
				}
				sent, _ := strconv.Atoi(m[len(m)-1][1])
				recv, _ := strconv.Atoi(m[len(m)-1][2])
				if sent != clients*msgs || recv != sent {
					t.Fatalf("sent %d received %d, want %d both", sent, recv, clients*msgs)
				}
				const want = clients * msgs
				total := settledTraffic(s)
				kt := s.stats.kernelTotals()
				if total.toPeerPackets != want || total.toClientPackets != want {
					t.Fatalf("relayed %+v, want %d packets each way", total, want)
				}
				if kernel {
					if kt.ToPeerPackets != want || kt.ToClientPackets != want ||
						kt.ToPeerBytes != want*length || kt.ToClientBytes != want*length {
						t.Fatalf("kernel relayed %+v, want all %d packets (%d bytes) each way; passed %+v",
							kt, want, want*length, s.kernel.Passed())
					}
				} else if kt != (kernelpath.Counters{}) {
					t.Fatalf("kernel path off but kernel counters %+v", kt)
				}
				kp := s.kernel
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				if k.xdpAttached(t) {
					t.Fatal("XDP program still attached after Close")
				}
				if !kernel {
					return
				}
				if kp.Status().Bindings != 0 {
					t.Fatalf("bindings left after Close: %+v", kp.Status())
				}
				mu.Lock()
				defer mu.Unlock()
				// turnutils_uclient binds two channels per client, one to
				// the peer's port (the messages) and one to the port above
				// it (none with -c).
				if len(unbound) != 2*clients {
					t.Fatalf("%d channels left the kernel path, want %d: %v", len(unbound), 2*clients, unbound)
				}
				data := 0
				for b, c := range unbound {
					wantC := kernelpath.Counters{}
					if b.Peer.Port() == peerPort {
						data++
						wantC = kernelpath.Counters{ToPeerPackets: msgs, ToPeerBytes: msgs * length, ToClientPackets: msgs, ToClientBytes: msgs * length}
					}
					if c != wantC || b.Peer.Addr() != combo.peer || b.Listen.Addr() != combo.server {
						t.Errorf("channel %+v: counters %+v, want %+v", b, c, wantC)
					}
				}
				if data != clients {
					t.Errorf("%d channels to the peer's port, want %d", data, clients)
				}
			})
		}
	}
}

// TestKernelPathChannelExpiry: a channel that is not refreshed expires in
// pion, and its entries leave the maps; the peer's datagrams then reach
// the client as Data indications (userspace, the permission lives on). A
// refreshed channel stays installed. Needs root.
func TestKernelPathChannelExpiry(t *testing.T) {
	k := newKernelLab(t)
	s := k.start(t, func(c *Config) {
		c.ChannelLifetime = 2 * time.Second
		c.PermissionLifetime = time.Minute
	}, nil)
	if s.kernel == nil {
		t.Fatal("kernel path not attached")
	}
	conn, err := k.client.ListenUDP("udp4", netip.AddrPortFrom(k.client.Addr4(), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	peer, err := k.peer.ListenUDP("udp4", netip.AddrPortFrom(k.peer.Addr4(), 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	user := strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10) + ":expiry"
	pass := TURNRESTPassword(user, "north")
	r := &rawClient{t: t, conn: conn, server: net.UDPAddrFromAddrPort(s.Addr()), user: user, pass: pass}
	relayed, err := r.allocate()
	if err != nil {
		t.Fatal(err)
	}
	peerAP := peer.LocalAddr().(*net.UDPAddr).AddrPort()
	bind := func(ch uint16) {
		t.Helper()
		if resp := r.request(stun.MethodChannelBind, peerAttr(peerAP), channelAttr(ch)); resp.Type.Class != stun.ClassSuccessResponse {
			t.Fatalf("ChannelBind: %d", errorCode(resp))
		}
	}
	bind(0x4000)
	b := kernelpath.Binding{
		Client: conn.LocalAddr().(*net.UDPAddr).AddrPort(), Listen: s.Addr(), Peer: peerAP,
		Relay: netip.AddrPortFrom(k.relay.Addr4(), relayed.Port()), Channel: 0x4000,
	}
	if toPeer, toClient := s.kernel.Installed(b); !toPeer || !toClient {
		t.Fatalf("installed to peer %v, to client %v; want both", toPeer, toClient)
	}
	// Data both ways goes through the kernel.
	if _, err := conn.WriteToUDPAddrPort([]byte{0x40, 0x00, 0, 5, 'h', 'e', 'l', 'l', 'o', 0, 0, 0}, s.Addr()); err != nil {
		t.Fatal(err)
	}
	if err := expectData(peer, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := peer.WriteToUDPAddrPort([]byte("back"), relayed); err != nil {
		t.Fatal(err)
	}
	got, _, err := readFrom(conn, 3*time.Second)
	if err != nil || !bytes.Equal(got, []byte{0x40, 0x00, 0, 4, 'b', 'a', 'c', 'k'}) {
		t.Fatalf("ChannelData to client: %x %v", got, err)
	}
	if c, _ := s.kernel.Counters(b); c.ToPeerPackets != 1 || c.ToClientPackets != 1 {
		t.Fatalf("kernel counters %+v, want one packet each way", c)
	}
	// Refreshing keeps it past its first lifetime.
	time.Sleep(time.Second)
	bind(0x4000)
	time.Sleep(1500 * time.Millisecond)
	if c2p, p2c := s.kernel.MapEntries(); c2p != 1 || p2c != 1 {
		t.Fatalf("refreshed channel: maps hold %d and %d entries, want 1 and 1", c2p, p2c)
	}
	waitFor(t, 10*time.Second, "the channel's map entries to go", func() bool {
		c2p, p2c := s.kernel.MapEntries()
		return c2p == 0 && p2c == 0
	})
	if st := s.kernel.Status(); st.Bindings != 0 {
		t.Fatalf("status after expiry: %+v", st)
	}
	if _, err := peer.WriteToUDPAddrPort([]byte("late"), relayed); err != nil {
		t.Fatal(err)
	}
	got, _, err = readFrom(conn, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	msg := &stun.Message{Raw: got}
	if err := msg.Decode(); err != nil || msg.Type != stun.NewType(stun.MethodData, stun.ClassIndication) {
		t.Fatalf("want a Data indication after expiry, got %x (%v)", got, err)
	}
}
