package nodetest

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/transport/v5/vnet"
	"github.com/pion/turn/v5"

	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/node"
)

// NAT is the kind of NAT in front of a node's LAN.
type NAT int

const (
	// NATNone puts the node on the internet with a public address.
	NATNone NAT = iota
	// NATEndpointIndependent maps and filters independently of the
	// destination ("full cone"): nodes behind it connect directly through
	// their server-reflexive addresses.
	NATEndpointIndependent
	// NATSymmetric maps and filters per destination address and port:
	// nodes behind two of them only meet through a relay.
	NATSymmetric
)

// String names the NAT type.
func (n NAT) String() string {
	switch n {
	case NATNone:
		return "none"
	case NATEndpointIndependent:
		return "endpoint-independent"
	case NATSymmetric:
		return "symmetric"
	}
	return fmt.Sprintf("nat(%d)", int(n))
}

// TB is what a World needs of its test: *testing.T, *testing.B and a *rapid.T running in a bubble
// (rapid.SyncTest) all have it. Cleanups must run inside the World's synctest bubble.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(f func())
	Log(args ...any)
}

// RelayRealm is the realm of the World's relays.
const RelayRealm = "snowgate-sim"

// World is a simulated internet with relays and nodes (see the package doc).
// Create it inside a synctest bubble; it is torn down by t.Cleanup.
type World struct {
	t   TB
	wan *vnet.Router

	mu       sync.Mutex
	relays   []*Relay
	peers    []*Peer
	hosts    int                    // hosts and nodes added
	blocked  map[[2]netip.Addr]bool // pairs of addresses that cannot talk
	down     map[netip.Addr]bool    // addresses that reach no one (blocked relays)
	observer []func(Datagram)
	droppers []func(Datagram) bool
}

// Datagram is a UDP datagram crossing the internet (World.Observe). Src and
// Dst are as seen on the internet (after NAT).
type Datagram struct {
	Src, Dst netip.AddrPort
	Payload  []byte
}

// NewWorld creates an empty internet (198.18.0.0/15).
func NewWorld(t TB) *World {
	t.Helper()
	w := &World{t: t, blocked: make(map[[2]netip.Addr]bool), down: make(map[netip.Addr]bool)}
	wan, err := vnet.NewRouter(&vnet.RouterConfig{CIDR: "0.0.0.0/0", LoggerFactory: telemetry.PionLoggerFactory(testLogger(t))})
	if err != nil {
		t.Fatalf("nodetest: wan: %v", err)
	}
	wan.AddChunkFilter(w.filter)
	w.wan = wan
	if err := wan.Start(); err != nil {
		t.Fatalf("nodetest: start wan: %v", err)
	}
	t.Cleanup(func() { _ = wan.Stop() })
	return w
}

// filter drops what crosses a partition and shows the rest to observers.
func (w *World) filter(c vnet.Chunk) bool {
	src, dst := addrPortOf(c.SourceAddr()), addrPortOf(c.DestinationAddr())
	w.mu.Lock()
	drop := w.blocked[[2]netip.Addr{src.Addr(), dst.Addr()}] || w.down[src.Addr()] || w.down[dst.Addr()]
	obs, droppers := w.observer, w.droppers
	w.mu.Unlock()
	if drop {
		return false
	}
	if len(obs) > 0 || len(droppers) > 0 {
		d := Datagram{Src: src, Dst: dst, Payload: append([]byte(nil), c.UserData()...)}
		for _, f := range droppers {
			if f(d) {
				return false
			}
		}
		for _, f := range obs {
			f(d)
		}
	}
	return true
}

// Drop makes the internet lose every datagram for which f returns true
// (called on the vnet's goroutine: f must not block).
func (w *World) Drop(f func(Datagram) bool) {
	w.mu.Lock()
	w.droppers = append(w.droppers, f)
	w.mu.Unlock()
}

// Observe calls f for every datagram that crosses the internet (on the
// vnet's goroutine: f must not block).
func (w *World) Observe(f func(Datagram)) {
	w.mu.Lock()
	w.observer = append(w.observer, f)
	w.mu.Unlock()
}

func (w *World) block(a, b netip.Addr, on bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, k := range [][2]netip.Addr{{a, b}, {b, a}} {
		if on {
			w.blocked[k] = true
		} else {
			delete(w.blocked, k)
		}
	}
}

// Partition cuts the direct path between a and b (their public addresses):
// both can still reach the relays.
func (w *World) Partition(a, b *Peer) { w.block(a.public, b.public, true) }

// Heal undoes Partition.
func (w *World) Heal(a, b *Peer) { w.block(a.public, b.public, false) }

// PartitionHosts cuts the direct path between two hosts (UDP blocked between them); HealHosts undoes it.
func (w *World) PartitionHosts(a, b *Host) { w.block(a.public, b.public, true) }

// HealHosts undoes PartitionHosts.
func (w *World) HealHosts(a, b *Host) { w.block(a.public, b.public, false) }

// Relay is a TURN relay on the World's internet (a pion/turn server).
type Relay struct {
	w        *World
	id       string
	addr     netip.AddrPort
	password string
	nw       *vnet.Net
	opts     RelayOptions

	mu  sync.Mutex
	srv *turn.Server // nil while killed
}

// RelayOptions adjust a relay (AddRelayWith). The zero value is AddRelay's relay.
type RelayOptions struct {
	// Realm is the TURN realm (default RelayRealm).
	Realm string
	// AuthHandler checks each request's credentials (default: any username with the relay's password,
	// see For). It may change its answers while the relay runs (a relay rebooted with a new secret).
	AuthHandler turn.AuthHandler
	// PermissionHandler decides which peers allocations may reach (default: all).
	PermissionHandler turn.PermissionHandler
}

// AddRelay starts relay id on the internet (198.18.0.10, .11, …, port 3478).
func (w *World) AddRelay(id string) *Relay {
	w.t.Helper()
	return w.AddRelayWith(id, RelayOptions{})
}

// AddRelayWith is AddRelay with options (the relay's realm, credential check and peer policy).
func (w *World) AddRelayWith(id string, opts RelayOptions) *Relay {
	w.t.Helper()
	w.mu.Lock()
	i := len(w.relays)
	w.mu.Unlock()
	ip := netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)})
	nw, err := vnet.NewNet(&vnet.NetConfig{StaticIPs: []string{ip.String()}})
	if err != nil {
		w.t.Fatalf("nodetest: relay net: %v", err)
	}
	if err := w.wan.AddNet(nw); err != nil {
		w.t.Fatalf("nodetest: relay net: %v", err)
	}
	if opts.Realm == "" {
		opts.Realm = RelayRealm
	}
	r := &Relay{w: w, id: id, addr: netip.AddrPortFrom(ip, 3478), password: "pw-" + id, nw: nw, opts: opts}
	if err := r.start(); err != nil {
		w.t.Fatalf("nodetest: %v", err)
	}
	w.t.Cleanup(func() { r.Kill() })
	w.mu.Lock()
	w.relays = append(w.relays, r)
	w.mu.Unlock()
	return r
}

// start runs a new TURN server on the relay's address.
func (r *Relay) start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.srv != nil {
		return nil
	}
	pc, err := r.nw.ListenPacket("udp4", r.addr.String())
	if err != nil {
		return fmt.Errorf("relay %s listen: %w", r.id, err)
	}
	auth := r.opts.AuthHandler
	if auth == nil {
		realm := r.opts.Realm
		auth = func(ra *turn.RequestAttributes) (string, []byte, bool) {
			return ra.Username, turn.GenerateAuthKey(ra.Username, realm, r.password), true
		}
	}
	srv, err := turn.NewServer(turn.ServerConfig{
		Realm:         r.opts.Realm,
		LoggerFactory: telemetry.PionLoggerFactory(testLogger(r.w.t)),
		AuthHandler:   auth,
		PacketConnConfigs: []turn.PacketConnConfig{{
			PacketConn: pc,
			RelayAddressGenerator: &turn.RelayAddressGeneratorStatic{
				RelayAddress: net.IP(r.addr.Addr().AsSlice()), Address: "0.0.0.0", Net: r.nw,
			},
			PermissionHandler: r.opts.PermissionHandler,
		}},
	})
	if err != nil {
		_ = pc.Close()
		return fmt.Errorf("relay %s server: %w", r.id, err)
	}
	r.srv = srv
	return nil
}

// Kill stops the relay's TURN server: its allocations, permissions and channels are gone and its address
// answers nothing (a crashed relay). Revive starts a fresh one.
func (r *Relay) Kill() {
	r.mu.Lock()
	srv := r.srv
	r.srv = nil
	r.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
}

// Revive starts a fresh TURN server (no allocations) on a killed relay's address; it fails the test if
// the address cannot be bound.
func (r *Relay) Revive() {
	r.w.t.Helper()
	if err := r.start(); err != nil {
		r.w.t.Fatalf("nodetest: %v", err)
	}
}

// Alive reports whether the relay's server runs (not killed).
func (r *Relay) Alive() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.srv != nil
}

// ID returns the relay's id.
func (r *Relay) ID() string { return r.id }

// Addr returns the relay's address on the internet.
func (r *Relay) Addr() netip.AddrPort { return r.addr }

// For describes the relay to a node, as the portal does.
func (r *Relay) For(p *Peer) node.Relay {
	return node.Relay{ID: r.id, Addr4: r.addr, Username: p.name, Password: r.password, Realm: r.opts.Realm}
}

// Block makes the relay unreachable (it stops answering everyone); Unblock
// undoes it.
func (r *Relay) Block() { r.setBlocked(true) }

// Unblock makes a blocked relay reachable again.
func (r *Relay) Unblock() { r.setBlocked(false) }

func (r *Relay) setBlocked(on bool) {
	r.w.mu.Lock()
	defer r.w.mu.Unlock()
	if on {
		r.w.down[r.addr.Addr()] = true
	} else {
		delete(r.w.down, r.addr.Addr())
	}
}

// Relays returns the World's relays in the order they were added.
func (w *World) Relays() []*Relay {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]*Relay(nil), w.relays...)
}

// GiveRelays hands each peer every relay of the World (as the portal's init
// does) and waits until each has all its allocations ready.
func (w *World) GiveRelays(peers ...*Peer) {
	w.t.Helper()
	relays := w.Relays()
	for _, p := range peers {
		var rs []node.Relay
		for _, r := range relays {
			rs = append(rs, r.For(p))
		}
		p.n.UpdateRelays(nil, rs)
	}
	for _, p := range peers {
		if !p.WaitCount(30*time.Second, len(relays), func(e node.Event) bool { return e.Kind == node.EventRelayReady }) {
			w.t.Fatalf("nodetest: %s: relay allocations not ready", p.name)
		}
	}
}

// Credentials of the connections Connect sets up (a controls, b is controlled).
var (
	CredsA = node.Credentials{Ufrag: "ufragAAA", Password: "passwordAAAAAAAAAAAAAAAAAAAA"}
	CredsB = node.Credentials{Ufrag: "ufragBBB", Password: "passwordBBBBBBBBBBBBBBBBBBBB"}
	// PSK is the pre-shared key of the connections Connect sets up.
	PSK = node.Key{1, 2, 3}
)

// Connect sets up connection id between a (controlling, the client's role)
// and b (controlled) with credentials CredsA and CredsB: b first, as the
// portal does, then a; each side's tunnel address is routed to the other.
// Candidates of id are signalled between them from now on.
func (w *World) Connect(a, b *Peer, id string) {
	w.t.Helper()
	w.ConnectWith(a, b, id, CredsA, CredsB)
}

// Signal forwards the candidates of connection id between a and b from now
// on, as the portal does (Connect does it; tests that upsert themselves call
// it first).
func (w *World) Signal(a, b *Peer, id string) {
	a.route(id, b)
	b.route(id, a)
}

// ConnectWith is Connect with the given ICE credentials (ca: a's, cb: b's).
func (w *World) ConnectWith(a, b *Peer, id string, ca, cb node.Credentials) {
	w.t.Helper()
	w.Signal(a, b, id)
	if err := b.n.UpsertConnection(node.ConnectionParams{ID: id, RemoteKey: a.n.PublicKey(), PresharedKey: PSK, Local: cb, Remote: ca, Role: node.RoleControlled}); err != nil {
		w.t.Fatalf("nodetest: upsert %s on %s: %v", id, b.name, err)
	}
	if err := a.n.UpsertConnection(node.ConnectionParams{ID: id, RemoteKey: b.n.PublicKey(), PresharedKey: PSK, Local: ca, Remote: cb, Role: node.RoleControlling}); err != nil {
		w.t.Fatalf("nodetest: upsert %s on %s: %v", id, a.name, err)
	}
	if err := a.n.SetAllowedIPs(id, []netip.Prefix{netip.PrefixFrom(b.tunIP, b.tunIP.BitLen())}); err != nil {
		w.t.Fatalf("nodetest: allowed IPs on %s: %v", a.name, err)
	}
	if err := b.n.SetAllowedIPs(id, []netip.Prefix{netip.PrefixFrom(a.tunIP, a.tunIP.BitLen())}); err != nil {
		w.t.Fatalf("nodetest: allowed IPs on %s: %v", b.name, err)
	}
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if u, ok := a.(*net.UDPAddr); ok {
		ap := u.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if a == nil {
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
