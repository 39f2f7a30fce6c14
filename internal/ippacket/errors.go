package ippacket

import "errors"

// Errors returned by this package. Callers branch on them with errors.Is; the
// returned errors wrap them with context.
var (
	// ErrTruncated reports that the buffer ends before a header or field that
	// the operation needs.
	ErrTruncated = errors.New("ippacket: truncated")
	// ErrMalformed reports a header that contradicts itself or the buffer
	// (bad IHL, bad total length, bad IPv4 header checksum, ...).
	ErrMalformed = errors.New("ippacket: malformed")
	// ErrUnsupported reports a packet or an operation this package does not
	// handle: an IP version other than 4 and 6, an IPv6 jumbogram, too many
	// extension headers, a port accessor on a non-TCP/UDP packet, ...
	ErrUnsupported = errors.New("ippacket: unsupported")
	// ErrFragment reports that an upper-layer header was asked of a
	// non-first fragment, which does not carry it.
	ErrFragment = errors.New("ippacket: non-first fragment")
	// ErrFamily reports an address of the wrong family (IPv4 for an IPv6
	// packet or the other way round).
	ErrFamily = errors.New("ippacket: address family mismatch")
	// ErrBufferTooSmall reports that the caller's buffer cannot hold the
	// packet to build.
	ErrBufferTooSmall = errors.New("ippacket: buffer too small")
	// ErrTooLarge reports a packet to build whose size does not fit the IP
	// length fields.
	ErrTooLarge = errors.New("ippacket: packet too large")
)
