package nodetest

import (
	"bytes"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/transport/v5"
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

// Host is a machine in the World without a node of the World's making: a LAN of its own behind a NAT
// (or a place on the internet) whose network a daemon hands to the node it creates
// (node.Config.Net = Host.Net()).
type Host struct {
	w      *World
	name   string
	public netip.Addr // as seen on the internet
	lan    netip.Addr // its own address (= public without NAT)
	net    *delayNet
}

// HostOptions describe a host to add to the World.
type HostOptions struct {
	// Name names the host in logs (default "host<i>").
	Name string
	// NAT is the NAT in front of the host's LAN (NATNone: on the internet).
	NAT NAT
}

// Peer is a real node in the World: its node, its in-memory TUN and the
// events it reported.
type Peer struct {
	*Host
	n     *node.Node
	tun   *tuntest.ChannelTUN
	tunIP netip.Addr

	mu      sync.Mutex
	events  []node.Event
	changed chan struct{}
	routes  map[string]*Peer // signalling: connection id → the other side
	pumped  chan struct{}
}

// AddHost puts a host on a LAN of its own behind opts.NAT (or on the internet). At most 200 hosts and
// nodes share a World.
func (w *World) AddHost(opts HostOptions) *Host {
	w.t.Helper()
	w.mu.Lock()
	i := w.hosts
	w.hosts++
	w.mu.Unlock()
	if i >= 200 {
		w.t.Fatalf("nodetest: at most 200 hosts")
	}
	h := &Host{w: w, name: opts.Name}
	if h.name == "" {
		h.name = fmt.Sprintf("host%d", i)
	}
	lf := telemetry.PionLoggerFactory(testLogger(w.t))
	var vn *vnet.Net
	var err error
	if opts.NAT == NATNone {
		h.public = netip.AddrFrom4([4]byte{198, 18, 2, byte(i + 1)})
		h.lan = h.public
		if vn, err = vnet.NewNet(&vnet.NetConfig{StaticIPs: []string{h.public.String()}}); err != nil {
			w.t.Fatalf("nodetest: %s: %v", h.name, err)
		}
		if err := w.wan.AddNet(vn); err != nil {
			w.t.Fatalf("nodetest: %s: %v", h.name, err)
		}
	} else {
		nat := &vnet.NATType{MappingBehavior: vnet.EndpointIndependent, FilteringBehavior: vnet.EndpointIndependent}
		if opts.NAT == NATSymmetric {
			nat = &vnet.NATType{MappingBehavior: vnet.EndpointAddrPortDependent, FilteringBehavior: vnet.EndpointAddrPortDependent}
		}
		h.public = netip.AddrFrom4([4]byte{198, 18, 1, byte(i + 1)})
		pre := lanPrefixes[i%len(lanPrefixes)]
		h.lan = netip.AddrFrom4([4]byte{pre[0], pre[1], pre[2], byte(10 + i)})
		r, err := vnet.NewRouter(&vnet.RouterConfig{
			StaticIPs: []string{h.public.String()}, CIDR: netip.PrefixFrom(h.lan, 24).Masked().String(),
			NATType: nat, LoggerFactory: lf,
		})
		if err != nil {
			w.t.Fatalf("nodetest: %s: router: %v", h.name, err)
		}
		if vn, err = vnet.NewNet(&vnet.NetConfig{StaticIPs: []string{h.lan.String()}}); err != nil {
			w.t.Fatalf("nodetest: %s: %v", h.name, err)
		}
		if err := r.AddNet(vn); err != nil {
			w.t.Fatalf("nodetest: %s: %v", h.name, err)
		}
		if err := w.wan.AddRouter(r); err != nil {
			w.t.Fatalf("nodetest: %s: %v", h.name, err)
		}
		if err := r.Start(); err != nil { // the internet's Stop stops it
			w.t.Fatalf("nodetest: %s: start router: %v", h.name, err)
		}
	}
	h.net = &delayNet{Net: vn}
	return h
}

// Net returns the host's network, for node.Config.Net.
func (h *Host) Net() transport.Net { return h.net }

// Name returns the host's name.
func (h *Host) Name() string { return h.name }

// PublicAddr returns the host's address as the internet sees it (its NAT's).
func (h *Host) PublicAddr() netip.Addr { return h.public }

// LANAddr returns the host's own address (its public address without NAT).
func (h *Host) LANAddr() netip.Addr { return h.lan }

// SetLatency delays every datagram the host sends by d from now on
// (one-way: a round trip through it grows by d).
func (h *Host) SetLatency(d time.Duration) { h.net.latency.Store(int64(d)) }

// AddNode starts a node on a host of its own (see AddHost).
func (w *World) AddNode(opts NodeOptions) *Peer {
	w.t.Helper()
	w.mu.Lock()
	i := w.hosts
	w.mu.Unlock()
	name := opts.Name
	if name == "" {
		name = fmt.Sprintf("node%d", i)
	}
	h := w.AddHost(HostOptions{Name: name, NAT: opts.NAT})
	p := &Peer{Host: h, tunIP: opts.TunIP, changed: make(chan struct{}, 1), routes: make(map[string]*Peer), pumped: make(chan struct{})}
	if !p.tunIP.IsValid() {
		p.tunIP = netip.AddrFrom4([4]byte{100, 64, byte((i + 1) / 256), byte((i + 1) % 256)})
	}
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

// TunIP returns the peer's tunnel address.
func (p *Peer) TunIP() netip.Addr { return p.tunIP }

// TUN returns the peer's in-memory TUN (nil if NodeOptions.Config replaced it).
func (p *Peer) TUN() *tuntest.ChannelTUN { return p.tun }

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
