// Package p2pcontrol implements the in-tunnel control protocol between a client and a gateway: the wire
// format (an IPv6 packet carrying an 8-byte header and a JSON payload) and the sans-IO state machines that
// set up the gateway's DNS-resource NAT over it (Client and Gateway).
//
// # Wire format
//
// A control packet is a plain IPv6 packet (40-byte header, no extension headers) with next header 0xFF
// (reserved by IANA, so it never appears as real traffic). Its payload is a fixed 8-byte header whose first
// byte is the event Kind and whose other 7 bytes are reserved (sent as zero, ignored on receipt), followed by
// the event's payload, JSON for every event defined here. The IPv6 payload length gives the total length.
// The protocol is event based: every event is unidirectional and idempotent; that AssignedIPs and
// DomainStatus appear in pairs is a convention of the DNS-resource NAT, not of the wire format. IP is
// unreliable, so the state machines retransmit and tolerate loss, duplication and reordering.
//
// Deviation from Firezone: Firezone sends control packets from `::` to `::` with hop limit 0. wireguard-go's
// cryptokey routing drops, on receive, any packet whose source is not in the sending peer's AllowedIPs,
// and `::` never is; so snowgate sends them from the sender's tunnel IPv6 address to the receiver's tunnel
// IPv6 address. Decode accepts any addresses (including `::`) and reports them; the caller checks that the
// source is the peer's tunnel address. The hop limit stays 0, so a packet that leaks out of the tunnel is
// never forwarded.
//
// Extension: AssignedIPs and DomainStatus carry an optional "seq" field that Firezone does not have. The
// client numbers its assignments and the gateway echoes the number in its DomainStatus, so the client can
// tell a late status for an older assignment from the status for the current one. Firezone peers ignore
// the unknown field (serde's default), and a status without "seq" is accepted as Firezone would.
package p2pcontrol

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Wire-format constants.
const (
	// NextHeader is the IPv6 next-header value (IP protocol number) of control packets.
	NextHeader = 0xFF
	// HeaderLen is the length of the control header that precedes the event payload.
	HeaderLen = 8
	// IPv6HeaderLen is the length of the fixed IPv6 header.
	IPv6HeaderLen = 40
	// MaxPacketSize is the largest control packet Encode builds: the tunnel MTU, as the protocol has no
	// fragmentation.
	MaxPacketSize = 1280
	// HopLimit is the IPv6 hop limit of control packets (as Firezone: 0, never forwarded).
	HopLimit = 0
	// MaxDomainLen is the longest domain name (presentation form, without a trailing dot) an event carries.
	MaxDomainLen = 253
)

// Kind is the event type carried in the first byte of the control header.
type Kind uint8

// Event kinds, numbered as Firezone's connlib.
const (
	// KindAssignedIPs is sent by the client: the proxy IPs it assigned to a domain of a DNS resource.
	KindAssignedIPs Kind = 0
	// KindDomainStatus is sent by the gateway: whether the NAT for a domain is set up.
	KindDomainStatus Kind = 1
	// KindGoodbye is sent by either peer when it is going away.
	KindGoodbye Kind = 2
)

// String returns the event name, or "Kind(n)" for an unknown kind.
func (k Kind) String() string {
	switch k {
	case KindAssignedIPs:
		return "AssignedIps"
	case KindDomainStatus:
		return "DomainStatus"
	case KindGoodbye:
		return "Goodbye"
	default:
		return fmt.Sprintf("Kind(%d)", uint8(k))
	}
}

// Errors returned by Encode and Decode. Decode errors other than ErrNotControl mean a control packet
// that must be dropped (and counted).
var (
	// ErrNotControl means the bytes are not an IPv6 packet with next header 0xFF: not a control packet,
	// so the caller should treat it as ordinary traffic.
	ErrNotControl = errors.New("not a p2p control packet")
	// ErrTruncated means the buffer is shorter than the IPv6 header, its payload length, or the control
	// header.
	ErrTruncated = errors.New("truncated p2p control packet")
	// ErrUnknownKind is matched (errors.Is) by every *UnknownKindError.
	ErrUnknownKind = errors.New("unknown p2p control event kind")
	// ErrMalformed means the event payload is not valid JSON or fails validation.
	ErrMalformed = errors.New("malformed p2p control event")
	// ErrInvalidMessage means Encode was given a message that fails validation.
	ErrInvalidMessage = errors.New("invalid p2p control message")
	// ErrInvalidAddress means Encode was given a source or destination that is not an IPv6 address
	// without zone.
	ErrInvalidAddress = errors.New("p2p control address must be IPv6 without zone")
	// ErrTooLarge means the encoded packet would exceed MaxPacketSize.
	ErrTooLarge = errors.New("p2p control packet exceeds MTU")
)

// UnknownKindError reports a well-formed control packet with an event kind this version does not know.
// Receivers drop such packets (forward compatibility).
type UnknownKindError struct {
	// Kind is the unknown event kind.
	Kind Kind
}

// Error implements error.
func (e *UnknownKindError) Error() string {
	return fmt.Sprintf("unknown p2p control event kind %d", uint8(e.Kind))
}

// Is makes errors.Is(err, ErrUnknownKind) true.
func (e *UnknownKindError) Is(target error) bool { return target == ErrUnknownKind }

// Message is one control event: AssignedIPs, DomainStatus or Goodbye.
type Message interface {
	// Kind is the event kind written in the control header.
	Kind() Kind
	validate() error
}

// AssignedIPs tells the gateway which proxy IPs the client assigned to a domain of a DNS resource
// (Firezone's `AssignedIps` event). JSON field names follow Firezone; Seq is snowgate's extension.
type AssignedIPs struct {
	// Resource is the DNS resource's ID, a UUID in canonical lower-case form.
	Resource string `json:"resource"`
	// Domain is the name the client resolved, without trailing dot.
	Domain string `json:"domain"`
	// ProxyIPs are the proxy IPs assigned to Domain: 4 or 8 addresses (4 IPv4 then 4 IPv6 by convention).
	ProxyIPs []netip.Addr `json:"proxy_ips"`
	// Seq numbers the client's assignments (0: not numbered); the gateway echoes it in DomainStatus.
	Seq uint64 `json:"seq,omitempty"`
}

// Kind returns KindAssignedIPs.
func (AssignedIPs) Kind() Kind { return KindAssignedIPs }

func (m AssignedIPs) validate() error {
	if err := validResource(m.Resource); err != nil {
		return err
	}
	if err := validDomain(m.Domain); err != nil {
		return err
	}
	if n := len(m.ProxyIPs); n != 4 && n != 8 {
		return fmt.Errorf("want 4 or 8 proxy IPs, got %d", n)
	}
	for i, ip := range m.ProxyIPs {
		if !ip.IsValid() || ip.Zone() != "" {
			return fmt.Errorf("proxy IP %d (%q) is not an address without zone", i, ip)
		}
	}
	return nil
}

// NatStatus is the state of a domain's NAT on the gateway. Its JSON form is "Active" or "Inactive"; any
// other string decodes as NatInactive (forward compatibility, as Firezone).
type NatStatus uint8

// NAT statuses. The zero value is NatInactive.
const (
	// NatInactive means the NAT is not set up: traffic to the domain's proxy IPs will not be routed.
	NatInactive NatStatus = iota
	// NatActive means the NAT is set up and traffic will be routed.
	NatActive
)

// String returns "Active" or "Inactive".
func (s NatStatus) String() string {
	if s == NatActive {
		return "Active"
	}
	return "Inactive"
}

// MarshalText implements encoding.TextMarshaler.
func (s NatStatus) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; unknown strings become NatInactive.
func (s *NatStatus) UnmarshalText(b []byte) error {
	if string(b) == "Active" {
		*s = NatActive
	} else {
		*s = NatInactive
	}
	return nil
}

// DomainStatus tells the client whether the gateway's NAT for a domain is active (Firezone's
// `DomainStatus` event). JSON field names follow Firezone; Seq is snowgate's extension.
type DomainStatus struct {
	// Resource is the DNS resource's ID, as in the AssignedIPs it answers.
	Resource string `json:"resource"`
	// Domain is the domain, as in the AssignedIPs it answers.
	Domain string `json:"domain"`
	// Status is the NAT's state.
	Status NatStatus `json:"status"`
	// Seq echoes AssignedIPs.Seq (0: not numbered, e.g. from a Firezone gateway).
	Seq uint64 `json:"seq,omitempty"`
}

// Kind returns KindDomainStatus.
func (DomainStatus) Kind() Kind { return KindDomainStatus }

func (m DomainStatus) validate() error {
	if err := validResource(m.Resource); err != nil {
		return err
	}
	return validDomain(m.Domain)
}

// Goodbye tells the peer that the sender is going away and it can drop all state for it. Its payload is
// empty.
type Goodbye struct{}

// Kind returns KindGoodbye.
func (Goodbye) Kind() Kind { return KindGoodbye }

func (Goodbye) validate() error { return nil }

// Packet is a decoded control packet.
type Packet struct {
	// Src is the IPv6 source address (the sender's tunnel address).
	Src netip.Addr
	// Dst is the IPv6 destination address (the receiver's tunnel address).
	Dst netip.Addr
	// Msg is the event: AssignedIPs, DomainStatus or Goodbye (values, not pointers).
	Msg Message
}

// IsControl reports whether pkt looks like a control packet (IPv6, next header 0xFF). It is the cheap test a
// TUN wrapper applies to every packet before Decode.
func IsControl(pkt []byte) bool {
	return len(pkt) >= IPv6HeaderLen && pkt[0]>>4 == 6 && pkt[6] == NextHeader
}

// Encode builds the IPv6 control packet carrying m from src to dst (the two peers' tunnel IPv6 addresses).
func Encode(src, dst netip.Addr, m Message) ([]byte, error) {
	if m == nil {
		return nil, fmt.Errorf("encode: %w: nil message", ErrInvalidMessage)
	}
	for _, a := range []netip.Addr{src, dst} {
		if !a.Is6() || a.Zone() != "" {
			return nil, fmt.Errorf("encode %s: %w: %q", m.Kind(), ErrInvalidAddress, a)
		}
	}
	if err := m.validate(); err != nil {
		return nil, fmt.Errorf("encode %s: %w: %w", m.Kind(), ErrInvalidMessage, err)
	}
	var payload []byte
	if m.Kind() != KindGoodbye {
		var err error
		if payload, err = json.Marshal(m); err != nil {
			return nil, fmt.Errorf("encode %s: %w: %w", m.Kind(), ErrInvalidMessage, err)
		}
	}
	total := IPv6HeaderLen + HeaderLen + len(payload)
	if total > MaxPacketSize {
		return nil, fmt.Errorf("encode %s: %w: %d > %d bytes", m.Kind(), ErrTooLarge, total, MaxPacketSize)
	}
	pkt := make([]byte, total)
	pkt[0] = 6 << 4 // version 6, traffic class 0, flow label 0
	binary.BigEndian.PutUint16(pkt[4:6], uint16(HeaderLen+len(payload)))
	pkt[6] = NextHeader
	pkt[7] = HopLimit
	s, d := src.As16(), dst.As16()
	copy(pkt[8:24], s[:])
	copy(pkt[24:40], d[:])
	pkt[IPv6HeaderLen] = byte(m.Kind())
	copy(pkt[IPv6HeaderLen+HeaderLen:], payload)
	return pkt, nil
}

// Decode parses a control packet. Bytes after the IPv6 payload length are ignored, as are the reserved
// bytes of the control header and unknown JSON fields. It returns ErrNotControl for anything that is not an
// IPv6 packet with next header 0xFF, a *UnknownKindError (with Src/Dst filled in) for an unknown event kind,
// and errors matching ErrTruncated or ErrMalformed for broken control packets.
func Decode(pkt []byte) (Packet, error) {
	if len(pkt) < 1 || pkt[0]>>4 != 6 {
		return Packet{}, ErrNotControl
	}
	if len(pkt) < IPv6HeaderLen {
		return Packet{}, fmt.Errorf("decode: %w: %d bytes, IPv6 header needs %d", ErrTruncated, len(pkt), IPv6HeaderLen)
	}
	if pkt[6] != NextHeader {
		return Packet{}, ErrNotControl
	}
	plen := int(binary.BigEndian.Uint16(pkt[4:6]))
	if len(pkt)-IPv6HeaderLen < plen {
		return Packet{}, fmt.Errorf("decode: %w: payload length %d, %d bytes present", ErrTruncated, plen, len(pkt)-IPv6HeaderLen)
	}
	if plen < HeaderLen {
		return Packet{}, fmt.Errorf("decode: %w: payload length %d, control header needs %d", ErrTruncated, plen, HeaderLen)
	}
	p := Packet{
		Src: netip.AddrFrom16([16]byte(pkt[8:24])),
		Dst: netip.AddrFrom16([16]byte(pkt[24:40])),
	}
	kind := Kind(pkt[IPv6HeaderLen])
	body := pkt[IPv6HeaderLen+HeaderLen : IPv6HeaderLen+plen]
	var err error
	switch kind {
	case KindAssignedIPs:
		p.Msg, err = decodeAssignedIPs(body)
	case KindDomainStatus:
		p.Msg, err = decodeDomainStatus(body)
	case KindGoodbye:
		p.Msg = Goodbye{} // any payload is ignored: a later version may add fields
	default:
		return p, &UnknownKindError{Kind: kind}
	}
	if err != nil {
		return p, fmt.Errorf("decode %s from %s: %w: %w", kind, p.Src, ErrMalformed, err)
	}
	return p, nil
}

func decodeAssignedIPs(body []byte) (AssignedIPs, error) {
	var m AssignedIPs
	if err := json.Unmarshal(body, &m); err != nil {
		return AssignedIPs{}, err
	}
	m.Resource = strings.ToLower(m.Resource)
	return m, m.validate()
}

func decodeDomainStatus(body []byte) (DomainStatus, error) {
	var w struct {
		DomainStatus
		Status *NatStatus `json:"status"` // shadows the embedded field, to require its presence
	}
	if err := json.Unmarshal(body, &w); err != nil {
		return DomainStatus{}, err
	}
	if w.Status == nil {
		return DomainStatus{}, errors.New(`missing field "status"`)
	}
	m := w.DomainStatus
	m.Status = *w.Status
	m.Resource = strings.ToLower(m.Resource)
	return m, m.validate()
}

// validResource checks the canonical UUID form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (hex, any case).
func validResource(s string) error {
	if len(s) != 36 {
		return fmt.Errorf("resource %q is not a UUID", s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return fmt.Errorf("resource %q is not a UUID", s)
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return fmt.Errorf("resource %q is not a UUID", s)
			}
		}
	}
	return nil
}

// validDomain checks a presentation-form domain name: 1..253 bytes, labels of 1..63 bytes of letters,
// digits, '-' and '_', no trailing dot. (The restricted alphabet also keeps the JSON free of escapes, so an
// event's size is predictable.)
func validDomain(s string) error {
	if len(s) == 0 || len(s) > MaxDomainLen {
		return fmt.Errorf("domain length %d not in 1..%d", len(s), MaxDomainLen)
	}
	for label := range strings.SplitSeq(s, ".") {
		if len(label) == 0 || len(label) > 63 {
			return fmt.Errorf("domain %q has a label of length %d", s, len(label))
		}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("domain %q has byte 0x%02x", s, s[i])
		}
	}
	return nil
}

// normDomain is the key form of a domain name: lower case, without trailing dot.
func normDomain(s string) string { return strings.ToLower(strings.TrimSuffix(s, ".")) }
