// Package kernelpath is the relay's channel-data path inside the kernel: an
// XDP program (bpf/turnrouter.c, compiled by bpf2go and committed) that
// relays ChannelData of bound channels between clients and peers without
// waking the relay, in all eight combinations of client family, peer family
// and direction, and counts packets and bytes per channel in per-CPU maps.
//
// Userspace stays the authority. The relay installs a Binding when pion
// binds a channel and removes it when pion deletes it (expiry, allocation
// end, shutdown); the program forwards only what is in its maps and passes
// everything else to the network stack, where the relay's sockets and its
// userspace paths see it as before. So a packet the program cannot handle —
// unresolved next hop, another egress interface, too big for the MTU, a
// checksum only the device would complete — costs speed, never correctness.
//
// For every installed direction Path resolves the next hop the way the
// kernel would route a datagram the relay sends (route lookup, then the
// neighbour table, through netlink): egress interface, MAC addresses,
// source address and MTU. bpf_fib_lookup would do this in the program, but
// it refuses to work on interfaces without IP forwarding, which a relay
// host should not need. A direction whose neighbour is not resolved yet (a
// peer the relay has never sent to) stays in userspace, whose first sends
// resolve it, and is retried with backoff; installed directions are
// re-resolved every RefreshInterval, so a changed route or MAC is picked up.
//
// Open attaches the program to the interfaces that hold the relay's
// addresses (native XDP, else generic XDP, which every driver supports; no
// TC variant exists). It fails with an error wrapping ErrUnavailable where
// that cannot work: not Linux, a kernel older than 5.18
// (bpf_xdp_load_bytes), no BPF capability (CAP_BPF and CAP_NET_ADMIN, or
// root), no interface but loopback (XDP on loopback sees datagrams whose
// checksums are yet to be computed), or attachment refused (another XDP
// program on the interface). The relay then logs one warning and keeps
// everything in userspace.
//
// On veth interfaces (containers, test beds) XDP_TX hands frames to the
// peer device, which drops them unless it has an XDP program or GRO
// enabled; and datagrams sent by a local socket through a veth carry a
// partial checksum, which the program detects and passes to the stack.
package kernelpath

import (
	"errors"
	"log/slog"
	"net/netip"
	"time"
)

// ErrUnavailable wraps the reasons Open cannot offer a kernel path.
var ErrUnavailable = errors.New("kernel path unavailable")

// ErrNoInterface (wrapped with ErrUnavailable) means the relay's addresses
// are only on loopback, where the program is not attached: nothing is wrong,
// there is just nothing to accelerate.
var ErrNoInterface = errors.New("no interface to attach to (loopback is not supported)")

// ErrFull is returned by Add when MaxChannels bindings are installed.
var ErrFull = errors.New("kernel path full")

// ErrClosed is returned by Add after Close.
var ErrClosed = errors.New("kernel path closed")

// Defaults.
const (
	DefaultMaxChannels     = 65536
	DefaultRefreshInterval = time.Minute
)

// Config configures Open.
type Config struct {
	// LowestPort and HighestPort bound the relay ports (allocations).
	LowestPort, HighestPort uint16
	// Addrs are the relay's bound addresses. The program is attached to the
	// interfaces holding them; for an unspecified address, to the
	// interfaces of that family's default routes. Loopback is skipped.
	Addrs []netip.Addr
	// MaxChannels is the capacity of the binding maps (default 65536).
	MaxChannels int
	// RefreshInterval is how often installed next hops are re-resolved
	// (default one minute).
	RefreshInterval time.Duration
	// Logger receives logs (nil: discard).
	Logger *slog.Logger
}

// Binding is one channel binding, as the kernel path keys it.
type Binding struct {
	// Client is the client's transport address.
	Client netip.AddrPort
	// Listen is the relay's TURN socket address the client sends to; an
	// unspecified address matches any local address.
	Listen netip.AddrPort
	// Peer is the peer's transport address.
	Peer netip.AddrPort
	// Relay is the allocation's relay socket address as bound (not the
	// advertised public address); an unspecified address matches any.
	Relay netip.AddrPort
	// Channel is the channel number (0x4000–0x4FFF).
	Channel uint16
}

// Counters are packets and payload bytes relayed by the program.
type Counters struct {
	ToPeerPackets, ToPeerBytes     uint64
	ToClientPackets, ToClientBytes uint64
}

// Passed counts packets of installed bindings that the program left to the
// stack, by reason.
type Passed struct {
	// PartialChecksum: the UDP checksum field held only the pseudo-header
	// sum (a local sender's offloaded checksum).
	PartialChecksum uint64
	// NoChecksum: IPv4 without a UDP checksum, bound for IPv6.
	NoChecksum uint64
	// OtherInterface: the next hop is behind another interface.
	OtherInterface uint64
	// MTU: the rewritten packet would exceed the egress MTU.
	MTU uint64
	// Malformed: the ChannelData length did not match the datagram.
	Malformed uint64
	// Destination: sent to another local address than the binding's.
	Destination uint64
	// AdjustFailed: the frame could not be resized.
	AdjustFailed uint64
	// TailFailed: the trailer could not be trimmed (the frame was sent).
	TailFailed uint64
}

// Status is a snapshot of the kernel path.
type Status struct {
	// Bindings is the number of bindings added and not removed.
	Bindings int
	// Installed counts installed directions (two per fully installed
	// binding); Pending counts directions waiting for their next hop.
	Installed, Pending int
	// Interfaces are the attached interfaces, "name (mode)".
	Interfaces []string
}

// normalize fills defaults.
func (c *Config) normalize() {
	if c.MaxChannels <= 0 {
		c.MaxChannels = DefaultMaxChannels
	}
	if c.RefreshInterval <= 0 {
		c.RefreshInterval = DefaultRefreshInterval
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}
