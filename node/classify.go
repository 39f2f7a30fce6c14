package node

import "encoding/binary"

// datagramKind is the result of classifying a datagram received on a node socket.
type datagramKind int

const (
	kindUnknown datagramKind = iota
	kindWireGuard
	kindSTUN
	kindChannelData
)

// wgMinSize is the smallest WireGuard message (a keepalive: 16-byte header + 16-byte tag).
const wgMinSize = 32

// wgKeepaliveSize is the size of a WireGuard transport message without payload.
const wgKeepaliveSize = 32

const stunMagicCookie = 0x2112A442

// isWireGuard reports whether b looks like a WireGuard message: a
// little-endian type 1–4 followed by three zero bytes, at least 32 bytes.
// It is checked before STUN because a WireGuard receiver index can contain
// the STUN magic cookie.
func isWireGuard(b []byte) bool {
	return len(b) >= wgMinSize && b[0] >= 1 && b[0] <= 4 && b[1] == 0 && b[2] == 0 && b[3] == 0
}

// isSTUN reports whether b is a STUN message (RFC 5389 header with magic cookie).
func isSTUN(b []byte) bool {
	if len(b) < 20 || b[0]&0xC0 != 0 {
		return false
	}
	if binary.BigEndian.Uint32(b[4:8]) != stunMagicCookie {
		return false
	}
	l := int(binary.BigEndian.Uint16(b[2:4]))
	return l%4 == 0 && 20+l <= len(b)
}

// parseChannelData parses a TURN ChannelData message (RFC 8656 §12.4):
// channel number 0x4000–0x7FFF, 16-bit length, payload (padding allowed).
func parseChannelData(b []byte) (channel uint16, payload []byte, ok bool) {
	if len(b) < 4 {
		return 0, nil, false
	}
	channel = binary.BigEndian.Uint16(b[0:2])
	if channel < 0x4000 || channel > 0x7FFF {
		return 0, nil, false
	}
	l := int(binary.BigEndian.Uint16(b[2:4]))
	if 4+l > len(b) {
		return 0, nil, false
	}
	return channel, b[4 : 4+l], true
}

// classify returns the kind of a datagram.
func classify(b []byte) datagramKind {
	switch {
	case isWireGuard(b):
		return kindWireGuard
	case isSTUN(b):
		return kindSTUN
	}
	if _, _, ok := parseChannelData(b); ok {
		return kindChannelData
	}
	return kindUnknown
}

// isWGActivity reports whether a WireGuard message counts as traffic for the idle logic: transport data with
// payload only. Keepalives do not, and neither do handshakes: once a session is older than 180 s, wireguard-go
// turns the idle NAT keepalive into a handshake, which would otherwise wake both sides of every idle
// connection for a full active period every few minutes. Liveness (lastAnyRx) still sees every message.
func isWGActivity(b []byte) bool {
	return b[0] == 4 && len(b) > wgKeepaliveSize
}
