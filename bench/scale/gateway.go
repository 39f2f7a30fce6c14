package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/ice/v4"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/snowgate/snowgate/bench/internal/nulltun"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/node"
	"github.com/snowgate/snowgate/relay"
)

// psk is the pre-shared key of every benchmark connection.
var psk = node.Key{7, 7, 7}

// hubCreds are the gateway's ICE credentials of connection id; the parent derives them the same way.
func hubCreds(id string) node.Credentials {
	return node.Credentials{Ufrag: "hub" + id, Password: "hubpassword-hubpassword-" + id}
}

// clientCreds are the client's ICE credentials of connection id.
func clientCreds(id string) node.Credentials {
	return node.Credentials{Ufrag: "cli" + id, Password: "clipassword-clipassword-" + id}
}

// tunnelIP is client i's tunnel address (100.64.0.0/11).
func tunnelIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)})
}

// nodeConfig is the configuration of every node of the section: host candidates on loopback only
// (the relay is there because a connection needs one to exist; no relay candidates are gathered).
func nodeConfig(t tun.Device) node.Config {
	return node.Config{
		TUN: t, IncludeLoopback: true, DisableIPv6: true,
		TestOnlyCandidateTypes: []ice.CandidateType{ice.CandidateTypeHost},
		Logger:                 slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
	}
}

// childHub runs the gateway's node: one node.Node that accepts a connection per "upsert" (role
// controlled, as a gateway), takes the client's candidates ("cand") and reports its own ("cand") and
// each established connection ("est"), until stdin closes.
func childHub(args []string) int {
	fs := flag.NewFlagSet("child-hub", flag.ExitOnError)
	relayAddr := fs.String("relay", "", "relay ip:port")
	stamp := fs.String("stamp", "", "the relay's stamp secret")
	_ = fs.Parse(args)
	out := newChildOut()
	fail := func(err error) int {
		out.send(msg{Op: "error", Text: err.Error()})
		return 1
	}
	ra, err := netip.ParseAddrPort(*relayAddr)
	if err != nil {
		return fail(err)
	}
	ct := tuntest.NewChannelTUN()
	go func() { // nothing is sent through the tunnel; drain what might come
		for range ct.Inbound {
		}
	}()
	n, err := node.New(nodeConfig(ct.TUN()))
	if err != nil {
		return fail(err)
	}
	defer n.Close()
	user, pass := portalapi.RelayCredentials(*stamp, n.PublicKey().String(), time.Now().Add(24*time.Hour))
	n.UpdateRelays(nil, []node.Relay{{ID: "r1", Addr4: ra, Username: user, Password: pass, Realm: relay.DefaultRealm}})
	ready := make(chan struct{})
	var readyOnce sync.Once
	go func() {
		for e := range n.Events() {
			switch e.Kind {
			case node.EventRelayReady:
				readyOnce.Do(func() { close(ready) })
			case node.EventCandidateAdded:
				out.send(msg{Op: "cand", ID: e.ConnectionID, Sdp: e.Candidate})
			case node.EventConnectionEstablished:
				out.send(msg{Op: "est", ID: e.ConnectionID})
			case node.EventConnectionFailed:
				out.send(msg{Op: "failed", ID: e.ConnectionID, Text: fmt.Sprint(e.Err)})
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		return fail(fmt.Errorf("relay allocation not ready"))
	}
	time.Sleep(time.Second)
	out.send(msg{Op: "ready", Key: n.PublicKey().String()})
	for m := range readCommands() {
		if out.serveCommon(m) {
			continue
		}
		var err error
		switch m.Op {
		case "upsert":
			var k node.Key
			k, err = node.ParseKey(m.Key)
			if err == nil {
				err = n.UpsertConnection(node.ConnectionParams{ID: m.ID, RemoteKey: k, PresharedKey: psk,
					Local: hubCreds(m.ID), Remote: clientCreds(m.ID), Role: node.RoleControlled})
			}
			if err == nil {
				err = n.SetAllowedIPs(m.ID, []netip.Prefix{netip.PrefixFrom(tunnelIP(m.N), 32)})
			}
		case "cand":
			err = n.AddRemoteCandidate(m.ID, m.Sdp)
		}
		if err != nil {
			out.send(msg{Op: "failed", ID: m.ID, Text: err.Error()})
		}
	}
	return 0
}

// childWG runs a wireguard-go device (a TUN that carries nothing, the default bind on loopback) and
// adds "peers" N peers through IpcSet (random public keys, one /32 each, a loopback endpoint), until
// stdin closes.
func childWG(args []string) int {
	_ = args
	out := newChildOut()
	fail := func(err error) int {
		out.send(msg{Op: "error", Text: err.Error()})
		return 1
	}
	d := device.NewDevice(nulltun.New(1280), conn.NewDefaultBind(), device.NewLogger(device.LogLevelError, "wg: "))
	defer d.Close()
	priv, err := node.GeneratePrivateKey()
	if err != nil {
		return fail(err)
	}
	if err := d.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=0\n", hex.EncodeToString(priv[:]))); err != nil {
		return fail(err)
	}
	if err := d.Up(); err != nil {
		return fail(err)
	}
	time.Sleep(time.Second)
	out.send(msg{Op: "ready"})
	for m := range readCommands() {
		if out.serveCommon(m) {
			continue
		}
		if m.Op != "peers" {
			continue
		}
		var b strings.Builder
		for i := range m.N {
			var k [32]byte
			_, _ = rand.Read(k[:])
			fmt.Fprintf(&b, "public_key=%s\npreshared_key=%s\nendpoint=127.0.0.1:%d\nallowed_ip=%s/32\n",
				hex.EncodeToString(k[:]), hex.EncodeToString(psk[:]), 40000+i%20000, tunnelIP(i))
		}
		r := msg{Op: "peers"}
		if err := d.IpcSet(b.String()); err != nil {
			r.Text = err.Error()
		}
		out.send(r)
	}
	return 0
}

// gatewayResult is the gateway section's outcome.
type gatewayResult struct {
	conns, established int
	took               time.Duration
	hub0, hub1         *stats
	peers              int
	wg0, wg1           *stats
	// At half the connections (peers): the marginal cost is the growth from there to all of them.
	halfEstablished int
	hubHalf, wgHalf *stats
}

// runGateway measures the gateway's node with n client connections and a wireguard-go device with n
// peers, each in a child process.
func runGateway(n int, timeout time.Duration, hubProfile, wgProfile string) (*gatewayResult, error) {
	res := &gatewayResult{conns: n, peers: n}
	// wireguard-go first: it is quick.
	w, err := startChild("child-wg")
	if err != nil {
		return nil, err
	}
	if _, err := w.wait("ready", 30*time.Second, nil); err != nil {
		w.stop(5 * time.Second)
		return nil, err
	}
	addPeers := func(k int) error {
		if err := w.send(msg{Op: "peers", N: k}); err != nil {
			return err
		}
		m, err := w.wait("peers", time.Minute, nil)
		if err == nil && m.Text != "" {
			err = fmt.Errorf("wireguard-go: %s", m.Text)
		}
		time.Sleep(2 * time.Second)
		return err
	}
	if res.wg0, err = w.stats(); err == nil {
		if err = addPeers(n / 2); err == nil {
			if res.wgHalf, err = w.stats(); err == nil {
				if err = addPeers(n - n/2); err == nil {
					res.wg1, err = w.stats()
				}
			}
		}
	}
	if err == nil && wgProfile != "" {
		err = w.heap(wgProfile)
	}
	w.stop(10 * time.Second)
	if err != nil {
		return nil, err
	}

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	rs, err := relay.New(relay.Config{
		PublicIP4: netip.MustParseAddr("127.0.0.1"), ListenAddr4: netip.MustParseAddr("127.0.0.1"),
		ListenPort: -1, Sockets: 1, DrainTimeout: -1, MaxAllocationsPerUser: 4,
		AllowPeers: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Logger:     slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	if err != nil {
		return nil, err
	}
	if err := rs.Start(ctx); err != nil {
		return nil, err
	}
	rdone := make(chan struct{})
	go func() {
		defer close(rdone)
		_ = rs.Run(ctx)
	}()
	defer func() { cancel(); <-rdone }()

	hub, err := startChild("child-hub", "-relay", rs.Addr().String(), "-stamp", rs.StampSecret())
	if err != nil {
		return nil, err
	}
	defer hub.stop(20 * time.Second)
	ready, err := hub.wait("ready", 30*time.Second, nil)
	if err != nil {
		return nil, err
	}
	if res.hub0, err = hub.stats(); err != nil {
		return nil, err
	}

	// The clients: n nodes in this process, each with the relay and one connection to the hub.
	clients := make([]*node.Node, n)
	var mu sync.Mutex // guards nothing but the slice reads below against the creation loop
	defer func() {
		var wg sync.WaitGroup
		for _, c := range clients {
			if c != nil {
				wg.Add(1)
				go func() { defer wg.Done(); _ = c.Close() }()
			}
		}
		wg.Wait()
	}()
	var est atomic.Int64
	estCh := make(chan string, n)
	go func() { // the hub's lines: its candidates go to the client, established connections are counted
		for m := range hub.events {
			switch m.Op {
			case "cand":
				var i int
				if _, err := fmt.Sscanf(m.ID, "c%d", &i); err == nil && i < n {
					mu.Lock()
					c := clients[i]
					mu.Unlock()
					if c != nil {
						_ = c.AddRemoteCandidate(m.ID, m.Sdp)
					}
				}
			case "est":
				est.Add(1)
				estCh <- m.ID
			case "failed":
				log.Printf("gateway: hub: %s: %s", m.ID, m.Text)
			case "stats", "heap":
				hub.events2 <- m
			}
		}
	}()
	hubKey, err := node.ParseKey(ready.Key)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	sem := make(chan struct{}, 16) // connections being set up at once
	var wg sync.WaitGroup
	var clientErr atomic.Value
	connectRange := func(from, to int) {
		for i := from; i < to; i++ {
			if ctx.Err() != nil {
				break
			}
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				if err := connectClient(ctx, i, rs, hub, hubKey, clients, &mu); err != nil {
					clientErr.Store(err)
				}
			}()
		}
		wg.Wait()
	}
	connectRange(0, n/2)
	time.Sleep(5 * time.Second)
	res.halfEstablished = int(est.Load())
	if res.hubHalf, err = hub.statsVia(); err != nil {
		return nil, err
	}
	connectRange(n/2, n)
	res.took = time.Since(start)
	res.established = int(est.Load())
	if e, ok := clientErr.Load().(error); ok {
		log.Printf("gateway: a client failed: %v", e)
	}
	log.Printf("gateway: %d of %d connections established in %v", res.established, n, res.took.Round(time.Millisecond))
	// Let the connections settle (ICE agents are parked or closed a little after WireGuard is up).
	time.Sleep(10 * time.Second)
	if res.hub1, err = hub.statsVia(); err != nil {
		return nil, err
	}
	if hubProfile != "" {
		if err := hub.heapVia(hubProfile); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// connectClient creates client i's node, gives it the relay, upserts its connection to the hub on both
// sides and waits until the client sees it established.
func connectClient(ctx context.Context, i int, rs *relay.Server, hub *child, hubKey node.Key, clients []*node.Node, mu *sync.Mutex) error {
	ct := tuntest.NewChannelTUN()
	go func() {
		for range ct.Inbound {
		}
	}()
	c, err := node.New(nodeConfig(ct.TUN()))
	if err != nil {
		return err
	}
	mu.Lock()
	clients[i] = c
	mu.Unlock()
	id := fmt.Sprintf("c%d", i)
	user, pass := portalapi.RelayCredentials(rs.StampSecret(), c.PublicKey().String(), time.Now().Add(24*time.Hour))
	c.UpdateRelays(nil, []node.Relay{{ID: "r1", Addr4: rs.Addr(), Username: user, Password: pass, Realm: relay.DefaultRealm}})
	established := make(chan struct{})
	relayReady := make(chan struct{})
	go func() {
		var once, once2 sync.Once
		for e := range c.Events() {
			switch e.Kind {
			case node.EventRelayReady:
				once2.Do(func() { close(relayReady) })
			case node.EventCandidateAdded:
				_ = hub.send(msg{Op: "cand", ID: e.ConnectionID, Sdp: e.Candidate})
			case node.EventConnectionEstablished:
				once.Do(func() { close(established) })
			}
		}
	}()
	select {
	case <-relayReady:
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := hub.send(msg{Op: "upsert", ID: id, Key: c.PublicKey().String(), N: i}); err != nil {
		return err
	}
	if err := c.UpsertConnection(node.ConnectionParams{ID: id, RemoteKey: hubKey, PresharedKey: psk,
		Local: clientCreds(id), Remote: hubCreds(id), Role: node.RoleControlling}); err != nil {
		return err
	}
	if err := c.SetAllowedIPs(id, []netip.Prefix{netip.MustParsePrefix("100.100.0.1/32")}); err != nil {
		return err
	}
	select {
	case <-established:
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("%s: not established in 30 s", id)
	case <-ctx.Done():
		return ctx.Err()
	}
}

func writeGateway(b *strings.Builder, r *gatewayResult) {
	fmt.Fprintf(b, "#### Gateway\n\n")
	fmt.Fprintf(b, "The gateway's node (node.Node as the gateway runs it: one wireguard-go device, a peer, ICE and "+
		"connection state per client; host candidates on loopback) in a child process, with %d connections from "+
		"as many client nodes in the benchmark's process (16 set up at a time: %d established in %v), stats taken 5 s after the "+
		"first half and 10 s after the last one was up. Anchor: a wireguard-go device (the version go.mod pins, a TUN that carries "+
		"nothing) in a child process with %d peers configured through IpcSet (key, PSK, endpoint, one /32 each; "+
		"no handshakes). Per connection/peer: the child's growth over its state without any, each measured after a "+
		"forced GC that returns free memory to the OS.\n\n", r.conns, r.established, r.took.Round(time.Second), r.peers)
	b.WriteString("| process | connections | RSS MB (0 → half → all) | RSS KB/connection from 0 | RSS KB/connection, second half | Go heap KB/connection, second half | goroutines/connection | ratio (second half) |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|\n")
	wgPer := perKB(r.wgHalf.RSSKB, r.wg1.RSSKB, r.peers-r.peers/2)
	hubPer := perKB(r.hubHalf.RSSKB, r.hub1.RSSKB, r.established-r.halfEstablished)
	row := func(name string, half, n int, a, h, z *stats, ratio string) {
		fmt.Fprintf(b, "| %s | %d | %.1f → %.1f → %.1f | %.2f | %.2f | %.2f | %.2f | %s |\n", name, n, float64(a.RSSKB)/1024,
			float64(h.RSSKB)/1024, float64(z.RSSKB)/1024, perKB(a.RSSKB, z.RSSKB, n), perKB(h.RSSKB, z.RSSKB, n-half),
			perKB(h.HeapInuse, z.HeapInuse, n-half)/1024, perKB(uint64(a.Goroutines), uint64(z.Goroutines), n), ratio)
	}
	row("wireguard-go device", r.peers/2, r.peers, r.wg0, r.wgHalf, r.wg1, "–")
	ratio := hubPer / max(wgPer, 0.01)
	row("snowgate gateway node", r.halfEstablished, r.established, r.hub0, r.hubHalf, r.hub1, fmt.Sprintf("%.2f× wireguard-go", ratio))
	verdict := "met"
	if ratio > targetGatewayWG {
		verdict = "**missed**"
	}
	fmt.Fprintf(b, "\n*Second half*: the growth from half the connections to all of them, per connection: the marginal cost, "+
		"without the per-device buffers that the first packets allocate once (wireguard-go's receive and TUN batches, "+
		"64 KiB each).\n\nTarget: ≤ %.1f× wireguard-go's cost per peer (second half): %.2f KB vs %.2f KB = %.2f×: %s\n\n",
		targetGatewayWG, hubPer, wgPer, ratio, verdict)
}
