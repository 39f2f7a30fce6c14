// Command snowgate-client is snowgate's client: it gives this machine access to the resources the portal
// lets its user reach. Every setting is a flag and an environment variable (the flag wins); see -h.
//
// Kernel mode (the default) needs CAP_NET_ADMIN: a TUN device with the tunnel's addresses and the routes
// of the resources (policy routing: the client's own sockets are marked and never enter the tunnel), and,
// with SNOWGATE_DNS_CONTROL=etc-resolv-conf, resolv.conf pointed at the client's DNS stub. Everything is
// undone on SIGINT/SIGTERM, and after a SIGKILL on the next start. --userspace needs no privileges: a
// userspace network stack carries the traffic of a local SOCKS5 proxy (e.g. curl --socks5-hostname
// 127.0.0.1:1080 http://name.of.a.resource/).
//
// SIGHUP, or a change of the machine's addresses or default route, is roaming: a new key, a new portal
// session, connections made again on demand. A token the portal refuses exits 1 with a message saying so.
//
//	snowgate-client status [--json] [--socket PATH]   the running client's resources, connections and paths
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/snowgate/snowgate/client"
	"github.com/snowgate/snowgate/internal/cliconf"
	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/internal/tunnel"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "status" {
		os.Exit(status(os.Args[2:], os.Stdout, os.Stderr))
	}
	os.Exit(run(os.Args[1:], os.Getenv, os.Unsetenv, os.Stdout, os.Stderr))
}

type options struct {
	common     *cliconf.Common
	socksAddr  string
	tunName    string
	dnsControl string
	resolvConf string
}

func parse(args []string, getenv func(string) string, stdout, stderr io.Writer) (*options, int, bool) {
	fs := flag.NewFlagSet("snowgate-client", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(stdout, "Usage: snowgate-client [flags]\n       snowgate-client status [--json] [--socket PATH]\n\nFlags (environment variable in brackets):\n")
		fs.SetOutput(stdout)
		fs.PrintDefaults()
	}
	env := &cliconf.Env{Getenv: getenv}
	o := &options{common: cliconf.RegisterCommon(fs, env, "client", tunnel.DefaultStatusSocket("client"), 0)}
	fs.StringVar(&o.socksAddr, "socks-addr", env.Str("SNOWGATE_SOCKS_ADDR", client.DefaultSOCKSAddr), "userspace mode: SOCKS5 proxy address [SNOWGATE_SOCKS_ADDR]; empty: none")
	fs.StringVar(&o.tunName, "tun-name", env.Str("SNOWGATE_TUN_NAME", ""), "kernel TUN device name [SNOWGATE_TUN_NAME] (default tun-snowgate)")
	fs.StringVar(&o.dnsControl, "dns-control", env.Str("SNOWGATE_DNS_CONTROL", "disabled"), "kernel mode: etc-resolv-conf or disabled [SNOWGATE_DNS_CONTROL]")
	fs.StringVar(&o.resolvConf, "resolv-conf", env.Str("SNOWGATE_RESOLV_CONF", "/etc/resolv.conf"), "the system's resolv.conf [SNOWGATE_RESOLV_CONF]")
	code, ok := cliconf.Parse(fs, args, stderr)
	if !ok {
		return nil, code, false
	}
	if err := env.Err(); err != nil {
		fmt.Fprintf(stderr, "snowgate-client: %v\n", err)
		return nil, 2, false
	}
	if o.dnsControl != "etc-resolv-conf" && o.dnsControl != "disabled" {
		fmt.Fprintf(stderr, "snowgate-client: --dns-control %q: want etc-resolv-conf or disabled\n", o.dnsControl)
		return nil, 2, false
	}
	if o.socksAddr != "" {
		if _, _, err := net.SplitHostPort(o.socksAddr); err != nil {
			fmt.Fprintf(stderr, "snowgate-client: --socks-addr %q: %v\n", o.socksAddr, err)
			return nil, 2, false
		}
	}
	if err := o.common.Resolve(getenv); err != nil {
		fmt.Fprintf(stderr, "snowgate-client: %v\n", err)
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
		Component: "client", LogLevel: c.LogLevel, LogFormat: c.LogFormat, Output: stderr,
		OTLPEndpoint: c.OTLPEndpoint, WarningErrors: []error{phoenix.ErrUnauthorized, phoenix.ErrTokenExpired},
	})
	if err != nil {
		fmt.Fprintf(stderr, "snowgate-client: telemetry: %v\n", err)
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
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	roam := make(chan struct{}, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				select {
				case roam <- struct{}{}:
				default:
				}
			}
		}
	}()
	served := map[string]bool{}
	for _, addr := range []string{c.HealthAddr, c.MetricsAddr} {
		if addr == "" || served[addr] {
			continue
		}
		served[addr] = true
		if _, err := telemetry.Serve(ctx, addr, nil, tel.MetricsHandler, log); err != nil {
			log.Error("health and metrics endpoint failed", telemetry.Err(err))
			return 1
		}
	}
	err = client.Run(ctx, client.Config{
		APIURL: c.APIURL, Token: c.Token, ID: c.ID, Name: c.Name,
		Userspace: c.Userspace, SOCKSAddr: o.socksAddr, TUNName: o.tunName, DNSControl: o.dnsControl,
		ResolvConf: o.resolvConf, Port: c.Port, StatusSocket: c.StatusSocket,
		Logger: log, MeterProvider: tel.MeterProvider,
	}, roam)
	switch {
	case err == nil:
		log.Info("client stopped")
		return 0
	case client.IsUnauthorized(err):
		log.Error("the portal refused the client's token (HTTP 401): check SNOWGATE_TOKEN / --token-file", telemetry.Err(err))
		fmt.Fprintln(stderr, "snowgate-client: the portal refused the token (HTTP 401)")
		return 1
	default:
		log.Error("client stopped with an error", telemetry.Err(err))
		return 1
	}
}

// status prints the running client's status: a table, or the JSON document with --json.
func status(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("snowgate-client status", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(stdout, "Usage: snowgate-client status [--json] [--socket PATH]")
		fs.SetOutput(stdout)
		fs.PrintDefaults()
	}
	asJSON := fs.Bool("json", false, "print the status document as JSON")
	socket := fs.String("socket", (&cliconf.Env{Getenv: os.Getenv}).Str("SNOWGATE_STATUS_SOCKET", tunnel.DefaultStatusSocket("client")), "status socket [SNOWGATE_STATUS_SOCKET]")
	if code, ok := cliconf.Parse(fs, args, stderr); !ok {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b, err := tunnel.FetchStatus(ctx, *socket)
	if err != nil {
		fmt.Fprintf(stderr, "snowgate-client status: %v\n", err)
		return 1
	}
	if *asJSON {
		_, _ = stdout.Write(b)
		return 0
	}
	var st client.Status
	if err := json.Unmarshal(b, &st); err != nil {
		fmt.Fprintf(stderr, "snowgate-client status: %v\n", err)
		return 1
	}
	printStatus(stdout, st)
	return 0
}

func printStatus(w io.Writer, st client.Status) {
	fmt.Fprintf(w, "portal:  %s\n\n", st.Portal)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RESOURCE\tTYPE\tADDRESS\tGATEWAY\tFLOW")
	for _, r := range st.Resources {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Name, r.Type, r.Address, r.Gateway, r.Flow)
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	conns := map[string]tunnel.ConnectionStatus{}
	for _, c := range st.Connections {
		conns[c.ID] = c
	}
	tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GATEWAY\tSTATE\tPATH\tRTT\tRX\tTX\tRESOURCES")
	for _, g := range st.Gateways {
		c := conns[g.ID]
		path := c.Path
		if c.RelayID != "" {
			path += " via " + c.RelayID
		}
		state := g.State
		if c.Idle {
			state += " (idle)"
		}
		res := slices.Clone(g.Resources)
		slices.Sort(res)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.1fms\t%d\t%d\t%s\n", g.ID, state, path, c.RTTMillis, c.RxBytes, c.TxBytes, strings.Join(res, ","))
	}
	_ = tw.Flush()
}
