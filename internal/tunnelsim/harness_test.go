package tunnelsim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/pion/turn/v5"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/tunnel"
	"github.com/snowgate/snowgate/node"
	"github.com/snowgate/snowgate/node/nodetest"
	"github.com/snowgate/snowgate/portalmock"
	"github.com/snowgate/snowgate/relay"
)

// Identities of the simulated account.
const (
	accountID   = "acc00000-0000-4000-8000-000000000001"
	clientID    = "c11e0000-0000-4000-8000-00000000000a"
	clientToken = "sim-client-token"
	relayToken  = "sim-relay-token"
)

var (
	siteIDs  = []string{"517e0000-0000-4000-8000-000000000001", "517e0000-0000-4000-8000-000000000002"}
	clientV4 = netip.MustParseAddr("100.64.0.1")
	clientV6 = netip.MustParseAddr("fd00:2021:1111::1:1")
)

// gatewaySpec is one gateway of the account.
type gatewaySpec struct {
	id, token string
	site      int
}

// gatewaySpecs: two gateways in site 0, one in site 1.
var gatewaySpecs = []gatewaySpec{
	{"9a7e0000-0000-4000-8000-00000000000a", "sim-gateway-token-a", 0},
	{"9a7e0000-0000-4000-8000-00000000000b", "sim-gateway-token-b", 0},
	{"9a7e0000-0000-4000-8000-00000000000c", "sim-gateway-token-c", 1},
}

// portalFile is the portal's configuration: one account, two sites, the client, the gateways, the relay
// token, the upstream resolvers (dns_test.go); no resources or policies (the scenario adds them).
func portalFile() *portalmock.File {
	acc := portalmock.AccountConfig{ID: accountID, Slug: "sim", UpstreamDNS: []string{upstreamOut.String(), upstreamIn.String()}}
	for i, s := range siteIDs {
		acc.Sites = append(acc.Sites, portalmock.SiteConfig{ID: s, Name: fmt.Sprintf("site-%d", i)})
	}
	acc.Clients = []portalmock.ClientConfig{{ID: clientID, Name: "client", Token: clientToken, IPv4: clientV4.String(), IPv6: clientV6.String()}}
	for i, g := range gatewaySpecs {
		acc.Gateways = append(acc.Gateways, portalmock.GatewayConfig{ID: g.id, Name: fmt.Sprintf("gateway-%d", i),
			Site: siteIDs[g.site], Token: g.token})
	}
	return &portalmock.File{Relays: []portalmock.RelayConfig{{Name: "sim-relays", Token: relayToken}}, Accounts: []portalmock.AccountConfig{acc}}
}

// logger is the daemons' logger: discarded unless SNOWGATE_SIM_LOG names a level (debug, info, warn).
func logger(tb interface{ Log(...any) }) *slog.Logger {
	var level slog.Level
	switch os.Getenv("SNOWGATE_SIM_LOG") {
	case "debug":
		level = slog.LevelDebug
	case "info":
		level = slog.LevelInfo
	case "warn":
		level = slog.LevelWarn
	default:
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(logWriter{tb}, &slog.HandlerOptions{Level: level}))
}

type logWriter struct{ tb interface{ Log(...any) } }

func (w logWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// ---- portal ----------------------------------------------------------------------------------------------

// portal is the simulated portal: a portalmock.Server that can be restarted (a new server with the same
// configuration and the current resources and policies), reached through the phoenix client's Transport.
type portal struct {
	log *slog.Logger

	mu  sync.Mutex
	srv *portalmock.Server // nil while down
}

func newPortal(log *slog.Logger) (*portal, error) {
	p := &portal{log: log}
	return p, p.start(nil, nil)
}

// start runs a new server with the given resources and policies.
func (p *portal) start(rs []portalmock.ResourceConfig, ps []portalmock.PolicyConfig) error {
	srv, err := portalmock.New(portalmock.Config{File: portalFile(), Logger: p.log})
	if err != nil {
		return err
	}
	for _, r := range rs {
		if err := srv.PutResource(r); err != nil {
			return err
		}
	}
	for _, pol := range ps {
		if err := srv.PutPolicy(pol); err != nil {
			return err
		}
	}
	p.mu.Lock()
	p.srv = srv
	p.mu.Unlock()
	return nil
}

// server returns the running server (nil while down).
func (p *portal) server() *portalmock.Server {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.srv
}

// stop closes the server: every session ends (their clients redial with backoff and fail until start).
func (p *portal) stop() error {
	p.mu.Lock()
	srv := p.srv
	p.srv = nil
	p.mu.Unlock()
	if srv == nil {
		return nil
	}
	return srv.Close()
}

// transport is the phoenix TransportFunc of every daemon and relay: the URL's path names the endpoint,
// its query the session's parameters, the header the token.
func (p *portal) transport(_ context.Context, rawURL string, h http.Header) (phoenix.Conn, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	kind := strings.TrimSuffix(strings.TrimPrefix(u.Path, "/"), "/websocket")
	srv := p.server()
	if srv == nil {
		return nil, errors.New("portal down")
	}
	c, err := srv.DialMemory(kind, strings.TrimPrefix(h.Get("X-Authorization"), "Bearer "), u.Query())
	if errors.Is(err, portalmock.ErrUnauthorized) {
		return nil, fmt.Errorf("%w: %w", phoenix.ErrUnauthorized, err)
	}
	if err != nil {
		return nil, err
	}
	return memConn{c}, nil
}

// memConn is a portal memory session as a phoenix.Conn.
type memConn struct{ c *portalmock.MemoryConn }

func (m memConn) Read(ctx context.Context) ([]byte, error) {
	select {
	case b := <-m.c.Frames():
		return b, nil
	case <-m.c.Done():
		return nil, io.EOF
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (m memConn) Write(_ context.Context, b []byte) error { return m.c.Send(b) }

func (m memConn) Close() error {
	m.c.Close()
	return nil
}

// ---- relays ----------------------------------------------------------------------------------------------

// simRelay is a relay: a TURN server on the vnet checking the portal's credentials with the relay
// package's Authenticator and peers with its PeerPolicy, registered with the portal by a phoenix client.
type simRelay struct {
	name string
	nt   *nodetest.Relay
	p    *portal
	log  *slog.Logger

	mu     sync.Mutex
	auth   *relay.Authenticator
	portal *phoenix.Client
	drain  chan struct{} // closed when the drain goroutine of portal's events ends
}

func addRelay(w *nodetest.World, p *portal, name string, log *slog.Logger) *simRelay {
	r := &simRelay{name: name, p: p, log: log}
	var policy *relay.PeerPolicy // set below, once the relay's address is known
	r.nt = w.AddRelayWith(name, nodetest.RelayOptions{
		PermissionHandler: func(_ net.Addr, peer net.IP) bool { return policy.AllowedIP(peer) },
		Realm:             relay.DefaultRealm,
		AuthHandler: func(ra *turn.RequestAttributes) (string, []byte, bool) {
			r.mu.Lock()
			a := r.auth
			r.mu.Unlock()
			if a == nil {
				return "", nil, false
			}
			user, key, err := a.Key(ra.Username, ra.Realm, time.Now())
			return user, key, err == nil
		},
	})
	policy = relay.NewPeerPolicy(nil, nil, []netip.Addr{r.nt.Addr().Addr()}, 0, 65535)
	r.boot()
	return r
}

// boot draws a new stamp secret (a relay's per-boot secret) and registers with the portal.
func (r *simRelay) boot() {
	secret := fmt.Sprintf("%064x", time.Now().UnixNano()) + r.name
	c := phoenix.NewClient(phoenix.ClientConfig{
		URL:       "ws://portal/relay/websocket?" + url.Values{"ipv4": {r.nt.Addr().Addr().String()}, "port": {"3478"}, "name": {r.name}}.Encode(),
		Token:     relayToken,
		Transport: r.p.transport,
		Logger:    r.log,
	})
	drain := make(chan struct{})
	go func() {
		defer close(drain)
		for range c.Events() {
		}
	}()
	c.Join(portalapi.TopicRelay, portalapi.RelayJoin{StampSecret: secret})
	_ = c.Connect(context.Background(), "")
	r.mu.Lock()
	r.auth = relay.NewAuthenticator(relay.AuthFirezone, secret, relay.DefaultRealm)
	r.portal, r.drain = c, drain
	r.mu.Unlock()
}

// kill stops the relay: its TURN server (allocations gone) and its portal session (the portal drops it
// from presence).
func (r *simRelay) kill() {
	r.mu.Lock()
	c, drain := r.portal, r.drain
	r.portal, r.auth = nil, nil
	r.mu.Unlock()
	r.nt.Kill()
	if c != nil {
		_ = c.Close()
		<-drain
	}
}

// revive boots a killed relay again (new stamp secret, so a new relay id at the portal).
func (r *simRelay) revive() {
	r.nt.Revive()
	r.boot()
}

func (r *simRelay) alive() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.portal != nil
}

// ---- daemons ---------------------------------------------------------------------------------------------

// daemon is a client or gateway daemon: tunnel.RunDaemon with an in-memory TUN on a World host.
type daemon struct {
	name string
	host *nodetest.Host
	tun  *tuntest.ChannelTUN

	started chan *tunnel.Daemon
	d       *tunnel.Daemon
	cancel  context.CancelFunc
	done    chan struct{} // closed when RunDaemon returned
	err     error
	readers sync.WaitGroup
}

// newDaemon returns a daemon on host, not running yet.
func newDaemon(name string, host *nodetest.Host) *daemon {
	return &daemon{name: name, host: host, tun: tuntest.NewChannelTUN(), started: make(chan *tunnel.Daemon, 1), done: make(chan struct{})}
}

// run starts tunnel.RunDaemon; cfg gets the TUN, the node's network, the portal and the Started hook here.
// It returns once the daemon runs (dm.d set, before the driver carries out its first action) or failed
// (done closed, err set).
func (dm *daemon) run(p *portal, cfg tunnel.DaemonConfig, log *slog.Logger) {
	cfg.TUN = dm.tun.TUN()
	cfg.Node = node.Config{Net: dm.host.Net(), DisableIPv6: true, Logger: log.With("node", dm.name)}
	cfg.APIURL = "ws://portal"
	cfg.Transport = p.transport
	cfg.Logger = log.With("daemon", dm.name)
	cfg.Started = func(d *tunnel.Daemon) {
		dm.d = d // on RunDaemon's goroutine, which then runs the driver (and Exec)
		dm.started <- d
	}
	ctx, cancel := context.WithCancel(context.Background())
	dm.cancel = cancel
	go func() {
		defer close(dm.done)
		dm.err = tunnel.RunDaemon(ctx, cfg)
	}()
	select {
	case <-dm.started:
	case <-dm.done:
	}
}

// stop ends the daemon gracefully (as SIGTERM does) and waits for it and its TUN readers.
func (dm *daemon) stop() error {
	dm.cancel()
	<-dm.done
	dm.readers.Wait()
	return dm.err
}

// write hands the daemon's TUN a packet from the operating system; false if the daemon is gone.
func (dm *daemon) write(pkt []byte) bool {
	select {
	case dm.tun.Outbound <- pkt:
		return true
	case <-dm.done:
		return false
	}
}

// read calls f for every packet the daemon writes to its TUN, on a goroutine of its own, until the daemon
// ended (tuntest never closes Inbound).
func (dm *daemon) read(f func(pkt []byte)) {
	dm.readers.Go(func() {
		for {
			select {
			case pkt := <-dm.tun.Inbound:
				f(pkt)
			case <-dm.done:
				return
			}
		}
	})
}

// isClient reports whether a is one of the client's tunnel addresses.
func isClient(a netip.Addr) bool { return a == clientV4 || a == clientV6 }

// clientAddr is the client's tunnel address of dst's family.
func clientAddr(dst netip.Addr) netip.Addr {
	if dst.Is4() {
		return clientV4
	}
	return clientV6
}

// parse parses an IP packet.
func parse(pkt []byte) (ippacket.Packet, bool) {
	p, err := ippacket.Parse(pkt)
	return p, err == nil
}
