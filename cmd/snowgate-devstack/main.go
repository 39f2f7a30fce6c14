// Command snowgate-devstack runs the local stack in one process on loopback, with embedded defaults: the mock
// portal (the development configuration of examples/portal.yaml) and a small relay fleet registered with it.
// It needs no root, no Docker and no config. The client and the gateway join it as they land.
//
// Flags (environment variable in brackets):
//
//	--listen       portal WebSocket address [LISTEN_ADDR], default 127.0.0.1:8081
//	--admin-addr   portal admin API address [ADMIN_ADDR], default 127.0.0.1:8082
//	--metrics-addr /healthz, /readyz (every relay joined) and /metrics [METRICS_ADDR], default 127.0.0.1:9090
//	--relays       number of relays [RELAYS], default 2
//	--log-level    level directives [LOG_LEVEL], e.g. "info,relay=debug"
//	--log-format   human|json [LOG_FORMAT]
//
// Exit status: 0 after a clean stop and for -h/--help (usage on stdout); 2 for a bad flag (one line on
// stderr naming it); 1 for any other error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/portalmock"
	"github.com/snowgate/snowgate/relay"
)

// devRelayToken is the relay token of the embedded portal configuration (portalmock/default.yaml).
const devRelayToken = "dev-relay-token"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := exitCode(run(ctx, os.Args[1:], os.Stderr, nil), os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// helpRequested is run's answer to -h / --help: the usage text, for stdout (exit 0).
type helpRequested struct{ usage string }

func (h *helpRequested) Error() string { return "help requested" }

// usageError is a bad flag (exit 2).
type usageError struct{ err error }

func (u *usageError) Error() string { return u.err.Error() }
func (u *usageError) Unwrap() error { return u.err }

// parseFlags parses args without letting the flag package print: -h / --help become a *helpRequested
// carrying the usage, a bad flag a *usageError.
func parseFlags(fs *flag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		var b strings.Builder
		fmt.Fprintf(&b, "Usage: %s [flags]\n\nFlags:\n", fs.Name())
		fs.SetOutput(&b)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
		return &helpRequested{usage: b.String()}
	case err != nil:
		return &usageError{err: err}
	}
	return nil
}

// exitCode reports run's outcome and returns the exit status: 0 (clean stop, or the usage on stdout for
// -h), 2 (a bad flag, one line on stderr), 1 (any other error).
func exitCode(err error, stdout, stderr io.Writer) int {
	var help *helpRequested
	var usage *usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &help):
		fmt.Fprint(stdout, help.usage)
		return 0
	case errors.As(err, &usage):
		fmt.Fprintf(stderr, "snowgate-devstack: %v (see -h)\n", usage.err)
		return 2
	default:
		fmt.Fprintln(stderr, "snowgate-devstack:", err)
		return 1
	}
}

func env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

// Stack is what run started, handed to the ready callback (tests).
type Stack struct {
	Portal      *portalmock.Server
	Relays      []*relay.Server
	MetricsAddr net.Addr
}

// run runs the stack until ctx is done, logging to out; ready (if not nil) is called once every relay has
// joined the portal.
func run(ctx context.Context, args []string, out io.Writer, ready func(*Stack)) error {
	fs := flag.NewFlagSet("snowgate-devstack", flag.ContinueOnError)
	listen := fs.String("listen", env("LISTEN_ADDR", "127.0.0.1:8081"), "portal WebSocket listen address")
	adminAddr := fs.String("admin-addr", env("ADMIN_ADDR", "127.0.0.1:8082"), "portal admin API address (empty: disabled)")
	metricsAddr := fs.String("metrics-addr", env("METRICS_ADDR", "127.0.0.1:9090"), "health and metrics address (empty: disabled)")
	relays := fs.Int("relays", atoiOr(env("RELAYS", "2"), 2), "number of relays")
	logLevel := fs.String("log-level", env("LOG_LEVEL", "info"), "log level directives")
	logFormat := fs.String("log-format", env("LOG_FORMAT", "human"), "log format: human or json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *relays < 0 || *relays > 16 {
		return fmt.Errorf("--relays %d: want 0..16", *relays)
	}

	tel, err := telemetry.Setup(ctx, telemetry.Options{Component: "devstack", LogLevel: *logLevel, LogFormat: *logFormat, Output: out})
	if err != nil {
		return fmt.Errorf("telemetry: %w", err)
	}
	defer func() { _ = tel.Shutdown(context.WithoutCancel(ctx)) }()
	log := tel.Logger

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	portal, err := portalmock.New(portalmock.Config{
		Logger:        telemetry.Component(log, "portal"),
		MeterProvider: tel.MeterProvider,
	})
	if err != nil {
		return fmt.Errorf("portal: %w", err)
	}
	defer portal.Close()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("portal listen on %q: %w", *listen, err)
	}
	if err := portal.Start(ln); err != nil {
		return fmt.Errorf("portal: %w", err)
	}
	log.Info("portal listening", "url", portal.URL())
	if *adminAddr != "" {
		aln, err := net.Listen("tcp", *adminAddr)
		if err != nil {
			return fmt.Errorf("admin listen on %q: %w", *adminAddr, err)
		}
		if err := portal.StartAdmin(aln); err != nil {
			return fmt.Errorf("portal admin: %w", err)
		}
		log.Info("portal admin API listening", "url", portal.AdminURL())
	}

	stack := &Stack{Portal: portal}
	relayDone := make(chan error, *relays)
	lo4, lo6 := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")
	for i := range *relays {
		cfg := relay.Config{
			PublicIP4:   lo4,
			ListenAddr4: lo4,
			ListenPort:  -1, // ephemeral: several relays share loopback
			Sockets:     1,
			// Every peer of the dev stack is on loopback, which a real relay refuses.
			AllowPeers:   []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")},
			DrainTimeout: -1,
			Portal: &relay.PortalConfig{
				APIURL: portal.URL(),
				Token:  devRelayToken,
				Name:   "relay-" + strconv.Itoa(i+1),
			},
			Logger:        telemetry.Component(log, "relay"),
			MeterProvider: tel.MeterProvider,
		}
		if ipv6Loopback() {
			cfg.PublicIP6, cfg.ListenAddr6 = lo6, lo6
		}
		srv, err := relay.New(cfg)
		if err != nil {
			return fmt.Errorf("relay %d: %w", i+1, err)
		}
		if err := srv.Start(ctx); err != nil {
			return fmt.Errorf("relay %d: %w", i+1, err)
		}
		go func() { relayDone <- srv.Run(ctx) }()
		stack.Relays = append(stack.Relays, srv)
		log.Info("relay listening", "name", cfg.Portal.Name, "addr", srv.Addr().String())
	}
	readyNow := func() bool {
		for _, r := range stack.Relays {
			if !r.Ready() {
				return false
			}
		}
		return true
	}
	// The stack is ready once every relay has joined the portal (a relay is ready when the portal answered its
	// join, which is also when the portal lists it to clients and gateways).
	if err := waitUntil(ctx, readyNow); err != nil {
		return fmt.Errorf("waiting for relays to join the portal: %w", err)
	}
	if *metricsAddr != "" {
		addr, err := telemetry.Serve(ctx, *metricsAddr, readyNow, tel.MetricsHandler, log)
		if err != nil {
			return err
		}
		stack.MetricsAddr = addr
		log.Info("health and metrics listening", "addr", addr.String())
	}
	log.Info("dev stack ready (development tokens: examples/portal.yaml)", "portal", portal.URL(), "relays", len(stack.Relays))
	if ready != nil {
		ready(stack)
	}

	<-ctx.Done()
	log.Info("dev stack shutting down")
	cancel()
	var firstErr error
	for range stack.Relays {
		if err := <-relayDone; err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// waitUntil polls cond every 10 ms until it holds or ctx is done (start-up only).
func waitUntil(ctx context.Context, cond func() bool) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// ipv6Loopback reports whether ::1 can be bound (containers often have no IPv6).
func ipv6Loopback() bool {
	c, err := net.ListenPacket("udp6", "[::1]:0")
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

func atoiOr(s string, def int) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		return def
	}
	return n
}
