package node

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/snowgate/snowgate/internal/udpbatch"
)

// fakeRelayed is a relayed conn whose WriteTo records what pion would have sent, with a channel
// bound (or not) to one peer.
type fakeRelayed struct {
	net.PacketConn
	mu      sync.Mutex
	written [][]byte
	peer    netip.AddrPort
	ch      uint16
	bound   bool
}

func (f *fakeRelayed) WriteTo(b []byte, _ net.Addr) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.written = append(f.written, bytes.Clone(b))
	return len(b), nil
}

func (f *fakeRelayed) PeerForChannel(uint16) (netip.AddrPort, bool) { return netip.AddrPort{}, false }

func (f *fakeRelayed) boundChannel(peer netip.AddrPort) (uint16, bool) {
	return f.ch, f.bound && peer == f.peer
}

// A burst to a peer with a bound channel: the first message through pion (its bookkeeping), the
// rest framed as ChannelData by the node and sent to the relay in one batch; without a bound
// channel, everything through pion.
func TestAllocationWriteBatch(t *testing.T) {
	for _, bound := range []bool{true, false} {
		srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer uc.Close()
		io := udpbatch.New(uc, 4)
		io.EnableOffload()
		peer := netip.MustParseAddrPort("198.51.100.7:4000")
		fr := &fakeRelayed{peer: peer, ch: 0x4001, bound: bound}
		a := &allocation{relayID: "r1", server: udpbatch.AddrPortOf(srv.LocalAddr()), sock: &socket{family: 4, pc: uc, io: io}, relayed: fr}
		var bufs [][]byte
		for i := range 10 {
			n := 148
			if i == 9 {
				n = 33 // a shorter last message, not a multiple of 4: padded
			}
			bufs = append(bufs, bytes.Repeat([]byte{byte(i + 1)}, n))
		}
		if err := a.writeBatch(bufs, peer); err != nil {
			t.Fatal(err)
		}
		fr.mu.Lock()
		written := fr.written
		fr.mu.Unlock()
		if !bound {
			if len(written) != len(bufs) {
				t.Fatalf("unbound: %d messages through pion, want %d", len(written), len(bufs))
			}
			continue
		}
		if len(written) != 1 || !bytes.Equal(written[0], bufs[0]) {
			t.Fatalf("bound: pion wrote %d messages, want only the first", len(written))
		}
		_ = srv.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 2048)
		for i, want := range bufs[1:] {
			n, err := srv.Read(buf)
			if err != nil {
				t.Fatalf("frame %d: %v", i+1, err)
			}
			f := buf[:n]
			if n != channelDataLen(len(want)) || n%4 != 0 {
				t.Fatalf("frame %d: %d bytes, want %d", i+1, n, channelDataLen(len(want)))
			}
			if ch, l := binary.BigEndian.Uint16(f), binary.BigEndian.Uint16(f[2:]); ch != 0x4001 || int(l) != len(want) {
				t.Fatalf("frame %d: channel %#x length %d, want %#x %d", i+1, ch, l, 0x4001, len(want))
			}
			if !bytes.Equal(f[4:4+len(want)], want) || !bytes.Equal(f[4+len(want):], make([]byte, n-4-len(want))) {
				t.Fatalf("frame %d: payload or padding wrong: % x", i+1, f)
			}
		}
	}
}

// pion's relayed conn offers the channel lookups the batched path needs (a pion upgrade that drops
// them would silently fall back to one WriteTo per message).
func TestPionRelayedOffersChannels(t *testing.T) {
	relay := startRelay(t)
	tn := newTestNode(t, "100.64.0.1", nil)
	tn.n.UpdateRelays(nil, []Relay{relay.relay("r1", tn.n)})
	tn.waitRelayReady(t)
	tn.n.mu.Lock()
	defer tn.n.mu.Unlock()
	found := false
	for _, r := range tn.n.relays {
		for _, a := range r.allocs {
			pr, ok := a.relayed.(*pionRelayed)
			if !ok || pr.bound == nil {
				t.Fatalf("allocation of %s: relayed conn %T offers no channel lookups", r.cfg.ID, a.relayed)
			}
			found = true
		}
	}
	if !found {
		t.Fatal("no allocation")
	}
}
