package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"time"
)

// healthTimeout bounds one healthcheck probe.
const healthTimeout = 2 * time.Second

// healthcheck is the `healthcheck` subcommand: GET /readyz on the portal's
// own health/metrics address (METRICS_ADDR or --addr); 0 on 200, 1
// otherwise (also when no address is set: the endpoint is off), 2 on bad
// usage.
func healthcheck(args []string, getenv func(string) string, stderr io.Writer) int {
	fs := flag.NewFlagSet("snowgate-portal healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	def := getenv("METRICS_ADDR")
	addr := fs.String("addr", def, "the portal's health and metrics address; an unspecified host probes loopback [METRICS_ADDR]")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "snowgate-portal healthcheck: unexpected arguments %q\n", fs.Args())
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), healthTimeout)
	defer cancel()
	if err := probeReady(ctx, *addr); err != nil {
		fmt.Fprintf(stderr, "snowgate-portal healthcheck: %v\n", err)
		return 1
	}
	return 0
}

// probeReady GETs http://addr/readyz and wants 200. An empty or unspecified
// host (":8080", "0.0.0.0:8080", "[::]:8080") is probed on loopback.
func probeReady(ctx context.Context, addr string) error {
	if addr == "" {
		return fmt.Errorf("no health address (METRICS_ADDR is empty: the endpoint is off)")
	}
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
	// No proxy from the environment: the probe is always local.
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
