package relay

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestRelayBursts sends bursts both ways over a bound channel, the traffic
// the workers read in batches and coalesce into GSO sends: every datagram
// must arrive whole and in order, a shorter one in the middle of a burst
// included, and the counters must match.
func TestRelayBursts(t *testing.T) {
	for _, gso := range []bool{true, false} {
		name := "gso"
		if !gso {
			name = "no gso"
		}
		t.Run(name, func(t *testing.T) {
			cfg := loopbackConfig()
			cfg.DisableGSO = !gso
			cfg.AllowPeers = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
			s := startRelay(t, cfg)
			relayed, peer, ra := allocateWithChannel(t, s)

			// Sizes: a run of equal datagrams, a shorter one (ends a GSO run),
			// a run of another size.
			var sizes []int
			for i := range 60 {
				switch {
				case i == 30:
					sizes = append(sizes, 333)
				case i < 30:
					sizes = append(sizes, 1000)
				default:
					sizes = append(sizes, 700)
				}
			}
			datagram := func(i, size int) []byte {
				b := bytes.Repeat([]byte{byte(i)}, size)
				binary.BigEndian.PutUint32(b, uint32(i)) //nolint:gosec // small
				return b
			}
			before := settledTraffic(s)
			for i, size := range sizes {
				if _, err := peer.WriteTo(datagram(i, size), ra); err != nil {
					t.Fatal(err)
				}
			}
			for i, size := range sizes {
				if err := expectData(relayed, datagram(i, size)); err != nil {
					t.Fatalf("client, datagram %d: %v", i, err)
				}
			}
			for i, size := range sizes {
				if _, err := relayed.WriteTo(datagram(i, size), peer.LocalAddr()); err != nil {
					t.Fatal(err)
				}
			}
			for i, size := range sizes {
				if err := expectData(peer, datagram(i, size)); err != nil {
					t.Fatalf("peer, datagram %d: %v", i, err)
				}
			}
			total := 0
			for _, size := range sizes {
				total += size
			}
			waitFor(t, 5*time.Second, "traffic counters", func() bool {
				tr := s.stats.traffic()
				return tr.toClientPackets-before.toClientPackets == uint64(len(sizes)) &&
					tr.toPeerPackets-before.toPeerPackets == uint64(len(sizes)) &&
					tr.toClientBytes-before.toClientBytes == uint64(total) &&
					tr.toPeerBytes-before.toPeerBytes == uint64(total)
			})
			for i := range s.stats.dropped {
				if d := s.stats.dropped[i].Load(); d != 0 {
					t.Fatalf("%d datagrams dropped (%s)", d, dropReasonNames[i])
				}
			}
		})
	}
}

// allocateWithChannel allocates on s (IPv4) with pion's client and binds a
// channel to a new loopback peer; it returns the client's relayed conn, the
// peer's socket and the relayed address.
func allocateWithChannel(t *testing.T, s *Server) (net.PacketConn, net.PacketConn, net.Addr) {
	t.Helper()
	peer, err := net.ListenPacket("udp4", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = peer.Close() })
	relayed := pionAllocation(t, s, "salt-burst")
	// pion's client binds a channel in the background after the first
	// write to a peer; until then its writes are Send indications.
	for i := 0; s.stats.channels.Load() != 1 || fastChannels(s) != 1; i++ {
		if i > 100 {
			t.Fatal("channel never bound")
		}
		if _, err := relayed.WriteTo([]byte("bind"), peer.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		if _, _, err := readFrom(peer, 3*time.Second); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return relayed, peer, relayed.LocalAddr()
}
