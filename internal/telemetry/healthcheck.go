package telemetry

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"time"
)

// HealthcheckTimeout bounds one Healthcheck probe.
const HealthcheckTimeout = 2 * time.Second

// Healthcheck is every daemon's `healthcheck` subcommand, for container health checks in images without a
// shell or curl: GET /readyz on the daemon's own health address (flag --addr, default from the environment
// variable envVar, else defaultAddr) and return the exit status: 0 on 200, 1 otherwise (also when the address
// is empty: the endpoint is off), 2 on bad usage. name is the command's name for messages.
func Healthcheck(name, envVar, defaultAddr string, args []string, getenv func(string) string, stderr io.Writer) int {
	fs := flag.NewFlagSet(name+" healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	def := getenv(envVar)
	if def == "" {
		def = defaultAddr
	}
	addr := fs.String("addr", def, "the daemon's health address; an unspecified host probes loopback ["+envVar+"]")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s healthcheck: unexpected arguments %q\n", name, fs.Args())
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), HealthcheckTimeout)
	defer cancel()
	if *addr == "" {
		fmt.Fprintf(stderr, "%s healthcheck: no health address (%s is empty: the endpoint is off)\n", name, envVar)
		return 1
	}
	if err := ProbeReady(ctx, *addr); err != nil {
		fmt.Fprintf(stderr, "%s healthcheck: %v\n", name, err)
		return 1
	}
	return 0
}

// ProbeReady GETs http://addr/readyz and wants 200. An empty or unspecified host (":8080", "0.0.0.0:8080",
// "[::]:8080") is probed on loopback; no proxy from the environment is used.
func ProbeReady(ctx context.Context, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("health address %q: %w", addr, err)
	}
	if a, err := netip.ParseAddr(host); host == "" || (err == nil && a.IsUnspecified()) {
		host = "127.0.0.1"
		if err == nil && a.Is6() {
			host = "::1"
		}
	}
	url := "http://" + net.JoinHostPort(host, port) + "/readyz"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}
