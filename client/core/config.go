package core

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"go.opentelemetry.io/otel/metric"
)

// Defaults of Config.
const (
	// DefaultMaxFlowPackets bounds the packets buffered per resource while its flow is created and its
	// gateway connection comes up (Firezone: 128); beyond it the oldest are dropped.
	DefaultMaxFlowPackets = 128
	// DefaultMaxNATPackets bounds the packets held per (gateway, name) while the gateway sets up the
	// DNS-resource NAT (Firezone: 32).
	DefaultMaxNATPackets = 32
	// DefaultFlowRetryInterval is the least time between two create_flow for one resource (Firezone: 2 s),
	// and the wait before a name whose NAT the gateway refused is tried again.
	DefaultFlowRetryInterval = 2 * time.Second
	// DefaultFlowTimeout bounds the wait for the portal's answer to create_flow, counted from the first
	// packet; then the buffered packets are answered with ICMP unreachable.
	DefaultFlowTimeout = 10 * time.Second
	// DefaultConnectTimeout bounds the wait for a gateway connection to come up after flow_created (the node
	// reports failure earlier, after its ICE timeout); then it is dropped as failed.
	DefaultConnectTimeout = 30 * time.Second
	// DefaultReconnectInterval is the least time between two portal reconnects asked for lack of relays.
	DefaultReconnectInterval = 5 * time.Second
)

// ErrInvalidConfig wraps every error New returns.
var ErrInvalidConfig = errors.New("client core: invalid config")

// Config configures a Client. Keys and tunnel addresses come from the portal (init), not from here.
type Config struct {
	// SystemResolvers are the upstream resolvers used when the portal names none (the system's own, read
	// before snowgate took the resolver configuration over). Port 0 means 53.
	SystemResolvers []netip.AddrPort
	// Logger receives the core's logs (nil: discarded). The stub resolver and the control protocol log
	// through it too.
	Logger *slog.Logger
	// MeterProvider provides the core's and the stub resolver's metrics (nil: none).
	MeterProvider metric.MeterProvider

	// MaxFlowPackets: see DefaultMaxFlowPackets (0: the default).
	MaxFlowPackets int
	// MaxNATPackets: see DefaultMaxNATPackets (0: the default).
	MaxNATPackets int
	// FlowRetryInterval: see DefaultFlowRetryInterval (0: the default).
	FlowRetryInterval time.Duration
	// FlowTimeout: see DefaultFlowTimeout (0: the default).
	FlowTimeout time.Duration
	// ConnectTimeout: see DefaultConnectTimeout (0: the default).
	ConnectTimeout time.Duration
	// ReconnectInterval: see DefaultReconnectInterval (0: the default).
	ReconnectInterval time.Duration
	// DNSUpstreamTimeout bounds a forwarded DNS query (0: the stub resolver's default, 5 s).
	DNSUpstreamTimeout time.Duration
}

func (cfg *Config) check() error {
	if cfg.MaxFlowPackets < 0 || cfg.MaxNATPackets < 0 || cfg.FlowRetryInterval < 0 || cfg.FlowTimeout < 0 ||
		cfg.ConnectTimeout < 0 || cfg.ReconnectInterval < 0 || cfg.DNSUpstreamTimeout < 0 {
		return fmt.Errorf("%w: negative limit", ErrInvalidConfig)
	}
	for i, r := range cfg.SystemResolvers {
		if !r.Addr().IsValid() {
			return fmt.Errorf("%w: system resolver %d is not an address", ErrInvalidConfig, i)
		}
		if r.Port() == 0 {
			cfg.SystemResolvers[i] = netip.AddrPortFrom(r.Addr(), 53)
		}
		cfg.SystemResolvers[i] = netip.AddrPortFrom(cfg.SystemResolvers[i].Addr().Unmap(), cfg.SystemResolvers[i].Port())
	}
	if cfg.MaxFlowPackets == 0 {
		cfg.MaxFlowPackets = DefaultMaxFlowPackets
	}
	if cfg.MaxNATPackets == 0 {
		cfg.MaxNATPackets = DefaultMaxNATPackets
	}
	if cfg.FlowRetryInterval == 0 {
		cfg.FlowRetryInterval = DefaultFlowRetryInterval
	}
	if cfg.FlowTimeout == 0 {
		cfg.FlowTimeout = DefaultFlowTimeout
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.ReconnectInterval == 0 {
		cfg.ReconnectInterval = DefaultReconnectInterval
	}
	return nil
}
