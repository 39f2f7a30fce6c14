package nat

import "errors"

// Errors returned by this package; callers branch on them with errors.Is.
var (
	// ErrUnknownClient reports a client that is not registered: the source of
	// an outgoing packet to a proxy IP, or the peer given to a method.
	ErrUnknownClient = errors.New("nat: unknown client")
	// ErrNoTranslation reports a packet to a proxy IP the client has not
	// assigned (or assigned to a domain since removed): answer ICMP
	// unreachable.
	ErrNoTranslation = errors.New("nat: no translation for proxy IP")
	// ErrNoRealIP reports a packet to a proxy IP whose family has no real IP
	// (e.g. an IPv6 proxy IP of a domain with only A records): answer ICMP
	// unreachable.
	ErrNoRealIP = errors.New("nat: no real IP of the proxy IP's family")
	// ErrUnsupportedProtocol reports a packet to a proxy IP that is neither
	// TCP, UDP nor an ICMP echo request (or a non-first fragment, which has
	// no ports).
	ErrUnsupportedProtocol = errors.New("nat: protocol not translatable")
	// ErrTableFull reports a new flow refused because the client has
	// Config.MaxSessionsPerClient live sessions.
	ErrTableFull = errors.New("nat: client session table full")
	// ErrExpiredSession reports a packet from a resource for a session that
	// has expired.
	ErrExpiredSession = errors.New("nat: expired NAT session")
	// ErrMalformed reports a packet that could not be parsed; it wraps the
	// ippacket error.
	ErrMalformed = errors.New("nat: malformed packet")
	// ErrNotProxyIP reports an assignment with an address outside the proxy
	// IP ranges.
	ErrNotProxyIP = errors.New("nat: not a proxy IP")
	// ErrTooManyProxyIPs reports an assignment that would exceed
	// Config.MaxProxyIPsPerClient.
	ErrTooManyProxyIPs = errors.New("nat: too many proxy IPs for client")
	// ErrInvalidConfig reports a bad Config or bad client addresses.
	ErrInvalidConfig = errors.New("nat: invalid configuration")
)
