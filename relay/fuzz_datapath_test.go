package relay

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v4"
)

// FuzzRelayDatagrams sends untrusted bytes through a running relay's real
// data path (workers, fast path, inboxes, pion) from both sides of an
// allocation with a bound channel: from the client's own address (so the
// fast path looks every ChannelData-shaped input up) and from the peer to
// the relayed address. After each input the relay must still relay
// ChannelData both ways: no panic, no stuck worker, no lost binding.
func FuzzRelayDatagrams(f *testing.F) {
	const channel = 0x4000
	f.Add([]byte{0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4})             // valid ChannelData
	f.Add([]byte{0x40, 0x00, 0xff, 0xff, 1})                      // length past the end
	f.Add([]byte{0x7f, 0xff, 0x00, 0x00})                         // unbound channel, empty
	f.Add([]byte{0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42}) // STUN header start
	f.Add(bytes.Repeat([]byte{0x40}, 3000))                       // oversized
	f.Add([]byte{})

	cfg := loopbackConfig()
	cfg.AllowPeers = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	s := startRelay(f, cfg)
	user, pass := firezoneCreds(s, "salt-fuzz", time.Hour)
	client := newRawClient(f, s.Addr(), user, pass)
	relayed, err := client.allocate()
	if err != nil {
		f.Fatal(err)
	}
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	if err != nil {
		f.Fatal(err)
	}
	defer peer.Close()
	peerAddr := peer.LocalAddr().(*net.UDPAddr).AddrPort()
	if resp := client.request(stun.MethodChannelBind, peerAttr(peerAddr), channelAttr(channel)); errorCode(resp) != 0 {
		f.Fatalf("ChannelBind: %d", errorCode(resp))
	}
	round := 0
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = client.conn.WriteToUDP(b, client.server)
		_, _ = peer.WriteToUDPAddrPort(b, relayed)
		// Liveness: a fresh ChannelData each way must get through.
		round++
		msg := []byte(fmt.Sprintf("live-%d", round))
		frame := make([]byte, 4+len(msg)+3)
		binary.BigEndian.PutUint16(frame[0:2], channel)
		binary.BigEndian.PutUint16(frame[2:4], uint16(len(msg))) //nolint:gosec // short
		copy(frame[4:], msg)
		frame = frame[:4+(len(msg)+3)/4*4]
		if _, err := client.conn.WriteToUDP(frame, client.server); err != nil {
			t.Fatal(err)
		}
		expectFrom(t, peer, msg, func(p []byte) []byte { return p })
		if _, err := peer.WriteToUDPAddrPort(msg, relayed); err != nil {
			t.Fatal(err)
		}
		expectFrom(t, client.conn, msg, func(p []byte) []byte {
			if len(p) < 4 || binary.BigEndian.Uint16(p[0:2]) != channel {
				return nil
			}
			n := int(binary.BigEndian.Uint16(p[2:4]))
			if 4+n > len(p) {
				return nil
			}
			return p[4 : 4+n]
		})
	})
}

// expectFrom reads c until a datagram whose payload (as unwrap extracts it)
// is want, skipping others (forwarded fuzz inputs, STUN replies).
func expectFrom(t *testing.T, c *net.UDPConn, want []byte, unwrap func([]byte) []byte) {
	t.Helper()
	buf := make([]byte, 4096)
	deadline := time.Now().Add(3 * time.Second)
	for {
		_ = c.SetReadDeadline(deadline)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("waiting for %q: %v", want, err)
		}
		if bytes.Equal(unwrap(buf[:n]), want) {
			return
		}
	}
}
