// Package client is the client daemon: it joins the portal's client channel, creates a flow to the
// resource of the first packet that needs one, and carries the traffic of CIDR, DNS and Internet resources
// through WireGuard connections to the gateways — with a kernel TUN (root: addresses, routes and the
// system's DNS configuration set through netlink and resolv.conf, all undone on exit and, after a SIGKILL,
// on the next start), or in userspace (--userspace: a userspace network stack behind a SOCKS5 proxy, no
// privileges needed).
//
// The decisions are the sans-IO core's (client/core: routing, flows, buffering, the DNS stub, the
// DNS-resource NAT set-up, faults); this package wires it to the node, the TUN, the portal, the DNS
// upstreams and the host, through internal/tunnel's daemon skeleton. A network change (an address or
// default-route change seen through a netlink subscription, or SIGHUP) is roaming: new node key, new
// portal session, DNS sockets renewed, routes recomputed, flows re-created on demand.
package client

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"sync"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/transport/v5"
	clcore "github.com/snowgate/snowgate/client/core"
	"github.com/snowgate/snowgate/client/dns/server"
	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/internal/tunnel"
	"github.com/snowgate/snowgate/node"
	"go.opentelemetry.io/otel/metric"
	"golang.zx2c4.com/wireguard/tun"
)

// Config configures the client daemon.
type Config struct {
	// APIURL is the portal's base URL (ws(s):// or http(s)://), Token the client's token.
	APIURL string
	Token  string
	// ID is the client's persistent device id (external_id), Name its display name.
	ID   string
	Name string
	// Userspace selects the userspace network stack and the SOCKS5 proxy instead of the kernel TUN.
	Userspace bool
	// SOCKSAddr is the SOCKS5 proxy's listen address in userspace mode (DefaultSOCKSAddr; "" for none).
	SOCKSAddr string
	// TUNName is the kernel TUN's name (tundev's default, "tun-snowgate").
	TUNName string
	// DNSControl is how the system resolver is pointed at the stub in kernel mode: "etc-resolv-conf" or
	// "disabled" (default).
	DNSControl string
	// ResolvConf is the resolv.conf kernel mode reads (and rewrites under etc-resolv-conf); default
	// /etc/resolv.conf. Userspace mode reads it for the system's resolvers.
	ResolvConf string
	// Port is the node's UDP port (0: a fresh one on every start; see node.DefaultPort).
	Port int
	// NodeNet replaces the host network of the node (tests).
	NodeNet transport.Net
	// RelayOnly restricts the node to relay candidates (the dev stack's --relayed, comparisons).
	RelayOnly bool
	// IncludeLoopback makes loopback addresses ICE host candidates (everything on one machine).
	IncludeLoopback bool
	// StatusSocket is the status socket's path ("" for none).
	StatusSocket string
	// Started is called once the client runs (tests, dev stack): the daemon, and the SOCKS5 proxy's
	// address in userspace mode.
	Started func(d *tunnel.Daemon, socks net.Addr)
	// Logger and MeterProvider are the daemon's telemetry.
	Logger        *slog.Logger
	MeterProvider metric.MeterProvider
}

// DefaultSOCKSAddr is the userspace client's SOCKS5 proxy address.
const DefaultSOCKSAddr = "127.0.0.1:1080"

// Status is what `snowgate-client status` shows: the core's view with the node's per-connection
// statistics (path, relay, current RTT, bytes, idle) by gateway id.
type Status struct {
	clcore.Status
	Connections []tunnel.ConnectionStatus `json:"connections"`
}

// platform is what differs between kernel and userspace mode.
type platform interface {
	// TUN is the device the node's WireGuard reads and writes (through the TUN wrapper).
	TUN() tun.Device
	// SetInterface, SetRoutes and SetDNS carry out the core's actions of the same names.
	SetInterface(v4, v6 netip.Addr) error
	SetRoutes(routes, excludes []netip.Prefix) error
	SetDNS(servers []netip.Addr, search string) error
	// SystemResolvers are the host's own DNS servers (before snowgate changed anything).
	SystemResolvers() []netip.AddrPort
	// NodeNet is the network of the node's sockets (marked in kernel mode: they never enter the tunnel).
	NodeNet() (transport.Net, error)
	// HostDial dials outside the tunnel (DNS upstreams on the physical network), TunnelDial through it
	// (DNS upstreams inside a CIDR resource).
	HostDial(ctx context.Context, network, addr string) (net.Conn, error)
	TunnelDial(ctx context.Context, network, addr string) (net.Conn, error)
	// PortalDialer opens the portal's WebSocket outside the tunnel (nil: the default dialer).
	PortalDialer() phoenix.DialFunc
	// Changes reports network changes (roaming); nil when the platform sees none.
	Changes(ctx context.Context) (<-chan struct{}, error)
	// Started runs once the daemon runs (userspace: the SOCKS5 proxy); it returns the proxy's address.
	Started(ctx context.Context, d *tunnel.Daemon) (net.Addr, error)
	// Close undoes what the platform changed on the host.
	Close() error
}

// Run runs the client until ctx ends (graceful stop, nil), the portal refuses its token (an error wrapping
// tunnel.ErrPortalRefused) or set-up fails. roam delivers SIGHUP-style roaming requests (nil: none).
func Run(ctx context.Context, cfg Config, roam <-chan struct{}) error {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.APIURL == "" || cfg.Token == "" {
		return errors.New("client: the portal URL and token are required")
	}
	var (
		plat platform
		err  error
	)
	if cfg.Userspace {
		plat, err = newUserspacePlatform(cfg, log)
	} else {
		plat, err = newKernelPlatform(cfg, log)
	}
	if err != nil {
		return err
	}
	defer func() {
		if err := plat.Close(); err != nil {
			log.Warn("host configuration not fully restored", telemetry.Err(err))
		}
	}()
	core, err := clcore.New(clcore.Config{
		SystemResolvers: plat.SystemResolvers(),
		Logger:          telemetry.Component(log, "client/core"),
		MeterProvider:   cfg.MeterProvider,
	})
	if err != nil {
		return err
	}
	glue, err := newDNSGlue(telemetry.Component(log, "client/dns"), core,
		server.DialFunc(plat.HostDial), server.DialFunc(plat.TunnelDial))
	if err != nil {
		return err
	}
	defer glue.close()
	nodeNet, err := plat.NodeNet()
	if err != nil {
		return err
	}
	if cfg.NodeNet != nil {
		nodeNet = cfg.NodeNet
	}
	portalHost := portalPrefixes(ctx, cfg.APIURL, plat)

	exec := func(_ context.Context, a tunnel.Action) error {
		if glue.exec(a) {
			return nil
		}
		switch a := a.(type) {
		case tunnel.SetInterface:
			if err := plat.SetInterface(a.IPv4, a.IPv6); err != nil {
				log.Warn("tunnel addresses not set", telemetry.Err(err))
			}
		case clcore.SetRoutes:
			if err := plat.SetRoutes(a.Routes, append(a.Excludes, portalHost...)); err != nil {
				log.Warn("routes not set", telemetry.Err(err))
			}
		case clcore.SetDNS:
			glue.setSentinels(a.Servers)
			if err := plat.SetDNS(a.Servers, a.SearchDomain); err != nil {
				log.Warn("system DNS configuration not changed", telemetry.Err(err))
			}
		default:
			log.Warn("action of unknown kind skipped", "kind", a.Kind())
		}
		return nil
	}

	query := url.Values{}
	if cfg.ID != "" {
		query.Set("external_id", cfg.ID)
	}
	if cfg.Name != "" {
		query.Set("name", cfg.Name)
	}
	var wg sync.WaitGroup
	runCtx, cancel := context.WithCancel(ctx)
	defer func() { cancel(); wg.Wait() }()
	return tunnel.RunDaemon(ctx, tunnel.DaemonConfig{
		Topic:  portalapi.TopicClient,
		Decode: portalapi.DecodeClientIngress,
		Core:   core,
		Exec:   exec,
		TUN:    plat.TUN(),
		Node: node.Config{Port: cfg.Port, Net: nodeNet, IncludeLoopback: cfg.IncludeLoopback,
			TestOnlyCandidateTypes: relayOnly(cfg.RelayOnly),
			Logger:                 telemetry.Component(log, "node"), MeterProvider: cfg.MeterProvider},
		APIURL: cfg.APIURL, Token: cfg.Token, Query: query, Dialer: plat.PortalDialer(),
		StatusSocket: cfg.StatusSocket,
		Status: func(now time.Time, stats []node.ConnStats, _ tunnel.PortalState) any {
			return Status{Status: core.Status(now), Connections: tunnel.ConnectionStatuses(stats)}
		},
		Started: func(d *tunnel.Daemon) {
			glue.attach(d.Driver, d.Wrapper)
			changes, err := plat.Changes(runCtx)
			if err != nil {
				log.Warn("network changes are not watched; roaming needs SIGHUP", telemetry.Err(err))
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-runCtx.Done():
						return
					case _, ok := <-changes:
						if !ok {
							changes = nil
							continue
						}
						log.Info("network changed: roaming")
					case <-roam:
						log.Info("roaming requested (SIGHUP)")
					}
					d.Driver.Do(func(now time.Time) { core.HandleRoam(now) })
				}
			}()
			socks, err := plat.Started(runCtx, d)
			if err != nil {
				log.Error("userspace proxy failed", telemetry.Err(err))
			}
			if cfg.Started != nil {
				cfg.Started(d, socks)
			}
		},
		Stop:          core.HandleShutdown,
		Logger:        log,
		MeterProvider: cfg.MeterProvider,
	})
}

// portalPrefixes resolves the portal's host to the addresses kept outside the tunnel under the Internet
// resource.
func portalPrefixes(ctx context.Context, apiURL string, plat platform) []netip.Prefix {
	u, err := url.Parse(apiURL)
	if err != nil {
		return nil
	}
	host := u.Hostname()
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Prefix{netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())}
	}
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	r := &net.Resolver{PreferGo: true, Dial: plat.HostDial}
	addrs, err := r.LookupNetIP(rctx, "ip", host)
	if err != nil {
		return nil
	}
	var out []netip.Prefix
	for _, a := range addrs {
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out
}

// resolvConfServers reads a resolv.conf's nameservers (port 53), for the core's fallback upstreams.
func resolvConfServers(addrs []netip.Addr) []netip.AddrPort {
	var out []netip.AddrPort
	for _, a := range addrs {
		out = append(out, netip.AddrPortFrom(a.Unmap(), 53))
	}
	return out
}

// IsUnauthorized reports whether err means the portal refused the client's token.
func IsUnauthorized(err error) bool {
	return errors.Is(err, tunnel.ErrPortalRefused) && errors.Is(err, phoenix.ErrUnauthorized)
}

// relayOnly returns the candidate types of a relay-only node (nil: all).
func relayOnly(on bool) []ice.CandidateType {
	if on {
		return []ice.CandidateType{ice.CandidateTypeRelay}
	}
	return nil
}
