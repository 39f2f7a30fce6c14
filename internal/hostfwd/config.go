package hostfwd

import (
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
)

// Defaults for Config.
const (
	// DefaultTableName is the nftables table (family inet) Enable creates.
	DefaultTableName = "snowgate-gateway"
	// DefaultTunName is the TUN's name; it equals tundev.DefaultName.
	DefaultTunName = "tun-snowgate"
)

// The tunnel's address ranges (reference/firezone.md §4): the sources masqueraded by default.
var (
	TunnelIPv4 = netip.MustParsePrefix("100.64.0.0/11")
	TunnelIPv6 = netip.MustParsePrefix("fd00:2021:1111::/107")
)

// Config describes the gateway's forwarding set-up. The zero value selects every default.
type Config struct {
	// TunName is the TUN interface traffic comes from; default DefaultTunName.
	TunName string
	// TableName names the nftables table (family inet); default DefaultTableName. One gateway per
	// network namespace: a second Enable with the same name replaces the first's table.
	TableName string
	// SourcePrefixes are the source ranges masqueraded; default TunnelIPv4 and TunnelIPv6.
	SourcePrefixes []netip.Prefix
	// OutboundInterfaces, if set, restricts masquerading to traffic leaving through these
	// interfaces; by default traffic leaving through any interface but the TUN is masqueraded.
	OutboundInterfaces []string
	// Logger receives what Enable, Close and Cleanup did; default slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.TunName == "" {
		c.TunName = DefaultTunName
	}
	if c.TableName == "" {
		c.TableName = DefaultTableName
	}
	if len(c.SourcePrefixes) == 0 {
		c.SourcePrefixes = []netip.Prefix{TunnelIPv4, TunnelIPv6}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c Config) validate() error {
	for _, name := range append([]string{c.TunName}, c.OutboundInterfaces...) {
		if err := validIfName(name); err != nil {
			return err
		}
	}
	for _, name := range c.OutboundInterfaces {
		if name == c.TunName {
			return fmt.Errorf("hostfwd: outbound interface %q is the TUN", name)
		}
	}
	if len(c.TableName) > 255 || strings.ContainsAny(c.TableName, " \t\n\"") {
		return fmt.Errorf("hostfwd: invalid nftables table name %q", c.TableName)
	}
	for _, p := range c.SourcePrefixes {
		if !p.IsValid() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
			return fmt.Errorf("hostfwd: invalid source prefix %v", p)
		}
	}
	return nil
}

func validIfName(name string) error {
	if name == "" || len(name) > 15 {
		return fmt.Errorf("hostfwd: invalid interface name %q (1 to 15 bytes)", name)
	}
	for _, r := range name {
		if r <= ' ' || r == '/' || r == ':' || r > '~' {
			return fmt.Errorf("hostfwd: interface name %q contains %q", name, r)
		}
	}
	return nil
}
