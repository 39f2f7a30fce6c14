// Command snowgate-portal runs the mock portal: the Phoenix channel endpoints for clients, gateways and
// relays, and an admin HTTP API to change resources and policies at run time.
//
// Flags (environment variable in brackets):
//
//	--config       path of the YAML configuration [SNOWGATE_PORTAL_CONFIG]; empty → the embedded default
//	               (dev tokens, see examples/portal.yaml)
//	--listen       WebSocket listen address [LISTEN_ADDR], default 127.0.0.1:8081
//	--admin-addr   admin API and live page listen address [ADMIN_ADDR], default 127.0.0.1:8082; "" disables
//	               them (the page: http://ADMIN_ADDR/?token=<admin token>)
//	--metrics-addr /healthz, /readyz and /metrics listen address [METRICS_ADDR]; "" disables it
//	--log-level    level directives [LOG_LEVEL], e.g. "info" or "info,portal=debug"
//	--log-format   human|json [LOG_FORMAT]
//
// `snowgate-portal healthcheck [--addr METRICS_ADDR]` probes a running portal's /readyz (exit 0 on 200, else 1;
// 2 s timeout), for container health checks in images without a shell or curl.
//
// Exit status: 0 after a clean stop (SIGINT, SIGTERM) and for -h/--help (usage on stdout); 2 for a bad
// command line (one line on stderr naming the flag); 1 for any other error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/portalmock"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "healthcheck" {
		os.Exit(healthcheck(os.Args[2:], os.Getenv, os.Stderr))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := exitCode(run(ctx, os.Args[1:], os.Stderr, nil), os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// helpRequested is run's answer to -h / --help: the usage text, for stdout (exit 0).
type helpRequested struct{ usage string }

func (h *helpRequested) Error() string { return "help requested" }

// usageError is a bad command line (exit 2).
type usageError struct{ err error }

func (u *usageError) Error() string { return u.err.Error() }
func (u *usageError) Unwrap() error { return u.err }

// parseFlags parses args without letting the flag package print: -h / --help become a *helpRequested
// carrying the usage, any other mistake (or a stray argument) a *usageError.
func parseFlags(fs *flag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		var b strings.Builder
		fmt.Fprintf(&b, "Usage: %s [flags]\n       %s healthcheck [--addr METRICS_ADDR]\n\nFlags:\n", fs.Name(), fs.Name())
		fs.SetOutput(&b)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
		return &helpRequested{usage: b.String()}
	case err != nil:
		return &usageError{err: err}
	case fs.NArg() > 0:
		return &usageError{err: fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	return nil
}

// exitCode reports run's outcome and returns the process exit status: 0 (clean stop, or the usage on
// stdout for -h), 2 (a bad command line, one line on stderr), 1 (any other error).
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
		fmt.Fprintf(stderr, "snowgate-portal: %v (see -h)\n", usage.err)
		return 2
	default:
		fmt.Fprintln(stderr, "snowgate-portal:", err)
		return 1
	}
}

func env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

// run runs the portal until ctx is done, logging to out; ready (if not nil) is called with the server once it
// listens.
func run(ctx context.Context, args []string, out io.Writer, ready func(*portalmock.Server)) error {
	fs := flag.NewFlagSet("snowgate-portal", flag.ContinueOnError)
	configPath := fs.String("config", env("SNOWGATE_PORTAL_CONFIG", ""), "YAML configuration file (empty: embedded dev default)")
	listen := fs.String("listen", env("LISTEN_ADDR", "127.0.0.1:8081"), "WebSocket listen address")
	adminAddr := fs.String("admin-addr", env("ADMIN_ADDR", "127.0.0.1:8082"), "admin API and live page listen address (empty: disabled)")
	metricsAddr := fs.String("metrics-addr", env("METRICS_ADDR", ""), "health and Prometheus metrics address (empty: disabled)")
	logLevel := fs.String("log-level", env("LOG_LEVEL", "info"), "log level directives")
	logFormat := fs.String("log-format", env("LOG_FORMAT", "human"), "log format: human or json")
	statsDefault := telemetry.DefaultStatsInterval
	if v := env("STATS_INTERVAL", ""); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("STATS_INTERVAL: %w", err)
		}
		statsDefault = d
	}
	statsEvery := fs.Duration("stats-interval", statsDefault, "interval of the INFO stats line [STATS_INTERVAL]")
	if err := parseFlags(fs, args); err != nil {
		return err
	}

	tel, err := telemetry.Setup(ctx, telemetry.Options{Component: "portal", LogLevel: *logLevel, LogFormat: *logFormat, Output: out})
	if err != nil {
		return fmt.Errorf("telemetry: %w", err)
	}
	defer func() { _ = tel.Shutdown(context.WithoutCancel(ctx)) }()
	log := tel.Logger

	var file *portalmock.File
	if *configPath != "" {
		if file, err = portalmock.LoadFile(*configPath); err != nil {
			return err
		}
		log.Info("portal configuration loaded", "path", *configPath)
	} else {
		log.Info("portal using the embedded development configuration (dev tokens)")
	}
	srv, err := portalmock.New(portalmock.Config{File: file, Logger: log, MeterProvider: tel.MeterProvider})
	if err != nil {
		return err
	}
	defer srv.Close()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen on %q: %w", *listen, err)
	}
	if err := srv.Start(ln); err != nil {
		return err
	}
	if *adminAddr != "" {
		aln, err := net.Listen("tcp", *adminAddr)
		if err != nil {
			return fmt.Errorf("admin listen on %q: %w", *adminAddr, err)
		}
		if err := srv.StartAdmin(aln); err != nil {
			return err
		}
	}
	if *metricsAddr != "" {
		addr, err := telemetry.Serve(ctx, *metricsAddr, nil, tel.MetricsHandler, log)
		if err != nil {
			return err
		}
		log.Info("portal metrics listening", "addr", addr.String())
	}
	statsCtx, stopStats := context.WithCancel(ctx)
	statsDone := make(chan struct{})
	go func() { // one INFO stats line every few minutes
		defer close(statsDone)
		telemetry.StatsLoop(statsCtx, log, *statsEvery, func() []slog.Attr { return portalStats(srv.State()) })
	}()
	defer func() { stopStats(); <-statsDone }()
	if ready != nil {
		ready(srv)
	}
	<-ctx.Done()
	log.Info("portal shutting down")
	if err := srv.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// portalStats are the fields of the portal's stats line: who is online and how many flows exist.
func portalStats(st portalmock.State) []slog.Attr {
	online := func(ps []portalmock.PeerState) int {
		n := 0
		for _, p := range ps {
			if p.Online {
				n++
			}
		}
		return n
	}
	return []slog.Attr{
		slog.Int("clients_online", online(st.Clients)),
		slog.Int("gateways_online", online(st.Gateways)),
		slog.Int("relays", len(st.Relays)),
		slog.Int("flows", len(st.Flows)),
	}
}
