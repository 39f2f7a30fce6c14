// Command snowgate-relay is snowgate's TURN relay. Every setting is a flag
// and an environment variable (the flag wins); see -h.
//
// On SIGTERM or SIGINT it drains: it leaves the portal, refuses new
// allocations (486) and keeps the existing ones for --drain-timeout, then
// exits 0. A second signal exits at once with status 1.
//
// The portal token comes, first found, from --token, --token-file,
// SNOWGATE_TOKEN_FILE, $CREDENTIALS_DIRECTORY/snowgate-token (systemd's
// LoadCredential=snowgate-token:…) or SNOWGATE_TOKEN. It is read once;
// SNOWGATE_TOKEN, SNOWGATE_TOKEN_FILE and TURN_REST_SECRET are then removed
// from the process environment.
//
// `snowgate-relay healthcheck [--addr HEALTH_CHECK_ADDR]` probes a running
// relay's /readyz (exit 0 on 200, else 1; 2 s timeout), for container health
// checks in images without a shell or curl.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/snowgate/snowgate/internal/cliconf"
	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/relay"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "healthcheck" {
		os.Exit(healthcheck(os.Args[2:], os.Getenv, os.Stderr))
	}
	os.Exit(run(os.Args[1:], os.Getenv, os.Unsetenv, os.Stderr))
}

// defaultHealthAddr is HEALTH_CHECK_ADDR's default.
const defaultHealthAddr = "0.0.0.0:8080"

// options are the parsed command line and environment.
type options struct {
	relay      relay.Config
	healthAddr string
	logLevel   string
	logFormat  string
	otlp       string
	cpuProfile string
	statsEvery time.Duration
}

// prefixList is a repeatable CIDR flag that also accepts comma-separated lists.
type prefixList []netip.Prefix

func (p *prefixList) String() string {
	s := make([]string, len(*p))
	for i, x := range *p {
		s[i] = x.String()
	}
	return strings.Join(s, ",")
}

func (p *prefixList) Set(v string) error {
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		pfx, err := netip.ParsePrefix(item)
		if err != nil {
			a, aerr := netip.ParseAddr(item)
			if aerr != nil {
				return fmt.Errorf("%q is neither a CIDR nor an address: %w", item, err)
			}
			pfx = netip.PrefixFrom(a, a.BitLen())
		}
		*p = append(*p, pfx)
	}
	return nil
}

// addrFlag is an optional IP address.
type addrFlag struct{ a *netip.Addr }

func (f addrFlag) String() string {
	if f.a == nil || !f.a.IsValid() {
		return ""
	}
	return f.a.String()
}

func (f addrFlag) Set(v string) error {
	if v == "" {
		*f.a = netip.Addr{}
		return nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return fmt.Errorf("bad address: %w", err)
	}
	*f.a = a
	return nil
}

// parse reads flags over environment variables.
func parse(args []string, getenv func(string) string, out io.Writer) (*options, error) {
	o := &options{}
	c := &o.relay
	fs := flag.NewFlagSet("snowgate-relay", flag.ContinueOnError)
	fs.SetOutput(out)
	var errs []error
	env := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	envInt := func(name string, def int) int {
		v := getenv(name)
		if v == "" {
			return def
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %w", name, v, err))
		}
		return n
	}
	envDur := func(name string, def time.Duration) time.Duration {
		v := getenv(name)
		if v == "" {
			return def
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %w", name, v, err))
		}
		return d
	}
	envVar := func(v flag.Value, name string) {
		if s := getenv(name); s != "" {
			if err := v.Set(s); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
			}
		}
	}

	var apiURL, token, tokenFile, name, restSecret string
	fs.StringVar(&apiURL, "api-url", env("SNOWGATE_API_URL", ""), "portal base URL, ws(s):// or http(s):// [SNOWGATE_API_URL]; empty: run without a portal")
	fs.StringVar(&token, "token", "", "portal token [SNOWGATE_TOKEN] (prefer --token-file: flags show in ps)")
	fs.StringVar(&tokenFile, "token-file", env("SNOWGATE_TOKEN_FILE", ""),
		"file holding the portal token, read once at start [SNOWGATE_TOKEN_FILE]; default: $CREDENTIALS_DIRECTORY/"+cliconf.CredentialName+" if present")
	fs.StringVar(&name, "name", env("SNOWGATE_NAME", hostname()), "relay name reported to the portal [SNOWGATE_NAME]")
	envVar(addrFlag{&c.PublicIP4}, "PUBLIC_IP4_ADDR")
	envVar(addrFlag{&c.PublicIP6}, "PUBLIC_IP6_ADDR")
	envVar(addrFlag{&c.ListenAddr4}, "LISTEN_ADDR4")
	envVar(addrFlag{&c.ListenAddr6}, "LISTEN_ADDR6")
	fs.Var(addrFlag{&c.PublicIP4}, "public-ip4", "public IPv4 address advertised in relayed addresses [PUBLIC_IP4_ADDR]")
	fs.Var(addrFlag{&c.PublicIP6}, "public-ip6", "public IPv6 address advertised in relayed addresses [PUBLIC_IP6_ADDR]")
	fs.Var(addrFlag{&c.ListenAddr4}, "listen-addr4", "IPv4 address to bind (default: the public IPv4 address if it is local, else 0.0.0.0) [LISTEN_ADDR4]")
	fs.Var(addrFlag{&c.ListenAddr6}, "listen-addr6", "IPv6 address to bind (default: the public IPv6 address if it is local, else ::) [LISTEN_ADDR6]")
	fs.IntVar(&c.ListenPort, "listen-port", envInt("LISTEN_PORT", relay.DefaultListenPort), "TURN UDP port [LISTEN_PORT]")
	fs.IntVar(&c.LowestPort, "lowest-port", envInt("LOWEST_PORT", relay.DefaultLowestPort), "lowest relay port [LOWEST_PORT]")
	fs.IntVar(&c.HighestPort, "highest-port", envInt("HIGHEST_PORT", relay.DefaultHighestPort), "highest relay port [HIGHEST_PORT]")
	fs.StringVar(&o.healthAddr, "health-check-addr", env("HEALTH_CHECK_ADDR", defaultHealthAddr),
		"address of /healthz, /readyz and /metrics; empty: off [HEALTH_CHECK_ADDR]")
	fs.StringVar(&o.logLevel, "log-level", env("LOG_LEVEL", "info"), "log level directives, e.g. info,relay=debug,pion=debug [LOG_LEVEL]")
	fs.StringVar(&o.logFormat, "log-format", env("LOG_FORMAT", "human"), "human or json [LOG_FORMAT]")
	fs.StringVar(&o.otlp, "otlp-endpoint", env("OTEL_EXPORTER_OTLP_ENDPOINT", ""), "OTLP/HTTP endpoint for error telemetry [OTEL_EXPORTER_OTLP_ENDPOINT]")
	fs.StringVar(&restSecret, "turn-rest-secret", "", "enable coturn's TURN REST scheme with this shared secret instead of the portal's scheme [TURN_REST_SECRET]")
	fs.StringVar(&c.Realm, "realm", env("REALM", relay.DefaultRealm), "TURN realm [REALM]")
	var allow, deny, envAllow, envDeny prefixList
	envVar(&envAllow, "ALLOW_PEERS")
	envVar(&envDeny, "DENY_PEERS")
	fs.Var(&allow, "allow-peer", "permit peers in this CIDR even in default-denied ranges; repeatable, comma-separated [ALLOW_PEERS]")
	fs.Var(&deny, "deny-peer", "refuse peers in this CIDR; beats --allow-peer; repeatable, comma-separated [DENY_PEERS]")
	fs.IntVar(&c.Sockets, "sockets", envInt("SOCKETS", 0), "SO_REUSEPORT listener sockets per family (0: GOMAXPROCS) [SOCKETS]")
	fs.IntVar(&c.SocketBuffer, "socket-buffer", envInt("SOCKET_BUFFER", relay.DefaultSocketBuffer), "listener socket buffer bytes [SOCKET_BUFFER]")
	fs.IntVar(&c.RelaySocketBuffer, "relay-socket-buffer", envInt("RELAY_SOCKET_BUFFER", relay.DefaultRelaySocketBuffer), "relay socket buffer bytes [RELAY_SOCKET_BUFFER]")
	fs.IntVar(&c.BatchRead, "batch-read", envInt("BATCH_READ", 0), "most datagrams read from a socket per recvmmsg (0: default 32) [BATCH_READ]")
	fs.DurationVar(&c.AllocationLifetime, "allocation-lifetime", envDur("ALLOCATION_LIFETIME", relay.DefaultAllocationLifetime), "default allocation lifetime, at most 1h [ALLOCATION_LIFETIME]")
	fs.DurationVar(&c.ChannelLifetime, "channel-lifetime", envDur("CHANNEL_LIFETIME", relay.DefaultChannelLifetime), "channel binding lifetime [CHANNEL_LIFETIME]")
	fs.DurationVar(&c.PermissionLifetime, "permission-lifetime", envDur("PERMISSION_LIFETIME", relay.DefaultPermissionLifetime), "permission lifetime [PERMISSION_LIFETIME]")
	fs.IntVar(&c.MaxAllocationsPerUser, "max-allocations-per-user", envInt("MAX_ALLOCATIONS_PER_USER", relay.DefaultMaxAllocsPerUser), "allocations per username [MAX_ALLOCATIONS_PER_USER]")
	fs.IntVar(&c.MaxAllocations, "max-allocations", envInt("MAX_ALLOCATIONS", relay.DefaultMaxAllocations), "allocations in total; each idle one costs about 12.5 KB of memory, so the default fits a 512 MiB VM [MAX_ALLOCATIONS]")
	fs.DurationVar(&o.statsEvery, "stats-interval", envDur("STATS_INTERVAL", telemetry.DefaultStatsInterval), "interval of the INFO stats line [STATS_INTERVAL]")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", envDur("DRAIN_TIMEOUT", relay.DefaultDrainTimeout), "how long SIGTERM keeps existing allocations; 0: exit at once [DRAIN_TIMEOUT]")
	fs.StringVar(&o.cpuProfile, "cpu-profile", "", "write a CPU profile to this file until exit (development)")
	fs.BoolVar(&c.DisableGSO, "no-gso", getenv("NO_GSO") != "", "send relayed datagrams one by one, without UDP GSO (comparisons) [NO_GSO]")
	fs.BoolVar(&c.DisableFastPath, "no-fast-path", getenv("NO_FAST_PATH") != "", "send channel data through pion's generic handling (comparisons) [NO_FAST_PATH]")
	fs.BoolVar(&c.DisableKernelPath, "no-kernel-path", getenv("NO_KERNEL_PATH") != "",
		"relay channel data in userspace only, without the XDP program (comparisons) [NO_KERNEL_PATH]")
	fs.IntVar(&c.KernelPathMaxChannels, "kernel-path-max-channels", envInt("KERNEL_PATH_MAX_CHANNELS", 0),
		"channels the XDP program's maps hold; more stay in userspace (0: 65536) [KERNEL_PATH_MAX_CHANNELS]")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if restSecret == "" {
		restSecret = getenv("TURN_REST_SECRET")
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = -1 // relay.Config: 0 means the default, negative no drain
	}
	// A list given by flag replaces the environment's.
	c.AllowPeers, c.DenyPeers = envAllow, envDeny
	if len(allow) > 0 {
		c.AllowPeers = allow
	}
	if len(deny) > 0 {
		c.DenyPeers = deny
	}
	if restSecret != "" {
		c.Auth, c.RESTSecret = relay.AuthTURNREST, restSecret
	}
	if apiURL != "" { // the token is only read (and must only exist) with a portal
		tok, err := cliconf.ResolveToken(token, tokenFile, getenv)
		if err != nil {
			return nil, err
		}
		c.Portal = &relay.PortalConfig{APIURL: apiURL, Token: tok, Name: name}
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return o, nil
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "snowgate-relay"
	}
	return h
}

// run runs the relay; unsetenv removes the secret variables once parsed.
func run(args []string, getenv func(string) string, unsetenv func(string) error, stderr io.Writer) int {
	o, err := parse(args, getenv, stderr)
	for _, name := range cliconf.SecretEnv {
		_ = unsetenv(name)
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "snowgate-relay: %v\n", err)
		return 2
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			fmt.Fprintf(stderr, "snowgate-relay: cpu profile: %v\n", err)
			return 2
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(stderr, "snowgate-relay: cpu profile: %v\n", err)
			return 2
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	tel, err := telemetry.Setup(context.Background(), telemetry.Options{
		Component:     "relay",
		LogLevel:      o.logLevel,
		LogFormat:     o.logFormat,
		Output:        stderr,
		OTLPEndpoint:  o.otlp,
		WarningErrors: []error{phoenix.ErrUnauthorized, phoenix.ErrTokenExpired},
	})
	if err != nil {
		fmt.Fprintf(stderr, "snowgate-relay: telemetry: %v\n", err)
		return 2
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tel.Shutdown(sctx)
	}()
	log := tel.Logger
	o.relay.Logger, o.relay.MeterProvider = log, tel.MeterProvider
	srv, err := relay.New(o.relay)
	if err != nil {
		log.Error("bad relay configuration", telemetry.Err(err))
		return 2
	}
	if err := srv.Start(ctx); err != nil {
		log.Error("relay failed to start", telemetry.Err(err))
		return 1
	}
	// The health endpoint outlives the signal so /readyz reports the drain.
	healthCtx, stopHealth := context.WithCancel(context.Background())
	defer stopHealth()
	if o.healthAddr != "" {
		addr, err := telemetry.Serve(healthCtx, o.healthAddr, srv.Ready, tel.MetricsHandler, log)
		if err != nil {
			log.Error("health endpoint failed", telemetry.Err(err))
			_ = srv.Close()
			return 1
		}
		log.Info("health endpoint listening", "addr", addr.String())
	}
	statsDone := make(chan struct{})
	go func() { // one INFO stats line every few minutes, never per packet
		defer close(statsDone)
		telemetry.StatsLoop(healthCtx, log, o.statsEvery, srv.StatsAttrs)
	}()
	defer func() { stopHealth(); <-statsDone }()
	runDone := make(chan struct{})
	defer close(runDone)
	go func() { // a second signal during the drain exits at once
		select {
		case <-ctx.Done():
		case <-runDone:
			return
		}
		again := make(chan os.Signal, 1)
		signal.Notify(again, syscall.SIGTERM, syscall.SIGINT)
		defer signal.Stop(again)
		stop()
		select {
		case <-again:
			os.Exit(1)
		case <-runDone:
		}
	}()
	if err := srv.Run(ctx); err != nil {
		log.Error("relay stopped with an error", telemetry.Err(err))
		return 1
	}
	log.Info("relay stopped")
	return 0
}
