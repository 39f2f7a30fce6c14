// Package devstack runs the whole snowgate system in one process on loopback, with userspace networking
// and no privileges: the mock portal with its development configuration, relays, a gateway and clients in
// userspace mode, and a demo site behind the gateway. `make run` (cmd/snowgate-devstack) and the in-process
// end-to-end tests use it.
//
// The demo site is virtual: the portal's resources name addresses of a documentation network
// (DemoAddr4, in the "lab network" CIDR resource 198.51.100.0/24) and DNS names (demo.snowgate.test,
// httpbin.lab.test, anything under lab.test), the gateway resolves those names to DemoAddr4, and its
// userspace forwarder maps connections to DemoAddr4:80 onto the demo HTTP server on a loopback port. So a
// request through the client's SOCKS5 proxy takes the real path: client netstack → client core (DNS stub,
// routing, flow) → WireGuard over ICE (direct on loopback, or through a relay) → gateway core (filters,
// DNS-resource NAT) → gateway userspace forwarder → the demo server.
package devstack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/snowgate/snowgate/client"
	"github.com/snowgate/snowgate/gateway"
	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/internal/tunnel"
	"github.com/snowgate/snowgate/portalmock"
	"github.com/snowgate/snowgate/relay"
	"go.opentelemetry.io/otel/metric"
)

// Development tokens of the embedded portal configuration (portalmock/default.yaml).
const (
	RelayToken    = "dev-relay-token"
	GatewayToken1 = "dev-gateway-token-1"
	GatewayToken2 = "dev-gateway-token-2"
)

// ClientTokens are the tokens of the embedded configuration's two clients, in order (Start gives that
// configuration further clients, dev-client-token-3 and so on, when Options.Clients asks for more).
var ClientTokens = []string{"dev-client-token-1", "dev-client-token-2"}

// DemoAddr4 is the demo server's address in the virtual site (inside the "lab network" CIDR resource).
var DemoAddr4 = netip.MustParseAddr("198.51.100.10")

// DemoName is the DNS resource that names the demo server.
const DemoName = "demo.snowgate.test"

// DemoPage is the first line of the demo server's page.
const DemoPage = "snowgate demo: you reached a resource behind the gateway"

// Options configure Start.
type Options struct {
	// PortalAddr, AdminAddr: listen addresses of the portal's WebSocket and admin API ("127.0.0.1:0" and
	// "" (off) by default).
	PortalAddr, AdminAddr string
	// MetricsAddr serves /healthz, /readyz (Stack.Joined) and /metrics (MetricsHandler) ("": off).
	MetricsAddr    string
	MetricsHandler http.Handler
	// Fallback names the listen addresses that move to a free port of the same host when they are busy
	// (Stack.Moved lists those that did); the others fail Start.
	Fallback Fallback
	// PortalFile is the portal configuration (nil: the embedded development configuration). The stack's
	// relays use its first relay token, the gateway is the first account's first gateway, and the clients
	// its first Clients clients.
	PortalFile *portalmock.File
	// Relays is the number of relays (0 means none).
	Relays int
	// Clients is the number of clients: up to MaxClients with the embedded configuration, which is given
	// the clients it lacks; up to the number of clients the first account names with PortalFile.
	Clients int
	// SOCKSAddrs are the clients' SOCKS5 addresses, in order ("127.0.0.1:0" where missing).
	SOCKSAddrs []string
	// Relayed forces every connection through a relay (no direct candidates on the gateway and clients).
	Relayed bool
	// ClientRelayed[i] makes client i relay-only (its local candidates are relay candidates only), so
	// that one stack has direct and relayed connections side by side.
	ClientRelayed []bool
	// StateDir holds the status sockets and device ids (a temporary directory by the caller).
	StateDir string
	// Logger and MeterProvider: telemetry of every component.
	Logger        *slog.Logger
	MeterProvider metric.MeterProvider
}

// Fallback says which listen addresses of Options may move to a free port when busy.
type Fallback struct{ Portal, Admin, Metrics, SOCKS bool }

// Moved is a listen address that was busy and moved to a free port (Options.Fallback).
type Moved struct {
	// What names the listener ("portal", "admin API", "metrics", "client-1 SOCKS5").
	What   string
	Wanted string
	Got    net.Addr
}

// Client is one running client.
type Client struct {
	Name         string
	SOCKS        net.Addr
	StatusSocket string
	// Relayed says the client is relay-only (Options.Relayed or ClientRelayed).
	Relayed bool
	Daemon  *tunnel.Daemon
}

// Stack is the running system. Stop (or the context of Start) ends it.
type Stack struct {
	Portal        *portalmock.Server
	Relays        []*relay.Server
	Gateway       *tunnel.Daemon
	GatewaySocket string
	Clients       []*Client
	// GatewayName is the gateway's name in the portal configuration; Relayed says it is relay-only.
	GatewayName    string
	GatewayRelayed bool
	// Demo is the demo HTTP server's loopback address.
	Demo net.Addr
	// Metrics is the address of /healthz, /readyz and /metrics (nil when off).
	Metrics net.Addr
	// Moved lists the listen addresses that were busy and moved to a free port.
	Moved []Moved
	// AdminToken is the portal configuration's admin API token.
	AdminToken string

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	errs   []error

	// relayStops[i] stops relay i and waits for it (StopRelay).
	relayStops []func()
}

// Start brings the stack up and returns once every relay joined the portal and every client's SOCKS5
// proxy listens; the gateway and clients are joined to the portal soon after (WaitReady).
func Start(ctx context.Context, o Options) (st *Stack, err error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.PortalAddr == "" {
		o.PortalAddr = "127.0.0.1:0"
	}
	if o.StateDir == "" {
		return nil, errors.New("devstack: Options.StateDir is required")
	}
	ros, err := newRoster(o.PortalFile, o.Relays, o.Clients)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	st = &Stack{ctx: ctx, cancel: cancel, GatewayName: ros.gatewayName, GatewayRelayed: o.Relayed, AdminToken: ros.file.AdminToken}
	stack := st // the returns below set st to nil
	defer func() {
		if err != nil {
			_ = stack.Stop() // its components' errors are in err already
		}
	}()

	// Demo site: an HTTP server on loopback.
	demoLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("devstack: demo server: %w", err)
	}
	st.Demo = demoLn.Addr()
	demo := &http.Server{Handler: demoHandler(), ReadHeaderTimeout: 5 * time.Second}
	st.goRun(func() error {
		if err := demo.Serve(demoLn); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("demo server: %w", err)
		}
		return nil
	})
	context.AfterFunc(ctx, func() { _ = demo.Close() })

	// Portal.
	portal, err := portalmock.New(portalmock.Config{File: ros.file, Logger: telemetry.Component(log, "portal"), MeterProvider: o.MeterProvider})
	if err != nil {
		return nil, fmt.Errorf("devstack: portal: %w", err)
	}
	st.Portal = portal
	ln, err := st.listen("portal", o.PortalAddr, o.Fallback.Portal)
	if err != nil {
		return nil, err
	}
	if err := portal.Start(ln); err != nil {
		return nil, fmt.Errorf("devstack: portal: %w", err)
	}
	if o.AdminAddr != "" {
		aln, err := st.listen("admin API", o.AdminAddr, o.Fallback.Admin)
		if err != nil {
			return nil, err
		}
		if err := portal.StartAdmin(aln); err != nil {
			return nil, fmt.Errorf("devstack: portal admin: %w", err)
		}
	}

	// Relays.
	lo4 := netip.MustParseAddr("127.0.0.1")
	for i := range o.Relays {
		srv, err := relay.New(relay.Config{
			PublicIP4: lo4, ListenAddr4: lo4, ListenPort: -1, Sockets: 1,
			// Every peer of the dev stack is on loopback, which a real relay refuses.
			AllowPeers:   []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
			DrainTimeout: -1,
			Portal:       &relay.PortalConfig{APIURL: portal.URL(), Token: ros.relayToken, Name: "relay-" + strconv.Itoa(i+1)},
			Logger:       telemetry.Component(log, "relay").With("relay", i+1), MeterProvider: o.MeterProvider,
		})
		if err != nil {
			return nil, fmt.Errorf("devstack: relay %d: %w", i+1, err)
		}
		if err := srv.Start(ctx); err != nil {
			return nil, fmt.Errorf("devstack: relay %d: %w", i+1, err)
		}
		relayCtx, stopRelay := context.WithCancel(ctx)
		relayDone := make(chan struct{})
		st.goRun(func() error {
			defer close(relayDone)
			return srv.Run(relayCtx)
		})
		st.relayStops = append(st.relayStops, func() {
			stopRelay()
			<-relayDone
		})
		st.Relays = append(st.Relays, srv)
	}
	if err := waitFor(ctx, 20*time.Second, func() bool {
		for _, r := range st.Relays {
			if !r.Ready() {
				return false
			}
		}
		return true
	}); err != nil {
		return nil, fmt.Errorf("devstack: relays joining the portal: %w", err)
	}

	// Gateway: userspace, the demo site's addresses mapped onto the demo server.
	demoTarget := st.Demo.String()
	forwardDial := func(ctx context.Context, network, address string) (net.Conn, error) {
		var d net.Dialer
		if ap, err := netip.ParseAddrPort(address); err == nil && ap.Addr() == DemoAddr4 && strings.HasPrefix(network, "tcp") {
			if ap.Port() != 80 {
				return nil, &net.OpError{Op: "dial", Net: network, Err: errConnRefused}
			}
			return d.DialContext(ctx, "tcp", demoTarget)
		}
		return d.DialContext(ctx, network, address)
	}
	st.GatewaySocket = filepath.Join(o.StateDir, "gateway.sock")
	gwStarted := make(chan *tunnel.Daemon, 1)
	st.goRun(func() error {
		return gateway.Run(ctx, gateway.Config{
			APIURL: portal.URL(), Token: ros.gatewayTok, ID: "devstack-gateway-1", Name: ros.gatewayName,
			Userspace: true, Port: 0, IncludeLoopback: true, RelayOnly: o.Relayed,
			ForwardDial: forwardDial, LookupNetIP: demoLookup,
			StatusSocket: st.GatewaySocket,
			Started:      func(d *tunnel.Daemon) { gwStarted <- d },
			Logger:       telemetry.Component(log, "gateway"), MeterProvider: o.MeterProvider,
		})
	})
	select {
	case st.Gateway = <-gwStarted:
	case <-ctx.Done():
		return nil, st.failure(ctx)
	case <-time.After(20 * time.Second):
		return nil, errors.Join(errors.New("devstack: gateway did not start"), st.Err())
	}

	// Clients.
	for i, cc := range ros.clients {
		socks := "127.0.0.1:0"
		if i < len(o.SOCKSAddrs) && o.SOCKSAddrs[i] != "" {
			socks = o.SOCKSAddrs[i]
		}
		c := &Client{Name: cc.Name, StatusSocket: filepath.Join(o.StateDir, fmt.Sprintf("client-%d.sock", i+1)),
			Relayed: o.Relayed || i < len(o.ClientRelayed) && o.ClientRelayed[i]}
		if socks, err = st.freeSOCKS(c.Name+" SOCKS5", socks, o.Fallback.SOCKS); err != nil {
			return nil, err
		}
		started := make(chan net.Addr, 1)
		st.goRun(func() error {
			return client.Run(ctx, client.Config{
				APIURL: portal.URL(), Token: cc.Token, ID: "devstack-" + c.Name, Name: c.Name,
				Userspace: true, SOCKSAddr: socks, Port: 0, IncludeLoopback: true, RelayOnly: c.Relayed,
				ResolvConf:   filepath.Join(o.StateDir, "no-resolv.conf"),
				StatusSocket: c.StatusSocket,
				Started: func(d *tunnel.Daemon, addr net.Addr) {
					c.Daemon = d
					started <- addr
				},
				Logger: telemetry.Component(log, "client").With("client", c.Name), MeterProvider: o.MeterProvider,
			}, nil)
		})
		select {
		case c.SOCKS = <-started:
		case <-ctx.Done():
			return nil, st.failure(ctx)
		case <-time.After(20 * time.Second):
			return nil, errors.Join(fmt.Errorf("devstack: %s did not start", c.Name), st.Err())
		}
		if c.SOCKS == nil {
			return nil, errors.Join(fmt.Errorf("devstack: %s has no SOCKS5 proxy", c.Name), st.Err())
		}
		st.Clients = append(st.Clients, c)
	}

	if o.MetricsAddr != "" {
		addr, err := telemetry.Serve(ctx, o.MetricsAddr, st.Joined, o.MetricsHandler, log)
		if err != nil && o.Fallback.Metrics && errors.Is(err, syscall.EADDRINUSE) {
			var moved error
			if addr, moved = telemetry.Serve(ctx, anyPort(o.MetricsAddr), st.Joined, o.MetricsHandler, log); moved == nil {
				st.Moved = append(st.Moved, Moved{What: "metrics", Wanted: o.MetricsAddr, Got: addr})
				err = nil
			}
		}
		if err != nil {
			return nil, fmt.Errorf("devstack: metrics: %w", err)
		}
		st.Metrics = addr
	}
	return st, nil
}

// Joined reports whether every relay, the gateway and every client joined the portal (/readyz).
func (st *Stack) Joined() bool {
	for _, r := range st.Relays {
		if !r.Ready() {
			return false
		}
	}
	if st.Gateway == nil || st.Gateway.PortalState() != tunnel.PortalJoined {
		return false
	}
	for _, c := range st.Clients {
		if c.Daemon == nil || c.Daemon.PortalState() != tunnel.PortalJoined {
			return false
		}
	}
	return true
}

// WaitReady waits until the gateway and every client joined the portal and every client has its
// resources (the portal's init): from then on a request through a client's SOCKS5 proxy finds them.
func (st *Stack) WaitReady(ctx context.Context, timeout time.Duration) error {
	err := waitFor(ctx, timeout, func() bool {
		if !st.Joined() {
			return false
		}
		for _, c := range st.Clients {
			s, err := c.Status(ctx)
			if err != nil || len(s.Resources) == 0 {
				return false
			}
		}
		return true
	})
	if err != nil {
		return errors.Join(fmt.Errorf("devstack: waiting for the daemons to join the portal: %w", err), st.Err())
	}
	return nil
}

// Status reads the client's status document from its status socket (what `snowgate-client status`
// shows).
func (c *Client) Status(ctx context.Context) (client.Status, error) {
	var s client.Status
	b, err := tunnel.FetchStatus(ctx, c.StatusSocket)
	if err != nil {
		return s, fmt.Errorf("devstack: %s status: %w", c.Name, err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("devstack: %s status: %w", c.Name, err)
	}
	return s, nil
}

// listen listens on addr, or, when it is busy and fallback is set, on a free port of the same host
// (recorded in st.Moved).
func (st *Stack) listen(what, addr string, fallback bool) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil && fallback && errors.Is(err, syscall.EADDRINUSE) {
		if ln, err = net.Listen("tcp", anyPort(addr)); err == nil {
			st.Moved = append(st.Moved, Moved{What: what, Wanted: addr, Got: ln.Addr()})
		}
	}
	if err != nil {
		return nil, fmt.Errorf("devstack: %s: %w", what, err)
	}
	return ln, nil
}

// freeSOCKS returns the SOCKS5 address a client should listen on: addr, or a free port of the same host
// when addr is busy and fallback is set; a busy addr without fallback is an error naming it. The client
// listens itself (and only logs when it cannot), so this probes: the port is free when this returns, and a
// process taking it in the moment before the client does makes Start fail with "no SOCKS5 proxy".
func (st *Stack) freeSOCKS(what, addr string, fallback bool) (string, error) {
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "0" {
		return addr, nil
	}
	ln, err := st.listen(what, addr, fallback)
	if err != nil {
		return "", err
	}
	got := ln.Addr().String()
	if err := ln.Close(); err != nil {
		return "", fmt.Errorf("devstack: %s: %w", what, err)
	}
	return got, nil
}

// anyPort is addr with port 0.
func anyPort(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return net.JoinHostPort(host, "0")
}

// StopRelay stops relay i (0-based, as in Relays) while the rest of the stack runs on, and waits until it
// has stopped: it leaves the portal and closes its sockets and allocations at once (no drain), so the
// connections through it must find another path.
func (st *Stack) StopRelay(i int) error {
	if i < 0 || i >= len(st.relayStops) {
		return fmt.Errorf("devstack: no relay %d (%d relays)", i, len(st.relayStops))
	}
	st.relayStops[i]()
	return nil
}

// goRun runs f on a goroutine the stack owns; its error is kept for Err.
func (st *Stack) goRun(f func() error) {
	st.wg.Add(1)
	go func() {
		defer st.wg.Done()
		if err := f(); err != nil {
			st.mu.Lock()
			st.errs = append(st.errs, err)
			st.mu.Unlock()
			st.cancel() // one component failing stops the stack
		}
	}()
}

// Err returns the errors of the components that stopped with one.
func (st *Stack) Err() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	return errors.Join(st.errs...)
}

func (st *Stack) failure(ctx context.Context) error {
	if err := st.Err(); err != nil {
		return err
	}
	return ctx.Err()
}

// Stop stops every component and waits for them; it returns the errors they stopped with.
func (st *Stack) Stop() error {
	st.cancel()
	st.wg.Wait()
	if st.Portal != nil {
		_ = st.Portal.Close()
	}
	return st.Err()
}

// Wait waits until every component stopped (after Stop, the end of Start's context, or a component's
// failure, which stops the others) and returns the errors they stopped with.
func (st *Stack) Wait() error {
	st.wg.Wait()
	return st.Err()
}

// Done is closed when the stack begins to stop: Stop, the end of Start's context, or a component's
// failure (Err then says which).
func (st *Stack) Done() <-chan struct{} { return st.ctx.Done() }

var errConnRefused = errors.New("connection refused")

// demoLookup is the gateway's resolver for the demo site's names.
func demoLookup(ctx context.Context, network, host string) ([]netip.Addr, error) {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host == DemoName || host == "lab.test" || strings.HasSuffix(host, ".lab.test") {
		if network == "ip6" {
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		return []netip.Addr{DemoAddr4}, nil
	}
	return net.DefaultResolver.LookupNetIP(ctx, network, host)
}

// demoHandler serves the demo page.
func demoHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, DemoPage+"\n")
		fmt.Fprintf(w, "host: %s\npath: %s\nfrom: %s\n", r.Host, r.URL.Path, r.RemoteAddr)
	})
}

// waitFor polls cond until it holds, ctx ends or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, cond func() bool) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return errors.New("timed out")
		case <-tick.C:
		}
	}
	return nil
}
