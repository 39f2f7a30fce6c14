package nat_test

import (
	"net/netip"

	"github.com/snowgate/snowgate/internal/ippacket"
)

// Packets are built and checked with internal/ippacket/ippackettest (gVisor's tcpip/header), independently
// of ippacket (which the package under test uses to rewrite them). Verify is strict about checksums: unlike
// the ippacket tests, a zero IPv4 UDP checksum does not pass (the NAT never produces one).

// flowID reads (src, dst, client-side id) of a packet: TCP/UDP ports or the
// echo id (reported as both ports).
func flowID(b []byte) (src, dst netip.Addr, sport, dport uint16) {
	p, err := ippacket.Parse(b)
	if err != nil {
		panic(err)
	}
	if s, d, err := p.Ports(); err == nil {
		return p.Src(), p.Dst(), s, d
	}
	id, err := p.EchoID()
	if err != nil {
		panic(err)
	}
	return p.Src(), p.Dst(), id, id
}
