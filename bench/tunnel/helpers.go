package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"github.com/snowgate/snowgate/bench/internal/nulltun"
	"github.com/snowgate/snowgate/gateway"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
)

// The helpers are subcommands of this program that the benchmark runs inside a lab namespace (with
// `ip netns exec`, so every socket they open is in that namespace).

// helperGateways runs n userspace gateways (gateway.Run, as snowgate-gateway --userspace runs one)
// in this process, gateway i with gatewayToken(i), until SIGTERM. The idle benchmark's client
// connects to all of them.
func helperGateways(args []string) int {
	fs := flag.NewFlagSet("gateways", flag.ExitOnError)
	n := fs.Int("n", 100, "gateways")
	api := fs.String("api", "ws://"+portalAddr+":8081", "portal URL")
	_ = fs.Parse(args)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var wg sync.WaitGroup
	errs := make([]error, *n)
	for i := range *n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = gateway.Run(ctx, gateway.Config{
				APIURL: *api, Token: gatewayToken(i), ID: fmt.Sprintf("bench-gateway-%d", i),
				Name: fmt.Sprintf("gateway-%d", i), Userspace: true, Port: 0,
				Logger: logger.With("gateway", i),
			})
		}()
	}
	fmt.Println("started")
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintln(os.Stderr, "gateways:", err)
		return 1
	}
	return 0
}

// helperWGPeers runs one wireguard-go device per line of the key file ("<private key base64>
// <port>"), each with the client (-peer, base64) as its only peer, on a TUN that carries nothing:
// the far ends of the idle benchmark's plain wireguard-go client with 100 peers.
func helperWGPeers(args []string) int {
	fs := flag.NewFlagSet("wgpeers", flag.ExitOnError)
	keys := fs.String("keys", "", "file of \"<private key> <port>\" lines")
	peer := fs.String("peer", "", "the client's public key (base64)")
	allowed := fs.String("allowed", wgClientIP+"/32", "the client's allowed IPs")
	_ = fs.Parse(args)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	f, err := os.Open(*keys)
	if err != nil {
		fmt.Fprintln(os.Stderr, "wgpeers:", err)
		return 1
	}
	defer f.Close()
	peerHex, err := b64hex(*peer)
	if err != nil {
		fmt.Fprintln(os.Stderr, "wgpeers: peer key:", err)
		return 1
	}
	var devs []*device.Device
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 2 {
			continue
		}
		priv, err := b64hex(fields[0])
		if err != nil {
			fmt.Fprintln(os.Stderr, "wgpeers: key:", err)
			return 1
		}
		t := nulltun.New(wgMTU)
		d := device.NewDevice(t, conn.NewDefaultBind(), device.NewLogger(device.LogLevelError, "wgpeers: "))
		cfg := fmt.Sprintf("private_key=%s\nlisten_port=%s\npublic_key=%s\nallowed_ip=%s\n", priv, fields[1], peerHex, *allowed)
		if err := d.IpcSet(cfg); err != nil {
			fmt.Fprintln(os.Stderr, "wgpeers: configure:", err)
			return 1
		}
		if err := d.Up(); err != nil {
			fmt.Fprintln(os.Stderr, "wgpeers: up:", err)
			return 1
		}
		devs = append(devs, d)
	}
	fmt.Println("started", len(devs))
	<-ctx.Done()
	for _, d := range devs {
		d.Close()
	}
	return 0
}

// b64hex turns a base64 WireGuard key into the hex form of the UAPI.
func b64hex(s string) (string, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return "", err
	}
	if len(b) != 32 {
		return "", fmt.Errorf("key of %d bytes", len(b))
	}
	return hex.EncodeToString(b), nil
}
