package socks5

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
)

// Version is the SOCKS protocol version this package speaks.
const Version = 5

// Authentication methods (RFC 1928 §3).
const (
	// MethodNoAuth is "no authentication required", the only method the server accepts.
	MethodNoAuth = 0x00
	// MethodNoAcceptable is the server's answer when the client offers no method it accepts.
	MethodNoAcceptable = 0xFF
)

// Command is a request's CMD field.
type Command uint8

// Commands (RFC 1928 §4).
const (
	CommandConnect      Command = 1
	CommandBind         Command = 2
	CommandUDPAssociate Command = 3
)

func (c Command) String() string {
	switch c {
	case CommandConnect:
		return "CONNECT"
	case CommandBind:
		return "BIND"
	case CommandUDPAssociate:
		return "UDP ASSOCIATE"
	}
	return "command(" + strconv.Itoa(int(c)) + ")"
}

// Address types (ATYP).
const (
	atypIPv4   = 1
	atypDomain = 3
	atypIPv6   = 4
)

// Reply is a reply's REP field (RFC 1928 §6).
type Reply uint8

// Reply codes.
const (
	ReplySucceeded               Reply = 0x00
	ReplyGeneralFailure          Reply = 0x01
	ReplyNotAllowed              Reply = 0x02
	ReplyNetworkUnreachable      Reply = 0x03
	ReplyHostUnreachable         Reply = 0x04
	ReplyConnectionRefused       Reply = 0x05
	ReplyTTLExpired              Reply = 0x06
	ReplyCommandNotSupported     Reply = 0x07
	ReplyAddressTypeNotSupported Reply = 0x08
)

var replyNames = [...]string{"succeeded", "general failure", "not allowed by ruleset", "network unreachable",
	"host unreachable", "connection refused", "TTL expired", "command not supported", "address type not supported"}

func (r Reply) String() string {
	if int(r) < len(replyNames) {
		return replyNames[r]
	}
	return "reply(" + strconv.Itoa(int(r)) + ")"
}

// Errors of the parsers. Every error they return wraps exactly one of these.
var (
	// ErrTruncated: the input ends before the message does.
	ErrTruncated = errors.New("socks5: truncated message")
	// ErrVersion: the version field is not 5.
	ErrVersion = errors.New("socks5: unsupported version")
	// ErrAddressType: the ATYP field is not IPv4, DOMAINNAME or IPv6 (answered with
	// ReplyAddressTypeNotSupported).
	ErrAddressType = errors.New("socks5: unsupported address type")
	// ErrMalformed: a field has an invalid value (no methods, an empty or non-printable domain name).
	ErrMalformed = errors.New("socks5: malformed message")
)

// MaxNameLen is the longest DOMAINNAME (its length is one byte).
const MaxNameLen = 255

// Addr is a SOCKS5 address: an IP address or a domain name, and a port. Exactly one of IP and Name is set.
type Addr struct {
	IP   netip.Addr
	Name string
	Port uint16
}

// AddrFromAddrPort returns the Addr of an IP address and port.
func AddrFromAddrPort(ap netip.AddrPort) Addr { return Addr{IP: ap.Addr(), Port: ap.Port()} }

// String returns host:port.
func (a Addr) String() string {
	if a.Name != "" {
		return a.Name + ":" + strconv.Itoa(int(a.Port))
	}
	return netip.AddrPortFrom(a.IP, a.Port).String()
}

// validName reports a domain name the wire format can carry and a resolver may see: 1 to 255 printable
// ASCII bytes without spaces.
func validName(name string) bool {
	if len(name) == 0 || len(name) > MaxNameLen {
		return false
	}
	for i := range len(name) {
		if name[i] <= 0x20 || name[i] >= 0x7F {
			return false
		}
	}
	return true
}

// addrLen returns the encoded length of an address whose ATYP is atyp and whose next byte (the name length
// for DOMAINNAME) is first, port included.
func addrLen(atyp, first byte) (int, error) {
	switch atyp {
	case atypIPv4:
		return 1 + 4 + 2, nil
	case atypIPv6:
		return 1 + 16 + 2, nil
	case atypDomain:
		return 1 + 1 + int(first) + 2, nil
	}
	return 0, fmt.Errorf("ATYP %d: %w", atyp, ErrAddressType)
}

// parseAddr parses ATYP, DST.ADDR and DST.PORT at the start of b and returns the bytes used.
func parseAddr(b []byte) (Addr, int, error) {
	if len(b) < 2 {
		return Addr{}, 0, fmt.Errorf("address: %w", ErrTruncated)
	}
	n, err := addrLen(b[0], b[1])
	if err != nil {
		return Addr{}, 0, err
	}
	if len(b) < n {
		return Addr{}, 0, fmt.Errorf("address of %d bytes in %d: %w", n, len(b), ErrTruncated)
	}
	var a Addr
	switch b[0] {
	case atypIPv4:
		a.IP = netip.AddrFrom4([4]byte(b[1:5]))
	case atypIPv6:
		a.IP = netip.AddrFrom16([16]byte(b[1:17]))
	case atypDomain:
		a.Name = string(b[2 : 2+int(b[1])])
		if !validName(a.Name) {
			return Addr{}, 0, fmt.Errorf("domain name %q: %w", a.Name, ErrMalformed)
		}
	}
	a.Port = binary.BigEndian.Uint16(b[n-2 : n])
	return a, n, nil
}

// appendAddr appends the wire form of a. An IPv4 address (not IPv4-mapped IPv6) is encoded as IPv4.
func appendAddr(b []byte, a Addr) ([]byte, error) {
	switch {
	case a.Name != "":
		if a.IP.IsValid() {
			return b, fmt.Errorf("address with both a name and an IP: %w", ErrMalformed)
		}
		if !validName(a.Name) {
			return b, fmt.Errorf("domain name %q: %w", a.Name, ErrMalformed)
		}
		b = append(b, atypDomain, byte(len(a.Name)))
		b = append(b, a.Name...)
	case a.IP.Is4():
		ip := a.IP.As4()
		b = append(b, atypIPv4)
		b = append(b, ip[:]...)
	case a.IP.Is6():
		ip := a.IP.As16()
		b = append(b, atypIPv6)
		b = append(b, ip[:]...)
	default:
		return b, fmt.Errorf("address with neither a name nor an IP: %w", ErrMalformed)
	}
	return binary.BigEndian.AppendUint16(b, a.Port), nil
}

// ParseGreeting parses a client's method selection message (VER NMETHODS METHODS) at the start of b and
// returns the methods offered and the bytes used.
func ParseGreeting(b []byte) (methods []byte, n int, err error) {
	if len(b) < 2 {
		return nil, 0, fmt.Errorf("greeting: %w", ErrTruncated)
	}
	if b[0] != Version {
		return nil, 0, fmt.Errorf("greeting version %d: %w", b[0], ErrVersion)
	}
	if b[1] == 0 {
		return nil, 0, fmt.Errorf("greeting without methods: %w", ErrMalformed)
	}
	n = 2 + int(b[1])
	if len(b) < n {
		return nil, 0, fmt.Errorf("greeting: %w", ErrTruncated)
	}
	return b[2:n], n, nil
}

// Request is a client's request (RFC 1928 §4).
type Request struct {
	Command Command
	Addr    Addr
}

// ParseRequest parses a request (VER CMD RSV ATYP DST.ADDR DST.PORT) at the start of b and returns it and
// the bytes used. Any command is accepted (the server answers the ones it does not support); RSV is
// ignored.
func ParseRequest(b []byte) (Request, int, error) {
	if len(b) < 4 {
		return Request{}, 0, fmt.Errorf("request: %w", ErrTruncated)
	}
	if b[0] != Version {
		return Request{}, 0, fmt.Errorf("request version %d: %w", b[0], ErrVersion)
	}
	a, n, err := parseAddr(b[3:])
	if err != nil {
		return Request{}, 0, fmt.Errorf("request: %w", err)
	}
	return Request{Command: Command(b[1]), Addr: a}, 3 + n, nil
}

// AppendRequest appends the wire form of r (RSV zero).
func AppendRequest(b []byte, r Request) ([]byte, error) {
	return appendAddr(append(b, Version, byte(r.Command), 0), r.Addr)
}

// ReadRequest reads one request from r, reading exactly its bytes.
func ReadRequest(r io.Reader) (Request, error) {
	// The shortest request (a one-byte domain name) has 8 bytes, so the first 5 are always there.
	var buf [3 + 1 + 1 + MaxNameLen + 2]byte
	if _, err := io.ReadFull(r, buf[:5]); err != nil {
		return Request{}, fmt.Errorf("reading request: %w", errors.Join(ErrTruncated, err))
	}
	if buf[0] != Version {
		return Request{}, fmt.Errorf("request version %d: %w", buf[0], ErrVersion)
	}
	n, err := addrLen(buf[3], buf[4])
	if err != nil {
		return Request{}, fmt.Errorf("request: %w", err)
	}
	if _, err := io.ReadFull(r, buf[5:3+n]); err != nil {
		return Request{}, fmt.Errorf("reading request: %w", errors.Join(ErrTruncated, err))
	}
	req, _, err := ParseRequest(buf[:3+n])
	return req, err
}

// AppendReply appends a reply (VER REP RSV ATYP BND.ADDR BND.PORT). An invalid bnd is sent as 0.0.0.0:0.
func AppendReply(b []byte, rep Reply, bnd Addr) []byte {
	if bnd.Name == "" && !bnd.IP.IsValid() {
		bnd = Addr{IP: netip.IPv4Unspecified()}
	}
	out, err := appendAddr(append(b, Version, byte(rep), 0), bnd)
	if err != nil {
		out, _ = appendAddr(append(b, Version, byte(rep), 0), Addr{IP: netip.IPv4Unspecified()})
	}
	return out
}

// ParseReply parses a server's reply at the start of b (used by tests and clients).
func ParseReply(b []byte) (Reply, Addr, int, error) {
	if len(b) < 4 {
		return 0, Addr{}, 0, fmt.Errorf("reply: %w", ErrTruncated)
	}
	if b[0] != Version {
		return 0, Addr{}, 0, fmt.Errorf("reply version %d: %w", b[0], ErrVersion)
	}
	a, n, err := parseAddr(b[3:])
	if err != nil {
		return 0, Addr{}, 0, fmt.Errorf("reply: %w", err)
	}
	return Reply(b[1]), a, 3 + n, nil
}

// Datagram is a UDP datagram relayed through a UDP association (RFC 1928 §7).
type Datagram struct {
	// Frag is the fragment number; the server drops datagrams with Frag ≠ 0.
	Frag uint8
	// Addr is the destination (client to server) or the source (server to client).
	Addr Addr
	// Payload aliases the parsed buffer.
	Payload []byte
}

// ParseDatagram parses a UDP request header (RSV RSV FRAG ATYP DST.ADDR DST.PORT) and the data after it.
// RSV is ignored.
func ParseDatagram(b []byte) (Datagram, error) {
	if len(b) < 3 {
		return Datagram{}, fmt.Errorf("datagram: %w", ErrTruncated)
	}
	a, n, err := parseAddr(b[3:])
	if err != nil {
		return Datagram{}, fmt.Errorf("datagram: %w", err)
	}
	return Datagram{Frag: b[2], Addr: a, Payload: b[3+n:]}, nil
}

// AppendDatagram appends the wire form of d (RSV zero).
func AppendDatagram(b []byte, d Datagram) ([]byte, error) {
	b, err := appendAddr(append(b, 0, 0, d.Frag), d.Addr)
	if err != nil {
		return b, err
	}
	return append(b, d.Payload...), nil
}

// datagramHeaderLen is the header length of a datagram from a.
func datagramHeaderLen(a netip.Addr) int {
	if a.Is4() {
		return 3 + 1 + 4 + 2
	}
	return 3 + 1 + 16 + 2
}
