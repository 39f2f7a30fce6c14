package main

import (
	"io"
	"net"
	"strings"
	"testing"
)

// TestHealthcheck runs the portal with a metrics address and probes it with
// the healthcheck subcommand; without an address the probe fails.
func TestHealthcheck(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metrics := l.Addr().String()
	_ = l.Close()
	_, port, _ := net.SplitHostPort(metrics)
	getenv := func(k string) string {
		if k == "METRICS_ADDR" {
			return ":" + port // as in the container image: all addresses, probed on loopback
		}
		return ""
	}
	if code := healthcheck(nil, getenv, io.Discard); code != 1 {
		t.Fatalf("portal not running: exit %d, want 1", code)
	}
	r, err := startRun(t, "--listen", "127.0.0.1:0", "--admin-addr", "", "--metrics-addr", metrics)
	if err != nil {
		if strings.Contains(err.Error(), "address already in use") {
			t.Skipf("metrics port taken meanwhile: %v", err)
		}
		t.Fatal(err)
	}
	if code := healthcheck(nil, getenv, io.Discard); code != 0 {
		t.Fatalf("running portal: exit %d, want 0", code)
	}
	if code := healthcheck([]string{"--addr", metrics}, func(string) string { return "" }, io.Discard); code != 0 {
		t.Fatalf("--addr: exit %d, want 0", code)
	}
	if code := healthcheck(nil, func(string) string { return "" }, io.Discard); code != 1 {
		t.Fatalf("no address: exit %d, want 1", code)
	}
	if err := r.stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
}
