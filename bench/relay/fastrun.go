package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/snowgate/snowgate/bench/internal/procstat"
)

// fastOpts configures --gen fast.
type fastOpts struct {
	rates    []int         // offered datagrams/s per step (0: as fast as possible)
	step     time.Duration // sending time per step
	channels int
	batch    int
	genCPU   int // CPU for the client half (taskset; -1: not pinned)
	peerCPU  int // CPU for the peer half (-1: not pinned)
}

// fastResult is one step of one run.
type fastResult struct {
	server string
	size   int
	step   fastStep
	wall   time.Duration // from the client's start line to its end line
	// CPU time over wall: the server process, the generator's client and
	// peer processes, all cores (busy, and its softirq part), and the XDP
	// program's run time.
	srvCPU, genCPU, peerCPU time.Duration
	host, softirq, xdp      time.Duration
	// The NAPI threads' CPU time (--threaded-napi): rly0's is the relay
	// side's receive work (the XDP program's included), out0's the
	// generator side's.
	napiRelay, napiOut time.Duration
	// Receive drops (/proc/net/udp) of the server's listener (L) and relay
	// (R) sockets, the peer's (P) and the client's (C).
	dropL, dropR, dropP, dropC uint64
	dropVeth                   uint64 // rx/tx drops of the veth pair
}

// cpuSample is the CPU counters at one instant.
type cpuSample struct {
	at                 time.Time
	srv, gen, peer     time.Duration
	host, softirq, xdp time.Duration
	napiRelay, napiOut time.Duration
	dropL, dropR       uint64
	dropP, dropC       uint64
	dropVeth           uint64
}

// sockDrops sums the receive drops of pid's UDP sockets: those bound to
// listenPort, and the others.
func sockDrops(pid, listenPort int) (listen, other uint64) {
	if pid <= 0 {
		return 0, 0
	}
	tab := udpTable(pid)
	for ino := range socketInodes(pid) {
		if s, ok := tab[ino]; ok {
			if s.port == listenPort {
				listen += s.drops
			} else {
				other += s.drops
			}
		}
	}
	return listen, other
}

func (e benchEnv) sampleCPU(srv, gen, peer, port int) cpuSample {
	s := cpuSample{at: time.Now()}
	if srv > 0 {
		s.srv, _ = procstat.CPUTime(srv)
	}
	s.gen, _ = procstat.CPUTime(gen)
	s.peer, _ = procstat.CPUTime(peer)
	s.host, s.softirq = hostCPU()
	s.xdp, _, _ = e.lab.xdpRuntime()
	s.napiRelay, s.napiOut = e.lab.napiCPU("rly0"), e.lab.napiCPU("out0")
	s.dropL, s.dropR = sockDrops(srv, port)
	_, s.dropC = sockDrops(gen, -1)
	_, s.dropP = sockDrops(peer, -1)
	s.dropVeth = e.lab.vethDrops()
	return s
}

// pinned returns name args prefixed with taskset -c cpu (cpu < 0: as is).
func pinned(cpu int, name string, args ...string) (string, []string) {
	if cpu < 0 {
		return name, args
	}
	return "taskset", append([]string{"-c", strconv.Itoa(cpu), name}, args...)
}

// runFast runs the fast generator's steps against server ("none": no
// server, the client sends into the relay namespace where nothing listens,
// which measures the generator's own send rate).
func (e benchEnv) runFast(server string, size int, o fastOpts) ([]fastResult, error) {
	if e.lab == nil {
		return nil, fmt.Errorf("--gen fast needs --netns")
	}
	logf, err := os.Create(filepath.Join(e.dir, fmt.Sprintf("fast-%s-%d-%d.log", server, size, time.Now().UnixNano())))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	const port, peerPort = 3478, 3480
	if err := e.lab.prime(); err != nil {
		return nil, err
	}
	peerAddr := netnsPeerIP + ":" + strconv.Itoa(peerPort)
	maxTime := time.Duration(len(o.rates))*(o.step+3*time.Second) + 90*time.Second
	name, args := pinned(o.peerCPU, self, "fastgen-peer", "--listen", peerAddr, "--batch", strconv.Itoa(o.batch),
		"--max-time", maxTime.String())
	name, args = command(e.lab.outside, name, args...)
	peer, err := start(name, args, logf)
	if err != nil {
		return nil, err
	}
	defer peer.stop()
	srvPid := 0
	if server != "none" {
		srv, err := e.startServer(server, port, netnsRelayIP, netnsPeerIP, e.lab.relay, fmt.Sprintf("fast-s%d", size), logf)
		if err != nil {
			return nil, err
		}
		defer srv.stop()
		if err := waitUDP(srv.pid(), port, 5*time.Second); err != nil {
			return nil, err
		}
		srvPid = srv.pid()
	}
	if err := waitUDP(peer.pid(), peerPort, 5*time.Second); err != nil {
		return nil, fmt.Errorf("fastgen-peer: %w", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), maxTime)
	defer cancel()
	rates := make([]string, len(o.rates))
	for i, r := range o.rates {
		rates[i] = strconv.Itoa(r)
	}
	cargs := []string{"fastgen-client", "--server", netnsRelayIP + ":" + strconv.Itoa(port), "--peer", peerAddr,
		"--local", netnsClientIP, "--channels", strconv.Itoa(o.channels), "--size", strconv.Itoa(size),
		"--rates", strings.Join(rates, ","), "--step", o.step.String(), "--batch", strconv.Itoa(o.batch)}
	if server == "none" {
		cargs = append(cargs, "--no-control")
	}
	name, args = pinned(o.genCPU, self, cargs...)
	name, args = command(e.lab.outside, name, args...)
	cl := exec.CommandContext(ctx, name, args...)
	cl.Stderr = logf
	stdout, err := cl.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cl.Start(); err != nil {
		return nil, fmt.Errorf("start fastgen-client: %w", err)
	}
	var out []fastResult
	var s0 cpuSample
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(logf, line)
		switch {
		case strings.HasPrefix(line, "start "):
			s0 = e.sampleCPU(srvPid, cl.Process.Pid, peer.pid(), port)
		case strings.HasPrefix(line, "end "):
			s1 := e.sampleCPU(srvPid, cl.Process.Pid, peer.pid(), port)
			_, st, err := parseFastLine(line)
			if err != nil {
				return out, err
			}
			out = append(out, fastResult{server: server, size: size, step: st, wall: s1.at.Sub(s0.at),
				srvCPU: s1.srv - s0.srv, genCPU: s1.gen - s0.gen, peerCPU: s1.peer - s0.peer,
				host: s1.host - s0.host, softirq: s1.softirq - s0.softirq, xdp: s1.xdp - s0.xdp,
				napiRelay: s1.napiRelay - s0.napiRelay, napiOut: s1.napiOut - s0.napiOut,
				dropL: s1.dropL - s0.dropL, dropR: s1.dropR - s0.dropR, dropP: s1.dropP - s0.dropP, dropC: s1.dropC - s0.dropC,
				dropVeth: s1.dropVeth - s0.dropVeth})
		}
	}
	if err := cl.Wait(); err != nil {
		return out, fmt.Errorf("fastgen-client (log %s): %w", logf.Name(), err)
	}
	return out, nil
}

// fastAgg collects one table row: one server, size and offered rate over
// the repetitions.
type fastAgg struct {
	server       string
	size, rate   int
	sendRates    []float64 // datagrams/s the client sent
	rtRates      []float64 // round trips/s that came back
	losses       []float64 // 1 - recv/sent
	wall         time.Duration
	recv         int64
	srv, gen     time.Duration
	peer, host   time.Duration
	softirq, xdp time.Duration
	napiRelay    time.Duration
	napiOut      time.Duration
	dropL, dropR uint64
	dropP, dropC uint64
	dropVeth     uint64
}

func aggregateFast(results []fastResult) []*fastAgg {
	type key struct {
		server     string
		size, rate int
	}
	m := map[key]*fastAgg{}
	var keys []key
	for _, r := range results {
		k := key{r.server, r.size, r.step.rate}
		a := m[k]
		if a == nil {
			a = &fastAgg{server: r.server, size: r.size, rate: r.step.rate}
			m[k] = a
			keys = append(keys, k)
		}
		secs := r.step.sendTime.Seconds()
		a.sendRates = append(a.sendRates, float64(r.step.sent)/secs)
		a.rtRates = append(a.rtRates, float64(r.step.recv)/secs)
		loss := math.NaN()
		if r.step.sent > 0 {
			loss = 1 - float64(r.step.recv)/float64(r.step.sent)
		}
		a.losses = append(a.losses, loss)
		a.wall += r.wall
		a.recv += r.step.recv
		a.srv += r.srvCPU
		a.gen += r.genCPU
		a.peer += r.peerCPU
		a.host += r.host
		a.softirq += r.softirq
		a.xdp += r.xdp
		a.napiRelay += r.napiRelay
		a.napiOut += r.napiOut
		a.dropL += r.dropL
		a.dropR += r.dropR
		a.dropP += r.dropP
		a.dropC += r.dropC
		a.dropVeth += r.dropVeth
	}
	rateOrder := func(r int) int {
		if r == 0 {
			return math.MaxInt
		}
		return r
	}
	sort.SliceStable(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.size != b.size {
			return a.size < b.size
		}
		if a.server != b.server {
			return fastServerOrder(a.server) < fastServerOrder(b.server)
		}
		return rateOrder(a.rate) < rateOrder(b.rate)
	})
	out := make([]*fastAgg, len(keys))
	for i, k := range keys {
		out[i] = m[k]
	}
	return out
}

func fastServerOrder(s string) int {
	if s == "none" {
		return 10
	}
	return serverOrder(s)
}

func pct(d, wall time.Duration) float64 {
	if wall <= 0 {
		return math.NaN()
	}
	return 100 * d.Seconds() / wall.Seconds()
}

func perRT(d time.Duration, recv int64) float64 {
	if recv <= 0 {
		return math.NaN()
	}
	return float64(d.Nanoseconds()) / 1000 / float64(recv)
}

// printFastTable prints one row per server, size and offered rate, then the
// saturation summary.
func printFastTable(w io.Writer, results []fastResult) {
	aggs := aggregateFast(results)
	fmt.Fprintln(w, "| size B | server | offered dg/s | runs | sent dg/s | rt/s back | loss | server % | rly0 napi % | xdp % | gen % | peer % | out0 napi % | host % (of 200) | softirq % | relay side µs/rt | xdp µs/rt | host µs/rt | drops L/R/P/C/veth |")
	fmt.Fprintln(w, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
	for _, a := range aggs {
		offered := strconv.Itoa(a.rate)
		if a.rate == 0 {
			offered = "max"
		}
		fmt.Fprintf(w, "| %d | %s | %s | %d | %.0f | %.0f | %.2f%% | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.2f | %.2f | %.2f | %d/%d/%d/%d/%d |\n",
			a.size, a.server, offered, len(a.rtRates), median(a.sendRates), median(a.rtRates), 100*median(a.losses),
			pct(a.srv, a.wall), pct(a.napiRelay, a.wall), pct(a.xdp, a.wall), pct(a.gen, a.wall), pct(a.peer, a.wall),
			pct(a.napiOut, a.wall), pct(a.host, a.wall), pct(a.softirq, a.wall),
			perRT(a.srv+a.napiRelay, a.recv), perRT(a.xdp, a.recv), perRT(a.host, a.recv), a.dropL, a.dropR, a.dropP, a.dropC, a.dropVeth)
	}
	fmt.Fprintln(w)
	// Saturation: the highest paced offered rate whose median loss is
	// below 1 %, and the highest median rate of round trips that came back.
	type sat struct {
		lossless int
		maxRT    float64
	}
	sats := map[string]sat{}
	var order []string
	for _, a := range aggs {
		k := fmt.Sprintf("%d|%s", a.size, a.server)
		s, seen := sats[k]
		if !seen {
			order = append(order, k)
		}
		if a.rate > 0 && median(a.losses) < 0.01 && a.rate > s.lossless {
			s.lossless = a.rate
		}
		if r := median(a.rtRates); r > s.maxRT {
			s.maxRT = r
		}
		sats[k] = s
	}
	fmt.Fprintln(w, "| size B | server | highest offered rate with < 1 % loss (dg/s) | max rt/s back | max rt/s ÷ coturn's |")
	fmt.Fprintln(w, "|---:|---|---:|---:|---:|")
	for _, k := range order {
		size, server, _ := strings.Cut(k, "|")
		s := sats[k]
		ratio := "-"
		if c, ok := sats[size+"|coturn"]; ok && c.maxRT > 0 && server != "none" {
			ratio = fmt.Sprintf("%.2f", s.maxRT/c.maxRT)
		}
		fmt.Fprintf(w, "| %s | %s | %d | %.0f | %s |\n", size, server, s.lossless, s.maxRT, ratio)
	}
}

// runFastAll runs every server reps times per size, interleaved (A B C A B
// C …), and prints the tables.
func runFastAll(env benchEnv, servers []string, sizes []int, reps int, o fastOpts) {
	fmt.Fprintf(os.Stderr, "bench: --gen fast, sizes %v × %d reps × %v, rates %v, %v per step, %d channels\n",
		sizes, reps, servers, o.rates, o.step, o.channels)
	var results []fastResult
	for _, size := range sizes {
		for rep := 0; rep < reps; rep++ {
			for _, srv := range servers {
				rs, err := env.runFast(srv, size, o)
				if err != nil && len(rs) == 0 { // a start-up hiccup: one retry
					fmt.Fprintf(os.Stderr, "  %-13s retrying after: %v\n", srv, err)
					time.Sleep(500 * time.Millisecond)
					rs, err = env.runFast(srv, size, o)
				}
				for _, r := range rs {
					secs := r.step.sendTime.Seconds()
					fmt.Fprintf(os.Stderr, "  %-13s size=%-4d rep=%d rate=%-7d sent %.0f/s back %.0f/s srv %.0f%% rly0-napi %.0f%% xdp %.0f%% gen %.0f%% peer %.0f%% out0-napi %.0f%% host %.0f%% drops %d/%d/%d/%d/%d\n",
						srv, size, rep+1, r.step.rate, float64(r.step.sent)/secs, float64(r.step.recv)/secs,
						pct(r.srvCPU, r.wall), pct(r.napiRelay, r.wall), pct(r.xdp, r.wall), pct(r.genCPU, r.wall),
						pct(r.peerCPU, r.wall), pct(r.napiOut, r.wall), pct(r.host, r.wall), r.dropL, r.dropR, r.dropP, r.dropC, r.dropVeth)
				}
				if err != nil {
					fmt.Fprintf(os.Stderr, "  %-13s size=%d rep=%d: %v\n", srv, size, rep+1, err)
				}
				results = append(results, rs...)
			}
		}
	}
	printFastTable(os.Stdout, results)
}
