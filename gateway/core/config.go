package core

import (
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"

	"go.opentelemetry.io/otel/metric"

	"github.com/snowgate/snowgate/gateway/nat"
)

// Defaults of Config's limits.
const (
	// DefaultMaxClients bounds the clients a gateway keeps state for.
	DefaultMaxClients = 65536
	// DefaultMaxResourcesPerClient bounds one client's authorised resources.
	DefaultMaxResourcesPerClient = 1024
	// maxLegacyProxyIPs bounds the proxy IPs of one domain in an old-protocol request.
	maxLegacyProxyIPs = 16
	// maxHeldCandidates bounds the candidates held per client and direction while the portal is away.
	maxHeldCandidates = 64
)

// DefaultTunnelPrefixes returns the tunnel address ranges of clients and gateways (Firezone's
// 100.64.0.0/11 and fd00:2021:1111::/107). A client's packet to one of them is never forwarded: a client's
// counterpart is a resource, never another client (Firezone's ensure_not_peer_ip).
func DefaultTunnelPrefixes() []netip.Prefix {
	return []netip.Prefix{
		netip.MustParsePrefix("100.64.0.0/11"),
		netip.MustParsePrefix("fd00:2021:1111::/107"),
	}
}

// DefaultInternetExcludes returns what the Internet resource does not cover: the addresses Firezone's
// gateway refuses to reach through it (private, loopback, link-local, CGNAT (which holds the tunnel and
// DNS proxy ranges), multicast and reserved IPv4; loopback, IPv4-mapped, unique-local (the tunnel and
// proxy ranges again), link-local and multicast IPv6), plus the unspecified networks. A CIDR resource that
// covers such an address still reaches it.
func DefaultInternetExcludes() []netip.Prefix {
	return []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/8"),
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("100.64.0.0/10"),
		netip.MustParsePrefix("127.0.0.0/8"),
		netip.MustParsePrefix("169.254.0.0/16"),
		netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("192.168.0.0/16"),
		netip.MustParsePrefix("224.0.0.0/4"),
		netip.MustParsePrefix("240.0.0.0/4"),
		netip.MustParsePrefix("::/128"),
		netip.MustParsePrefix("::1/128"),
		netip.MustParsePrefix("::ffff:0:0/96"),
		netip.MustParsePrefix("fc00::/7"),
		netip.MustParsePrefix("fe80::/10"),
		netip.MustParsePrefix("ff00::/8"),
	}
}

// Config configures a Gateway. The zero Config is valid: every field has a default.
type Config struct {
	// Logger receives the core's logs; nil discards them.
	Logger *slog.Logger
	// MeterProvider receives the core's metrics (see the package doc) and the NAT table's; nil: noop.
	MeterProvider metric.MeterProvider
	// Rand is the source of the ICE credentials the gateway makes up for old-protocol connections;
	// nil: crypto/rand.Reader. Tests seed it.
	Rand io.Reader

	// ProxyPrefixes are the DNS-resource proxy IP ranges (nil: nat.DefaultProxyPrefixes()).
	ProxyPrefixes []netip.Prefix
	// TunnelPrefixes are the tunnel address ranges (nil: DefaultTunnelPrefixes()).
	TunnelPrefixes []netip.Prefix
	// InternetExcludes are the prefixes the Internet resource does not cover (nil:
	// DefaultInternetExcludes()); the proxy and tunnel prefixes are always added.
	InternetExcludes []netip.Prefix

	// MaxClients bounds the clients the gateway keeps (0: DefaultMaxClients). An authorisation for a new
	// client beyond it is refused (logged, not answered).
	MaxClients int
	// MaxResourcesPerClient bounds a client's authorised resources (0: DefaultMaxResourcesPerClient).
	MaxResourcesPerClient int
	// MaxSessionsPerClient and MaxProxyIPsPerClient are the NAT table's limits (0: nat's defaults).
	MaxSessionsPerClient int
	MaxProxyIPsPerClient int
	// MaxDomainsPerClient bounds the DNS-resource domains a client may set up over the control protocol
	// (0: p2pcontrol.DefaultMaxDomainsPerPeer).
	MaxDomainsPerClient int
}

// withDefaults validates cfg and fills in the defaults.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.ProxyPrefixes == nil {
		cfg.ProxyPrefixes = nat.DefaultProxyPrefixes()
	}
	if cfg.TunnelPrefixes == nil {
		cfg.TunnelPrefixes = DefaultTunnelPrefixes()
	}
	if cfg.InternetExcludes == nil {
		cfg.InternetExcludes = DefaultInternetExcludes()
	}
	cfg.ProxyPrefixes = masked(cfg.ProxyPrefixes)
	cfg.TunnelPrefixes = masked(cfg.TunnelPrefixes)
	cfg.InternetExcludes = append(masked(cfg.InternetExcludes), append(slices.Clone(cfg.ProxyPrefixes), cfg.TunnelPrefixes...)...)
	for _, ps := range [][]netip.Prefix{cfg.ProxyPrefixes, cfg.TunnelPrefixes, cfg.InternetExcludes} {
		for _, p := range ps {
			if !p.IsValid() {
				return cfg, fmt.Errorf("%w: invalid prefix %v", ErrInvalidConfig, p)
			}
		}
	}
	if cfg.MaxClients < 0 || cfg.MaxResourcesPerClient < 0 || cfg.MaxSessionsPerClient < 0 ||
		cfg.MaxProxyIPsPerClient < 0 || cfg.MaxDomainsPerClient < 0 {
		return cfg, fmt.Errorf("%w: negative limit", ErrInvalidConfig)
	}
	if cfg.MaxClients == 0 {
		cfg.MaxClients = DefaultMaxClients
	}
	if cfg.MaxResourcesPerClient == 0 {
		cfg.MaxResourcesPerClient = DefaultMaxResourcesPerClient
	}
	return cfg, nil
}

func masked(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, len(ps))
	for i, p := range ps {
		out[i] = p.Masked()
	}
	return out
}

func containedIn(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
