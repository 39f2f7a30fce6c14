package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/snowgate/snowgate/internal/netlab"
)

// setupSample is one fresh flow: ping's time from the first packet to its reply, and (snowgate)
// the stages from the client's log, all in milliseconds.
type setupSample struct {
	total                       float64
	portal, ice, handshake, fwd float64
	staged                      bool
}

var pingTime = regexp.MustCompile(`time=([0-9.]+) ms`)

// firstPing sends one ping (waiting up to 10 s for the reply) and returns its round-trip time in ms.
func firstPing(ctx context.Context, ns *netlab.Namespace, addr string) (float64, error) {
	out, err := nsRun(ctx, ns, 15*time.Second, "ping", "-n", "-c", "1", "-W", "10", addr)
	m := pingTime.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no reply: %v: %s", err, strings.TrimSpace(out))
	}
	return strconv.ParseFloat(m[1], 64)
}

// logLine is the part of a JSON log line the stage breakdown reads.
type logLine struct {
	Time time.Time `json:"time"`
	Msg  string    `json:"msg"`
}

// stageTimes returns the time of the first log line with each of msgs (zero if absent).
func stageTimes(logs string, msgs ...string) []time.Time {
	out := make([]time.Time, len(msgs))
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l logLine
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		for i, m := range msgs {
			if out[i].IsZero() && l.Msg == m {
				out[i] = l.Time
			}
		}
	}
	return out
}

// The client's log lines that mark the stages of a new flow.
const (
	msgFirstPacket = "first packet for a resource: requesting a flow" // client/core, debug
	msgFlowCreated = "connecting to gateway"                          // client/core: flow_created arrived
	msgNominated   = "ice pair nominated"                             // node (connsm), debug
	msgConnected   = "connected to gateway"                           // client/core: WireGuard handshake done
)

// breakdown fills the stages of s from the client's log of one flow.
func breakdown(s *setupSample, logs string) {
	t := stageTimes(logs, msgFirstPacket, msgFlowCreated, msgNominated, msgConnected)
	for _, x := range t {
		if x.IsZero() {
			return
		}
	}
	ms := func(a, b time.Time) float64 { return float64(b.Sub(a)) / float64(time.Millisecond) }
	s.portal, s.ice, s.handshake = ms(t[0], t[1]), ms(t[1], t[2]), ms(t[2], t[3])
	s.fwd = s.total - ms(t[0], t[3])
	s.staged = true
}

// freshFlow makes the client roam (new key, new portal session, no connection), waits until it is
// ready again, and times the first ping to the resource through a new flow.
func (w *world) freshFlow(ctx context.Context) (setupSample, error) {
	w.roam(ctx)
	off := w.client.logSize()
	rtt, err := firstPing(ctx, w.Client.Namespace, resourceAddr)
	if err != nil {
		return setupSample{}, err
	}
	s := setupSample{total: rtt}
	// The "connected" line may be written just after the reply arrived.
	_ = eventually(ctx, 2*time.Second, 20*time.Millisecond, func() error {
		if !strings.Contains(w.client.logSince(off), msgConnected) {
			return fmt.Errorf("no %q yet", msgConnected)
		}
		return nil
	})
	breakdown(&s, w.client.logSince(off))
	return s, nil
}

// freshWGFlow removes and re-adds wireguard-go's peer and times the first ping (handshake + echo).
func (p *wgPair) freshFlow(ctx context.Context) (setupSample, error) {
	p.resetPeer(ctx)
	rtt, err := firstPing(ctx, p.l.Client.Namespace, resourceAddr)
	return setupSample{total: rtt}, err
}

// setupTarget is one thing whose connection setup is measured.
type setupTarget struct {
	name  string
	fresh func(context.Context) (setupSample, error)
	labs  []*lab // their routers get the latency
}

// setupResults: latency label → target → samples; failures counted separately.
type setupResults struct {
	latencies []time.Duration
	samples   map[time.Duration]map[string][]setupSample
	failures  map[time.Duration]map[string]int
	// method is how the latency was made: "netem" or "nfqueue".
	method string
}

// runSetup measures flows fresh flows per target and latency, the targets interleaved flow by flow.
// The latency is a one-way delay on the client's and the gateway's NAT routers (lab.setLatency).
func runSetup(ctx context.Context, targets []setupTarget, flows int, latencies []time.Duration, self string) (setupResults, error) {
	r := setupResults{latencies: latencies, samples: map[time.Duration]map[string][]setupSample{},
		failures: map[time.Duration]map[string]int{}}
	for _, lat := range latencies {
		r.failures[lat] = map[string]int{}
		r.samples[lat] = map[string][]setupSample{}
		for _, t := range targets {
			for _, l := range t.labs {
				how, err := l.setLatency(ctx, self, lat)
				if err != nil {
					return r, fmt.Errorf("latency %v: %w", lat, err)
				}
				if lat > 0 {
					r.method = how
				}
			}
		}
		for i := 0; i < flows; i++ {
			for k := range targets {
				t := targets[(k+i)%len(targets)]
				if err := ctx.Err(); err != nil {
					return r, err
				}
				s, err := t.fresh(ctx)
				if err != nil {
					log.Printf("setup %v %s flow %d: %v", lat, t.name, i+1, err)
					r.failures[lat][t.name]++
					continue
				}
				r.samples[lat][t.name] = append(r.samples[lat][t.name], s)
				if s.staged {
					log.Printf("setup %v %-18s flow %2d: %7.1f ms (portal %.1f, ICE %.1f, handshake %.1f, rest %.1f)",
						lat, t.name, i+1, s.total, s.portal, s.ice, s.handshake, s.fwd)
				} else {
					log.Printf("setup %v %-18s flow %2d: %7.1f ms", lat, t.name, i+1, s.total)
				}
			}
		}
	}
	// Leave the labs without latency.
	for _, t := range targets {
		for _, l := range t.labs {
			_, _ = l.setLatency(ctx, self, 0)
		}
	}
	return r, nil
}
