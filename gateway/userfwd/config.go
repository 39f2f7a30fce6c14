package userfwd

import (
	"context"
	"log/slog"
	"net"
	"time"

	"go.opentelemetry.io/otel/metric"
)

// Defaults for the zero values of Config.
const (
	// DefaultMTU is the MTU of the device (snowgate's tunnel MTU).
	DefaultMTU = 1280
	// DefaultDialTimeout bounds the host dial of a TCP flow.
	DefaultDialTimeout = 10 * time.Second
	// DefaultUDPIdleTimeout ends a UDP flow with no datagram either way; it matches the NAT table's UDP TTL.
	DefaultUDPIdleTimeout = 2 * time.Minute
	// DefaultICMPIdleTimeout ends an ICMP echo flow with no request or reply; it matches the NAT table's
	// ICMP TTL.
	DefaultICMPIdleTimeout = 2 * time.Minute
	// DefaultMaxFlows bounds the live TCP, UDP and ICMP flows together.
	DefaultMaxFlows = 4096
	// DefaultMaxPendingTCP bounds the TCP flows whose host dial is under way.
	DefaultMaxPendingTCP = 256
	// DefaultTCPBufferSize is the largest send and receive buffer the userspace stack gives one TCP flow.
	DefaultTCPBufferSize = 1 << 20
	// DefaultQueueLen is the number of packets the device queues towards the clients before it drops.
	DefaultQueueLen = 1024
	// DefaultBatchSize is the device's BatchSize: how many packets one Read returns at most.
	DefaultBatchSize = 64
)

// ICMPMode says how the forwarder sends the clients' ICMP echo requests from the host.
type ICMPMode int

const (
	// ICMPAuto uses unprivileged ICMP "ping" sockets when net.ipv4.ping_group_range allows it, else raw
	// ICMP sockets when the process may open them (root or CAP_NET_RAW), else ICMPDisabled. It decides once
	// per address family, in New.
	ICMPAuto ICMPMode = iota
	// ICMPPingSocket uses unprivileged ICMP sockets (socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)) only.
	ICMPPingSocket
	// ICMPRaw uses raw ICMP sockets only.
	ICMPRaw
	// ICMPDisabled answers every echo request with a destination unreachable (and counts it).
	ICMPDisabled
)

func (m ICMPMode) String() string {
	switch m {
	case ICMPAuto:
		return "auto"
	case ICMPPingSocket:
		return "ping-socket"
	case ICMPRaw:
		return "raw"
	case ICMPDisabled:
		return "disabled"
	}
	return "unknown"
}

// Config configures a Device. The zero value is usable: host sockets through a net.Dialer, ICMP in auto mode,
// loopback destinations refused.
type Config struct {
	// MTU of the device; 0 means DefaultMTU.
	MTU int
	// Dial opens the host side of a flow: network is "tcp4", "tcp6", "udp4" or "udp6" and address the flow's
	// destination as "ip:port". For UDP it must return a connected socket (a net.Conn that reads only the
	// destination's datagrams). nil means a net.Dialer.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// DialTimeout bounds a TCP flow's host dial; 0 means DefaultDialTimeout.
	DialTimeout time.Duration
	// UDPIdleTimeout ends a UDP flow after no datagram in either direction; 0 means DefaultUDPIdleTimeout.
	UDPIdleTimeout time.Duration
	// ICMPIdleTimeout ends an ICMP echo flow after no request or reply; 0 means DefaultICMPIdleTimeout.
	ICMPIdleTimeout time.Duration
	// ICMP selects how echo requests leave the host; the zero value is ICMPAuto.
	ICMP ICMPMode
	// MaxFlows bounds the live flows of all protocols together; 0 means DefaultMaxFlows. A new flow over
	// the limit is refused: TCP with a RST, UDP and ICMP by dropping the packet.
	MaxFlows int
	// MaxPendingTCP bounds the TCP flows whose host dial is in progress; further SYNs are dropped (the
	// client retransmits). 0 means DefaultMaxPendingTCP.
	MaxPendingTCP int
	// TCPBufferSize is the largest send and receive buffer of one TCP flow inside the userspace stack
	// (auto-tuned from 4 KiB up to it); 0 means DefaultTCPBufferSize.
	TCPBufferSize int
	// QueueLen is the number of packets queued towards the clients (drained by Read) before the stack's
	// packets are dropped; 0 means DefaultQueueLen.
	QueueLen int
	// BatchSize is what BatchSize returns: the most packets one Read fills; 0 means DefaultBatchSize.
	BatchSize int
	// AllowLoopback lets flows reach the gateway host's own loopback and unspecified addresses
	// (127.0.0.0/8, ::1, 0.0.0.0, ::, and their IPv4-mapped forms). Off by default: such packets are
	// answered with an ICMP "administratively prohibited" and counted.
	AllowLoopback bool
	// Logger receives the device's logs; nil means slog.Default().
	Logger *slog.Logger
	// MeterProvider receives the device's metrics; nil means a no-op provider.
	MeterProvider metric.MeterProvider
}

func (c Config) withDefaults() Config {
	if c.MTU <= 0 {
		c.MTU = DefaultMTU
	}
	if c.Dial == nil {
		d := &net.Dialer{}
		c.Dial = d.DialContext
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.UDPIdleTimeout <= 0 {
		c.UDPIdleTimeout = DefaultUDPIdleTimeout
	}
	if c.ICMPIdleTimeout <= 0 {
		c.ICMPIdleTimeout = DefaultICMPIdleTimeout
	}
	if c.MaxFlows <= 0 {
		c.MaxFlows = DefaultMaxFlows
	}
	if c.MaxPendingTCP <= 0 {
		c.MaxPendingTCP = DefaultMaxPendingTCP
	}
	if c.TCPBufferSize <= 0 {
		c.TCPBufferSize = DefaultTCPBufferSize
	}
	if c.QueueLen <= 0 {
		c.QueueLen = DefaultQueueLen
	}
	if c.BatchSize <= 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}
