package client

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"

	"github.com/coder/websocket"
	"github.com/pion/transport/v5"
	"github.com/snowgate/snowgate/client/dns"
	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/internal/tundev"
	"github.com/snowgate/snowgate/internal/tunnel"
	"golang.zx2c4.com/wireguard/tun"
)

// kernelPlatform is kernel mode: a TUN device with netlink-managed addresses and policy routes, the
// daemon's own sockets marked so that they never enter the tunnel, and resolv.conf pointed at the stub.
type kernelPlatform struct {
	log     *slog.Logger
	dev     *tundev.Device
	mark    uint32
	system  []netip.AddrPort
	dialer  *net.Dialer // marked: outside the tunnel
	plain   *net.Dialer // unmarked: follows the routes into the tunnel
	dnsMode tundev.DNSMode
}

func newKernelPlatform(cfg Config, log *slog.Logger) (*kernelPlatform, error) {
	mode := tundev.DNSModeDisabled
	if cfg.DNSControl != "" {
		m, err := tundev.ParseDNSMode(cfg.DNSControl)
		if err != nil {
			return nil, fmt.Errorf("client: %w", err)
		}
		mode = m
	}
	dev, err := tundev.Create(tundev.Config{
		Name:   cfg.TUNName,
		DNS:    tundev.DNSConfig{Mode: mode, ResolvConfPath: cfg.ResolvConf},
		Logger: telemetry.Component(log, "tundev"),
	})
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	p := &kernelPlatform{log: log, dev: dev, mark: dev.Fwmark(), dnsMode: mode, plain: &net.Dialer{}}
	p.dialer = &net.Dialer{Control: tundev.MarkControl(p.mark)}
	if ns, err := dev.DNS().OriginalNameservers(); err == nil {
		p.system = resolvConfServers(ns)
	} else {
		log.Info("no system DNS servers found; the portal must name upstreams", telemetry.Err(err))
	}
	return p, nil
}

func (p *kernelPlatform) TUN() tun.Device { return p.dev.TUN() }

func (p *kernelPlatform) SetInterface(v4, v6 netip.Addr) error { return p.dev.SetAddresses(v4, v6) }

func (p *kernelPlatform) SetRoutes(routes, excludes []netip.Prefix) error {
	return p.dev.SetRoutesExcluding(routes, excludes)
}

func (p *kernelPlatform) SetDNS(servers []netip.Addr, search string) error {
	if len(servers) == 0 {
		return p.dev.DNS().Restore()
	}
	return p.dev.DNS().Apply(servers, search)
}

func (p *kernelPlatform) SystemResolvers() []netip.AddrPort { return p.system }

func (p *kernelPlatform) NodeNet() (transport.Net, error) {
	n, err := tundev.MarkedNet(p.mark)
	if err != nil {
		return nil, err
	}
	return &hideInterface{Net: n, name: p.dev.Name()}, nil
}

func (p *kernelPlatform) HostDial(ctx context.Context, network, addr string) (net.Conn, error) {
	return p.dialer.DialContext(ctx, network, addr)
}

func (p *kernelPlatform) TunnelDial(ctx context.Context, network, addr string) (net.Conn, error) {
	return p.plain.DialContext(ctx, network, addr)
}

func (p *kernelPlatform) PortalDialer() phoenix.DialFunc {
	client := &http.Client{Transport: &http.Transport{DialContext: p.dialer.DialContext, Proxy: http.ProxyFromEnvironment}}
	return func(ctx context.Context, u string, h http.Header) (*websocket.Conn, *http.Response, error) {
		return websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: h, HTTPClient: client})
	}
}

func (p *kernelPlatform) Changes(ctx context.Context) (<-chan struct{}, error) {
	return tundev.Watch(ctx, tundev.WatchOptions{Exclude: p.dev.Name(), Logger: telemetry.Component(p.log, "tundev")})
}

func (p *kernelPlatform) Started(context.Context, *tunnel.Daemon) (net.Addr, error) { return nil, nil }

func (p *kernelPlatform) Close() error { return p.dev.Close() }

// hideInterface is a network whose interface list leaves out the TUN: the tunnel's own address must never
// become an ICE host candidate.
type hideInterface struct {
	transport.Net
	name string
}

// UpdateInterfaces refreshes the underlying network's interface snapshot (the node does so on every
// reset: roaming changes the addresses).
func (h *hideInterface) UpdateInterfaces() error {
	if u, ok := h.Net.(interface{ UpdateInterfaces() error }); ok {
		return u.UpdateInterfaces()
	}
	return nil
}

func (h *hideInterface) Interfaces() ([]*transport.Interface, error) {
	all, err := h.Net.Interfaces()
	if err != nil {
		return nil, err
	}
	out := all[:0]
	for _, i := range all {
		if i.Name != h.name {
			out = append(out, i)
		}
	}
	return out, nil
}

// readResolvConf returns a resolv.conf's nameservers as upstreams (port 53); nothing when unreadable.
func readResolvConf(path string) []netip.AddrPort {
	if path == "" {
		path = "/etc/resolv.conf"
	}
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	addrs, err := dns.ParseResolvConf(f)
	if err != nil {
		return nil
	}
	return resolvConfServers(addrs)
}
