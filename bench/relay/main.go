// Command relay benchmarks snowgate-relay against coturn's turnserver with the
// same turnutils_uclient load, interleaved (A B A B …), and prints a table.
//
// Run it from the repository root with bench/relay/run [flags]; it needs root
// only for nothing (both servers run on loopback) but does need coturn's
// turnserver, turnutils_uclient and turnutils_peer in PATH.
//
// Load: turnutils_uclient with -c (no RTCP) and -z <interval ms>: each
// client session sends one message per interval, so with the default 1 ms
// the offered rate is about 1000 round trips/s per client (1, 10, 50 clients
// → 1 k, 10 k, 50 k/s). uclient starts its sessions at random times within
// its first 6 s of sending (uclientRamp), so a session must send for longer
// than that for all of them to overlap: the default 12000 messages per
// client at 1 ms keep every session busy from about 6 s to 12 s after the
// first send. The table reports the steady-state rate (median of uclient's
// per-second progress rates between ramp and msgs×interval after the first
// send, when every session sends) besides the peak 1-second rate and the
// totals. --saturate adds rows with -z 0 (every
// session sends as fast as uclient's 1 ms timer allows, 50 per tick); their
// steady window runs from the ramp to the end of sending, and they send
// five times --msgs per client.
//
// Columns: rt/s steady = median round trips per second over uclient's
// progress intervals inside the steady window (median over the runs), "-"
// when the run is too short to have one; rt/s peak = highest round trips per
// second over one of uclient's progress intervals; loss = 1 - received/sent; cpu µs/rt = server
// utime+stime (from /proc/<pid>/stat) per received round trip, which equals
// CPU-seconds per million round trips; drops = /proc/net/udp{,6} drop
// counters (max seen while sampling every 200 ms) of the server's listener
// sockets (L), its relay sockets (R), the peer (P) and the client (C).
//
// Network namespaces: --netns runs each server in a namespace of its own
// ("relay", 198.18.0.1) and uclient (198.18.0.2) and turnutils_peer
// (198.18.0.3) in another ("outside"), joined by one veth pair, so that
// snowgate-relay attaches its XDP kernel path (on loopback it does not).
// The outside end has transmit checksum offload off (its datagrams carry
// complete checksums, as from a NIC) and an XDP_PASS program (so that veth
// delivers the relay's XDP_TX frames; see internal/xdppass). Its default
// servers are snowgate (kernel path on), snowgate-user (--no-kernel-path)
// and coturn. Needs root. Work done by the XDP program runs in softirq
// context and is not charged to the relay process, so besides the server's
// own CPU the table reports host CPU per round trip (all cores, every
// process and softirq, load generator included; from /proc/stat) and the
// softirq share of it, and "xdp µs/rt", the XDP program's own run time
// per round trip (BPF run-time statistics, enabled while the benchmark
// runs; it leaves out the driver's work around the program, such as the
// XDP_TX transmit).
//
// Fast generator: --netns --gen fast replaces uclient and turnutils_peer
// (single-threaded, one message per syscall, the bound of the rates above)
// with a batched Go generator (fastgen.go): --channels allocations from
// distinct client ports, ChannelData sent with sendmmsg at stepped offered
// rates (--rates, --step each; 0 = as fast as it can), a peer echoing with
// recvmmsg/sendmmsg, and the client counting the echoes: one offered
// datagram is one round trip (two relayed datagrams). The generator's
// client and peer are pinned to --gen-cpu and --peer-cpu (default 0), the
// server to --server-cpu (default 1), and with --threaded-napi (default)
// both veth ends receive in NAPI threads (SCHED_FIFO, like softirq) pinned
// to their side's CPU, so CPU 1 is the relay host and CPU 0 the rest of the
// internet. Server "none" runs no server, to measure the generator's own send
// rate. One table row per server and offered rate; then the highest offered
// rate with < 1 % loss and the highest echo rate per server, with the ratio
// to coturn's.
//
// A/B: --baseline-bin PATH --servers snowgate,baseline,coturn also runs a
// snowgate-relay binary built elsewhere (e.g. from the previous commit with
// go build -o /tmp/base ./cmd/snowgate-relay) with the same flags,
// interleaved with the others.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/snowgate/snowgate/bench/internal/procstat"
)

const secret = "bench-secret"

// peerIP is turnutils_peer's address.
const peerIP = "127.0.0.2"

type runResult struct {
	server        string
	clients, size int
	interval      int
	sent, recv    int
	peakRate      float64
	steadyRate    float64 // 0: no steady window
	cpu           time.Duration
	hostCPU       time.Duration // all cores, everything but idle and iowait
	softirqCPU    time.Duration
	xdpCPU        time.Duration // the XDP program's run time (--netns, snowgate)
	dropL, dropR  uint64
	dropP, dropC  uint64
	err           error
	wall          time.Duration
}

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "fastgen-client" || os.Args[1] == "fastgen-peer") {
		run := fastgenClient
		if os.Args[1] == "fastgen-peer" {
			run = fastgenPeer
		}
		if err := run(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	quick := flag.Bool("quick", false, "one repetition, 10 and 50 clients, both sizes, fewer messages")
	reps := flag.Int("reps", 3, "repetitions per server and configuration")
	clientsFlag := flag.String("clients", "1,10,50", "client counts")
	sizesFlag := flag.String("sizes", "120,1200", "message sizes in bytes")
	msgs := flag.Int("msgs", 12000, "messages per client (at -z 1, keep msgs×1 ms well above uclient's 6 s ramp)")
	interval := flag.Int("interval", 1, "uclient -z: per-session send interval in ms")
	saturate := flag.Bool("saturate", false, "add rows at -z 0 with the largest client count")
	servers := flag.String("servers", "snowgate,coturn", "servers to compare (snowgate, coturn, and baseline with --baseline-bin)")
	baseline := flag.String("baseline-bin", "", "a snowgate-relay binary built from another commit, run as server \"baseline\" (A/B comparisons)")
	sockets := flag.Int("sockets", 0, "snowgate --sockets (0: GOMAXPROCS)")
	batch := flag.Int("batch-read", 0, "snowgate --batch-read")
	noFast := flag.Bool("no-fast-path", false, "snowgate --no-fast-path")
	profDir := flag.String("cpu-profile-dir", "", "write snowgate-relay CPU profiles (one per run) into this directory")
	gomaxprocs := flag.Int("gomaxprocs", 0, "GOMAXPROCS for snowgate-relay (0: Go's default)")
	netns := flag.Bool("netns", false, "run in network namespaces over veth (root), so that snowgate's XDP kernel path is used")
	gen := flag.String("gen", "uclient", "load generator: uclient (coturn's turnutils_uclient and turnutils_peer) or fast (--netns only: batched Go generator, stepped rates)")
	ratesFlag := flag.String("rates", "25000,50000,100000,150000,200000,0", "--gen fast: offered datagrams/s per step (0: as fast as the generator can)")
	stepDur := flag.Duration("step", 5*time.Second, "--gen fast: sending time per step")
	channels := flag.Int("channels", 50, "--gen fast: allocations (distinct client ports), one channel each")
	fastBatch := flag.Int("fast-batch", 64, "--gen fast: datagrams per sendmmsg/recvmmsg")
	genCPU := flag.Int("gen-cpu", 0, "--gen fast: CPU to pin the generator's client to (taskset; -1: none)")
	peerCPU := flag.Int("peer-cpu", 0, "--gen fast: CPU to pin the generator's peer to (taskset; -1: none)")
	serverCPU := flag.Int("server-cpu", -2, "CPU to pin the server to (taskset; -1: none; default: 1 with --gen fast, else none)")
	threaded := flag.Bool("threaded-napi", true, "--gen fast: threaded NAPI on both veth ends, rly0's pinned to --server-cpu and out0's to --gen-cpu")
	flag.Parse()
	serversSet := false
	flag.Visit(func(f *flag.Flag) { serversSet = serversSet || f.Name == "servers" })
	if *netns && !serversSet {
		*servers = "snowgate,snowgate-user,coturn"
		if *gen == "fast" {
			*servers += ",none"
		}
	}
	if *serverCPU == -2 {
		*serverCPU = -1
		if *gen == "fast" {
			*serverCPU = 1
		}
	}
	if *gen != "uclient" && (*gen != "fast" || !*netns) {
		fatal(errors.New("--gen is uclient, or fast with --netns"))
	}
	if *quick {
		*reps, *clientsFlag, *msgs = 1, "10,50", 10000
	}
	clients, err1 := intList(*clientsFlag)
	sizes, err2 := intList(*sizesFlag)
	if err := errors.Join(err1, err2); err != nil {
		fatal(err)
	}
	tools := []string{"turnserver", "turnutils_uclient", "turnutils_peer"}
	if *gen == "fast" {
		tools = tools[:1]
	}
	for _, bin := range tools {
		if _, err := exec.LookPath(bin); err != nil {
			fatal(fmt.Errorf("%s not found (Debian package coturn): %w", bin, err))
		}
	}
	dir, err := os.MkdirTemp("", "rly-bench-")
	if err != nil {
		fatal(err)
	}
	defer os.RemoveAll(dir)
	relayBin := filepath.Join(dir, "snowgate-relay")
	if out, err := exec.Command("go", "build", "-o", relayBin, "./cmd/snowgate-relay").CombinedOutput(); err != nil {
		fatal(fmt.Errorf("build snowgate-relay (run from the repository root): %w\n%s", err, out))
	}

	type cfg struct{ clients, size, interval int }
	var cfgs []cfg
	for _, c := range clients {
		for _, s := range sizes {
			cfgs = append(cfgs, cfg{c, s, *interval})
		}
	}
	if *saturate {
		for _, s := range sizes {
			cfgs = append(cfgs, cfg{clients[len(clients)-1], s, 0})
		}
	}
	srvs := strings.Split(*servers, ",")
	for _, srv := range srvs {
		if srv == "baseline" && *baseline == "" {
			fatal(errors.New("server baseline needs --baseline-bin"))
		}
	}
	env := benchEnv{dir: dir, relayBin: relayBin, baselineBin: *baseline, sockets: *sockets, batch: *batch, noFast: *noFast, profDir: *profDir, gomaxprocs: *gomaxprocs, serverCPU: *serverCPU}
	if *netns {
		lab, err := newNetnsLab()
		if err != nil {
			fatal(err)
		}
		cleanup = lab.close
		defer lab.close()
		env.lab = lab
	}
	if *gen == "fast" {
		rates, err := intList(*ratesFlag)
		if err != nil {
			fatal(err)
		}
		if *threaded && *serverCPU >= 0 && *genCPU >= 0 {
			if err := env.lab.threadedNAPI(*serverCPU, *genCPU); err != nil {
				fatal(err)
			}
		}
		o := fastOpts{rates: rates, step: *stepDur, channels: *channels, batch: *fastBatch, genCPU: *genCPU, peerCPU: *peerCPU}
		runFastAll(env, srvs, sizes, *reps, o)
		return
	}
	fmt.Fprintf(os.Stderr, "bench: %d configurations × %d reps × %v, %d msgs/client\n", len(cfgs), *reps, srvs, *msgs)
	var results []runResult
	for _, c := range cfgs {
		for rep := 0; rep < *reps; rep++ {
			for _, srv := range srvs { // interleaved: A B A B …
				n := *msgs
				if c.interval == 0 {
					n *= 5 // saturated sessions finish sooner: keep a steady window after the ramp
				}
				r := env.run(srv, c.clients, c.size, c.interval, n)
				if r.err != nil && r.sent == 0 { // a start-up hiccup: one retry
					fmt.Fprintf(os.Stderr, "  %-8s retrying after: %v\n", srv, r.err)
					time.Sleep(500 * time.Millisecond)
					r = env.run(srv, c.clients, c.size, c.interval, n)
				}
				fmt.Fprintf(os.Stderr, "  %-8s clients=%-3d size=%-4d z=%d rep=%d: sent %d recv %d steady %.0f/s peak %.0f/s cpu %v wall %v err=%v\n",
					srv, c.clients, c.size, c.interval, rep+1, r.sent, r.recv, r.steadyRate, r.peakRate, r.cpu.Round(time.Millisecond), r.wall.Round(time.Millisecond), r.err)
				results = append(results, r)
			}
		}
	}
	printTable(os.Stdout, results)
}

// cleanup undoes --netns set-up (fatal runs it before exiting).
var cleanup = func() {}

func fatal(err error) {
	cleanup()
	fmt.Fprintln(os.Stderr, "bench/relay:", err)
	os.Exit(1)
}

func intList(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("bad number %q: %w", f, err)
		}
		out = append(out, n)
	}
	return out, nil
}

type benchEnv struct {
	dir         string
	relayBin    string
	baselineBin string
	sockets     int
	batch       int
	noFast      bool
	profDir     string
	// gomaxprocs, if > 0, is snowgate-relay's GOMAXPROCS.
	gomaxprocs int
	// lab, if set, runs everything in network namespaces (--netns).
	lab *netnsLab
	// serverCPU, if ≥ 0, is the CPU the server is pinned to (taskset).
	serverCPU int
}

// command is name with args, run inside namespace ns (empty: here).
func command(ns, name string, args ...string) (string, []string) {
	if ns == "" {
		return name, args
	}
	return "ip", append([]string{"netns", "exec", ns, name}, args...)
}

func freePort(network, host string) int {
	c, err := net.ListenPacket(network, net.JoinHostPort(host, "0"))
	if err != nil {
		fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// proc is a started process, killed by pid when done.
type proc struct {
	cmd *exec.Cmd
}

func start(name string, args []string, out io.Writer) (*proc, error) {
	return startEnv(name, args, out)
}

// startEnv starts name with extra environment variables. ip netns exec
// execs the command itself, so the pid is the command's either way.
func startEnv(name string, args []string, out io.Writer, env ...string) (*proc, error) {
	cmd := exec.Command(name, args...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return &proc{cmd: cmd}, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// stop sends SIGTERM (snowgate-relay then writes its CPU profile and exits),
// and kills the process if it is still there after 3 s.
func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		_ = p.cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

// socketInodes returns the socket inodes a process holds.
func socketInodes(pid int) map[string]bool {
	out := map[string]bool{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return out
	}
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			out[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	return out
}

type udpSock struct {
	port  int
	drops uint64
}

// udpTable reads the UDP sockets of pid's network namespace
// (/proc/<pid>/net/udp and udp6): inode → local port and drops.
func udpTable(pid int) map[string]udpSock {
	out := map[string]udpSock{}
	for _, f := range []string{"udp", "udp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			continue
		}
		lines := strings.Split(string(b), "\n")
		for _, l := range lines[1:] {
			fs := strings.Fields(l)
			if len(fs) < 13 {
				continue
			}
			local := fs[1]
			j := strings.LastIndexByte(local, ':')
			port, _ := strconv.ParseUint(local[j+1:], 16, 16)
			drops, _ := strconv.ParseUint(fs[len(fs)-1], 10, 64)
			out[fs[9]] = udpSock{port: int(port), drops: drops}
		}
	}
	return out
}

// dropSampler keeps the highest drop count seen per socket of some processes.
type dropSampler struct {
	mu   sync.Mutex
	max  map[string]uint64 // role|inode → drops
	stop chan struct{}
	done chan struct{}
}

func sampleDrops(roles func() map[string]int, listenPort int) *dropSampler {
	d := &dropSampler{max: map[string]uint64{}, stop: make(chan struct{}), done: make(chan struct{})}
	sample := func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		for role, pid := range roles() {
			tab := udpTable(pid)
			for ino := range socketInodes(pid) {
				s, ok := tab[ino]
				if !ok {
					continue
				}
				r := role
				if role == "server" {
					r = "R"
					if s.port == listenPort {
						r = "L"
					}
				}
				if k := r + "|" + ino; s.drops > d.max[k] {
					d.max[k] = s.drops
				}
			}
		}
	}
	go func() {
		defer close(d.done)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			sample()
			select {
			case <-d.stop:
				sample()
				return
			case <-t.C:
			}
		}
	}()
	return d
}

func (d *dropSampler) finish() map[string]uint64 {
	close(d.stop)
	<-d.done
	out := map[string]uint64{}
	for k, v := range d.max {
		out[strings.SplitN(k, "|", 2)[0]] += v
	}
	return out
}

var (
	progressRe = regexp.MustCompile(`tot_send_msgs=(\d+), tot_recv_msgs=(\d+)`)
)

func (e benchEnv) run(server string, clients, size, interval, msgs int) (res runResult) {
	res = runResult{server: server, clients: clients, size: size, interval: interval}
	logf, err := os.Create(filepath.Join(e.dir, fmt.Sprintf("%s-%d-%d.log", server, clients, size)))
	if err != nil {
		res.err = err
		return res
	}
	defer logf.Close()
	relayIP, peerAddr, srvNS, outNS := "127.0.0.1", peerIP, "", ""
	var port, peerPort int
	if e.lab != nil {
		relayIP, peerAddr, srvNS, outNS = netnsRelayIP, netnsPeerIP, e.lab.relay, e.lab.outside
		port, peerPort = 3478, 3480 // fresh namespaces: nothing else binds there
		if err := e.lab.prime(); err != nil {
			res.err = err
			return res
		}
	} else {
		port = freePort("udp4", "127.0.0.1")
		// The peer is on 127.0.0.2: snowgate-relay delivers to its own
		// address (127.0.0.1) only on relay ports.
		peerPort = freePort("udp4", peerIP)
	}
	name, args := command(outNS, "turnutils_peer", "-L", peerAddr, "-p", strconv.Itoa(peerPort))
	peer, err := start(name, args, logf)
	if err != nil {
		res.err = err
		return res
	}
	defer peer.stop()
	srv, err := e.startServer(server, port, relayIP, peerAddr, srvNS, fmt.Sprintf("c%d-s%d-z%d", clients, size, interval), logf)
	if err != nil {
		res.err = err
		return res
	}
	defer srv.stop()
	if err := waitUDP(srv.pid(), port, 5*time.Second); err != nil {
		res.err = err
		return res
	}
	cpu0, _ := procstat.CPUTime(srv.pid())
	host0, soft0 := hostCPU()
	xdp0 := time.Duration(0)
	if e.lab != nil {
		xdp0, _, _ = e.lab.xdpRuntime()
	}

	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	ucName, ucArgs := command(outNS, "turnutils_uclient", "-W", secret, "-u", "bench", "-e", peerAddr,
		"-r", strconv.Itoa(peerPort), "-p", strconv.Itoa(port), "-n", strconv.Itoa(msgs), "-m", strconv.Itoa(clients),
		"-l", strconv.Itoa(size), "-z", strconv.Itoa(interval), "-c", relayIP)
	uc := exec.CommandContext(ctx, ucName, ucArgs...)
	stdout, err := uc.StdoutPipe()
	if err != nil {
		res.err = err
		return res
	}
	uc.Stderr = logf
	began := time.Now()
	if err := uc.Start(); err != nil {
		res.err = err
		return res
	}
	var ucPid = uc.Process.Pid
	sampler := sampleDrops(func() map[string]int {
		return map[string]int{"server": srv.pid(), "P": peer.pid(), "C": ucPid}
	}, port)
	type point struct {
		at         time.Time
		sent, recv int
	}
	var points []point
	stopped := false
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(logf, line)
		if m := progressRe.FindStringSubmatch(line); m != nil {
			s, _ := strconv.Atoi(m[1])
			r, _ := strconv.Atoi(m[2])
			points = append(points, point{time.Now(), s, r})
			// Everything sent and nothing received for two progress lines:
			// the rest is lost. Stop uclient instead of sitting through its
			// ~10 s wait for stragglers (it would only repeat these totals).
			if n := len(points); n >= 3 && s == clients*msgs && !stopped &&
				points[n-3].sent == s && points[n-3].recv == r {
				stopped = true
				_ = uc.Process.Kill()
			}
		}
	}
	werr := uc.Wait()
	if stopped {
		werr = nil
	}
	res.wall = time.Since(began)
	drops := sampler.finish()
	cpu1, _ := procstat.CPUTime(srv.pid())
	res.cpu = cpu1 - cpu0
	host1, soft1 := hostCPU()
	res.hostCPU, res.softirqCPU = host1-host0, soft1-soft0
	if e.lab != nil {
		if xdp1, _, ok := e.lab.xdpRuntime(); ok {
			res.xdpCPU = xdp1 - xdp0
		}
	}
	res.dropL, res.dropR, res.dropP, res.dropC = drops["L"], drops["R"], drops["P"], drops["C"]
	if werr != nil {
		res.err = fmt.Errorf("turnutils_uclient: %w", werr)
	}
	if len(points) > 0 {
		last := points[len(points)-1]
		res.sent, res.recv = last.sent, last.recv
	}
	// Steady window: every session has started and none has finished.
	// uclient first allocates for all sessions (seconds with 50 clients),
	// then starts sending: the window is measured from the last progress
	// line without any message sent.
	sendStart := began
	for _, p := range points {
		if p.sent > 0 {
			break
		}
		sendStart = p.at
	}
	winStart := sendStart.Add(uclientRamp)
	winEnd := sendStart.Add(time.Duration(msgs*interval) * time.Millisecond)
	// Sending ends at the first line with the final count (uclient then
	// waits ~10 s for stragglers, printing the same totals).
	for _, p := range points {
		if len(points) > 0 && p.sent == points[len(points)-1].sent {
			if interval == 0 || p.at.Before(winEnd) {
				winEnd = p.at
			}
			break
		}
	}
	var steady []float64
	for i := 1; i < len(points); i++ {
		dt := points[i].at.Sub(points[i-1].at).Seconds()
		if dt < 0.5 { // the final summary lines follow the last progress line at once
			continue
		}
		r := float64(points[i].recv-points[i-1].recv) / dt
		if r > res.peakRate {
			res.peakRate = r
		}
		if !points[i-1].at.Before(winStart) && !points[i].at.After(winEnd) {
			steady = append(steady, r)
		}
	}
	if len(steady) >= 2 {
		res.steadyRate = median(steady)
	}
	return res
}

// startServer starts server (snowgate, snowgate-user, baseline or coturn)
// listening on relayIP:port in namespace srvNS (empty: here), allowing
// peers at peerAddr; label names its CPU profile.
func (e benchEnv) startServer(server string, port int, relayIP, peerAddr, srvNS, label string, logf io.Writer) (*proc, error) {
	switch server {
	case "snowgate", "snowgate-user", "baseline":
		args := []string{"--listen-port", strconv.Itoa(port), "--public-ip4", relayIP, "--listen-addr4", relayIP,
			"--lowest-port", "61000", "--highest-port", "65535", "--allow-peer", peerAddr + "/32",
			"--turn-rest-secret", secret, "--health-check-addr", "", "--drain-timeout", "0s",
			"--max-allocations-per-user", "10000", "--log-level", "warn"}
		if e.sockets > 0 {
			args = append(args, "--sockets", strconv.Itoa(e.sockets))
		}
		if e.noFast {
			args = append(args, "--no-fast-path")
		}
		if server == "snowgate-user" {
			args = append(args, "--no-kernel-path")
		}
		if e.batch > 0 {
			args = append(args, "--batch-read", strconv.Itoa(e.batch))
		}
		if e.profDir != "" {
			args = append(args, "--cpu-profile", filepath.Join(e.profDir,
				fmt.Sprintf("snowgate-%s-%d.pprof", label, time.Now().UnixNano())))
		}
		var env []string
		if e.gomaxprocs > 0 {
			env = append(env, fmt.Sprintf("GOMAXPROCS=%d", e.gomaxprocs))
		}
		bin := e.relayBin
		if server == "baseline" {
			bin = e.baselineBin
		}
		name, args := pinned(e.serverCPU, bin, args...)
		name, args = command(srvNS, name, args...)
		return startEnv(name, args, logf, env...)
	case "coturn":
		tdir, derr := os.MkdirTemp(e.dir, "coturn-")
		if derr != nil {
			return nil, derr
		}
		name, args := pinned(e.serverCPU, "turnserver", "-n", "--listening-ip", relayIP, "--listening-port", strconv.Itoa(port),
			"--relay-ip", relayIP, "--min-port", "61000", "--max-port", "65535",
			"--use-auth-secret", "--static-auth-secret", secret, "--realm", "firezone",
			"--allow-loopback-peers", "--no-tcp", "--no-tls", "--no-dtls", "--no-cli", "--no-tcp-relay",
			"--pidfile", filepath.Join(tdir, "turnserver.pid"), "--userdb", filepath.Join(tdir, "turndb"),
			"--log-file", filepath.Join(tdir, "turn.log"), "--simple-log", "--no-stdout-log")
		name, args = command(srvNS, name, args...)
		return start(name, args, logf)
	default:
		return nil, fmt.Errorf("unknown server %q", server)
	}
}

// uclientRamp is how long turnutils_uclient takes to start all its sessions
// (it spreads their starts at random over its first 6 s).
const uclientRamp = 6 * time.Second

// waitUDP waits until pid holds a UDP socket bound to port.
func waitUDP(pid, port int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		tab := udpTable(pid)
		for ino := range socketInodes(pid) {
			if s, ok := tab[ino]; ok && s.port == port {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("server pid %d not listening on %d after %v", pid, port, timeout)
}

type agg struct {
	n                   int
	sent, recv          int
	peaks, steadies     []float64
	cpu, host, softirq  time.Duration
	xdp                 time.Duration
	dropL, dropR, dropP uint64
	dropC               uint64
	errs                int
}

func printTable(w io.Writer, results []runResult) {
	type key struct {
		clients, size, interval int
		server                  string
	}
	aggs := map[key]*agg{}
	var keys []key
	for _, r := range results {
		k := key{r.clients, r.size, r.interval, r.server}
		a := aggs[k]
		if a == nil {
			a = &agg{}
			aggs[k] = a
			keys = append(keys, k)
		}
		a.n++
		a.sent += r.sent
		a.recv += r.recv
		a.peaks = append(a.peaks, r.peakRate)
		if r.steadyRate > 0 {
			a.steadies = append(a.steadies, r.steadyRate)
		}
		a.cpu += r.cpu
		a.host += r.hostCPU
		a.softirq += r.softirqCPU
		a.xdp += r.xdpCPU
		a.dropL += r.dropL
		a.dropR += r.dropR
		a.dropP += r.dropP
		a.dropC += r.dropC
		if r.err != nil {
			a.errs++
		}
	}
	sort.SliceStable(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.interval != b.interval {
			return a.interval > b.interval
		}
		if a.clients != b.clients {
			return a.clients < b.clients
		}
		if a.size != b.size {
			return a.size < b.size
		}
		return serverOrder(a.server) < serverOrder(b.server)
	})
	fmt.Fprintln(w, "| clients | size B | -z ms | server | runs | rt/s steady (median) | rt/s peak (median) | sent | loss | cpu µs/rt | xdp µs/rt | host cpu µs/rt | softirq µs/rt | drops L/R/P/C | errors |")
	fmt.Fprintln(w, "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
	for _, k := range keys {
		a := aggs[k]
		loss := 0.0
		if a.sent > 0 {
			loss = 100 * (1 - float64(a.recv)/float64(a.sent))
		}
		cpuPer, hostPer, softPer, xdpPer := math.NaN(), math.NaN(), math.NaN(), math.NaN()
		if a.recv > 0 {
			xdpPer = float64(a.xdp.Nanoseconds()) / 1000 / float64(a.recv)
			cpuPer = float64(a.cpu.Microseconds()) / float64(a.recv)
			hostPer = float64(a.host.Microseconds()) / float64(a.recv)
			softPer = float64(a.softirq.Microseconds()) / float64(a.recv)
		}
		steady := "-"
		if len(a.steadies) > 0 {
			steady = fmt.Sprintf("%.0f", median(a.steadies))
		}
		fmt.Fprintf(w, "| %d | %d | %d | %s | %d | %s | %.0f | %d | %.2f%% | %.1f | %.2f | %.1f | %.1f | %d/%d/%d/%d | %d |\n",
			k.clients, k.size, k.interval, k.server, a.n, steady, median(a.peaks), a.sent, loss, cpuPer, xdpPer, hostPer, softPer,
			a.dropL, a.dropR, a.dropP, a.dropC, a.errs)
	}
}

// serverOrder sorts the table's rows: snowgate, snowgate-user, baseline, coturn.
func serverOrder(s string) int {
	switch s {
	case "snowgate":
		return 0
	case "snowgate-user":
		return 1
	case "baseline":
		return 2
	}
	return 3
}

// hostCPU reads /proc/stat's first line: busy time of all cores (user,
// nice, system, irq, softirq, steal) and the softirq part.
func hostCPU() (busy, softirq time.Duration) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0
	}
	j := func(i int) uint64 { v, _ := strconv.ParseUint(f[i], 10, 64); return v }
	const hz = 100 // USER_HZ
	busyJ := j(1) + j(2) + j(3) + j(6) + j(7) + j(8)
	return time.Duration(busyJ) * time.Second / hz, time.Duration(j(7)) * time.Second / hz
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}
