package relay

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v4"
	"github.com/pion/turn/v5"
	"github.com/snowgate/snowgate/internal/telemetry"
)

// sameRelayConfig is a loopback relay whose own address is 127.0.0.1, with
// relay ports above the kernel's ephemeral range so the ephemeral TURN port
// and the test's stand-in sockets fall outside it. No --allow-peer: the
// only loopback peers allowed are the relay's own address.
func sameRelayConfig() Config {
	cfg := loopbackConfig()
	cfg.PublicIP6, cfg.ListenAddr6 = netip.Addr{}, netip.Addr{}
	cfg.LowestPort, cfg.HighestPort = 61000, 65535
	return cfg
}

// pionAllocation allocates on s with pion/turn's client from a loopback socket.
func pionAllocation(t *testing.T, s *Server, salt string) net.PacketConn {
	t.Helper()
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return pionAllocationOn(t, s, salt, conn, s.Addr())
}

// pionAllocationOn allocates on s, reached at server, with pion/turn's
// client on conn (closed by the caller); it returns the relayed conn.
func pionAllocationOn(t *testing.T, s *Server, salt string, conn net.PacketConn, server netip.AddrPort) net.PacketConn {
	t.Helper()
	user, pass := firezoneCreds(s, salt, time.Hour)
	srv := server.String()
	client, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: srv, TURNServerAddr: srv, Conn: conn,
		Username: user, Password: pass, Realm: DefaultRealm,
		LoggerFactory: telemetry.PionLoggerFactory(testLogger()),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.Close)
	if err := client.Listen(); err != nil {
		t.Fatal(err)
	}
	relayed, err := client.Allocate()
	if err != nil {
		t.Fatalf("Allocate: %v", err)
	}
	t.Cleanup(func() { _ = relayed.Close() })
	return relayed
}

// TestSameRelay: two clients allocate on the same relay and talk through
// their relayed addresses (the relay↔relay candidate pair), over channels
// both ways (fast path and pion's path) and over Send/Data indications;
// datagrams to the relay's own address outside the relay port range are
// dropped and counted.
func TestSameRelay(t *testing.T) {
	for _, slow := range []bool{false, true} {
		t.Run(fmt.Sprintf("fast path %v", !slow), func(t *testing.T) {
			cfg := sameRelayConfig()
			cfg.DisableFastPath = slow
			s := startRelay(t, cfg)
			a := pionAllocation(t, s, "client")
			b := pionAllocation(t, s, "gateway")
			aAddr, bAddr := a.LocalAddr().(*net.UDPAddr), b.LocalAddr().(*net.UDPAddr)
			if !aAddr.IP.Equal(net.IPv4(127, 0, 0, 1)) || aAddr.Port < cfg.LowestPort {
				t.Fatalf("relayed address %v", aAddr)
			}
			// pion's client creates the permission on its first write and binds
			// a channel in the background; exchange until both channels are up.
			for i := 0; ; i++ {
				if i > 100 {
					t.Fatalf("channels never bound (channels=%d)", s.stats.channels.Load())
				}
				if _, err := a.WriteTo([]byte("hello-b"), bAddr); err != nil {
					t.Fatal(err)
				}
				if _, err := b.WriteTo([]byte("hello-a"), aAddr); err != nil {
					t.Fatal(err)
				}
				_, _, _ = readFrom(a, 50*time.Millisecond)
				_, _, _ = readFrom(b, 50*time.Millisecond)
				if s.stats.channels.Load() == 2 {
					break
				}
			}
			if !slow && fastChannels(s) != 2 {
				t.Fatalf("fast path mirrors %d channels, want 2", fastChannels(s))
			}
			// Drain stragglers, then check exact delivery both ways.
			for readErr := error(nil); readErr == nil; _, _, readErr = readFrom(a, 100*time.Millisecond) {
			}
			for readErr := error(nil); readErr == nil; _, _, readErr = readFrom(b, 100*time.Millisecond) {
			}
			for i := range 5 {
				msg := []byte(fmt.Sprintf("a-to-b-%d", i))
				if _, err := a.WriteTo(msg, bAddr); err != nil {
					t.Fatal(err)
				}
				got, from, err := readFrom(b, 3*time.Second)
				if err != nil || string(got) != string(msg) || from.String() != aAddr.String() {
					t.Fatalf("b got %q from %v (%v), want %q from %v", got, from, err, msg, aAddr)
				}
				msg = []byte(fmt.Sprintf("b-to-a-%d", i))
				if _, err := b.WriteTo(msg, aAddr); err != nil {
					t.Fatal(err)
				}
				got, from, err = readFrom(a, 3*time.Second)
				if err != nil || string(got) != string(msg) || from.String() != bAddr.String() {
					t.Fatalf("a got %q from %v (%v), want %q from %v", got, from, err, msg, bAddr)
				}
			}

			// A third client speaks Send indications (no channel) to b and
			// gets b's answer as a Data indication.
			user, pass := firezoneCreds(s, "raw", time.Hour)
			r := newRawClient(t, s.Addr(), user, pass)
			cRelayed, err := r.allocate()
			if err != nil {
				t.Fatal(err)
			}
			if resp := r.request(stun.MethodCreatePermission, peerAttr(addrPortOf(bAddr))); resp.Type.Class != stun.ClassSuccessResponse {
				t.Fatalf("permission for own address: code %d", errorCode(resp))
			}
			r.send(addrPortOf(bAddr), []byte("c-to-b"))
			got, from, err := readFrom(b, 3*time.Second)
			if err != nil || string(got) != "c-to-b" || addrPortOf(from.(*net.UDPAddr)) != cRelayed {
				t.Fatalf("b got %q from %v (%v), want c-to-b from %v", got, from, err, cRelayed)
			}
			if _, err := b.WriteTo([]byte("b-to-c"), net.UDPAddrFromAddrPort(cRelayed)); err != nil {
				t.Fatal(err)
			}
			peer, data := r.readData(t)
			if peer != addrPortOf(bAddr) || string(data) != "b-to-c" {
				t.Fatalf("c got %q from %v, want b-to-c from %v", data, peer, bAddr)
			}

			// Own address outside the range: a stand-in for the health port
			// (permission granted, datagrams dropped and counted), and the TURN
			// port itself, by Send indication and by a bound channel.
			health, err := net.ListenPacket("udp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer health.Close()
			healthAddr := addrPortOf(health.LocalAddr().(*net.UDPAddr))
			if int(healthAddr.Port()) >= cfg.LowestPort {
				t.Skipf("ephemeral port %d inside the relay range", healthAddr.Port())
			}
			before := s.stats.refusedPeers.Load()
			r.send(healthAddr, []byte("to-health"))
			r.send(s.Addr(), []byte("to-turn-port"))
			if resp := r.request(stun.MethodChannelBind, peerAttr(healthAddr), channelAttr(0x4000)); resp.Type.Class != stun.ClassSuccessResponse {
				t.Fatalf("channel bind to own address: code %d", errorCode(resp))
			}
			if !slow {
				if _, ok := s.fast.lookup(addrPortOf(r.conn.LocalAddr().(*net.UDPAddr)), 0x4000); ok {
					t.Fatalf("fast path took the channel to %v", healthAddr)
				}
			}
			r.channelData(0x4000, []byte("to-health-channel"))
			waitFor(t, 2*time.Second, "refused datagrams counted", func() bool { return s.stats.refusedPeers.Load() == before+3 })
			if got, _, err := readFrom(health, 300*time.Millisecond); err == nil {
				t.Fatalf("own address outside the range received %q", got)
			}
		})
	}
}

func addrPortOf(a *net.UDPAddr) netip.AddrPort {
	ap := a.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// send sends a Send indication to peer.
func (r *rawClient) send(peer netip.AddrPort, data []byte) {
	r.t.Helper()
	msg, err := stun.Build(stun.TransactionID, stun.NewType(stun.MethodSend, stun.ClassIndication),
		peerAttr(peer), stun.RawAttribute{Type: stun.AttrData, Value: data})
	if err != nil {
		r.t.Fatal(err)
	}
	if _, err := r.conn.WriteToUDP(msg.Raw, r.server); err != nil {
		r.t.Fatal(err)
	}
}

// channelData sends a ChannelData message.
func (r *rawClient) channelData(number uint16, data []byte) {
	r.t.Helper()
	b := make([]byte, 4+len(data)+3)
	binary.BigEndian.PutUint16(b[0:2], number)
	binary.BigEndian.PutUint16(b[2:4], uint16(len(data))) //nolint:gosec // test data
	copy(b[4:], data)
	if _, err := r.conn.WriteToUDP(b[:(4+len(data)+3)&^3], r.server); err != nil {
		r.t.Fatal(err)
	}
}

// readData waits for a Data indication and returns its peer and data.
func (r *rawClient) readData(t *testing.T) (netip.AddrPort, []byte) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	buf := make([]byte, 2048)
	for {
		_ = r.conn.SetReadDeadline(deadline)
		n, _, err := r.conn.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("waiting for a Data indication: %v", err)
		}
		m := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
		if m.Decode() != nil || m.Type != stun.NewType(stun.MethodData, stun.ClassIndication) {
			continue
		}
		var peer stun.XORMappedAddress
		if err := peer.GetFromAs(m, stun.AttrXORPeerAddress); err != nil {
			t.Fatalf("Data indication without peer: %v", err)
		}
		data, err := m.Get(stun.AttrData)
		if err != nil {
			t.Fatalf("Data indication without data: %v", err)
		}
		a, _ := netip.AddrFromSlice(peer.IP)
		return netip.AddrPortFrom(a.Unmap(), uint16(peer.Port)), data //nolint:gosec // a port
	}
}
