// Command snowgate-devstack runs the whole snowgate system in one process on loopback (internal/devstack):
// the mock portal with its embedded development configuration, two relays, a gateway and a client in
// userspace mode (the client with a SOCKS5 proxy), and a demo site behind the gateway, reachable as the
// DNS resource demo.snowgate.test and, in the CIDR resource 198.51.100.0/24, as 198.51.100.10. No root,
// no Docker, no config. Once everything has joined the portal it prints a table of the components (address,
// state) and the commands to try, e.g.
//
//	curl --socks5-hostname 127.0.0.1:1080 http://demo.snowgate.test/
//
// SIGINT or SIGTERM (Ctrl-C) stops everything and exits 0; a second one exits at once.
//
// --check brings the stack up with one more client that may only use relays, fetches the demo page through
// every client's SOCKS5 proxy, verifies in each client's status that the path is the expected one (direct,
// or via a relay), prints the timings, stops, and exits 0 only if every client passed. --relayed makes every
// component relay-only, --clients N runs N clients (each with its own SOCKS5 port: 1080, 1081, …) and
// --config FILE uses a portal configuration file instead of the embedded one (its first relay token, the
// first account's first gateway and first clients).
//
// A default listen address that is busy moves to a free port, with a line saying so (the table and the
// commands show the real addresses, so `make run` works next to a proxy on 1080 or another portal); an
// address given by flag or environment fails instead, since whoever chose it relies on it. Under --check
// the addresses not given are free ports from the start.
//
// Flags (environment variable in brackets):
//
//	--listen       portal WebSocket address [LISTEN_ADDR], default 127.0.0.1:8081
//	--admin-addr   portal admin API address [ADMIN_ADDR], default 127.0.0.1:8082 (empty: off)
//	--metrics-addr /healthz, /readyz (everything joined) and /metrics [METRICS_ADDR], default 127.0.0.1:9090
//	--socks-addr   the first client's SOCKS5 proxy [SOCKS_ADDR], default 127.0.0.1:1080; the next clients
//	               take the next ports
//	--relays       number of relays [RELAYS], default 2
//	--clients      number of clients [CLIENTS], default 1
//	--relayed      relay-only paths everywhere [RELAYED]
//	--check        bring the stack up, check direct and relayed paths, exit
//	--config       portal configuration file [SNOWGATE_PORTAL_CONFIG] (empty: embedded)
//	--log-level    level directives [LOG_LEVEL], e.g. "info,relay=debug"
//	--log-format   human|json [LOG_FORMAT]
//
// The table and the commands go to stdout, the logs to stderr. Exit status: 0 after a clean stop, a passed
// check, and for -h/--help (usage on stdout); 2 for a bad flag (one line on stderr naming it); 1 for any
// other error, and a failed check.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/snowgate/snowgate/internal/devstack"
	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/portalmock"
)

// readyTimeout bounds the start-up (everything joined the portal, clients have their resources).
const readyTimeout = 60 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	context.AfterFunc(ctx, stop) // a second signal kills the process the default way
	code := exitCode(run(ctx, os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr, nil), os.Stdout, os.Stderr)
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
		fmt.Fprintf(&b, "Usage: %s [flags]\n\nThe whole system on loopback: portal, relays, a gateway, clients with SOCKS5 proxies, a demo site.\n\nFlags (environment variable in brackets):\n", fs.Name())
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

// exitCode reports run's outcome and returns the exit status: 0 (clean stop, passed check, or the usage
// on stdout for -h), 2 (a bad flag, one line on stderr), 1 (any other error).
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

// settings are the parsed flags and environment.
type settings struct {
	listen, adminAddr, metricsAddr, socksAddr string
	relays, clients                           int
	relayed, check                            bool
	config, logLevel, logFormat               string
	// explicit names the address flags that were set by flag or environment (no fallback to a free port).
	explicit map[string]bool
}

func parse(args []string, lookupEnv func(string) (string, bool)) (*settings, error) {
	s := &settings{explicit: map[string]bool{}}
	var envErrs []error
	str := func(name, def string) string {
		if v, ok := lookupEnv(name); ok {
			return v
		}
		return def
	}
	num := func(name string, def int) int {
		v, ok := lookupEnv(name)
		if !ok {
			return def
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			envErrs = append(envErrs, fmt.Errorf("%s=%q: not a number", name, v))
		}
		return n
	}
	boolean := func(name string) bool {
		v, ok := lookupEnv(name)
		if !ok {
			return false
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			envErrs = append(envErrs, fmt.Errorf("%s=%q: not a boolean", name, v))
		}
		return b
	}
	addrEnv := map[string]string{"listen": "LISTEN_ADDR", "admin-addr": "ADMIN_ADDR", "metrics-addr": "METRICS_ADDR", "socks-addr": "SOCKS_ADDR"}
	fs := flag.NewFlagSet("snowgate-devstack", flag.ContinueOnError)
	fs.StringVar(&s.listen, "listen", str("LISTEN_ADDR", "127.0.0.1:8081"), "portal WebSocket listen address [LISTEN_ADDR]")
	fs.StringVar(&s.adminAddr, "admin-addr", str("ADMIN_ADDR", "127.0.0.1:8082"), "portal admin API address [ADMIN_ADDR] (empty: off)")
	fs.StringVar(&s.metricsAddr, "metrics-addr", str("METRICS_ADDR", "127.0.0.1:9090"), "/healthz, /readyz and /metrics address [METRICS_ADDR] (empty: off)")
	fs.StringVar(&s.socksAddr, "socks-addr", str("SOCKS_ADDR", "127.0.0.1:1080"), "the first client's SOCKS5 proxy [SOCKS_ADDR]; the next clients take the next ports")
	fs.IntVar(&s.relays, "relays", num("RELAYS", 2), "number of relays [RELAYS]")
	fs.IntVar(&s.clients, "clients", num("CLIENTS", 1), "number of clients, each with its own SOCKS5 proxy [CLIENTS]")
	fs.BoolVar(&s.relayed, "relayed", boolean("RELAYED"), "relay-only paths: no direct candidates on the gateway and clients [RELAYED]")
	fs.BoolVar(&s.check, "check", false, "bring the stack up, fetch the demo page over a direct and a relayed path, verify the paths, print the timings and exit (0: passed)")
	fs.StringVar(&s.config, "config", str("SNOWGATE_PORTAL_CONFIG", ""), "portal configuration file [SNOWGATE_PORTAL_CONFIG] (empty: the embedded development configuration)")
	fs.StringVar(&s.logLevel, "log-level", str("LOG_LEVEL", "info"), "log level directives [LOG_LEVEL], e.g. \"info,relay=debug\"")
	fs.StringVar(&s.logFormat, "log-format", str("LOG_FORMAT", "human"), "log format: human or json [LOG_FORMAT]")
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if err := errors.Join(envErrs...); err != nil {
		return nil, &usageError{err: err}
	}
	for name, env := range addrEnv {
		if _, ok := lookupEnv(env); ok {
			s.explicit[name] = true
		}
	}
	fs.Visit(func(f *flag.Flag) { s.explicit[f.Name] = true })
	if s.relays < 0 || s.relays > 16 {
		return nil, fmt.Errorf("--relays %d: want 0..16", s.relays)
	}
	if s.clients < 1 || s.clients > devstack.MaxClients-1 {
		return nil, fmt.Errorf("--clients %d: want 1..%d", s.clients, devstack.MaxClients-1)
	}
	if s.relayed && s.relays == 0 {
		return nil, errors.New("--relayed needs relays (--relays 0)")
	}
	if s.check && !s.relayed && s.relays == 0 {
		return nil, errors.New("--check needs relays for its relayed path (--relays 0)")
	}
	return s, nil
}

// options turns the settings into the stack's options (state in dir).
func (s *settings) options(dir string) (devstack.Options, error) {
	o := devstack.Options{
		PortalAddr: s.listen, AdminAddr: s.adminAddr, MetricsAddr: s.metricsAddr,
		Relays: s.relays, Clients: s.clients, Relayed: s.relayed, StateDir: dir,
		Fallback: devstack.Fallback{
			Portal: !s.explicit["listen"], Admin: !s.explicit["admin-addr"],
			Metrics: !s.explicit["metrics-addr"], SOCKS: !s.explicit["socks-addr"],
		},
	}
	if s.check {
		// The check's stack is its own: the addresses nobody asked for are free ports from the start.
		for _, a := range []struct {
			flag string
			addr *string
		}{{"listen", &o.PortalAddr}, {"admin-addr", &o.AdminAddr}, {"metrics-addr", &o.MetricsAddr}, {"socks-addr", &s.socksAddr}} {
			if !s.explicit[a.flag] && *a.addr != "" {
				*a.addr = "127.0.0.1:0"
			}
		}
		if !s.relayed {
			// One more client, relay-only: the relayed path beside the direct ones, in one run.
			o.Clients++
			o.ClientRelayed = make([]bool, o.Clients)
			o.ClientRelayed[o.Clients-1] = true
		}
	}
	socks, err := consecutive(s.socksAddr, o.Clients)
	if err != nil {
		return o, err
	}
	o.SOCKSAddrs = socks
	if s.config != "" {
		f, err := portalmock.LoadFile(s.config)
		if err != nil {
			return o, err
		}
		o.PortalFile = f
	}
	return o, nil
}

// consecutive returns n addresses from addr on: the same host, the next ports (port 0 stays 0).
func consecutive(addr string, n int) ([]string, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--socks-addr %q: %w", addr, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port+n-1 > 65535 {
		return nil, fmt.Errorf("--socks-addr %q: bad port", addr)
	}
	out := make([]string, n)
	for i := range out {
		if port == 0 {
			out[i] = addr
		} else {
			out[i] = net.JoinHostPort(host, strconv.Itoa(port+i))
		}
	}
	return out, nil
}

// run runs the stack until ctx is done (or, with --check, until the check is over); the summary and the
// check go to stdout, the logs to logOut. ready (if not nil) is called once the stack is ready.
func run(ctx context.Context, args []string, lookupEnv func(string) (string, bool), stdout, logOut io.Writer, ready func(*devstack.Stack)) error {
	s, err := parse(args, lookupEnv)
	if err != nil {
		return err
	}
	tel, err := telemetry.Setup(ctx, telemetry.Options{Component: "devstack", LogLevel: s.logLevel, LogFormat: s.logFormat, Output: logOut})
	if err != nil {
		return &usageError{err: fmt.Errorf("telemetry: %w", err)}
	}
	defer func() { _ = tel.Shutdown(context.WithoutCancel(ctx)) }()
	dir, err := os.MkdirTemp("", "snowgate-devstack-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	o, err := s.options(dir)
	if err != nil {
		return err
	}
	o.Logger, o.MeterProvider, o.MetricsHandler = tel.Logger, tel.MeterProvider, tel.MetricsHandler

	begin := time.Now()
	st, err := devstack.Start(ctx, o)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		return err
	}
	if err := st.WaitReady(ctx, readyTimeout); err != nil {
		stopErr := st.Stop()
		if ctx.Err() != nil {
			return stopErr
		}
		return err
	}
	fmt.Fprintf(stdout, "snowgate dev stack ready in %.1f s (state in %s)\n\n", time.Since(begin).Seconds(), dir)
	if err := st.WriteSummary(ctx, stdout); err != nil {
		return errors.Join(err, st.Stop())
	}
	if s.check {
		fmt.Fprintln(stdout, "\nCheck (the demo page through each client's SOCKS5 proxy):")
		if s.relayed {
			fmt.Fprintln(stdout, "  (--relayed: every path is relayed; no direct path to check)")
		}
		results, checkErr := st.Check(ctx)
		for _, r := range results {
			fmt.Fprintln(stdout, "  "+r.String())
		}
		stopErr := st.Stop()
		if checkErr != nil {
			return errors.Join(fmt.Errorf("check failed: %w", checkErr), stopErr)
		}
		fmt.Fprintln(stdout, "check passed")
		return stopErr
	}
	fmt.Fprintln(stdout, "\nCtrl-C stops everything.")
	if ready != nil {
		ready(st)
	}
	<-st.Done()
	tel.Logger.Info("dev stack shutting down")
	return st.Stop()
}
