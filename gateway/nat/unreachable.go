package nat

import (
	"encoding/binary"
	"fmt"

	"github.com/snowgate/snowgate/internal/ippacket"
)

// BuildUnreachable writes into buf the answer to a packet that got the
// Unreachable verdict, as Firezone's gateway answers it: an ICMP destination
// unreachable, network unreachable (IPv4 type 3 code 0), or an ICMPv6
// destination unreachable, no route to destination (type 1 code 0), from the
// packet's destination (the proxy IP) to its source (the client), quoting
// the packet. It returns the reply's length; buf may be pkt's own buffer. It
// refuses what ippacket.BuildICMPProhibited refuses (ICMP errors, non-first
// fragments).
func BuildUnreachable(buf, pkt []byte) (int, error) {
	p, err := ippacket.Parse(pkt)
	if err != nil {
		return 0, fmt.Errorf("unreachable reply: %w: %w", ErrMalformed, err)
	}
	n, err := ippacket.BuildICMPProhibited(buf, p)
	if err != nil {
		return 0, fmt.Errorf("unreachable reply: %w", err)
	}
	r, err := ippacket.Parse(buf[:n])
	if err != nil {
		return 0, fmt.Errorf("unreachable reply: %w", err)
	}
	m := r.Payload()
	if len(m) < ippacket.ICMPHeaderLen {
		return 0, fmt.Errorf("unreachable reply: %w", ErrMalformed)
	}
	// Rewrite the code to 0 and update the checksum (RFC 1624, eqn. 3).
	oldWord := binary.BigEndian.Uint16(m[0:2])
	m[1] = 0
	newWord := binary.BigEndian.Uint16(m[0:2])
	sum := uint32(^binary.BigEndian.Uint16(m[2:4])) + uint32(^oldWord) + uint32(newWord)
	for sum > 0xFFFF {
		sum = sum>>16 + sum&0xFFFF
	}
	binary.BigEndian.PutUint16(m[2:4], ^uint16(sum))
	return n, nil
}
