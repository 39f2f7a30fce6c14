// Package gateway is the gateway daemon: it joins the portal's gateway channel, accepts the connections
// of the clients the portal authorises, and forwards their traffic to the resources — through a kernel TUN
// with IP forwarding and masquerading (root), or in userspace (--userspace: a gVisor netstack terminates
// the clients' flows and re-originates them from ordinary sockets, no privileges needed).
//
// The decisions are the sans-IO core's (gateway/core: authorisations, filters, DNS-resource NAT, the
// control protocol); this package wires it to the node, the TUN device, the portal and the host, through
// internal/tunnel's daemon skeleton. On SIGTERM (ctx cancelled) the gateway leaves the portal first, so that
// new flows go to another gateway of the site, then says Goodbye to every client over the control
// protocol, so that they fail over at once, and exits.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/transport/v5"
	gwcore "github.com/snowgate/snowgate/gateway/core"
	"github.com/snowgate/snowgate/gateway/userfwd"
	"github.com/snowgate/snowgate/internal/hostfwd"
	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/internal/tundev"
	"github.com/snowgate/snowgate/internal/tunnel"
	"github.com/snowgate/snowgate/node"
	"go.opentelemetry.io/otel/metric"
	"golang.zx2c4.com/wireguard/tun"
)

// DefaultTUNName is the kernel TUN's name on a gateway.
const DefaultTUNName = "tun-sg-gateway"

// resolveTimeout bounds the resolution of one DNS-resource name.
const resolveTimeout = 5 * time.Second

// maxResolving bounds the resolutions in flight; more wait for a slot.
const maxResolving = 64

// Config configures the gateway daemon.
type Config struct {
	// APIURL is the portal's base URL (ws(s):// or http(s)://), Token the gateway's token.
	APIURL string
	Token  string
	// ID is the gateway's persistent device id (external_id), Name its display name.
	ID   string
	Name string
	// Userspace selects the userspace forwarder instead of the kernel TUN (no root).
	Userspace bool
	// TUNName is the kernel TUN's name (DefaultTUNName).
	TUNName string
	// ForwardDial replaces the userspace forwarder's host dialer (the dev stack maps its demo site's
	// addresses to loopback listeners).
	ForwardDial func(ctx context.Context, network, address string) (net.Conn, error)
	// RelayOnly restricts the node to relay candidates (the dev stack's --relayed, comparisons).
	RelayOnly bool
	// AllowLoopback lets userspace-mode flows reach the host's loopback addresses (the dev stack's demo
	// resources live there); off by default.
	AllowLoopback bool
	// Port is the node's UDP port (0: a fresh one on every start; see node.DefaultPort).
	Port int
	// NodeNet replaces the host network of the node (tests).
	NodeNet transport.Net
	// IncludeLoopback makes loopback addresses ICE host candidates (everything on one machine: the dev
	// stack, in-process tests).
	IncludeLoopback bool
	// StatusSocket is the status socket's path ("" for none).
	StatusSocket string
	// HealthAddr serves /healthz, /readyz (joined to the portal) and /metrics ("" for none).
	HealthAddr     string
	MetricsHandler http.Handler
	// LookupNetIP resolves DNS-resource names (nil: net.DefaultResolver).
	LookupNetIP func(ctx context.Context, network, host string) ([]netip.Addr, error)
	// Started is called once the gateway runs (tests, dev stack).
	Started func(*tunnel.Daemon)
	// Logger and MeterProvider are the daemon's telemetry.
	Logger        *slog.Logger
	MeterProvider metric.MeterProvider
}

// Status is what `snowgate-gateway status` shows.
type Status struct {
	Portal      string                    `json:"portal"`
	Gateway     gwcore.Status             `json:"gateway"`
	Connections []tunnel.ConnectionStatus `json:"connections"`
}

// Run runs the gateway until ctx ends (graceful stop, nil), the portal refuses its token (an error wrapping
// tunnel.ErrPortalRefused) or set-up fails.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.APIURL == "" || cfg.Token == "" {
		return errors.New("gateway: the portal URL and token are required")
	}
	core, err := gwcore.New(gwcore.Config{Logger: telemetry.Component(log, "gateway/core"), MeterProvider: cfg.MeterProvider})
	if err != nil {
		return err
	}
	lookup := cfg.LookupNetIP
	if lookup == nil {
		lookup = net.DefaultResolver.LookupNetIP
	}

	var (
		dev     tun.Device
		kernel  *tundev.Device
		forward *hostfwd.Forwarding
	)
	if cfg.Userspace {
		uf, err := userfwd.New(userfwd.Config{AllowLoopback: cfg.AllowLoopback, Dial: cfg.ForwardDial,
			Logger: telemetry.Component(log, "gateway/userfwd"), MeterProvider: cfg.MeterProvider})
		if err != nil {
			return fmt.Errorf("gateway: userspace forwarder: %w", err)
		}
		dev = uf
	} else {
		name := cfg.TUNName
		if name == "" {
			name = DefaultTUNName
		}
		kernel, err = tundev.Create(tundev.Config{Name: name, Logger: telemetry.Component(log, "tundev")})
		if err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
		defer kernel.Close() //nolint:errcheck // logged by tundev
		// Replies to clients (tunnel addresses) go back through the TUN.
		if err := kernel.SetRoutes(gwcore.DefaultTunnelPrefixes()); err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
		forward, err = hostfwd.Enable(hostfwd.Config{TunName: name, Logger: telemetry.Component(log, "hostfwd")})
		if err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
		defer forward.Close() //nolint:errcheck // logged by hostfwd
		dev = kernel.TUN()
	}

	var (
		resolving sync.WaitGroup
		slots     = make(chan struct{}, maxResolving)
		daemon    *tunnel.Daemon
	)
	resolveCtx, stopResolving := context.WithCancel(context.WithoutCancel(ctx))
	defer func() { stopResolving(); resolving.Wait() }()
	exec := func(_ context.Context, a tunnel.Action) error {
		switch a := a.(type) {
		case gwcore.ResolveName:
			d := daemon.Driver
			resolving.Add(1)
			go func() {
				defer resolving.Done()
				select {
				case slots <- struct{}{}:
				case <-resolveCtx.Done():
					return
				}
				defer func() { <-slots }()
				rctx, cancel := context.WithTimeout(resolveCtx, resolveTimeout)
				addrs, err := lookup(rctx, "ip", a.Domain)
				cancel()
				for i := range addrs {
					addrs[i] = addrs[i].Unmap()
				}
				d.Do(func(now time.Time) { core.HandleResolved(a.ClientID, a.Assignment, addrs, err, now) })
			}()
		case tunnel.SetInterface:
			if kernel != nil {
				if err := kernel.SetAddresses(a.IPv4, a.IPv6); err != nil {
					log.Warn("tunnel addresses not set on the TUN", telemetry.Err(err))
				}
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
	port := cfg.Port
	healthCtx, stopHealth := context.WithCancel(context.WithoutCancel(ctx))
	defer stopHealth()
	return tunnel.RunDaemon(ctx, tunnel.DaemonConfig{
		Topic:  portalapi.TopicGateway,
		Decode: portalapi.DecodeGatewayIngress,
		Core:   core,
		Exec:   exec,
		TUN:    dev,
		Node: node.Config{Port: port, Net: cfg.NodeNet, IncludeLoopback: cfg.IncludeLoopback,
			TestOnlyCandidateTypes: relayOnly(cfg.RelayOnly),
			Logger:                 telemetry.Component(log, "node"), MeterProvider: cfg.MeterProvider},
		APIURL: cfg.APIURL, Token: cfg.Token, Query: query,
		StatusSocket: cfg.StatusSocket,
		Status: func(now time.Time, stats []node.ConnStats, portal tunnel.PortalState) any {
			return Status{Portal: portal.String(), Gateway: core.Status(now), Connections: tunnel.ConnectionStatuses(stats)}
		},
		Started: func(d *tunnel.Daemon) {
			daemon = d
			if cfg.HealthAddr != "" {
				if addr, err := telemetry.Serve(healthCtx, cfg.HealthAddr, func() bool { return d.PortalState() == tunnel.PortalJoined },
					cfg.MetricsHandler, log); err != nil {
					log.Error("health endpoint failed", telemetry.Err(err))
				} else {
					log.Info("health endpoint listening", "addr", addr.String())
				}
			}
			if cfg.Started != nil {
				cfg.Started(d)
			}
		},
		Stop:          core.Shutdown,
		LeaveFirst:    true,
		Logger:        log,
		MeterProvider: cfg.MeterProvider,
	})
}

// IsUnauthorized reports whether err means the portal refused the gateway's token.
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
