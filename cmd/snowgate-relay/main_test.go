package main

import (
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/snowgate/snowgate/relay"
	"github.com/snowgate/snowgate/relay/kernelpath"
)

func TestParse(t *testing.T) {
	env := map[string]string{
		"PUBLIC_IP4_ADDR":  "198.18.0.1",
		"PUBLIC_IP6_ADDR":  "2001:db8::1",
		"LISTEN_PORT":      "3479",
		"LOWEST_PORT":      "50000",
		"HIGHEST_PORT":     "50100",
		"ALLOW_PEERS":      "192.0.2.0/24, 198.51.100.7",
		"SNOWGATE_API_URL": "ws://portal:8081",
		"SNOWGATE_TOKEN":   "tok",
		"DRAIN_TIMEOUT":    "5s",
	}
	getenv := func(k string) string { return env[k] }
	o, err := parse([]string{"--listen-port", "3480", "--deny-peer", "192.0.2.1/32"}, getenv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	c := o.relay
	if c.ListenPort != 3480 || c.LowestPort != 50000 || c.HighestPort != 50100 {
		t.Fatalf("ports %d %d-%d", c.ListenPort, c.LowestPort, c.HighestPort)
	}
	if c.PublicIP4 != netip.MustParseAddr("198.18.0.1") || c.PublicIP6 != netip.MustParseAddr("2001:db8::1") {
		t.Fatalf("public %v %v", c.PublicIP4, c.PublicIP6)
	}
	if len(c.AllowPeers) != 2 || c.AllowPeers[1] != netip.MustParsePrefix("198.51.100.7/32") || len(c.DenyPeers) != 1 {
		t.Fatalf("peers allow %v deny %v", c.AllowPeers, c.DenyPeers)
	}
	if c.Portal == nil || c.Portal.Token != "tok" || c.Portal.APIURL != "ws://portal:8081" || c.Auth != relay.AuthFirezone {
		t.Fatalf("portal %+v auth %v", c.Portal, c.Auth)
	}
	if c.DrainTimeout != 5*time.Second {
		t.Fatalf("drain %v", c.DrainTimeout)
	}
	if c.DisableKernelPath || c.KernelPathMaxChannels != kernelpath.DefaultMaxChannels {
		t.Fatalf("kernel path off %v, max channels %d; want on with the default", c.DisableKernelPath, c.KernelPathMaxChannels)
	}

	// Flag lists replace the environment's; REST mode without a portal; drain 0 = none.
	delete(env, "SNOWGATE_API_URL")
	env["TURN_REST_SECRET"] = "north"
	o, err = parse([]string{"--allow-peer", "127.0.0.1", "--drain-timeout", "0s"}, getenv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	c = o.relay
	if len(c.AllowPeers) != 1 || c.Auth != relay.AuthTURNREST || c.RESTSecret != "north" || c.Portal != nil || c.DrainTimeout >= 0 {
		t.Fatalf("second parse %+v", c)
	}

	// The kernel path by environment and by flag.
	env["NO_KERNEL_PATH"], env["KERNEL_PATH_MAX_CHANNELS"] = "1", "1000"
	if o, err = parse(nil, getenv, io.Discard); err != nil || !o.relay.DisableKernelPath || o.relay.KernelPathMaxChannels != 1000 {
		t.Fatalf("kernel path env: %+v, %v", o, err)
	}
	delete(env, "NO_KERNEL_PATH")
	if o, err = parse([]string{"--no-kernel-path", "--kernel-path-max-channels", "5"}, getenv, io.Discard); err != nil ||
		!o.relay.DisableKernelPath || o.relay.KernelPathMaxChannels != 5 {
		t.Fatalf("kernel path flags: %+v, %v", o, err)
	}

	for name, bad := range map[string][]string{
		"bad int env":      {"--lowest-port", "50000"},
		"bad flag address": {"--public-ip4", "nope"},
		"stray argument":   {"extra"},
		"bad cidr":         {"--allow-peer", "300.1.1.1/8"},
	} {
		env2 := map[string]string{"PUBLIC_IP4_ADDR": "198.18.0.1"}
		if name == "bad int env" {
			env2["LISTEN_PORT"] = "x"
		}
		if _, err := parse(bad, func(k string) string { return env2[k] }, io.Discard); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	// REST mode and portal registration exclude each other.
	env3 := map[string]string{"PUBLIC_IP4_ADDR": "198.18.0.1", "SNOWGATE_API_URL": "ws://p", "SNOWGATE_TOKEN": "t", "TURN_REST_SECRET": "s"}
	if _, err := parse(nil, func(k string) string { return env3[k] }, io.Discard); err == nil {
		t.Error("REST mode with a portal accepted")
	}
}
