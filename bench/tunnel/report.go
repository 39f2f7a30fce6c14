package main

import (
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

// report collects the results and writes them as markdown.
type report struct {
	o          *options
	tput       tputResults
	tputSetups []*tputSetup
	setup      *setupResults
	idle       []idleResult
}

// anchors: the setup each throughput row is compared with.
var tputAnchor = map[string]string{
	"wireguard-go":     "no tunnel",
	"snowgate direct":  "wireguard-go",
	"snowgate relayed": "snowgate direct",
}

// Targets (issue 13).
const (
	targetDirect  = 0.95 // direct ≥ 0.95× wireguard-go
	targetRelayed = 0.8  // relayed ≥ 0.8× direct
	targetSetupMS = 100  // direct, 0 ms: median < 100 ms
	targetWakeups = 20   // idle client ≤ 20 wake-ups per minute
)

func (r *report) write(w io.Writer) error {
	var b strings.Builder
	if r.tput != nil {
		r.writeThroughput(&b)
	}
	if r.setup != nil {
		r.writeSetup(&b)
	}
	if r.idle != nil {
		r.writeIdle(&b)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// ratios are the per-repetition ratios of a's rate to b's (the runs of one repetition are adjacent).
func ratios(a, b []tputSample) []float64 {
	var out []float64
	for i := range min(len(a), len(b)) {
		if b[i].gbps > 0 {
			out = append(out, a[i].gbps/b[i].gbps)
		}
	}
	return out
}

func gbpsOf(s []tputSample) []float64 {
	out := make([]float64, len(s))
	for i, x := range s {
		out[i] = x.gbps
	}
	return out
}

func cpuOf(s []tputSample, side string) []float64 {
	var out []float64
	for _, x := range s {
		if v, ok := x.cpuGB[side]; ok && !math.IsInf(v, 0) && !math.IsNaN(v) {
			out = append(out, v)
		}
	}
	return out
}

func (r *report) writeThroughput(b *strings.Builder) {
	o := r.o.tput
	fmt.Fprintf(b, "### Throughput\n\n")
	fmt.Fprintf(b, "iperf3 from the client host to the resource (↑) and back (↓, `-R`); TCP %g s per run; UDP 1200-byte "+
		"datagrams at the highest rate with < %.1f %% loss: %d probes of %g s, the first at 1.5× the single-stream TCP rate of the "+
		"same setup and direction, then a geometric bisection down to 1/%g of it; later repetitions %d probes within ±50 %% of "+
		"the last rate; `-l 1200 -w 4M`; 0 means no probe passed). %d repetitions, the four setups interleaved in each "+
		"(order rotated). Gbit/s: median (range). Ratio: median (range) of the per-repetition ratios to the anchor. CPU: "+
		"utime+stime of the tunnel's processes (all threads) per GB received, median.\n\n",
		o.tcpSeconds, udpLossLimit, o.udpSteps, o.udpSeconds, o.udpSpan, o.udpRefine, o.reps)
	b.WriteString("| test | setup | Gbit/s | ratio | anchor | client CPU s/GB | gateway CPU s/GB | relay CPU s/GB |\n")
	b.WriteString("|---|---|---:|---:|---|---:|---:|---:|\n")
	var verdicts []string
	for _, t := range tputTests {
		for _, s := range r.tputSetups {
			smp := r.tput[t.name][s.name]
			ratio, anchor := "–", tputAnchor[s.name]
			if anchor != "" {
				rs := ratios(smp, r.tput[t.name][anchor])
				ratio = medSpan(rs, "%.2f")
				target := 0.0
				switch s.name {
				case "snowgate direct":
					target = targetDirect
				case "snowgate relayed":
					target = targetRelayed
				}
				if target > 0 && len(rs) > 0 {
					verdict := "met"
					if median(rs) < target {
						verdict = "**missed**"
					}
					verdicts = append(verdicts, fmt.Sprintf("%s, %s: %.2f× %s (target ≥ %.2f×): %s", t.name, s.name, median(rs), anchor, target, verdict))
				}
			}
			cpu := func(side string) string {
				xs := cpuOf(smp, side)
				if len(xs) == 0 {
					return "–"
				}
				return fmt.Sprintf("%.2f", median(xs))
			}
			fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", t.name, s.name, medSpan(gbpsOf(smp), "%.3f"),
				ratio, dash(anchor), cpu("client"), cpu("gateway"), cpu("relay"))
		}
	}
	b.WriteString("\nTargets:\n\n")
	for _, v := range verdicts {
		fmt.Fprintf(b, "- %s\n", v)
	}
	b.WriteString("\n")
}

func dash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

func (r *report) writeSetup(b *strings.Builder) {
	res := r.setup
	fmt.Fprintf(b, "### Connection setup\n\n")
	fmt.Fprintf(b, "From the first packet to a resource with no connection to its reply (`ping -c 1`, its time), %d fresh flows "+
		"per row, the three targets interleaved flow by flow. snowgate: before each flow the client roams (SIGHUP: new key, "+
		"new portal session, every connection dropped) and the benchmark waits until it has joined the portal and its relay "+
		"allocations are ready, so each flow runs create_flow, ICE and the WireGuard handshake from scratch. Stages from the "+
		"client's log (medians): *portal* first packet → flow_created (the portal's round trip including the gateway's "+
		"authorisation), *ICE* → nominated pair, *handshake* → WireGuard session up, *rest* the buffered ping's trip and its "+
		"reply. wireguard-go: the client's peer is removed and re-added before each flow (handshake + echo). Latency: "+
		"each NAT router delays every packet it forwards, in each direction, by the row's one-way latency (by %s), so the "+
		"client–gateway round trip grows by 4× it and the client–portal one by 2×.\n\n", r.o.flows, dash(res.method))
	b.WriteString("| one-way router latency | path | flows | median ms | p95 ms | × wireguard-go | portal | ICE | handshake | rest | failed |\n")
	b.WriteString("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	var verdicts []string
	for _, lat := range res.latencies {
		anchor := totals(res.samples[lat]["wireguard-go"])
		for _, name := range []string{"wireguard-go", "snowgate direct", "snowgate relayed"} {
			smp := res.samples[lat][name]
			tot := totals(smp)
			st := func(f func(setupSample) float64) string {
				var xs []float64
				for _, s := range smp {
					if s.staged {
						xs = append(xs, f(s))
					}
				}
				if len(xs) == 0 {
					return "–"
				}
				return fmt.Sprintf("%.1f", median(xs))
			}
			ratio := "–"
			if name != "wireguard-go" && len(anchor) > 0 && len(tot) > 0 {
				ratio = fmt.Sprintf("%.1f", median(tot)/median(anchor))
			}
			fmt.Fprintf(b, "| %v | %s | %d | %.1f | %.1f | %s | %s | %s | %s | %s | %d |\n", lat, name, len(tot), median(tot),
				quantile(tot, 0.95), ratio,
				st(func(s setupSample) float64 { return s.portal }), st(func(s setupSample) float64 { return s.ice }),
				st(func(s setupSample) float64 { return s.handshake }), st(func(s setupSample) float64 { return s.fwd }),
				res.failures[lat][name])
			if name == "snowgate direct" && lat == 0 && len(tot) > 0 {
				verdict := "met"
				if median(tot) >= targetSetupMS {
					verdict = "**missed**"
				}
				verdicts = append(verdicts, fmt.Sprintf("direct at 0 ms: median %.1f ms (target < %d ms): %s", median(tot), targetSetupMS, verdict))
			}
		}
	}
	b.WriteString("\nTargets:\n\n")
	for _, v := range verdicts {
		fmt.Fprintf(b, "- %s\n", v)
	}
	b.WriteString("\n")
}

func totals(s []setupSample) []float64 {
	out := make([]float64, len(s))
	for i, x := range s {
		out[i] = x.total
	}
	return out
}

func (r *report) writeIdle(b *strings.Builder) {
	fmt.Fprintf(b, "### Idle\n\n")
	fmt.Fprintf(b, "One process with %d idle connections, measured over the same %v window side by side. snowgate: the "+
		"kernel-mode client with one flow to each of %d resources, each behind its own gateway (%d userspace gateways, "+
		"gateway.Run as `snowgate-gateway --userspace` runs it, in one helper process on the gateway host), measured once "+
		"every connection reported idle. wireguard-go: the upstream program with %d peers at a 25 s persistent keepalive "+
		"(the peers are wireguard-go devices in one helper process on an internet host). *wake-ups*: voluntary + involuntary "+
		"context switches summed over the process's threads (/proc/<pid>/task/*/status); *node*: snowgate's own timer "+
		"wake-up counter (snowgate_node_wakeups_total); packets: nftables counters on the client host (UDP: the tunnel's "+
		"keepalives and anything else; TCP: the portal's WebSocket).\n\n", r.o.idleConns, r.o.idle, r.o.idleConns, r.o.idleConns, r.o.idleConns)
	b.WriteString("| process | wake-ups/min | node wake-ups/min | UDP out pkt/min | UDP out B/min | UDP in pkt/min | TCP out pkt/min | TCP in pkt/min | RSS MB | threads |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, x := range r.idle {
		node := "–"
		if !math.IsNaN(x.nodeWakeups) {
			node = fmt.Sprintf("%.1f", x.nodeWakeups)
		}
		fmt.Fprintf(b, "| %s | %.1f | %s | %.1f | %.0f | %.1f | %.1f | %.1f | %.1f | %d |\n", x.name, x.wakeups, node,
			x.udpOut, x.udpOutBytes, x.udpIn, x.tcpOut, x.tcpIn, float64(x.rssKB)/1024, x.threads)
	}
	if len(r.idle) > 0 {
		x := r.idle[0]
		verdict := "met"
		if x.wakeups > targetWakeups {
			verdict = "**missed**"
		}
		fmt.Fprintf(b, "\nTarget: ≤ %d wake-ups per minute for the whole client process: %.1f/min over %v: %s\n\n",
			targetWakeups, x.wakeups, x.window.Round(time.Second), verdict)
	}
}
