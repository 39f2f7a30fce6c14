package main

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"log"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/snowgate/snowgate/internal/netlab"
)

// idleResult is one process with many idle connections, measured over a window.
type idleResult struct {
	name        string
	conns       int
	window      time.Duration
	wakeups     float64 // context switches (voluntary + involuntary, all threads) per minute
	nodeWakeups float64 // snowgate's own wake-up counter per minute (NaN for wireguard-go)
	udpOut      float64 // UDP datagrams per minute leaving the host (keepalives and anything else)
	udpOutBytes float64 // their bytes per minute
	udpIn       float64
	tcpOut      float64 // TCP segments per minute leaving the host (the portal's WebSocket)
	tcpIn       float64
	rssKB       uint64
	threads     int
}

// counterTable counts the host's UDP and TCP packets in each direction.
const counterTable = `table inet benchcount {
	chain out { type filter hook output priority 0; policy accept; meta l4proto udp counter; meta l4proto tcp counter; }
	chain in { type filter hook input priority 0; policy accept; meta l4proto udp counter; meta l4proto tcp counter; }
}
`

var counterRe = regexp.MustCompile(`meta l4proto (udp|tcp) counter packets (\d+) bytes (\d+)`)

// counters returns packets and bytes per "out/udp", "in/tcp"... of the namespace's counter table.
func counters(ctx context.Context, ns *netlab.Namespace) (map[string][2]float64, error) {
	out, err := nsRun(ctx, ns, 10*time.Second, "nft", "list", "table", "inet", "benchcount")
	if err != nil {
		return nil, err
	}
	res := map[string][2]float64{}
	chain := ""
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "chain ") {
			chain = strings.Fields(line)[1]
		}
		if m := counterRe.FindStringSubmatch(line); m != nil {
			p, _ := strconv.ParseFloat(m[2], 64)
			b, _ := strconv.ParseFloat(m[3], 64)
			res[chain+"/"+m[1]] = [2]float64{p, b}
		}
	}
	return res, nil
}

// installCounters adds the counter table to ns.
func (l *lab) installCounters(ctx context.Context, ns *netlab.Namespace) {
	l.sh(ctx, ns, "nft -f - <<'EOF'\n"+counterTable+"EOF")
}

// metricSum sums the samples of a Prometheus metric in the client's /metrics (NaN if absent).
func metricSum(ctx context.Context, ns *netlab.Namespace, url, name string) float64 {
	out, err := nsRun(ctx, ns, 5*time.Second, "curl", "-fsS", "--max-time", "3", url)
	if err != nil {
		return math.NaN()
	}
	sum, found := 0.0, false
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum, found = sum+v, true
		}
	}
	if !found {
		return math.NaN()
	}
	return sum
}

// measureIdle samples pid's context switches, the namespace's packet counters and (if metrics is
// set) the node's wake-up counter at the start and the end of window.
func measureIdle(ctx context.Context, name string, conns int, pid int, ns *netlab.Namespace, metrics string, window time.Duration) (idleResult, error) {
	r := idleResult{name: name, conns: conns, window: window, nodeWakeups: math.NaN()}
	node := func() float64 {
		if metrics == "" {
			return math.NaN()
		}
		return metricSum(ctx, ns, metrics, "snowgate_node_wakeups_total")
	}
	c0, err := ctxSwitches(pid)
	if err != nil {
		return r, err
	}
	n0 := node()
	k0, err := counters(ctx, ns)
	if err != nil {
		return r, err
	}
	start := time.Now()
	select {
	case <-ctx.Done():
		return r, ctx.Err()
	case <-time.After(window):
	}
	c1, err := ctxSwitches(pid)
	if err != nil {
		return r, err
	}
	elapsed := time.Since(start)
	n1 := node()
	k1, err := counters(ctx, ns)
	if err != nil {
		return r, err
	}
	per := func(d float64) float64 { return d / elapsed.Minutes() }
	r.window = elapsed
	r.wakeups = per(float64(c1 - c0))
	r.nodeWakeups = per(n1 - n0)
	r.udpOut, r.udpOutBytes = per(k1["out/udp"][0]-k0["out/udp"][0]), per(k1["out/udp"][1]-k0["out/udp"][1])
	r.udpIn = per(k1["in/udp"][0] - k0["in/udp"][0])
	r.tcpOut, r.tcpIn = per(k1["out/tcp"][0]-k0["out/tcp"][0]), per(k1["in/tcp"][0]-k0["in/tcp"][0])
	r.rssKB, _ = statusKB(pid, "VmRSS")
	if th, err := statusKB(pid, "Threads"); err == nil {
		r.threads = int(th)
	}
	return r, nil
}

// idleSnowgate builds a lab whose gateway host runs conns userspace gateways (one process, see
// helperGateways), each the only gateway of a site with one resource, starts the kernel-mode
// client, opens one flow to every resource and waits until every connection is idle.
func idleSnowgate(ctx context.Context, root *benchTB, bins, self string, conns int) *world {
	w := newWorld(ctx, root, "idle", bins, netlab.StandardOptions{}, conns)
	resIf := w.Resource.Iface(w.Resources).Name
	var b strings.Builder
	for i := range conns {
		fmt.Fprintf(&b, "ip addr add %s/32 dev %s\n", resourceN(i), resIf)
	}
	w.sh(ctx, w.Resource.Namespace, b.String())
	w.start(w.Gateway.Namespace, "gateways", nil, self, "helper-gateways", "-n", strconv.Itoa(conns))
	w.startClient(ctx)
	w.installCounters(ctx, w.Client.Namespace)
	log.Printf("idle: opening %d flows", conns)
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	errs := make([]error, conns)
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = eventually(ctx, 90*time.Second, 200*time.Millisecond, func() error {
				out, err := nsRun(ctx, w.Client.Namespace, 10*time.Second, "ping", "-n", "-c", "1", "-W", "3", resourceN(i))
				if err != nil {
					return fmt.Errorf("%s: %v: %s", resourceN(i), err, strings.TrimSpace(out))
				}
				return nil
			})
		}()
	}
	wg.Wait()
	for _, err := range errs {
		w.must(err, "idle flow")
	}
	log.Printf("idle: %d flows up; waiting for the connections to go idle", conns)
	w.must(eventually(ctx, 120*time.Second, time.Second, func() error {
		st, err := w.clientStatus()
		if err != nil {
			return err
		}
		idle := 0
		for _, c := range st.Connections {
			if c.State == "established" && c.Idle {
				idle++
			}
		}
		if idle < conns {
			return fmt.Errorf("%d of %d connections idle (%d connections)", idle, conns, len(st.Connections))
		}
		return nil
	}), "connections did not go idle")
	return w
}

// wgIdle builds a lab with upstream wireguard-go on the client host with conns peers at a 25 s
// persistent keepalive; the peers are wireguard-go devices in one helper process on relay1's host
// (on the internet), and waits until every peer completed a handshake.
func wgIdle(ctx context.Context, root *benchTB, bins, self string, conns int) (*lab, *proc) {
	l := newLab(root, "wgidle", netlab.StandardOptions{})
	ckey, err := ecdh.X25519().GenerateKey(rand.Reader)
	l.must(err, "key")
	cpub := base64.StdEncoding.EncodeToString(ckey.PublicKey().Bytes())
	var keys, peers strings.Builder
	for i := range conns {
		k, err := ecdh.X25519().GenerateKey(rand.Reader)
		l.must(err, "key")
		fmt.Fprintf(&keys, "%s %d\n", base64.StdEncoding.EncodeToString(k.Bytes()), 52000+i)
		fmt.Fprintf(&peers, " peer %s endpoint %s:%d allowed-ips 100.127.1.%d/32 persistent-keepalive 25",
			base64.StdEncoding.EncodeToString(k.PublicKey().Bytes()), l.Relay1.Addr4(), 52000+i, i+1)
	}
	kf := filepath.Join(l.dir, "peers.keys")
	if err := os.WriteFile(kf, []byte(keys.String()), 0o600); err != nil {
		l.tb.Fatalf("%v", err)
	}
	l.start(l.Relay1.Namespace, "wgpeers", nil, self, "helper-wgpeers", "-keys", kf, "-peer", cpub)
	dev := wgDev(l, "i")
	p := l.startWG(ctx, filepath.Join(bins, "wireguard-go"), l.Client.Namespace, dev)
	l.installCounters(ctx, l.Client.Namespace)
	// The helper needs a moment to open its 100 sockets; handshakes to a closed port are retried.
	l.sh(ctx, l.Client.Namespace, fmt.Sprintf("set -e\nip link set %[1]s mtu %[2]d up\nip addr add %[3]s/32 dev %[1]s\nwg set %[1]s private-key %[4]s%[5]s",
		dev, wgMTU, wgClientIP, l.writeKey("wg-idle", base64.StdEncoding.EncodeToString(ckey.Bytes())), peers.String()))
	l.must(eventually(ctx, 60*time.Second, 500*time.Millisecond, func() error {
		out, err := nsRun(ctx, l.Client.Namespace, 5*time.Second, "wg", "show", dev, "latest-handshakes")
		if err != nil {
			return err
		}
		done := 0
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if f := strings.Fields(line); len(f) == 2 && f[1] != "0" {
				done++
			}
		}
		if done < conns {
			return fmt.Errorf("%d of %d handshakes", done, conns)
		}
		return nil
	}), "wireguard-go peers did not handshake")
	return l, p
}
