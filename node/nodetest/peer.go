package nodetest

import (
	"bytes"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/transport/v5/vnet"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/node"
)

// NodeOptions describe a node to add to the World.
type NodeOptions struct {
	// Name names the node in logs and failures (default "node<i>").
	Name string
	// NAT is the NAT in front of the node's LAN (NATNone: on the internet).
	NAT NAT
	// TunIP is the node's tunnel address (default 100.64.0.<i+1>).
	TunIP netip.Addr
	// Config adjusts the node's configuration before it is created
	// (timings, candidate types, meter provider, or a TUN of the test's
	// own: then WriteTUN and ReadTUN are not available).
	Config func(*node.Config)
	// OwnEvents leaves the node's event channel to the test (a daemon's
	// event loop): the Peer records no events and signals no candidates.
	OwnEvents bool
}

// lanPrefixes are the documentation ranges the nodes' LANs use in turn.
var lanPrefixes = [...][3]byte{{192, 0, 2}, {198, 51, 100}, {203, 0, 113}}

// Peer is a real node in the World: its node, its in-memory TUN and the
// events it reported.
type Peer struct {
	w      *World
	name   string
	n      *node.Node
	tun    *tuntest.ChannelTUN
	tunIP  netip.Addr
	public netip.Addr // as seen on the internet
	lan    netip.Addr // its own address (= public without NAT)
	net    *delayNet

	mu      sync.Mutex
	events  []node.Event
	changed chan struct{}
	routes  map[string]*Peer // signalling: connection id → the other side
	pumped  chan struct{}
}

// AddNode starts a node on a LAN of its own (or on the internet).
func (w *World) AddNode(opts NodeOptions) *Peer {
	w.t.Helper()
	w.mu.Lock()
	i := len(w.peers)
	w.mu.Unlock()
	if i >= 200 {
		w.t.Fatalf("nodetest: at most 200 nodes")
	}
	p := &Peer{w: w, name: opts.Name, tunIP: opts.TunIP, changed: make(chan struct{}, 1), routes: make(map[string]*Peer), pumped: make(chan struct{})}
	if p.name == "" {
		p.name = fmt.Sprintf("node%d", i)
	}
	if !p.tunIP.IsValid() {
		p.tunIP = netip.AddrFrom4([4]byte{100, 64, byte((i + 1) / 256), byte((i + 1) % 256)})
	}
	lf := telemetry.PionLoggerFactory(testLogger(w.t))
	var vn *vnet.Net
	var err error
	if opts.NAT == NATNone {
		p.public = netip.AddrFrom4([4]byte{198, 18, 2, byte(i + 1)})
		p.lan = p.public
		if vn, err = vnet.NewNet(&vnet.NetConfig{StaticIPs: []string{p.public.String()}}); err != nil {
			w.t.Fatalf("nodetest: %s: %v", p.name, err)
		}
		if err := w.wan.AddNet(vn); err != nil {
			w.t.Fatalf("nodetest: %s: %v", p.name, err)
		}
	} else {
		nat := &vnet.NATType{MappingBehavior: vnet.EndpointIndependent, FilteringBehavior: vnet.EndpointIndependent}
		if opts.NAT == NATSymmetric {
			nat = &vnet.NATType{MappingBehavior: vnet.EndpointAddrPortDependent, FilteringBehavior: vnet.EndpointAddrPortDependent}
		}
		p.public = netip.AddrFrom4([4]byte{198, 18, 1, byte(i + 1)})
		pre := lanPrefixes[i%len(lanPrefixes)]
		p.lan = netip.AddrFrom4([4]byte{pre[0], pre[1], pre[2], byte(10 + i)})
		r, err := vnet.NewRouter(&vnet.RouterConfig{
			StaticIPs: []string{p.public.String()}, CIDR: netip.PrefixFrom(p.lan, 24).Masked().String(),
			NATType: nat, LoggerFactory: lf,
		})
		if err != nil {
			w.t.Fatalf("nodetest: %s: router: %v", p.name, err)
		}
		if vn, err = vnet.NewNet(&vnet.NetConfig{StaticIPs: []string{p.lan.String()}}); err != nil {
			w.t.Fatalf("nodetest: %s: %v", p.name, err)
		}
		if err := r.AddNet(vn); err != nil {
			w.t.Fatalf("nodetest: %s: %v", p.name, err)
		}
		if err := w.wan.AddRouter(r); err != nil {
			w.t.Fatalf("nodetest: %s: %v", p.name, err)
		}
		if err := r.Start(); err != nil { // the internet's Stop stops it
			w.t.Fatalf("nodetest: %s: start router: %v", p.name, err)
		}
	}
	p.net = &delayNet{Net: vn}
	p.tun = tuntest.NewChannelTUN()
	cfg := node.Config{TUN: p.tun.TUN(), Net: p.net, DisableIPv6: true, Logger: testLogger(w.t).With("node", p.name)}
	if opts.Config != nil {
		opts.Config(&cfg)
	}
	if cfg.TUN != p.tun.TUN() {
		p.tun = nil
	}
	n, err := node.New(cfg)
	if err != nil {
		w.t.Fatalf("nodetest: %s: new node: %v", p.name, err)
	}
	p.n = n
	if opts.OwnEvents {
		close(p.pumped)
	} else {
		go p.pump()
	}
	w.t.Cleanup(func() {
		_ = n.Close()
		<-p.pumped
	})
	w.mu.Lock()
	w.peers = append(w.peers, p)
	w.mu.Unlock()
	return p
}

// Node returns the peer's node.
func (p *Peer) Node() *node.Node { return p.n }

// Name returns the peer's name.
func (p *Peer) Name() string { return p.name }

// TunIP returns the peer's tunnel address.
func (p *Peer) TunIP() netip.Addr { return p.tunIP }

// PublicAddr returns the peer's address as the internet sees it (its NAT's).
func (p *Peer) PublicAddr() netip.Addr { return p.public }

// LANAddr returns the peer's own address (its public address without NAT).
func (p *Peer) LANAddr() netip.Addr { return p.lan }

// TUN returns the peer's in-memory TUN (nil if NodeOptions.Config replaced it).
func (p *Peer) TUN() *tuntest.ChannelTUN { return p.tun }

// SetLatency delays every datagram the node sends by d from now on
// (one-way: a round trip through it grows by d).
func (p *Peer) SetLatency(d time.Duration) { p.net.latency.Store(int64(d)) }

// WriteTUN passes an IP packet into the tunnel, as the OS would (it goes to
// the peer its destination is routed to). It fails the test if the node does
// not take it within 10 s.
func (p *Peer) WriteTUN(pkt []byte) {
	p.w.t.Helper()
	if p.tun == nil {
		p.w.t.Fatalf("nodetest: %s has no in-memory TUN", p.name)
	}
	select {
	case p.tun.Outbound <- pkt:
	case <-time.After(10 * time.Second):
		p.w.t.Fatalf("nodetest: %s: the tunnel did not take the packet", p.name)
	}
}

// ReadTUN returns the next IP packet the tunnel delivered to the OS, or false
// after timeout.
func (p *Peer) ReadTUN(timeout time.Duration) ([]byte, bool) {
	if p.tun == nil {
		return nil, false
	}
	select {
	case b := <-p.tun.Inbound:
		return b, true
	case <-time.After(timeout):
		return nil, false
	}
}

// Ping builds an ICMP echo request (IPv4) from src to dst.
func Ping(dst, src netip.Addr) []byte { return tuntest.Ping(dst, src) }

// RoundTrip sends a ping from a's tunnel to b's, answers it from b and waits
// for the answer at a: traffic both ways through the connection between
// them. It returns the round-trip time and fails the test after timeout.
func (w *World) RoundTrip(a, b *Peer, timeout time.Duration) time.Duration {
	w.t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	ping := Ping(b.tunIP, a.tunIP)
	a.WriteTUN(ping)
	if !b.awaitPacket(ping, time.Until(deadline)) {
		w.t.Fatalf("nodetest: packet %s→%s not delivered within %v", a.name, b.name, timeout)
	}
	pong := Ping(a.tunIP, b.tunIP)
	b.WriteTUN(pong)
	if !a.awaitPacket(pong, time.Until(deadline)) {
		w.t.Fatalf("nodetest: packet %s→%s not delivered within %v", b.name, a.name, timeout)
	}
	return time.Since(start)
}

// awaitPacket reads the TUN until want comes out (other packets are
// dropped), or timeout.
func (p *Peer) awaitPacket(want []byte, timeout time.Duration) bool {
	end := time.After(max(timeout, 0))
	for {
		select {
		case got := <-p.tun.Inbound:
			if bytes.Equal(got, want) {
				return true
			}
		case <-end:
			return false
		}
	}
}

// route signals the candidates of connection id to other.
func (p *Peer) route(id string, other *Peer) {
	p.mu.Lock()
	p.routes[id] = other
	p.mu.Unlock()
}

// pump records events and signals candidates like the portal does.
func (p *Peer) pump() {
	defer close(p.pumped)
	for e := range p.n.Events() {
		p.mu.Lock()
		p.events = append(p.events, e)
		other := p.routes[e.ConnectionID]
		p.mu.Unlock()
		select {
		case p.changed <- struct{}{}:
		default:
		}
		if other == nil {
			continue
		}
		// Like the portal, forward at once: the other side queues
		// candidates of a connection it does not have yet.
		switch e.Kind {
		case node.EventCandidateAdded:
			_ = other.n.AddRemoteCandidate(e.ConnectionID, e.Candidate)
		case node.EventCandidateInvalidated:
			_ = other.n.RemoveRemoteCandidate(e.ConnectionID, e.Candidate)
		}
	}
}

// Events returns the events the node reported so far.
func (p *Peer) Events() []node.Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]node.Event(nil), p.events...)
}

// WaitEvent waits up to timeout for an event matching f (reported before or
// after the call) and returns the first.
func (p *Peer) WaitEvent(timeout time.Duration, f func(node.Event) bool) (node.Event, bool) {
	end := time.After(timeout)
	seen := 0
	for {
		p.mu.Lock()
		for ; seen < len(p.events); seen++ {
			if f(p.events[seen]) {
				e := p.events[seen]
				p.mu.Unlock()
				return e, true
			}
		}
		p.mu.Unlock()
		select {
		case <-p.changed:
		case <-end:
			return node.Event{}, false
		}
	}
}

// WaitCount waits up to timeout until at least k events match f.
func (p *Peer) WaitCount(timeout time.Duration, k int, f func(node.Event) bool) bool {
	end := time.After(timeout)
	for p.CountEvents(f) < k {
		select {
		case <-p.changed:
		case <-end:
			return false
		}
	}
	return true
}

// CountEvents counts the events matching f.
func (p *Peer) CountEvents(f func(node.Event) bool) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := 0
	for _, e := range p.events {
		if f(e) {
			k++
		}
	}
	return k
}

// Stats returns the node's stats of connection id.
func (p *Peer) Stats(id string) (node.ConnStats, bool) {
	for _, s := range p.n.Stats() {
		if s.ID == id {
			return s, true
		}
	}
	return node.ConnStats{}, false
}

// Established matches the EventConnectionEstablished of connection id.
func Established(id string) func(node.Event) bool {
	return func(e node.Event) bool { return e.Kind == node.EventConnectionEstablished && e.ConnectionID == id }
}

// OfKind matches events of kind k.
func OfKind(k node.EventKind) func(node.Event) bool {
	return func(e node.Event) bool { return e.Kind == k }
}
