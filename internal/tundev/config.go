package tundev

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"time"
)

// Defaults for Config. They are deterministic on purpose: a daemon killed with SIGKILL leaves rules,
// routes and a resolv.conf backup behind, and the next start finds them by these values alone
// (see Cleanup), without a state file.
const (
	// DefaultName is the TUN interface's name (Firezone's is "tun-firezone").
	DefaultName = "tun-snowgate"
	// DefaultMTU is the TUN's MTU, Firezone's tunnel MTU (reference/firezone.md §4).
	DefaultMTU = 1280
	// DefaultFwmark is the SO_MARK the daemon puts on its own sockets; the policy rules send every
	// packet WITHOUT this mark to the tunnel's routing table. The low 16 bits avoid kube-proxy's
	// 0x4000/0x8000 bits and the 0xff0000 byte is none of Tailscale's values.
	DefaultFwmark uint32 = 0x736e_0001
	// DefaultTable is the routing table that holds the routes through the TUN; default routes use
	// DefaultTable+1.
	DefaultTable = 0x736e_0001
	// DefaultRulePriority is the priority of the first of the three policy rules per address
	// family; the others use DefaultRulePriority+1 and +2 (see the package documentation). All three
	// sit before the main table's rule (32766).
	DefaultRulePriority = 30100
	// DefaultResolvConf is the resolver configuration DNSModeEtcResolvConf rewrites.
	DefaultResolvConf = "/etc/resolv.conf"
	// BackupSuffix is appended to the resolv.conf path to name its backup when DNSConfig.BackupPath
	// is empty.
	BackupSuffix = ".snowgate-backup"
	// DefaultWatchDebounce is how long Watch collects network changes before reporting them as one.
	DefaultWatchDebounce = 150 * time.Millisecond
)

// maxIfNameLen is IFNAMSIZ minus the terminating NUL.
const maxIfNameLen = 15

// Config describes the kernel TUN device and the host configuration around it. The zero value of
// every field but IPv4/IPv6 selects its default.
type Config struct {
	// Name is the TUN interface name (at most 15 bytes); default DefaultName.
	Name string
	// MTU of the TUN; default DefaultMTU.
	MTU int
	// IPv4 and IPv6 are the tunnel addresses the portal assigned to this node (its interface's
	// ipv4/ipv6). They are added as /32 and /128. An invalid (zero) netip.Addr leaves that family
	// without an address (and without policy rules) until Device.SetAddresses gives it one: a daemon
	// creates the TUN before the portal assigned its addresses.
	IPv4, IPv6 netip.Addr
	// Fwmark marks the daemon's own sockets (see MarkControl, MarkedNet); default DefaultFwmark.
	Fwmark uint32
	// Table is the routing table of the routes through the TUN; default DefaultTable. Default
	// routes (0.0.0.0/0, ::/0: the Internet resource) go to Table+1. Neither may be one of the
	// kernel's reserved tables (253 default, 254 main, 255 local).
	Table int
	// RulePriority is the priority of the first policy rule; the package uses RulePriority,
	// RulePriority+1 and RulePriority+2. Default DefaultRulePriority.
	RulePriority int
	// DNS selects how the system resolver is pointed at the tunnel's DNS (Device.DNS).
	DNS DNSConfig
	// Logger receives what Create, Cleanup and Close did; default slog.Default().
	Logger *slog.Logger
}

// DNSMode selects how DNSControl changes the system's resolver configuration.
type DNSMode string

const (
	// DNSModeDisabled leaves the system's resolver configuration alone: Apply and Restore do
	// nothing. It is what the zero value means.
	DNSModeDisabled DNSMode = "disabled"
	// DNSModeEtcResolvConf rewrites /etc/resolv.conf in place (see DNSControl.Apply).
	DNSModeEtcResolvConf DNSMode = "etc-resolv-conf"
)

// ParseDNSMode parses a command-line value ("etc-resolv-conf" or "disabled").
func ParseDNSMode(s string) (DNSMode, error) {
	switch DNSMode(s) {
	case DNSModeDisabled, DNSModeEtcResolvConf:
		return DNSMode(s), nil
	}
	return "", fmt.Errorf("tundev: unknown DNS control mode %q (want %q or %q)", s, DNSModeEtcResolvConf, DNSModeDisabled)
}

// DNSConfig configures DNSControl.
type DNSConfig struct {
	// Mode; the zero value means DNSModeDisabled.
	Mode DNSMode
	// ResolvConfPath is the file to rewrite; default DefaultResolvConf. Tests point it at a
	// temporary file.
	ResolvConfPath string
	// BackupPath is where the original is kept while the tunnel runs; default ResolvConfPath +
	// BackupSuffix. Cleanup looks for a leftover backup here even when Mode is disabled.
	BackupPath string
}

func (c DNSConfig) withDefaults() DNSConfig {
	if c.Mode == "" {
		c.Mode = DNSModeDisabled
	}
	if c.ResolvConfPath == "" {
		c.ResolvConfPath = DefaultResolvConf
	}
	if c.BackupPath == "" {
		c.BackupPath = c.ResolvConfPath + BackupSuffix
	}
	return c
}

func (c DNSConfig) validate() error {
	if _, err := ParseDNSMode(string(c.Mode)); err != nil {
		return err
	}
	if filepath.Clean(c.ResolvConfPath) == filepath.Clean(c.BackupPath) {
		return fmt.Errorf("tundev: DNS backup path %q is the resolv.conf path itself", c.BackupPath)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Name == "" {
		c.Name = DefaultName
	}
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	if c.Fwmark == 0 {
		c.Fwmark = DefaultFwmark
	}
	if c.Table == 0 {
		c.Table = DefaultTable
	}
	if c.RulePriority == 0 {
		c.RulePriority = DefaultRulePriority
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.DNS = c.DNS.withDefaults()
	return c
}

// validate checks a Config after withDefaults. Address presence is checked by Create only, so
// that Cleanup accepts a Config without addresses.
func (c Config) validate() error {
	if len(c.Name) > maxIfNameLen {
		return fmt.Errorf("tundev: interface name %q is longer than %d bytes", c.Name, maxIfNameLen)
	}
	for _, r := range c.Name {
		if r <= ' ' || r == '/' || r == ':' || r > '~' {
			return fmt.Errorf("tundev: interface name %q contains %q", c.Name, r)
		}
	}
	if c.MTU < 1280 || c.MTU > 65535 {
		return fmt.Errorf("tundev: MTU %d out of range [1280, 65535] (IPv6 needs 1280)", c.MTU)
	}
	if c.Table < 1 || c.Table >= 252 && c.Table <= 255 || int64(c.Table) >= 1<<32-1 {
		return fmt.Errorf("tundev: routing tables %d and %d: not allowed (253-255 are the kernel's)", c.Table, c.Table+1)
	}
	if c.RulePriority < 1 || c.RulePriority+2 >= 32766 {
		return fmt.Errorf("tundev: rule priority %d must leave room for three rules before the main table's 32766", c.RulePriority)
	}
	if c.IPv4.IsValid() && !c.IPv4.Is4() {
		return fmt.Errorf("tundev: IPv4 tunnel address %s is not IPv4", c.IPv4)
	}
	if c.IPv6.IsValid() && (!c.IPv6.Is6() || c.IPv6.Is4In6()) {
		return fmt.Errorf("tundev: IPv6 tunnel address %s is not IPv6", c.IPv6)
	}
	return c.DNS.validate()
}

// Errors callers branch on.
var (
	// ErrDeviceBusy means a TUN with the configured name is attached to a running process (a
	// non-persistent TUN exists only while some process holds it open): most likely another
	// instance of the daemon in this network namespace. Create and Cleanup then change nothing.
	ErrDeviceBusy = errors.New("tundev: TUN device is in use by a running process")
	// ErrNameInUse means an interface with the configured name exists and is not a TUN; it is
	// never touched.
	ErrNameInUse = errors.New("tundev: interface name is taken by a non-TUN interface")
	// ErrResolvConfSymlink means resolv.conf is a symbolic link, i.e. managed by something else
	// (systemd-resolved's stub file, resolvconf, NetworkManager); DNSModeEtcResolvConf refuses to
	// rewrite it. Use DNSModeDisabled there.
	ErrResolvConfSymlink = errors.New("tundev: resolv.conf is a symbolic link managed by another program")
	// ErrNoOriginalDNS means the original nameservers cannot be known: resolv.conf carries
	// snowgate's header (it is ours) but no backup of the original exists.
	ErrNoOriginalDNS = errors.New("tundev: original nameservers unknown (resolv.conf is snowgate's and no backup exists)")
	// ErrClosed is returned by the methods of a closed Device.
	ErrClosed = errors.New("tundev: device closed")
)

// LinkEvent is the TUN's state as the kernel reports it (Device.LinkEvents).
type LinkEvent struct {
	// Up is true while the interface is running (IFF_RUNNING: administratively up and attached).
	Up bool
	// MTU is the interface's current MTU.
	MTU int
}

// WatchOptions configures Watch.
type WatchOptions struct {
	// Exclude names an interface whose changes are ignored (the TUN itself).
	Exclude string
	// Debounce is how long changes are collected into one notification; default
	// DefaultWatchDebounce.
	Debounce time.Duration
	// Logger receives subscription errors at DEBUG/WARN; default slog.Default().
	Logger *slog.Logger
}
