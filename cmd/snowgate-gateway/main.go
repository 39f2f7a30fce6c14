// Command snowgate-gateway is snowgate's gateway: it lets the clients the portal authorises reach the
// resources of its site, and nothing else. Every setting is a flag and an environment variable (the flag
// wins); see -h.
//
// Kernel mode (the default) needs CAP_NET_ADMIN: a TUN device, IP forwarding and an nftables table that
// masquerades the clients' traffic towards the resources, all removed on exit (and, after a SIGKILL, on the
// next start). --userspace needs no privileges: a userspace network stack terminates the clients' TCP, UDP
// and ICMP echo and re-originates them from ordinary sockets.
//
// On SIGTERM or SIGINT it leaves the portal, says Goodbye to every connected client (they fail over to
// another gateway of the site at once) and exits 0; a second signal exits at once with status 1. A token
// the portal refuses exits 1 with a message saying so.
//
//	snowgate-gateway status [--json] [--socket PATH]   the running gateway's clients, flows, NAT and paths
//	snowgate-gateway healthcheck [--addr ADDR]         probe /readyz (container health checks)
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/snowgate/snowgate/gateway"
	"github.com/snowgate/snowgate/internal/cliconf"
	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/internal/tunnel"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "healthcheck":
			os.Exit(telemetry.Healthcheck("snowgate-gateway healthcheck", "HEALTH_CHECK_ADDR", "", os.Args[2:], os.Getenv, os.Stderr))
		case "status":
			os.Exit(status(os.Args[2:], os.Stdout, os.Stderr))
		}
	}
	os.Exit(run(os.Args[1:], os.Getenv, os.Unsetenv, os.Stdout, os.Stderr))
}

type options struct {
	common        *cliconf.Common
	tunName       string
	allowLoopback bool
}

func parse(args []string, getenv func(string) string, stdout, stderr io.Writer) (*options, int, bool) {
	fs := flag.NewFlagSet("snowgate-gateway", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(stdout, "Usage: snowgate-gateway [flags]\n       snowgate-gateway status [--json] [--socket PATH]\n       snowgate-gateway healthcheck [--addr ADDR]\n\nFlags (environment variable in brackets):\n")
		fs.SetOutput(stdout)
		fs.PrintDefaults()
	}
	env := &cliconf.Env{Getenv: getenv}
	o := &options{common: cliconf.RegisterCommon(fs, env, "gateway", tunnel.DefaultStatusSocket("gateway"), 0)}
	fs.StringVar(&o.tunName, "tun-name", env.Str("SNOWGATE_TUN_NAME", gateway.DefaultTUNName), "kernel TUN device name [SNOWGATE_TUN_NAME]")
	fs.BoolVar(&o.allowLoopback, "allow-loopback", env.Bool("SNOWGATE_ALLOW_LOOPBACK", false), "userspace mode: let clients reach this host's loopback addresses [SNOWGATE_ALLOW_LOOPBACK]")
	code, ok := cliconf.Parse(fs, args, stderr)
	if !ok {
		return nil, code, false
	}
	if err := env.Err(); err != nil {
		fmt.Fprintf(stderr, "snowgate-gateway: %v\n", err)
		return nil, 2, false
	}
	if err := o.common.Resolve(getenv); err != nil {
		fmt.Fprintf(stderr, "snowgate-gateway: %v\n", err)
		return nil, 2, false
	}
	return o, 0, true
}

func run(args []string, getenv func(string) string, unsetenv func(string) error, stdout, stderr io.Writer) int {
	o, code, ok := parse(args, getenv, stdout, stderr)
	for _, name := range cliconf.SecretEnv {
		_ = unsetenv(name)
	}
	if !ok {
		return code
	}
	c := o.common
	tel, err := telemetry.Setup(context.Background(), telemetry.Options{
		Component: "gateway", LogLevel: c.LogLevel, LogFormat: c.LogFormat, Output: stderr,
		OTLPEndpoint: c.OTLPEndpoint, WarningErrors: []error{phoenix.ErrUnauthorized, phoenix.ErrTokenExpired},
	})
	if err != nil {
		fmt.Fprintf(stderr, "snowgate-gateway: telemetry: %v\n", err)
		return 2
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tel.Shutdown(sctx)
	}()
	log := tel.Logger
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	cancelSecond := exitOnSecondSignal(ctx, stop)
	defer cancelSecond()

	healthAddr := c.HealthAddr
	if healthAddr == "" {
		healthAddr = c.MetricsAddr
	} else if c.MetricsAddr != "" && c.MetricsAddr != healthAddr {
		mctx, mstop := context.WithCancel(context.Background())
		defer mstop()
		if _, err := telemetry.Serve(mctx, c.MetricsAddr, nil, tel.MetricsHandler, log); err != nil {
			log.Error("metrics endpoint failed", telemetry.Err(err))
			return 1
		}
	}
	err = gateway.Run(ctx, gateway.Config{
		APIURL: c.APIURL, Token: c.Token, ID: c.ID, Name: c.Name,
		Userspace: c.Userspace, TUNName: o.tunName, AllowLoopback: o.allowLoopback, Port: c.Port,
		StatusSocket: c.StatusSocket, HealthAddr: healthAddr, MetricsHandler: tel.MetricsHandler,
		Logger: log, MeterProvider: tel.MeterProvider,
	})
	switch {
	case err == nil:
		log.Info("gateway stopped")
		return 0
	case gateway.IsUnauthorized(err):
		log.Error("the portal refused the gateway's token (HTTP 401): check SNOWGATE_TOKEN / --token-file", telemetry.Err(err))
		fmt.Fprintln(stderr, "snowgate-gateway: the portal refused the token (HTTP 401)")
		return 1
	default:
		log.Error("gateway stopped with an error", telemetry.Err(err))
		return 1
	}
}

// exitOnSecondSignal exits the process with status 1 on a signal after the first one (during the graceful
// stop). The returned function stops watching.
func exitOnSecondSignal(ctx context.Context, stop context.CancelFunc) func() {
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
		case <-done:
			return
		}
		again := make(chan os.Signal, 1)
		signal.Notify(again, syscall.SIGTERM, syscall.SIGINT)
		defer signal.Stop(again)
		stop()
		select {
		case <-again:
			os.Exit(1)
		case <-done:
		}
	}()
	return func() { close(done) }
}

// status prints the running gateway's status: a table, or the JSON document with --json.
func status(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("snowgate-gateway status", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(stdout, "Usage: snowgate-gateway status [--json] [--socket PATH]")
		fs.SetOutput(stdout)
		fs.PrintDefaults()
	}
	asJSON := fs.Bool("json", false, "print the status document as JSON")
	socket := fs.String("socket", (&cliconf.Env{Getenv: os.Getenv}).Str("SNOWGATE_STATUS_SOCKET", tunnel.DefaultStatusSocket("gateway")), "status socket [SNOWGATE_STATUS_SOCKET]")
	if code, ok := cliconf.Parse(fs, args, stderr); !ok {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b, err := tunnel.FetchStatus(ctx, *socket)
	if err != nil {
		fmt.Fprintf(stderr, "snowgate-gateway status: %v\n", err)
		return 1
	}
	if *asJSON {
		_, _ = stdout.Write(b)
		return 0
	}
	var st gateway.Status
	if err := json.Unmarshal(b, &st); err != nil {
		fmt.Fprintf(stderr, "snowgate-gateway status: %v\n", err)
		return 1
	}
	printStatus(stdout, st)
	return 0
}

func printStatus(w io.Writer, st gateway.Status) {
	fmt.Fprintf(w, "portal:  %s\ntunnel:  %s %s\nrelays:  %s\nflows:   %d   NAT translations: %d\n\n",
		st.Portal, st.Gateway.TunnelIPv4, st.Gateway.TunnelIPv6, strings.Join(st.Gateway.Relays, ", "),
		st.Gateway.Flows, st.Gateway.NAT.Translations)
	conns := map[string]tunnel.ConnectionStatus{}
	for _, c := range st.Connections {
		conns[c.ID] = c
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLIENT\tTUNNEL IPS\tRESOURCES\tNAT\tSTATE\tPATH\tRTT\tRX\tTX")
	for _, c := range st.Gateway.Clients {
		var res []string
		for _, r := range c.Resources {
			res = append(res, r.Type+":"+r.Address)
		}
		slices.Sort(res)
		cs := conns[c.ID]
		path := cs.Path
		if cs.RelayID != "" {
			path += " via " + cs.RelayID
		}
		state := cs.State
		if cs.Idle {
			state += " (idle)"
		}
		fmt.Fprintf(tw, "%s\t%s %s\t%s\t%d\t%s\t%s\t%.1fms\t%d\t%d\n", c.ID, c.IPv4, c.IPv6, strings.Join(res, ","),
			len(c.NAT), state, path, cs.RTTMillis, cs.RxBytes, cs.TxBytes)
	}
	_ = tw.Flush()
}
