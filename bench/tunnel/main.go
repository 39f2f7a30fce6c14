// Command tunnel benchmarks snowgate's tunnel end to end, the way users feel it, against what they
// would use instead: upstream wireguard-go (the program, built from the module version go.mod pins,
// configured with wg from wireguard-tools) and no tunnel at all. Everything runs in netlab's standard
// topology (internal/netlab: client and gateway behind NAT routers, portal and two relays on the
// "internet", the resource on a network only the gateway reaches), the snowgate binaries started as
// an operator starts them (kernel TUN mode), like the e2e suite does. It needs root.
//
// bench/run builds the binaries and runs this; see bench/README.md for what is measured and how.
// Progress goes to stderr, the markdown sections to -out.
//
// Helper subcommands (run by the benchmark inside lab namespaces): helper-gateways (many userspace
// gateways in one process) and helper-wgpeers (many wireguard-go devices in one process).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/snowgate/snowgate/internal/netlab"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "helper-gateways":
			os.Exit(helperGateways(os.Args[2:]))
		case "helper-wgpeers":
			os.Exit(helperWGPeers(os.Args[2:]))
		case "helper-delay":
			os.Exit(helperDelay(os.Args[2:]))
		}
	}
	os.Exit(run())
}

// options are the command's flags.
type options struct {
	bins      string
	sections  map[string]bool
	out       string
	tput      tputOptions
	flows     int
	latency   time.Duration
	idle      time.Duration
	idleConns int
	logs      string
}

func parseFlags() (*options, error) {
	o := &options{}
	var sections string
	flag.StringVar(&o.bins, "bins", "", "directory with snowgate-{portal,relay,gateway,client} and wireguard-go (bench/run builds them)")
	flag.StringVar(&sections, "sections", "throughput,setup,idle", "comma-separated sections to run")
	flag.StringVar(&o.out, "out", "-", "markdown output file (- for stdout)")
	flag.IntVar(&o.tput.reps, "reps", 3, "throughput repetitions (setups interleaved in each)")
	flag.Float64Var(&o.tput.tcpSeconds, "tcp-time", 10, "seconds per iperf3 TCP run")
	flag.Float64Var(&o.tput.udpSeconds, "udp-time", 2, "seconds per iperf3 UDP probe")
	flag.IntVar(&o.tput.udpSteps, "udp-steps", 6, "UDP probes per rate search in the first repetition")
	flag.IntVar(&o.tput.udpRefine, "udp-refine", 3, "UDP probes per rate search in later repetitions (around the last rate)")
	flag.Float64Var(&o.tput.udpHi, "udp-hi", 4, "UDP search: first rate (Gbit/s) when the TCP tests did not run")
	flag.Float64Var(&o.tput.udpSpan, "udp-span", 30, "UDP search: the first search covers [hi/span, hi], hi = 1.5× the single-stream TCP rate")
	flag.IntVar(&o.flows, "flows", 50, "fresh flows per path and latency (connection setup)")
	flag.DurationVar(&o.latency, "latency", 20*time.Millisecond, "one-way delay on each NAT router's uplink for the second setup run (0: skip)")
	flag.DurationVar(&o.idle, "idle", 120*time.Second, "idle measurement window")
	flag.IntVar(&o.idleConns, "idle-conns", 100, "connections of the idle client")
	flag.StringVar(&o.logs, "logs", "", "keep every process's log (and the labs' files) in a new directory under this one")
	flag.Parse()
	if o.bins == "" {
		return nil, errors.New("-bins is required")
	}
	o.sections = map[string]bool{}
	for _, s := range strings.Split(sections, ",") {
		switch s = strings.TrimSpace(s); s {
		case "throughput", "setup", "idle":
			o.sections[s] = true
		case "":
		default:
			return nil, fmt.Errorf("unknown section %q", s)
		}
	}
	return o, nil
}

func run() (code int) {
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	o, err := parseFlags()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/tunnel:", err)
		return 2
	}
	if reason := netlab.SkipReason(); reason != "" {
		fmt.Fprintln(os.Stderr, "bench/tunnel:", reason)
		return 2
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/tunnel:", err)
		return 1
	}
	root, err := newBenchTB(o.logs)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/tunnel:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	defer func() {
		root.close()
		if o.logs == "" {
			_ = os.RemoveAll(root.dir)
		} else {
			log.Printf("process logs kept in %s", root.dir)
		}
		if r := recover(); r != nil {
			var f errFatal
			if e, ok := r.(error); ok && errors.As(e, &f) {
				fmt.Fprintln(os.Stderr, "bench/tunnel: failed:", f.msg)
				code = 1
				return
			}
			panic(r)
		}
	}()
	rep := &report{o: o}
	start := time.Now()
	if o.sections["throughput"] || o.sections["setup"] {
		if err := runTunnels(ctx, root, o, self, rep); err != nil {
			fmt.Fprintln(os.Stderr, "bench/tunnel:", err)
			return 1
		}
	}
	if o.sections["idle"] {
		if err := runIdle(ctx, root, o, self, rep); err != nil {
			fmt.Fprintln(os.Stderr, "bench/tunnel:", err)
			return 1
		}
	}
	log.Printf("done in %v", time.Since(start).Round(time.Second))
	out := os.Stdout
	if o.out != "-" {
		f, err := os.Create(o.out)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench/tunnel:", err)
			return 1
		}
		defer f.Close()
		out = f
	}
	if err := rep.write(out); err != nil {
		fmt.Fprintln(os.Stderr, "bench/tunnel:", err)
		return 1
	}
	return 0
}

// runTunnels builds three labs — snowgate with a direct path (endpoint-independent NATs), snowgate
// relayed (symmetric NATs on both sides, netlab's relay-only scenario), and plain wireguard-go plus
// no tunnel — and runs the throughput and connection-setup benchmarks on them.
func runTunnels(ctx context.Context, root *benchTB, o *options, self string, rep *report) error {
	log.Printf("building labs")
	direct := newWorld(ctx, root, "direct", o.bins, netlab.StandardOptions{}, 1)
	defer direct.close()
	relayed := newWorld(ctx, root, "relayed", o.bins, netlab.StandardOptions{ClientNAT: netlab.NATSymmetric, GatewayNAT: netlab.NATSymmetric}, 1)
	defer relayed.close()
	plain := newLab(root, "plain", netlab.StandardOptions{})
	defer plain.close()
	for _, w := range []*world{direct, relayed} {
		w.startGateway()
		w.iperfServer(false)
		w.startClient(ctx)
		path := w.connect(ctx, resourceAddr)
		log.Printf("%s: connected, path %s", w.name, path)
		if (w == direct) != (path == "host" || path == "srflx") {
			return fmt.Errorf("%s lab: the client's path is %q", w.name, path)
		}
	}
	plain.iperfServer(true)
	wg := newWGPair(ctx, plain, filepath.Join(o.bins, "wireguard-go"))
	defer wg.stop()

	if o.sections["throughput"] {
		setups := []*tputSetup{
			{name: "no tunnel", ns: plain.Client.Namespace, addr: rgPublic, port: rawPort},
			{name: "wireguard-go", ns: plain.Client.Namespace, addr: resourceAddr, port: iperfPort,
				sides: []side{{"client", []*proc{wg.client}}, {"gateway", []*proc{wg.gateway}}}},
			{name: "snowgate direct", ns: direct.Client.Namespace, addr: resourceAddr, port: iperfPort,
				sides: []side{{"client", []*proc{direct.client}}, {"gateway", []*proc{direct.gateway}}}},
			{name: "snowgate relayed", ns: relayed.Client.Namespace, addr: resourceAddr, port: iperfPort,
				sides: []side{{"client", []*proc{relayed.client}}, {"gateway", []*proc{relayed.gateway}},
					{"relay", []*proc{relayed.relay1, relayed.relay2}}}},
		}
		log.Printf("throughput: %d reps × %d tests × %d setups", o.tput.reps, len(tputTests), len(setups))
		res, err := runThroughput(ctx, setups, o.tput)
		if err != nil {
			return err
		}
		rep.tput = res
		rep.tputSetups = setups
	}
	if o.sections["setup"] {
		lats := []time.Duration{0}
		if o.latency > 0 {
			lats = append(lats, o.latency)
		}
		targets := []setupTarget{
			{name: "wireguard-go", fresh: wg.freshFlow, labs: []*lab{plain}},
			{name: "snowgate direct", fresh: direct.freshFlow, labs: []*lab{direct.lab}},
			{name: "snowgate relayed", fresh: relayed.freshFlow, labs: []*lab{relayed.lab}},
		}
		log.Printf("connection setup: %d flows × %d targets × %d latencies", o.flows, len(targets), len(lats))
		res, err := runSetup(ctx, targets, o.flows, lats, self)
		if err != nil {
			return err
		}
		rep.setup = &res
	}
	return nil
}

// runIdle runs the idle benchmark: snowgate's client with idleConns connections and wireguard-go with
// as many peers, measured over the same window at the same time.
func runIdle(ctx context.Context, root *benchTB, o *options, self string, rep *report) error {
	log.Printf("idle: building labs (%d connections each)", o.idleConns)
	sg := idleSnowgate(ctx, root, o.bins, self, o.idleConns)
	defer sg.close()
	wl, wp := wgIdle(ctx, root, o.bins, self, o.idleConns)
	defer wl.close()
	log.Printf("idle: measuring for %v", o.idle)
	type result struct {
		r   idleResult
		err error
	}
	sgc, wgc := make(chan result, 1), make(chan result, 1)
	go func() {
		r, err := measureIdle(ctx, "snowgate client", o.idleConns, sg.client.pid(), sg.Client.Namespace, "http://127.0.0.1:9464/metrics", o.idle)
		sgc <- result{r, err}
	}()
	go func() {
		r, err := measureIdle(ctx, "wireguard-go, 25 s persistent keepalive", o.idleConns, wp.pid(), wl.Client.Namespace, "", o.idle)
		wgc <- result{r, err}
	}()
	a, b := <-sgc, <-wgc
	if err := errors.Join(a.err, b.err); err != nil {
		return err
	}
	st, err := sg.clientStatus()
	if err == nil {
		idle := 0
		for _, c := range st.Connections {
			if c.Idle {
				idle++
			}
		}
		a.r.name = fmt.Sprintf("snowgate client (%d of %d connections still idle at the end)", idle, len(st.Connections))
	}
	rep.idle = []idleResult{a.r, b.r}
	return nil
}
