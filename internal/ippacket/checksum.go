package ippacket

import "encoding/binary"

// sum16 adds b, as big-endian 16-bit words (an odd final byte padded with
// zero), to acc. The result is not folded.
func sum16(b []byte, acc uint64) uint64 {
	for len(b) >= 8 {
		acc += uint64(binary.BigEndian.Uint16(b[0:2])) + uint64(binary.BigEndian.Uint16(b[2:4])) +
			uint64(binary.BigEndian.Uint16(b[4:6])) + uint64(binary.BigEndian.Uint16(b[6:8]))
		b = b[8:]
	}
	for len(b) >= 2 {
		acc += uint64(binary.BigEndian.Uint16(b[0:2]))
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint64(b[0]) << 8
	}
	return acc
}

// fold folds a one's complement sum to 16 bits.
func fold(acc uint64) uint16 {
	for acc > 0xFFFF {
		acc = acc>>16 + acc&0xFFFF
	}
	return uint16(acc)
}

// delta returns the RFC 1624 update term (~m + m', summed over the words) for
// replacing the even-length old bytes with new.
func delta(old, new []byte) uint64 {
	var d uint64
	for i := 0; i+1 < len(old); i += 2 {
		d += uint64(^binary.BigEndian.Uint16(old[i:])) + uint64(binary.BigEndian.Uint16(new[i:]))
	}
	return d
}

// adjust applies the update term d to the checksum field ck (RFC 1624 eqn. 3:
// HC' = ~(~HC + ~m + m')) and returns the update term of the field's own
// change, for checksums that cover this one. With udp set, a zero checksum
// (none) stays zero and a computed zero is written as 0xFFFF.
func adjust(ck []byte, d uint64, udp bool) uint64 {
	old := binary.BigEndian.Uint16(ck)
	if udp && old == 0 {
		return 0
	}
	n := ^fold(uint64(^old) + d)
	if udp && n == 0 {
		n = 0xFFFF
	}
	binary.BigEndian.PutUint16(ck, n)
	return uint64(^old) + uint64(n)
}

// pseudoSum returns the unfolded sum of the TCP/UDP/ICMPv6 pseudo-header.
func pseudoSum(src, dst []byte, proto Protocol, length int) uint64 {
	acc := sum16(src, 0)
	acc = sum16(dst, acc)
	return acc + uint64(proto) + uint64(length)
}
