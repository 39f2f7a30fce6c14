package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/internal/tunwrap"
	"github.com/snowgate/snowgate/node"
	"go.opentelemetry.io/otel/metric"
	"golang.zx2c4.com/wireguard/tun"
)

// PortalURL builds <api_url>/<topic>/websocket?<query>, mapping http(s) to ws(s).
func PortalURL(apiURL, topic string, query url.Values) (string, error) {
	u, err := url.Parse(apiURL)
	if err != nil {
		return "", fmt.Errorf("portal url %q: %w", apiURL, err)
	}
	switch u.Scheme {
	case "http":
		u.Scheme = "ws"
	case "https":
		u.Scheme = "wss"
	case "ws", "wss":
	default:
		return "", fmt.Errorf("portal url %q: scheme must be ws, wss, http or https", apiURL)
	}
	if u.Host == "" {
		return "", fmt.Errorf("portal url %q: no host", apiURL)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/" + topic + "/websocket"
	q := u.Query()
	for k, vs := range query {
		for _, v := range vs {
			q.Add(k, v)
		}
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// DaemonConfig configures RunDaemon: everything the client and the gateway wire the same way.
type DaemonConfig struct {
	// Topic is the portal channel ("client" or "gateway"); Decode decodes its pushes.
	Topic  string
	Decode Decoder
	// Core is the daemon's state machine; Exec carries out its own action kinds (see DriverConfig).
	Core Core
	Exec func(ctx context.Context, a Action) error
	// TUN is the OS TUN device, or a userspace device (netstack); the daemon owns it from now on.
	TUN tun.Device
	// Node configures the node; its TUN is set by RunDaemon (the wrapper around TUN).
	Node node.Config
	// APIURL, Token and Query locate the portal (Query: external_id, name, …); Dialer replaces the
	// WebSocket dialer (marked sockets in kernel mode, tests).
	APIURL string
	Token  string
	Query  url.Values
	Dialer phoenix.DialFunc
	// Transport replaces the WebSocket to the portal altogether (simulations: an in-memory portal).
	Transport phoenix.TransportFunc
	// StatusSocket is where the status is served ("" for none); Status builds the document from the core
	// (under its lock) and the node's statistics.
	StatusSocket string
	Status       func(now time.Time, stats []node.ConnStats, portal PortalState) any
	// Started is called once the node runs and the portal is being dialled (tests, dev stack).
	Started func(*Daemon)
	// Stop runs when ctx ends, before the node is closed: a core's shutdown (the gateway's Goodbyes). The
	// portal is left first when LeaveFirst is set (so that the portal routes new flows elsewhere before the
	// peers are told), after otherwise.
	Stop       func(now time.Time)
	LeaveFirst bool
	// Logger and MeterProvider are the daemon's telemetry.
	Logger        *slog.Logger
	MeterProvider metric.MeterProvider
}

// Daemon is a running daemon, for the Started callback.
type Daemon struct {
	Driver  *Driver
	Node    *node.Node
	Wrapper *tunwrap.Wrapper
	portal  atomic.Int32 // PortalState
}

// PortalState returns the portal session's state.
func (d *Daemon) PortalState() PortalState { return PortalState(d.portal.Load()) }

// leaveTimeout bounds the wait for the portal's reply to phx_leave.
const leaveTimeout = time.Second

// drainTimeout bounds the wait for injected packets (Goodbyes) to leave before the node closes.
const drainTimeout = 500 * time.Millisecond

// RunDaemon runs a daemon until ctx ends (then it stops gracefully and returns nil), the portal refuses the
// session (an error wrapping ErrPortalRefused) or a core asks to stop (Fatal).
func RunDaemon(ctx context.Context, cfg DaemonConfig) (err error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Daemon{}
	core := &portalStateCore{Core: cfg.Core, state: &d.portal}
	driver, err := NewDriver(DriverConfig{Core: core, Topic: cfg.Topic, Decode: cfg.Decode, Exec: cfg.Exec,
		Logger: telemetry.Component(log, "tunnel")})
	if err != nil {
		_ = cfg.TUN.Close()
		return err
	}
	d.Driver = driver
	d.Wrapper = tunwrap.New(cfg.TUN, driver)
	ncfg := cfg.Node
	ncfg.TUN = d.Wrapper
	if ncfg.Logger == nil {
		ncfg.Logger = telemetry.Component(log, "node")
	}
	if ncfg.MeterProvider == nil {
		ncfg.MeterProvider = cfg.MeterProvider
	}
	n, err := node.New(ncfg)
	if err != nil {
		_ = d.Wrapper.Close()
		return fmt.Errorf("start node: %w", err)
	}
	d.Node = n
	defer func() {
		if cerr := n.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close node: %w", cerr)
		}
	}()

	u, err := PortalURL(cfg.APIURL, cfg.Topic, cfg.Query)
	if err != nil {
		return err
	}
	portal := phoenix.NewClient(phoenix.ClientConfig{
		URL: u, Token: cfg.Token, Dialer: cfg.Dialer, Transport: cfg.Transport,
		Logger: telemetry.Component(log, "portal"), MeterProvider: cfg.MeterProvider,
	})
	defer portal.Close() //nolint:errcheck // always nil

	if cfg.StatusSocket != "" && cfg.Status != nil {
		srv, err := ServeStatus(cfg.StatusSocket, func() (any, error) {
			stats := driver.NodeStats()
			var doc any
			driver.Inspect(func(now time.Time) { doc = cfg.Status(now, stats, d.PortalState()) })
			return doc, nil
		}, log)
		if err != nil {
			return err
		}
		defer srv.Close() //nolint:errcheck // best effort at exit
		log.Info("status socket listening", "path", srv.Path())
	}

	runCtx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	if cfg.Started != nil {
		cfg.Started(d)
	}
	// The portal connection outlives runCtx: on a graceful stop the daemon still has to leave the portal
	// (and push what Stop pushes) over it; the deferred portal.Close ends it.
	runErr := driver.Run(runCtx, n, detachedPortal{portal}, d.Wrapper)
	if runErr != nil {
		return runErr
	}
	// Graceful stop: ctx ended.
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if cfg.LeaveFirst {
		leavePortal(portal, cfg.Topic, log)
	}
	if cfg.Stop != nil {
		if err := driver.Finish(stopCtx, cfg.Stop); err != nil {
			log.Warn("shutdown actions failed", telemetry.Err(err))
		}
		waitInjected(d.Wrapper, drainTimeout)
	}
	if !cfg.LeaveFirst {
		leavePortal(portal, cfg.Topic, log)
	}
	return nil
}

// leavePortal sends phx_leave on topic and waits briefly for the reply, so the portal removes the daemon
// from presence at once instead of when the socket times out.
func leavePortal(c *phoenix.Client, topic string, log *slog.Logger) {
	ref, err := c.Push(topic, phoenix.EventLeave, map[string]any{})
	if err != nil {
		return
	}
	timer := time.NewTimer(leaveTimeout)
	defer timer.Stop()
	for {
		select {
		case ev, ok := <-c.Events():
			if !ok {
				return
			}
			if ev.Kind == phoenix.EventReplied && ev.Ref == ref {
				log.Info("left the portal")
				return
			}
		case <-timer.C:
			log.Info("no answer to leaving the portal; closing")
			return
		}
	}
}

// waitInjected waits until wireguard-go has taken every injected packet, or timeout.
func waitInjected(w *tunwrap.Wrapper, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for w.InjectedPending() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	// wireguard-go encrypts and sends on its own goroutines after taking a packet.
	time.Sleep(20 * time.Millisecond)
}

// detachedPortal is the portal client with Connect detached from the driver's context: the connection
// lives until the client is closed, so leaving the portal after the run context ended still works.
type detachedPortal struct{ *phoenix.Client }

// Connect connects with a context that is never cancelled (Close ends the connection).
func (p detachedPortal) Connect(_ context.Context, publicKey string) error {
	return p.Client.Connect(context.Background(), publicKey)
}

// portalStateCore records the portal state for Daemon.PortalState before passing it on.
type portalStateCore struct {
	Core
	state *atomic.Int32
}

func (c *portalStateCore) HandlePortalState(s PortalState, now time.Time) {
	c.state.Store(int32(s))
	c.Core.HandlePortalState(s, now)
}

// IsPortalRefused reports whether err means the portal refused the token (HTTP 401) or said it expired.
func IsPortalRefused(err error) bool {
	return errors.Is(err, ErrPortalRefused)
}
