package relay

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"runtime"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/snowgate/snowgate/relay/kernelpath"
)

// Defaults and limits (Firezone's relay and RFC 8656).
const (
	DefaultListenPort         = 3478
	DefaultLowestPort         = 49152
	DefaultHighestPort        = 65535
	DefaultAllocationLifetime = 600 * time.Second
	// MaxAllocationLifetime is pion/turn's fixed cap: a requested LIFETIME of
	// an hour or more is answered with the default lifetime (a known
	// deviation from RFC 8656, see the package doc).
	MaxAllocationLifetime     = time.Hour
	DefaultChannelLifetime    = 600 * time.Second
	DefaultPermissionLifetime = 300 * time.Second
	DefaultSocketBuffer       = 8 << 20
	DefaultRelaySocketBuffer  = 1 << 20
	DefaultBatchRead          = 32
	DefaultMaxAllocsPerUser   = 16
	// DefaultMaxAllocations fits a relay in a small VM: an idle allocation
	// costs about 12.5 KB of RSS (bench/scale, issue 13: pion/turn's
	// per-allocation goroutine, read buffer and permission map are most of
	// it), so 25,000 allocations take about 320 MB and leave room in 512 MiB
	// for the kernel's socket buffers. One relay port per allocation: the
	// default port range (16,384 ports) bounds a family below this anyway.
	DefaultMaxAllocations = 25_000
	DefaultDrainTimeout   = 30 * time.Second
)

// ErrInvalidConfig wraps every configuration error returned by Validate.
var ErrInvalidConfig = errors.New("invalid relay config")

// PortalConfig says how to register with the portal. A nil *PortalConfig in
// Config means "no portal": the relay is ready as soon as it listens.
type PortalConfig struct {
	// APIURL is the portal's base URL, ws:// or wss:// (http(s) is mapped to ws(s)).
	APIURL string
	// Token is the relay token, sent as a Bearer token; never logged.
	Token string
	// Name is the relay's display name (query parameter "name").
	Name string
}

// Config configures a relay Server. Zero values take the documented defaults
// in Validate (which New calls).
type Config struct {
	// PublicIP4 and PublicIP6 are the addresses advertised in
	// XOR-RELAYED-ADDRESS. A family is served only if its public address is
	// set; at least one is required.
	PublicIP4, PublicIP6 netip.Addr
	// ListenAddr4 and ListenAddr6 are the local addresses to bind (listener
	// and relay sockets). Default: the public address of the family if the
	// host has it on an interface (so that every reply and relayed datagram
	// leaves from the address clients and peers know, even on a host with
	// several addresses of the family, as IPv6 hosts usually have), else the
	// unspecified address (a public address behind 1:1 NAT). Set the
	// unspecified address explicitly to always bind all.
	ListenAddr4, ListenAddr6 netip.Addr
	// ListenPort is the TURN port (default 3478). -1 picks an ephemeral port
	// (tests); Addr reports it.
	ListenPort int
	// LowestPort and HighestPort bound the relay ports (default 49152–65535).
	LowestPort, HighestPort int
	// Sockets is the number of SO_REUSEPORT listener sockets per family
	// (default GOMAXPROCS).
	Sockets int
	// SocketBuffer is the SO_RCVBUF/SO_SNDBUF size of listener sockets
	// (default 8 MiB); RelaySocketBuffer that of relay sockets (default 1 MiB).
	SocketBuffer, RelaySocketBuffer int
	// BatchRead is the most datagrams a worker reads from one socket per
	// recvmmsg (default 32; 1 reads one at a time).
	BatchRead int

	// DisableGSO sends every relayed datagram on its own instead of
	// coalescing bursts to one destination into UDP GSO sends (for
	// comparisons, or kernels that misbehave; EIO turns it off by itself).
	DisableGSO bool

	// DisableFastPath sends all channel data through pion's generic request
	// handling instead of the relay's own ChannelData forwarding (for
	// comparisons; see fastPath).
	DisableFastPath bool

	// DisableKernelPath keeps channel data out of the kernel: no XDP
	// program is attached (see the kernelpath package; for comparisons, or
	// hosts where it misbehaves). Where the program cannot be attached (not
	// Linux, no BPF capability, loopback only) the relay runs without it
	// anyway.
	DisableKernelPath bool
	// KernelPathMaxChannels is the capacity of the kernel path's maps
	// (default kernelpath.DefaultMaxChannels); channels beyond it stay in
	// userspace.
	KernelPathMaxChannels int

	// AllocationLifetime applies when the client requests none (default
	// 600 s, at most MaxAllocationLifetime).
	AllocationLifetime time.Duration
	// ChannelLifetime (default 600 s) and PermissionLifetime (default 300 s).
	ChannelLifetime, PermissionLifetime time.Duration

	// Auth selects the credential scheme. AuthFirezone uses a random per-boot
	// stamp secret; AuthTURNREST uses RESTSecret.
	Auth AuthScheme
	// RESTSecret is coturn's static-auth-secret (AuthTURNREST only).
	RESTSecret string
	// Realm defaults to DefaultRealm ("firezone").
	Realm string

	// AllowPeers and DenyPeers adjust the peer policy (see PeerPolicy).
	AllowPeers, DenyPeers []netip.Prefix

	// MaxAllocationsPerUser (default 16) and MaxAllocations (default
	// 25000, see DefaultMaxAllocations) are the quotas; a refused Allocate
	// gets 486.
	MaxAllocationsPerUser, MaxAllocations int

	// DrainTimeout is how long Run keeps existing allocations after its
	// context ends (default 30 s; negative: no drain).
	DrainTimeout time.Duration

	// Portal, if set, is where the relay registers its stamp secret.
	Portal *PortalConfig

	// Logger receives logs (nil: discard). MeterProvider receives metrics
	// (nil: noop).
	Logger        *slog.Logger
	MeterProvider metric.MeterProvider
}

// Validate fills defaults and checks the configuration, returning an error
// wrapping ErrInvalidConfig that names the first bad field.
func (c *Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	if !c.PublicIP4.IsValid() && !c.PublicIP6.IsValid() {
		return bad("at least one public address (PUBLIC_IP4_ADDR / PUBLIC_IP6_ADDR) is required")
	}
	if c.PublicIP4.IsValid() && !c.PublicIP4.Unmap().Is4() {
		return bad("public IPv4 address %s is not IPv4", c.PublicIP4)
	}
	if c.PublicIP6.IsValid() && (!c.PublicIP6.Is6() || c.PublicIP6.Is4In6()) {
		return bad("public IPv6 address %s is not IPv6", c.PublicIP6)
	}
	c.PublicIP4 = c.PublicIP4.Unmap()
	// An unset listen address stays unset here: Start picks the public
	// address if it is local, else the unspecified one (see ListenAddr4).
	if c.PublicIP4.IsValid() && c.ListenAddr4.IsValid() {
		c.ListenAddr4 = c.ListenAddr4.Unmap()
		if !c.ListenAddr4.Is4() {
			return bad("listen address %s is not IPv4", c.ListenAddr4)
		}
	}
	if c.PublicIP6.IsValid() && c.ListenAddr6.IsValid() {
		if !c.ListenAddr6.Is6() || c.ListenAddr6.Is4In6() {
			return bad("listen address %s is not IPv6", c.ListenAddr6)
		}
	}
	switch {
	case c.ListenPort == 0:
		c.ListenPort = DefaultListenPort
	case c.ListenPort == -1:
	case c.ListenPort < 1 || c.ListenPort > 65535:
		return bad("listen port %d out of range", c.ListenPort)
	}
	if c.LowestPort == 0 {
		c.LowestPort = DefaultLowestPort
	}
	if c.HighestPort == 0 {
		c.HighestPort = DefaultHighestPort
	}
	if c.LowestPort < 1 || c.HighestPort > 65535 || c.LowestPort > c.HighestPort {
		return bad("relay port range %d-%d invalid", c.LowestPort, c.HighestPort)
	}
	if c.ListenPort >= c.LowestPort && c.ListenPort <= c.HighestPort {
		return bad("listen port %d inside the relay port range %d-%d", c.ListenPort, c.LowestPort, c.HighestPort)
	}
	if c.Sockets == 0 {
		c.Sockets = runtime.GOMAXPROCS(0)
	}
	if c.Sockets < 1 || c.Sockets > 256 {
		return bad("sockets %d out of range 1-256", c.Sockets)
	}
	if c.SocketBuffer == 0 {
		c.SocketBuffer = DefaultSocketBuffer
	}
	if c.RelaySocketBuffer == 0 {
		c.RelaySocketBuffer = DefaultRelaySocketBuffer
	}
	if c.SocketBuffer < 0 || c.RelaySocketBuffer < 0 || c.SocketBuffer > 1<<30 || c.RelaySocketBuffer > 1<<30 {
		return bad("socket buffer sizes must be 0..1GiB")
	}
	if c.BatchRead == 0 {
		c.BatchRead = DefaultBatchRead
	}
	if c.BatchRead < 1 || c.BatchRead > 1024 {
		return bad("batch read %d out of range 1-1024", c.BatchRead)
	}
	if c.KernelPathMaxChannels == 0 {
		c.KernelPathMaxChannels = kernelpath.DefaultMaxChannels
	}
	if c.KernelPathMaxChannels < 0 || c.KernelPathMaxChannels > 1<<24 {
		return bad("kernel path max channels %d out of range 1-%d", c.KernelPathMaxChannels, 1<<24)
	}
	if c.AllocationLifetime == 0 {
		c.AllocationLifetime = DefaultAllocationLifetime
	}
	if c.AllocationLifetime < 0 || c.AllocationLifetime > MaxAllocationLifetime {
		return bad("allocation lifetime %v out of range (0, %v]", c.AllocationLifetime, MaxAllocationLifetime)
	}
	if c.ChannelLifetime == 0 {
		c.ChannelLifetime = DefaultChannelLifetime
	}
	if c.PermissionLifetime == 0 {
		c.PermissionLifetime = DefaultPermissionLifetime
	}
	if c.ChannelLifetime < 0 || c.PermissionLifetime < 0 {
		return bad("negative channel or permission lifetime")
	}
	switch c.Auth {
	case AuthFirezone:
		if c.RESTSecret != "" {
			return bad("a REST secret is set but the auth scheme is %v", c.Auth)
		}
	case AuthTURNREST:
		if c.RESTSecret == "" {
			return bad("auth scheme %v needs a REST secret", c.Auth)
		}
	default:
		return bad("unknown auth scheme %v", c.Auth)
	}
	if c.Realm == "" {
		c.Realm = DefaultRealm
	}
	for _, p := range append(append([]netip.Prefix(nil), c.AllowPeers...), c.DenyPeers...) {
		if !p.IsValid() {
			return bad("invalid peer prefix")
		}
	}
	if c.MaxAllocationsPerUser == 0 {
		c.MaxAllocationsPerUser = DefaultMaxAllocsPerUser
	}
	if c.MaxAllocations == 0 {
		c.MaxAllocations = DefaultMaxAllocations
	}
	if c.MaxAllocationsPerUser < 0 || c.MaxAllocations < 0 {
		return bad("negative quota")
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.Portal != nil {
		if c.Auth != AuthFirezone {
			return bad("portal registration needs the firezone auth scheme (the portal derives the credentials)")
		}
		if err := c.Portal.validate(); err != nil {
			return fmt.Errorf("%w: portal: %w", ErrInvalidConfig, err)
		}
	}
	return nil
}

func (p *PortalConfig) validate() error {
	if p.Token == "" {
		return errors.New("token is empty")
	}
	u, err := url.Parse(p.APIURL)
	if err != nil {
		return fmt.Errorf("api url: %w", err)
	}
	switch u.Scheme {
	case "ws", "wss", "http", "https":
	default:
		return fmt.Errorf("api url scheme %q is not ws, wss, http or https", u.Scheme)
	}
	if u.Host == "" {
		return errors.New("api url has no host")
	}
	return nil
}
