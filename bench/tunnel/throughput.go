package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/snowgate/snowgate/bench/internal/procstat"
	"github.com/snowgate/snowgate/internal/netlab"
)

// side is one end of a tunnel whose CPU time is measured: its processes' utime+stime summed.
type side struct {
	name  string
	procs []*proc
}

func (s side) cpu() time.Duration {
	var sum time.Duration
	for _, p := range s.procs {
		if d, err := procstat.CPUTime(p.pid()); err == nil {
			sum += d
		}
	}
	return sum
}

// tputSetup is one way from the client host to an iperf3 server: no tunnel, plain wireguard-go,
// snowgate direct or relayed.
type tputSetup struct {
	name  string
	ns    *netlab.Namespace
	addr  string
	port  int
	sides []side
}

// tputTest is one iperf3 measurement: TCP with n streams or UDP at the highest rate with < 0.1 %
// loss; up is client → resource, down (iperf3 -R) resource → client.
type tputTest struct {
	name    string
	udp     bool
	streams int
	reverse bool
}

var tputTests = []tputTest{
	{"TCP, 1 stream, client → resource", false, 1, false},
	{"TCP, 1 stream, resource → client", false, 1, true},
	{"TCP, 4 streams, client → resource", false, 4, false},
	{"TCP, 4 streams, resource → client", false, 4, true},
	{"UDP 1200 B, client → resource", true, 1, false},
	{"UDP 1200 B, resource → client", true, 1, true},
}

// tputSample is one measurement of one setup.
type tputSample struct {
	gbps    float64
	cpuGB   map[string]float64 // side → CPU-seconds per GB received
	lossPct float64
	offered float64 // UDP: the offered rate (Gbit/s) of the probe that passed
	probes  int
}

// iperfEnd is the part of iperf3 -J's "end" object the benchmark reads.
type iperfEnd struct {
	End struct {
		SumReceived *iperfSum `json:"sum_received"`
		Sum         *iperfSum `json:"sum"`
	} `json:"end"`
	Error string `json:"error"`
}

type iperfSum struct {
	Seconds     float64 `json:"seconds"`
	Bytes       float64 `json:"bytes"`
	BitsPerSec  float64 `json:"bits_per_second"`
	LostPercent float64 `json:"lost_percent"`
	Packets     float64 `json:"packets"`
}

// udpLossLimit is the loss (percent) a UDP rate must stay under.
const udpLossLimit = 0.1

// iperf runs one iperf3 client in the setup and returns the received rate and the sides' CPU per GB.
func (s *tputSetup) iperf(ctx context.Context, seconds float64, t tputTest, rate float64) (tputSample, error) {
	args := []string{"-c", s.addr, "-p", strconv.Itoa(s.port), "-J", "-t", strconv.FormatFloat(seconds, 'f', -1, 64)}
	if t.udp {
		// 4 MB socket buffers: with the default 208 KB the receiving iperf3 itself drops bursts.
		args = append(args, "-u", "-l", "1200", "-w", "4M", "-b", strconv.FormatFloat(rate*1e9, 'f', 0, 64))
	} else {
		args = append(args, "-P", strconv.Itoa(t.streams))
	}
	if t.reverse {
		args = append(args, "-R")
	}
	before := make([]time.Duration, len(s.sides))
	for i, sd := range s.sides {
		before[i] = sd.cpu()
	}
	out, err := nsRun(ctx, s.ns, time.Duration(seconds*float64(time.Second))+30*time.Second, "iperf3", args...)
	after := make([]time.Duration, len(s.sides))
	for i, sd := range s.sides {
		after[i] = sd.cpu()
	}
	var res iperfEnd
	i := strings.IndexByte(out, '{')
	if i < 0 {
		return tputSample{}, fmt.Errorf("iperf3 %s: %v: %.300s", strings.Join(args, " "), err, out)
	}
	if jerr := json.Unmarshal([]byte(out[i:]), &res); jerr != nil || res.Error != "" {
		return tputSample{}, fmt.Errorf("iperf3 %s: %v %v %s: %.300s", strings.Join(args, " "), err, jerr, res.Error, out)
	}
	rx, all := res.End.SumReceived, res.End.Sum
	if rx == nil {
		rx = all
	}
	if all == nil {
		all = rx
	}
	if rx == nil || rx.Seconds == 0 {
		return tputSample{}, fmt.Errorf("iperf3 %s: no summary: %.300s", strings.Join(args, " "), out)
	}
	// sum_received is what arrived (UDP: without the lost datagrams); sum carries UDP's loss.
	smp := tputSample{gbps: rx.BitsPerSec / 1e9, lossPct: all.LostPercent, cpuGB: map[string]float64{}, offered: rate}
	sum := rx
	gb := smp.gbps * sum.Seconds / 8
	for i, sd := range s.sides {
		if gb > 0 {
			smp.cpuGB[sd.name] = (after[i] - before[i]).Seconds() / gb
		}
	}
	return smp, nil
}

// udpSearch finds the highest UDP rate with < 0.1 % loss: a probe at hi, then a geometric bisection
// between lo (assumed to pass) and hi for steps-1 more probes. The result is the passing probe with
// the highest received rate (0 Gbit/s if none passed).
func (s *tputSetup) udpSearch(ctx context.Context, seconds float64, t tputTest, lo, hi float64, steps int) (tputSample, error) {
	var best tputSample
	best.cpuGB = map[string]float64{}
	probes := 0
	rate := hi
	for i := 0; i < steps; i++ {
		smp, err := s.iperf(ctx, seconds, t, rate)
		if err != nil {
			return best, err
		}
		probes++
		pass := smp.lossPct < udpLossLimit
		log.Printf("  %s %s: offered %.3f Gbit/s → %.3f Gbit/s, loss %.3f%% (%v)", s.name, t.name, rate, smp.gbps, smp.lossPct, pass)
		if pass && smp.gbps > best.gbps {
			best = smp
		}
		if pass {
			if i == 0 {
				break // the sender's limit is below hi
			}
			lo = rate
		} else {
			hi = rate
		}
		rate = math.Sqrt(lo * hi)
	}
	best.probes = probes
	return best, nil
}

// tputOptions are the throughput benchmark's knobs.
type tputOptions struct {
	reps                int
	tcpSeconds          float64
	udpSeconds          float64
	udpSteps, udpRefine int
	udpHi               float64 // Gbit/s, first probe when no TCP rate is known
	udpSpan             float64 // the first search covers [hi/udpSpan, hi]
}

// tcpTwin is the single-stream TCP test in t's direction.
func tcpTwin(t tputTest) tputTest {
	for _, x := range tputTests {
		if !x.udp && x.streams == 1 && x.reverse == t.reverse {
			return x
		}
	}
	return t
}

// tputResults holds every sample: test → setup → one per repetition.
type tputResults map[string]map[string][]tputSample

// runThroughput runs every test on every setup, interleaved: for each repetition and test, the
// setups one after the other, their order rotated by one each repetition.
func runThroughput(ctx context.Context, setups []*tputSetup, o tputOptions) (tputResults, error) {
	res := tputResults{}
	lastUDP := map[string]float64{} // test/setup → last found rate (Gbit/s), to narrow later searches
	for rep := 0; rep < o.reps; rep++ {
		for _, t := range tputTests {
			if res[t.name] == nil {
				res[t.name] = map[string][]tputSample{}
			}
			for k := range setups {
				s := setups[(k+rep)%len(setups)]
				if err := ctx.Err(); err != nil {
					return res, err
				}
				var smp tputSample
				var err error
				if t.udp {
					key := t.name + "/" + s.name
					if r := lastUDP[key]; r > 0 {
						smp, err = s.udpSearch(ctx, o.udpSeconds, t, r/1.5, r*1.5, o.udpRefine)
					} else {
						// Start at 1.5× this repetition's single-stream TCP rate in the same direction.
						hi := o.udpHi
						if tcp := res[tcpTwin(t).name][s.name]; len(tcp) > rep && tcp[rep].gbps > 0 {
							hi = 1.5 * tcp[rep].gbps
						}
						smp, err = s.udpSearch(ctx, o.udpSeconds, t, hi/o.udpSpan, hi, o.udpSteps)
					}
					if smp.gbps > 0 {
						lastUDP[key] = smp.offered
					}
				} else {
					smp, err = s.iperf(ctx, o.tcpSeconds, t, 0)
				}
				if err != nil {
					return res, fmt.Errorf("%s, %s: %w", s.name, t.name, err)
				}
				log.Printf("rep %d %-36s %-18s %6.3f Gbit/s %v", rep+1, t.name, s.name, smp.gbps, fmtCPU(smp.cpuGB))
				res[t.name][s.name] = append(res[t.name][s.name], smp)
			}
		}
	}
	return res, nil
}

func fmtCPU(m map[string]float64) string {
	var parts []string
	for _, k := range []string{"client", "gateway", "relay"} {
		if v, ok := m[k]; ok {
			parts = append(parts, fmt.Sprintf("%s %.2f s/GB", k, v))
		}
	}
	return strings.Join(parts, ", ")
}
