package userfwd

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/netlab"
)

// ping writes count echo requests from a client address to dst straight into d and checks each reply:
// from dst to the client, with the client's identifier, the request's sequence number and data. (It does
// not use wireguard-go's netstack PingConn: its ReadFrom waits for a notification before reading and so
// misses a reply that arrived before the call.)
func ping(t *testing.T, d *Device, dst netip.Addr, count int) {
	t.Helper()
	src := client4
	if dst.Is6() {
		src = client6
	}
	const id = 0x4242
	for seq := uint16(1); seq <= uint16(count); seq++ {
		data := fmt.Sprintf("snowgate ping %d", seq)
		if n, err := d.Write([][]byte{echoRequest(src, dst, id, seq, data)}, 0); n != 1 || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
		p := readPacket(t, d)
		msg := p.Payload()
		typ, code, err := p.ICMP()
		wantType := uint8(0)
		if dst.Is6() {
			wantType = 129
		}
		if err != nil || typ != wantType || code != 0 || len(msg) < 8 {
			t.Fatalf("reply %d: ICMP %d/%d (%v), want an echo reply", seq, typ, code, err)
		}
		gotID, gotSeq := binary.BigEndian.Uint16(msg[4:6]), binary.BigEndian.Uint16(msg[6:8])
		if p.Src() != dst || p.Dst() != src || gotID != id || gotSeq != seq || string(msg[8:]) != data {
			t.Fatalf("reply %d: %v→%v id %#x seq %d data %q; want %v→%v id %#x seq %d data %q",
				seq, p.Src(), p.Dst(), gotID, gotSeq, msg[8:], dst, src, id, seq, data)
		}
		if !validICMPChecksum(p) {
			t.Fatalf("reply %d: bad checksum", seq)
		}
	}
}

// validICMPChecksum checks an ICMP or ICMPv6 message's checksum.
func validICMPChecksum(p ippacket.Packet) bool {
	msg := p.Payload()
	if p.Version() == 4 {
		return checksum.Checksum(msg, 0) == 0xffff
	}
	s, d := tcpip.AddrFrom16(p.Src().As16()), tcpip.AddrFrom16(p.Dst().As16())
	return checksum.Checksum(msg, header.PseudoHeaderChecksum(header.ICMPv6ProtocolNumber, s, d, uint16(len(msg)))) == 0xffff
}

func TestICMPEcho(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		name, dst := "ipv4", loop4
		if v6 {
			name, dst = "ipv6", loop6
		}
		t.Run(name, func(t *testing.T) {
			if v6 && !hasIPv6Loopback() {
				t.Skip("no IPv6 loopback on this host")
			}
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			d := newDevice(t, Config{AllowLoopback: true, ICMPIdleTimeout: 300 * time.Millisecond})
			if mode := d.icmp[btoi(v6)]; mode == ICMPDisabled {
				d.Close() // before the deferred leak check
				t.Skip("neither ping sockets (net.ipv4.ping_group_range) nor raw sockets are allowed")
			}
			ping(t, d, dst, 3)
			if s := d.Stats().ICMP; s.Opened != 1 || s.FailedTotal() != 0 {
				t.Fatalf("ICMP stats = %+v, want one flow", s)
			}
			eventually(t, "the idle echo flow to end", func() bool { return d.Stats().ICMP.Active == 0 })
			d.mu.Lock()
			left := len(d.echo) + len(d.rawIDs) + len(d.closers)
			d.mu.Unlock()
			if left != 0 {
				t.Fatalf("%d echo flow entries left", left)
			}
			d.Close()
		})
	}
}

// TestICMPEchoPingSocket runs the unprivileged ping-socket path in a network namespace whose
// net.ipv4.ping_group_range admits every group (the host's may not).
func TestICMPEchoPingSocket(t *testing.T) {
	if r := netlab.SkipReason(); r != "" {
		t.Skip(r)
	}
	lab := netlab.New(t)
	h := lab.Host("pinger", lab.Internet())
	ns := h.Namespace
	if err := ns.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ping_group_range", []byte("0 2147483647"), 0o644)
	}); err != nil {
		t.Fatalf("setting ping_group_range: %v", err)
	}
	d := newDevice(t, Config{AllowLoopback: true})
	d.icmp = [2]ICMPMode{ICMPPingSocket, ICMPPingSocket}
	d.dialPing = func(dst netip.Addr) (c net.PacketConn, err error) {
		err = ns.Do(func() error {
			c, err = dialPingSocket(dst)
			return err
		})
		return c, err
	}
	ping(t, d, loop4, 3)
	if s := d.Stats().ICMP; s.Opened != 1 || s.FailedTotal() != 0 {
		t.Fatalf("ICMP stats = %+v, want one flow", s)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
