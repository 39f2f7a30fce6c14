// Command stubserver serves the client's stub resolver (client/dns) on a loopback UDP+TCP address for
// bench/dns/run: resource names are answered locally, everything else is forwarded to -upstream.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/snowgate/snowgate/client/dns"
	"github.com/snowgate/snowgate/client/dns/server"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "stubserver:", err)
		os.Exit(1)
	}
}

func run() error {
	listen := flag.String("listen", "127.0.0.1:5300", "UDP and TCP address to serve on")
	upstream := flag.String("upstream", "127.0.0.1:53", "upstream resolver ip:port")
	resources := flag.String("resources", "**.res.test", "comma-separated DNS resource patterns")
	sockets := flag.Int("sockets", runtime.GOMAXPROCS(0), "UDP sockets (SO_REUSEPORT), one read loop each")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile to this file until the server stops")
	flag.Parse()

	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return fmt.Errorf("-cpuprofile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("-cpuprofile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}

	up, err := netip.ParseAddrPort(*upstream)
	if err != nil {
		return fmt.Errorf("-upstream: %w", err)
	}
	r, err := dns.New(dns.Config{UpstreamDNS: []netip.AddrPort{up}})
	if err != nil {
		return err
	}
	var res []dns.Resource
	for i, p := range strings.Split(*resources, ",") {
		res = append(res, dns.Resource{ID: fmt.Sprintf("r%d", i), Address: p})
	}
	if err := r.SetResources(res, nil); err != nil {
		return err
	}
	srv, err := server.New(server.Config{Resolver: r, OnEvent: func(dns.NameAssigned) {},
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return err
	}
	defer srv.Close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, 0xf /* SO_REUSEPORT */, 1)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	var pcs []net.PacketConn
	for i := 0; i < max(1, *sockets); i++ {
		pc, err := lc.ListenPacket(ctx, "udp", *listen)
		if err != nil {
			return fmt.Errorf("listening on udp %s: %w", *listen, err)
		}
		pcs = append(pcs, pc)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listening on tcp %s: %w", *listen, err)
	}
	fmt.Println("ready")
	return srv.Serve(ctx, r.Sentinels()[0].Addr, pcs, ln)
}
