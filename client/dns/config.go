package dns

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"go.opentelemetry.io/otel/metric"
)

// Reserved address ranges (Firezone's tunnel-proto constants).
var (
	// TunnelRangeV4 and TunnelRangeV6 hold the clients' and gateways' tunnel addresses.
	TunnelRangeV4 = netip.MustParsePrefix("100.64.0.0/11")
	// TunnelRangeV6 is the IPv6 twin of TunnelRangeV4.
	TunnelRangeV6 = netip.MustParsePrefix("fd00:2021:1111::/107")
	// ProxyRangeV4 holds the proxy IPs handed out for DNS resources.
	ProxyRangeV4 = netip.MustParsePrefix("100.96.0.0/11")
	// ProxyRangeV6 is the IPv6 twin of ProxyRangeV4.
	ProxyRangeV6 = netip.MustParsePrefix("fd00:2021:1111:8000::/107")
	// SentinelRangeV4 holds the DNS sentinel addresses the client puts into the system's resolver config.
	SentinelRangeV4 = netip.MustParsePrefix("100.100.111.0/24")
	// SentinelRangeV6 is the IPv6 twin of SentinelRangeV4.
	SentinelRangeV6 = netip.MustParsePrefix("fd00:2021:1111:8000:100:100:111:0/120")
)

// ErrReservedUpstream is wrapped by *ReservedUpstreamError, the Skipped error of an upstream in a reserved range.
var ErrReservedUpstream = errors.New("upstream resolver is in a reserved range")

// ErrNoUpstreams is returned by New when neither the portal nor resolv.conf name a usable resolver.
var ErrNoUpstreams = errors.New("no upstream DNS resolvers configured")

// ErrTooManySentinels is wrapped by the Skipped error of an upstream beyond the 254 sentinel addresses of its
// family.
var ErrTooManySentinels = errors.New("more upstream resolvers than sentinel addresses")

// ReservedUpstreamError says which upstream falls into which reserved range.
type ReservedUpstreamError struct {
	Upstream  netip.AddrPort
	Range     netip.Prefix
	RangeName string // "tunnel", "proxy", "sentinel", "stub listen address" or "unspecified"
}

// Error implements error.
func (e *ReservedUpstreamError) Error() string {
	if !e.Range.IsValid() {
		return fmt.Sprintf("upstream resolver %s is %s", e.Upstream, e.RangeName)
	}
	return fmt.Sprintf("upstream resolver %s is inside the %s range %s", e.Upstream, e.RangeName, e.Range)
}

// Unwrap returns ErrReservedUpstream.
func (e *ReservedUpstreamError) Unwrap() error { return ErrReservedUpstream }

// Config configures a Resolver.
type Config struct {
	// UpstreamDNS is the portal's upstream_dns list; when non-empty it wins over SystemResolvConf.
	UpstreamDNS []netip.AddrPort
	// SystemResolvConf is the system's resolv.conf as it was before snowgate took it over (port 53 assumed).
	SystemResolvConf io.Reader
	// StubAddrs are addresses the stub itself listens on (e.g. a loopback address); upstreams there would
	// loop and are skipped.
	StubAddrs []netip.Addr
	// UpstreamTimeout bounds a forwarded query (default 5 s).
	UpstreamTimeout time.Duration
	// Logger receives logs (nil → discard).
	Logger *slog.Logger
	// MeterProvider provides metrics (nil → noop).
	MeterProvider metric.MeterProvider
}

// Sentinel maps one sentinel address to its upstream resolver.
type Sentinel struct {
	Addr     netip.Addr
	Upstream netip.AddrPort
}

// ParseResolvConf returns the nameserver addresses of a resolv.conf (comments, options and IPv6 zones ignored).
func ParseResolvConf(r io.Reader) ([]netip.Addr, error) {
	var out []netip.Addr
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil {
			return nil, fmt.Errorf("resolv.conf line %d: nameserver %q: %w", line, f[1], err)
		}
		out = append(out, a.WithZone("").Unmap())
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading resolv.conf: %w", err)
	}
	return out, nil
}

// checkUpstream refuses upstreams inside the tunnel, proxy or sentinel ranges or on the stub itself.
func checkUpstream(u netip.AddrPort, stub []netip.Addr) error {
	a := u.Addr().Unmap()
	if !u.IsValid() || a.IsUnspecified() {
		return &ReservedUpstreamError{Upstream: u, RangeName: "unspecified"}
	}
	for _, r := range []struct {
		p    netip.Prefix
		name string
	}{
		{SentinelRangeV4, "sentinel"}, {SentinelRangeV6, "sentinel"},
		{TunnelRangeV4, "tunnel"}, {TunnelRangeV6, "tunnel"},
		{ProxyRangeV4, "proxy"}, {ProxyRangeV6, "proxy"},
	} {
		if r.p.Contains(a) {
			return &ReservedUpstreamError{Upstream: u, Range: r.p, RangeName: r.name}
		}
	}
	for _, s := range stub {
		if s.Unmap() == a {
			return &ReservedUpstreamError{Upstream: u, Range: netip.PrefixFrom(a, a.BitLen()), RangeName: "stub listen address"}
		}
	}
	return nil
}

// buildSentinels picks the upstreams and assigns each usable one a sentinel of its own family, in order:
// the n-th IPv4 upstream gets 100.100.111.n, the n-th IPv6 upstream fd00:2021:1111:8000:100:100:111:n.
// Upstreams in a reserved range, or beyond the sentinels of their family, are skipped and returned in skipped
// (each a *ReservedUpstreamError or wrapping ErrTooManySentinels); when none is left, err wraps
// ErrNoUpstreams and the reasons.
func buildSentinels(cfg Config) (out []Sentinel, skipped []error, err error) {
	ups := cfg.UpstreamDNS
	if len(ups) == 0 && cfg.SystemResolvConf != nil {
		addrs, err := ParseResolvConf(cfg.SystemResolvConf)
		if err != nil {
			return nil, nil, fmt.Errorf("system resolvers: %w", err)
		}
		for _, a := range addrs {
			ups = append(ups, netip.AddrPortFrom(a, 53))
		}
	}
	if len(ups) == 0 {
		return nil, nil, ErrNoUpstreams
	}
	n4, n6 := 0, 0
	for _, u := range ups {
		u = netip.AddrPortFrom(u.Addr().Unmap(), u.Port())
		if err := checkUpstream(u, cfg.StubAddrs); err != nil {
			skipped = append(skipped, err)
			continue
		}
		var s netip.Addr
		if u.Addr().Is4() {
			if n4 >= 254 {
				skipped = append(skipped, fmt.Errorf("%w: IPv4 upstream %s", ErrTooManySentinels, u))
				continue
			}
			n4++
			b := SentinelRangeV4.Addr().As4()
			b[3] = byte(n4)
			s = netip.AddrFrom4(b)
		} else {
			if n6 >= 254 {
				skipped = append(skipped, fmt.Errorf("%w: IPv6 upstream %s", ErrTooManySentinels, u))
				continue
			}
			n6++
			b := SentinelRangeV6.Addr().As16()
			b[15] = byte(n6)
			s = netip.AddrFrom16(b)
		}
		out = append(out, Sentinel{Addr: s, Upstream: u})
	}
	if len(out) == 0 {
		return nil, skipped, fmt.Errorf("%w: every configured upstream was skipped: %w", ErrNoUpstreams, errors.Join(skipped...))
	}
	return out, skipped, nil
}
