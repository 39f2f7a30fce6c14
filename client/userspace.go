package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"

	"github.com/pion/transport/v5"
	"github.com/pion/transport/v5/stdnet"
	"github.com/snowgate/snowgate/client/socks5"
	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/internal/tunnel"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/netstack"
)

// tunMTU is the tunnel's MTU (Firezone's 1280).
const tunMTU = 1280

// userspacePlatform is userspace mode: wireguard-go's netstack is the TUN, applications reach the tunnel
// through a SOCKS5 proxy whose connections the netstack makes, and nothing on the host changes. The
// netstack needs its addresses when it is made, which the portal names only after the node runs, so the
// node gets a late-bound device that the first SetInterface completes.
type userspacePlatform struct {
	log    *slog.Logger
	cfg    Config
	late   *lateTUN
	system []netip.AddrPort

	mu        sync.Mutex
	tnet      *netstack.Net
	addrs     [2]netip.Addr
	sentinels []netip.Addr
	ready     chan struct{} // closed once tnet exists
	dnsSet    chan struct{} // closed by the first SetDNS
	dnsOnce   sync.Once

	socks *socks5.Server
	wg    sync.WaitGroup
}

func newUserspacePlatform(cfg Config, log *slog.Logger) (*userspacePlatform, error) {
	return &userspacePlatform{
		log: log, cfg: cfg, late: newLateTUN(), ready: make(chan struct{}), dnsSet: make(chan struct{}),
		system: readResolvConf(cfg.ResolvConf),
	}, nil
}

func (p *userspacePlatform) TUN() tun.Device { return p.late }

func (p *userspacePlatform) SetInterface(v4, v6 netip.Addr) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tnet != nil {
		if p.addrs != [2]netip.Addr{v4, v6} {
			p.log.Warn("the portal changed the tunnel addresses; the userspace stack keeps the first ones until restart",
				"ipv4", v4, "ipv6", v6)
		}
		return nil
	}
	var local []netip.Addr
	for _, a := range []netip.Addr{v4, v6} {
		if a.IsValid() {
			local = append(local, a)
		}
	}
	if len(local) == 0 {
		return errors.New("client: no tunnel address for the userspace stack")
	}
	dev, tnet, err := netstack.CreateNetTUN(local, nil, tunMTU)
	if err != nil {
		return fmt.Errorf("client: userspace stack: %w", err)
	}
	p.tnet, p.addrs = tnet, [2]netip.Addr{v4, v6}
	p.late.set(dev)
	close(p.ready)
	return nil
}

func (p *userspacePlatform) SetRoutes([]netip.Prefix, []netip.Prefix) error { return nil }

func (p *userspacePlatform) SetDNS(servers []netip.Addr, _ string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sentinels = append([]netip.Addr(nil), servers...)
	p.dnsOnce.Do(func() { close(p.dnsSet) })
	return nil
}

func (p *userspacePlatform) SystemResolvers() []netip.AddrPort { return p.system }

func (p *userspacePlatform) NodeNet() (transport.Net, error) { return stdnet.NewNet() }

func (p *userspacePlatform) HostDial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// stack waits for the netstack (the first init) or ctx.
func (p *userspacePlatform) stack(ctx context.Context) (*netstack.Net, error) {
	select {
	case <-p.ready:
	case <-ctx.Done():
		return nil, fmt.Errorf("client: tunnel not up yet: %w", ctx.Err())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.tnet, nil
}

func (p *userspacePlatform) TunnelDial(ctx context.Context, network, addr string) (net.Conn, error) {
	tnet, err := p.stack(ctx)
	if err != nil {
		return nil, err
	}
	return tnet.DialContext(ctx, network, addr)
}

// resolve looks host up through the stub resolver: a query from the netstack to a sentinel, which the
// core answers (proxy IPs for resource names) or forwards.
func (p *userspacePlatform) resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a}, nil
	}
	tnet, err := p.stack(ctx)
	if err != nil {
		return nil, err
	}
	// The portal's init sets the interface (the netstack) and then the DNS servers: a lookup that
	// arrives in between waits for the second rather than failing.
	select {
	case <-p.dnsSet:
	case <-ctx.Done():
		return nil, fmt.Errorf("client: DNS not configured yet: %w", ctx.Err())
	}
	p.mu.Lock()
	sentinels := append([]netip.Addr(nil), p.sentinels...)
	v4 := p.addrs[0].IsValid()
	p.mu.Unlock()
	if len(sentinels) == 0 {
		return nil, errors.New("client: no DNS resolver configured yet")
	}
	// Prefer a sentinel of a family the stack has an address of.
	server := sentinels[0]
	for _, s := range sentinels {
		if s.Is4() == v4 {
			server = s
			break
		}
	}
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return tnet.DialContext(ctx, network, netip.AddrPortFrom(server, 53).String())
	}}
	addrs, err := r.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, err
	}
	for i := range addrs {
		addrs[i] = addrs[i].Unmap()
	}
	return addrs, nil
}

func (p *userspacePlatform) listenPacket(ctx context.Context, network, _ string) (net.PacketConn, error) {
	tnet, err := p.stack(ctx)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	local := p.addrs[0]
	if network == "udp6" {
		local = p.addrs[1]
	}
	p.mu.Unlock()
	if !local.IsValid() {
		return nil, fmt.Errorf("client: no tunnel address for %s", network)
	}
	return tnet.ListenUDPAddrPort(netip.AddrPortFrom(local, 0))
}

func (p *userspacePlatform) PortalDialer() phoenix.DialFunc { return nil }

func (p *userspacePlatform) Changes(context.Context) (<-chan struct{}, error) { return nil, nil }

// Started starts the SOCKS5 proxy.
func (p *userspacePlatform) Started(ctx context.Context, _ *tunnel.Daemon) (net.Addr, error) {
	if p.cfg.SOCKSAddr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", p.cfg.SOCKSAddr)
	if err != nil {
		return nil, fmt.Errorf("client: SOCKS5 proxy: %w", err)
	}
	p.socks = &socks5.Server{
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return p.TunnelDial(ctx, network, addr)
		},
		Resolve:      p.resolve,
		ListenPacket: p.listenPacket,
		Logger:       telemetry.Component(p.log, "client/socks5"),
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		if err := p.socks.Serve(ctx, ln); err != nil && !errors.Is(err, socks5.ErrServerClosed) && ctx.Err() == nil {
			p.log.Warn("SOCKS5 proxy stopped", telemetry.Err(err))
		}
	}()
	p.log.Info("SOCKS5 proxy listening", "addr", ln.Addr().String())
	return ln.Addr(), nil
}

func (p *userspacePlatform) Close() error {
	if p.socks != nil {
		_ = p.socks.Close()
	}
	p.wg.Wait()
	return nil
}

// lateTUN is a tun.Device whose real device arrives later: reads wait for it, writes before it are
// dropped (nothing can be addressed to the client before it has addresses).
type lateTUN struct {
	set1   sync.Once
	ready  chan struct{}
	closed chan struct{}
	close1 sync.Once
	dev    tun.Device
	events chan tun.Event
}

func newLateTUN() *lateTUN {
	return &lateTUN{ready: make(chan struct{}), closed: make(chan struct{}), events: make(chan tun.Event)}
}

func (l *lateTUN) set(dev tun.Device) {
	l.set1.Do(func() {
		l.dev = dev
		close(l.ready)
	})
}

func (l *lateTUN) inner() tun.Device {
	select {
	case <-l.ready:
		return l.dev
	default:
		return nil
	}
}

func (l *lateTUN) File() *os.File { return nil }

func (l *lateTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case <-l.ready:
		return l.dev.Read(bufs, sizes, offset)
	case <-l.closed:
		return 0, os.ErrClosed
	}
}

func (l *lateTUN) Write(bufs [][]byte, offset int) (int, error) {
	if d := l.inner(); d != nil {
		return d.Write(bufs, offset)
	}
	return len(bufs), nil
}

func (l *lateTUN) MTU() (int, error)        { return tunMTU, nil }
func (l *lateTUN) Name() (string, error)    { return "snowgate-userspace", nil }
func (l *lateTUN) Events() <-chan tun.Event { return l.events }
func (l *lateTUN) BatchSize() int           { return 1 }

func (l *lateTUN) Close() error {
	var err error
	l.close1.Do(func() {
		close(l.closed)
		close(l.events) // wireguard-go's event reader ends with it
		if d := l.inner(); d != nil {
			err = d.Close()
		}
	})
	return err
}
