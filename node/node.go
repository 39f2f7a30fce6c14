package node

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/logging"
	"github.com/pion/transport/v5"
	"github.com/pion/transport/v5/stdnet"
	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/internal/telemetry/wglog"
	"github.com/snowgate/snowgate/node/idle"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	wgconn "golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

// Config configures a Node.
type Config struct {
	// PrivateKey is the node's static WireGuard key; zero generates one.
	PrivateKey Key
	// Port is the UDP port of both sockets; 0 picks any free port (the
	// daemons' default, see DefaultPort).
	Port int
	// TUN is the tunnel device wireguard-go reads and writes (kernel TUN,
	// netstack or an in-memory TUN in tests). The node takes ownership: Close
	// closes it.
	TUN tun.Device
	// Net is the network the sockets and ICE use; nil is the host network.
	// Tests pass a pion vnet.
	Net transport.Net
	// DisableIPv6 skips the IPv6 socket.
	DisableIPv6 bool
	// IncludeLoopback makes loopback addresses host candidates (tests).
	IncludeLoopback bool
	// TestOnlyCandidateTypes restricts the local candidate types (tests:
	// relay only). Empty means host, srflx and relay.
	TestOnlyCandidateTypes []ice.CandidateType
	// IdleAfter is how long a connection goes without traffic before it is
	// idle (default 20 s).
	IdleAfter time.Duration
	// KeepaliveInterval is the period of the coalesced NAT keepalive of idle
	// connections and of the STUN keepalive to relays (default 25 s).
	KeepaliveInterval time.Duration
	// ICEFailedTimeout is how long ICE may look for a path (default 15 s).
	ICEFailedTimeout time.Duration
	// HandshakeTimeout is how long a nominated path waits for WireGuard's
	// handshake before the connection fails (default 20 s, Firezone's
	// rekey-attempt time: wireguard-go sends an initiation every 5 s at
	// most, so four attempts, where the ICE timeout allowed two or three —
	// too few on a lossy path).
	HandshakeTimeout time.Duration
	// RelayRTO is the initial retransmission timeout of TURN requests
	// (default 200 ms; a request gives up after 7 transmissions, about 40×
	// RTO). A relay missing two keepalives in a row is dropped.
	RelayRTO time.Duration
	// Logger receives the node's logs; nil discards them.
	Logger *slog.Logger
	// MeterProvider provides the node's metrics; nil is a no-op provider.
	MeterProvider metric.MeterProvider

	// testAgents replaces pion's ICE agents (the node's own tests).
	testAgents agentFactory
}

// Node is one peer of the overlay: sockets, relays, ICE and a WireGuard device.
//
// The node is the shell around the connections' sans-IO cores
// (internal/connsm): under mu it feeds them what happened (API calls, the
// agents' callbacks, timers, WireGuard handshakes and roams seen on the data
// path) and carries out what they ask (driveLocked). The agents' callbacks
// and the goroutines of blocking TURN transactions never take mu: they post
// their results to the loop goroutine (post), which applies them.
type Node struct {
	cfg     Config
	log     *slog.Logger
	net     transport.Net
	pionLog logging.LoggerFactory

	newAgent agentFactory
	newTURN  turnFactory

	io    atomic.Pointer[ioSet] // sockets and mux; replaced by Reset
	hosts atomic.Pointer[[]netip.AddrPort]
	bind  *bind
	dev   wgDevice

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	priv     Key
	conns    map[string]*connection
	relays   map[string]*relayEntry
	sched    *idle.Scheduler
	noRelays bool
	queued   map[string][]queuedCandidate // remote candidates of connections not created yet
	clock    func() time.Time             // timestamps of queued candidates (tests replace it)
	// ufrags tracks agents still closing per local ufrag: a new agent with
	// the same ufrag waits for them (agents.go).
	ufrags ufragGate

	allocByAddr atomic.Pointer[map[netip.AddrPort]*allocation]
	epMu        sync.Mutex // serialises copy-on-write of the endpoint maps
	epDirect    atomic.Pointer[map[netip.AddrPort]*endpoint]
	epRelay     atomic.Pointer[map[relayKey]*endpoint]

	// roam.go: handshake messages on paths tied to no connection, and the
	// peer's session indices of every connection.
	strayMu   sync.Mutex
	strayLog  map[relayKey][]strayMsg
	idxMu     sync.Mutex
	remoteIdx atomic.Pointer[map[uint32]*connection]

	events chan Event
	notify chan *connection
	kick   chan struct{}
	inputs inputQueue

	wakeups    atomic.Uint64
	liveAgents atomic.Int64 // ICE agents created and not yet closed
	// given counts the agents created and the local candidates the node gave
	// them (tests: nothing is given twice).
	given       struct{ agents, srflx, relay atomic.Uint64 }
	established metric.Int64Counter
	setupTime   metric.Float64Histogram
}

// relayKey names a path: through allocation a (nil: direct from our socket) to peer.
type relayKey struct {
	a    *allocation
	peer netip.AddrPort
}

// New opens the sockets, creates the WireGuard device and starts the node.
func New(cfg Config) (*Node, error) {
	if cfg.TUN == nil {
		return nil, fmt.Errorf("node: Config.TUN is required")
	}
	if cfg.IdleAfter <= 0 {
		cfg.IdleAfter = 20 * time.Second
	}
	if cfg.KeepaliveInterval <= 0 {
		cfg.KeepaliveInterval = 25 * time.Second
	}
	if cfg.ICEFailedTimeout <= 0 {
		cfg.ICEFailedTimeout = 15 * time.Second
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 20 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	nw := cfg.Net
	if nw == nil {
		var err error
		if nw, err = stdnet.NewNet(); err != nil {
			return nil, fmt.Errorf("node: host network: %w", err)
		}
	}
	priv := cfg.PrivateKey
	if priv.IsZero() {
		var err error
		if priv, err = GeneratePrivateKey(); err != nil {
			return nil, err
		}
	}
	mp := cfg.MeterProvider
	if mp == nil {
		mp = noop.NewMeterProvider()
	}
	// pion's and wireguard-go's logs go through the shared adapters (levels and redaction of telemetry).
	pionLog := telemetry.PionLoggerFactory(log)

	ctx, cancel := context.WithCancel(context.Background())
	n := &Node{
		cfg: cfg, log: log, net: nw, pionLog: pionLog,
		newAgent: cfg.testAgents,
		newTURN:  pionTURN(nw, pionLog, cfg.RelayRTO),
		ctx:      ctx, cancel: cancel,
		priv: priv, conns: make(map[string]*connection), relays: make(map[string]*relayEntry), noRelays: true,
		queued: make(map[string][]queuedCandidate), clock: time.Now,
		ufrags:   newUfragGate(),
		strayLog: make(map[relayKey][]strayMsg),
		events:   make(chan Event, 4096),
		notify:   make(chan *connection, 256),
		kick:     make(chan struct{}, 1),
		inputs:   newInputQueue(),
	}
	if n.newAgent == nil {
		n.newAgent = pionAgents(nw, pionLog, cfg.ICEFailedTimeout, cfg.IncludeLoopback)
	}
	n.allocByAddr.Store(&map[netip.AddrPort]*allocation{})
	n.epDirect.Store(&map[netip.AddrPort]*endpoint{})
	n.epRelay.Store(&map[relayKey]*endpoint{})
	n.remoteIdx.Store(&map[uint32]*connection{})

	meter := mp.Meter("github.com/snowgate/snowgate/node")
	n.established, _ = meter.Int64Counter("node.connections.established",
		metric.WithDescription("Connections that reached WireGuard on a nominated path, by path"),
		metric.WithUnit("{connection}"))
	n.setupTime, _ = meter.Float64Histogram("node.connection.setup.duration",
		metric.WithDescription("Time from UpsertConnection (or an ICE re-run) to the WireGuard handshake on the nominated path, by path"),
		metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
	_, _ = meter.Int64ObservableGauge("node.connections",
		metric.WithDescription("Connections by path (none while connecting) and idle state"),
		metric.WithUnit("{connection}"),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			type key struct {
				path Path
				idle bool
			}
			counts := map[key]int64{}
			n.mu.Lock()
			for _, c := range n.conns {
				counts[key{Path(c.sm.Path().Kind), n.isIdleLocked(c)}]++
			}
			n.mu.Unlock()
			for k, v := range counts {
				state := "active"
				if k.idle {
					state = "idle"
				}
				o.Observe(v, metric.WithAttributes(attribute.String("path", k.path.String()), attribute.String("state", state)))
			}
			return nil
		}))
	_, _ = meter.Int64ObservableGauge("node.ice.agents",
		metric.WithDescription("Live ICE agents (each wakes the process every 2 s; none should outlive connection setup)"),
		metric.WithUnit("{agent}"),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(n.liveAgents.Load())
			return nil
		}))

	n.sched = idle.New(idle.Config{
		IdleAfter:         cfg.IdleAfter,
		KeepaliveInterval: cfg.KeepaliveInterval,
		Logger:            log.With("component", "idle"),
		MeterProvider:     mp,
		LastActivity:      n.lastActivityLocked,
	})
	set, err := n.openIO()
	if err != nil {
		cancel()
		return nil, fmt.Errorf("node: %w", err)
	}
	n.io.Store(set)

	n.bind = newBind(n)
	dev := device.NewDevice(cfg.TUN, n.bind, wglog.New(log))
	wga := wgAdapter{dev: dev}
	if r, ok := nw.(peerRetainer); ok {
		wga.retain = r.RetainWireGuardPeer
	}
	n.dev = wga
	if err := n.dev.SetPrivateKey(priv); err != nil {
		dev.Close()
		n.cancel()
		set.close()
		return nil, fmt.Errorf("node: %w", err)
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		n.cancel()
		set.close()
		return nil, fmt.Errorf("node: wireguard up: %w", err)
	}
	n.wg.Add(1)
	go n.loop()
	gso, gro := set.all[0].io.Offload()
	log.Info("node started", "port", set.port(), "ipv6", set.v6 != nil, "gso", gso, "gro", gro,
		"public_key", priv.PublicKey().String())
	return n, nil
}

// PublicKey returns the node's current static public key.
func (n *Node) PublicKey() Key {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.priv.PublicKey()
}

// Port returns the UDP port of the node's sockets.
func (n *Node) Port() uint16 { return n.io.Load().port() }

// Events returns the node's event stream. It is closed by Close. The caller
// must drain it; when it is full, events are dropped with a warning.
func (n *Node) Events() <-chan Event { return n.events }

// Wakeups returns how often the node's single timer fired (wake-ups with
// work due plus spurious ones). The idle scheduler exports the same as the
// OpenTelemetry counters snowgate.node.wakeups and snowgate.node.wakeups.spurious.
func (n *Node) Wakeups() uint64 { return n.wakeups.Load() }

// emit queues an event; n.mu is held.
func (n *Node) emit(e Event) {
	if n.closed {
		return
	}
	select {
	case n.events <- e:
	default:
		n.log.Warn("node event dropped: channel full", "kind", e.Kind.String(), "connection", e.ConnectionID)
	}
}

// Close stops the node: agents, allocations, WireGuard device (and its TUN), sockets.
func (n *Node) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	var agents []iceAgent
	for _, c := range n.conns {
		if c.agent != nil {
			agents = append(agents, c.agent)
			c.agent = nil
		}
	}
	var allocs []*allocation
	for _, r := range n.relays {
		allocs = append(allocs, r.allocs...)
	}
	n.conns = map[string]*connection{}
	n.relays = map[string]*relayEntry{}
	n.mu.Unlock()

	n.cancel()
	for _, a := range allocs {
		a.close()
	}
	n.io.Load().close() // the bind's reads return net.ErrClosed
	n.dev.Close()
	n.wg.Wait()
	for _, a := range agents {
		a.Close()
		n.liveAgents.Add(-1)
	}
	close(n.events)
	return nil
}

// ioSet is the node's sockets (one per family, same port) and the ICE mux
// over them. Reset replaces the whole set (new port, fresh mux state).
type ioSet struct {
	all     []*socket
	v4, v6  *socket
	muxConn *pushConn
	mux     *hostMux
}

func (s *ioSet) port() uint16 { return s.all[0].port }

func (s *ioSet) sockFor(dst netip.AddrPort) *socket {
	if dst.Addr().Unmap().Is4() {
		return s.v4
	}
	return s.v6
}

func (s *ioSet) close() {
	_ = s.mux.Close()
	_ = s.muxConn.Close()
	for _, so := range s.all {
		so.closed.Store(true)
		_ = so.pc.Close()
	}
}

// openIO opens the sockets and the mux, and recomputes the host candidates.
func (n *Node) openIO() (*ioSet, error) {
	socks, err := listenSockets(n.net, n.cfg.Port, !n.cfg.DisableIPv6)
	if err != nil {
		return nil, err
	}
	set := &ioSet{all: socks}
	for _, so := range socks {
		if so.family == 4 {
			set.v4 = so
		} else {
			set.v6 = so
		}
	}
	hosts := n.hostAddresses(set)
	n.hosts.Store(&hosts)
	local := &net.UDPAddr{IP: net.IPv4zero, Port: int(set.port())}
	if set.v6 != nil {
		local = &net.UDPAddr{IP: net.IPv6unspecified, Port: int(set.port())}
	}
	set.muxConn = newPushConn(local, 1024, func(b []byte, to net.Addr) (int, error) {
		dst := addrPortOf(to)
		so := set.sockFor(dst)
		if so == nil {
			return 0, fmt.Errorf("no socket for %s", dst)
		}
		return so.writeTo(b, dst)
	})
	set.mux = &hostMux{
		UniversalUDPMuxDefault: ice.NewUniversalUDPMuxDefault(ice.UniversalUDPMuxParams{
			Logger:  n.pionLog.NewLogger("mux"),
			UDPConn: set.muxConn,
			Net:     n.net,
		}),
		addrs: func() []net.Addr {
			hs := *n.hosts.Load()
			out := make([]net.Addr, len(hs))
			for i, h := range hs {
				out[i] = net.UDPAddrFromAddrPort(h)
			}
			return out
		},
	}
	return set, nil
}

func (n *Node) sockFor(dst netip.AddrPort) *socket { return n.io.Load().sockFor(dst) }

// interfaceUpdater is a Net whose interface list is a snapshot refreshed on
// demand (pion's stdnet.Net, which the daemons' networks embed).
type interfaceUpdater interface{ UpdateInterfaces() error }

// hostAddresses lists the interface addresses that become host candidates.
// It runs when the sockets are opened: at start and on Reset, which is how
// roaming reaches the node, so a snapshot Net is refreshed first (otherwise
// the candidates would name the addresses the host had at start).
func (n *Node) hostAddresses(set *ioSet) []netip.AddrPort {
	if u, ok := n.net.(interfaceUpdater); ok {
		if err := u.UpdateInterfaces(); err != nil {
			n.log.Warn("refreshing the interface list failed: host candidates may be stale", "error", err)
		}
	}
	ifaces, err := n.net.Interfaces()
	if err != nil {
		n.log.Warn("list interfaces failed", "error", err)
		return nil
	}
	var out []netip.AddrPort
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 {
			continue
		}
		if ifc.Flags&net.FlagLoopback != 0 && !n.cfg.IncludeLoopback {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			var ip net.IP
			switch v := a.(type) {
			case *net.IPNet:
				ip = v.IP
			case *net.IPAddr:
				ip = v.IP
			}
			ap, ok := netip.AddrFromSlice(ip)
			if !ok {
				continue
			}
			ap = ap.Unmap()
			if ap.IsLinkLocalUnicast() || ap.IsMulticast() || ap.IsUnspecified() {
				continue
			}
			if ap.Is4() && set.v4 != nil {
				out = append(out, netip.AddrPortFrom(ap, set.v4.port))
			}
			if ap.Is6() && set.v6 != nil {
				out = append(out, netip.AddrPortFrom(ap, set.v6.port))
			}
		}
	}
	return out
}

// demux classifies one received datagram. It returns true when the buffer
// now holds a WireGuard message for wireguard-go (size and endpoint set).
func (n *Node) demux(buf []byte, size *int, ep *wgconn.Endpoint, from netip.AddrPort, now int64) bool {
	b := buf[:*size]
	if isWireGuard(b) {
		e := n.directEndpoint(from)
		*ep = e
		n.noteRx(e, b, now)
		return true
	}
	*size = 0
	if a := (*n.allocByAddr.Load())[from]; a != nil {
		if ch, payload, ok := parseChannelData(b); ok {
			if isWireGuard(payload) {
				if peer, ok := a.peerForChannel(ch); ok {
					e := n.relayEndpoint(a, peer)
					*size = copy(buf, payload)
					*ep = e
					n.noteRx(e, buf[:*size], now)
					return true
				}
			}
			a.handleInbound(b, from)
			return false
		}
		if isSTUN(b) {
			a.handleInbound(b, from)
			if b[0] == 0x01 && b[1] == 0x01 { // binding success: may answer the mux's srflx query
				n.io.Load().muxConn.push(b, from)
			}
		}
		return false
	}
	if isSTUN(b) {
		n.io.Load().muxConn.push(b, from)
	}
	return false
}

// noteRx accounts a received WireGuard message to the connection of its
// endpoint and follows its handshakes (wgtrack). A message along a path tied
// to no connection goes to the stray log (roam.go).
func (n *Node) noteRx(e *endpoint, b []byte, now int64) {
	c := e.conn
	if c == nil {
		n.strayRx(e, b, now)
		return
	}
	c.rxBytes.Add(uint64(len(b)))
	c.lastAnyRx.Store(now)
	if isWGActivity(b) {
		c.lastRx.Store(now)
		n.markActive(c)
	}
	if b[0] != 4 || c.hsAwaiting.Load() {
		c.trackRx(n, b, now)
	}
}

// markActive is called on the data path after a packet that counts as
// activity was recorded in c.lastRx or c.lastActTx. An idle connection is
// active again at once (Stats, metrics): the packet clears c.idleFlag itself.
// The loop then moves it out of the scheduler's keepalive batch (onPoke), as
// that needs n.mu, which the data path must not take (Reset and
// RemoveConnection hold it while wireguard-go waits for its send and receive
// goroutines).
//
// The store of the activity time before the load of idleFlag pairs with
// onTimer's store of idleFlag before its second look at the activity times:
// a packet that races with the connection going idle is seen by one of them.
func (n *Node) markActive(c *connection) {
	if c.idleFlag.Load() && c.idleFlag.CompareAndSwap(true, false) {
		c.wakePending.Store(true)
		n.poke(c)
	}
}

// lastActivityLocked is the scheduler's Config.LastActivity: the latest
// packet that counts as activity on connection id, from the data path's
// atomics. n.mu is held (it is called from NextWake and Poll).
func (n *Node) lastActivityLocked(id string) time.Time {
	c := n.conns[id]
	if c == nil {
		return time.Time{}
	}
	return c.lastActivity()
}

// lastActivity returns c's latest packet that counts as activity, either
// direction, or the zero time if there was none.
func (c *connection) lastActivity() time.Time {
	if last := max(c.lastRx.Load(), c.lastActTx.Load()); last > 0 {
		return time.Unix(0, last)
	}
	return time.Time{}
}

// poke asks the loop to look at c (idle → active, nominated → established).
func (n *Node) poke(c *connection) {
	if c.poked.CompareAndSwap(false, true) {
		select {
		case n.notify <- c:
		default:
			c.poked.Store(false)
			select {
			case n.kick <- struct{}{}:
			default:
			}
		}
	}
}

// sendTo writes WireGuard messages along an endpoint. A stray endpoint (a
// path tied to no connection, e.g. where a peer roamed) counts for the
// connection the node tied its path to since, if any (roam.go).
func (n *Node) sendTo(bufs [][]byte, e *endpoint) error {
	if e.conn == nil {
		if b := n.boundEndpoint(e); b != nil {
			e = b
		} else {
			n.strayTx(e, bufs)
		}
	}
	if c := e.conn; c != nil {
		var total int
		activity := false
		for _, b := range bufs {
			total += len(b)
			if len(b) > 0 && isWGActivity(b) {
				activity = true
			}
		}
		c.txBytes.Add(uint64(total))
		now := time.Now().UnixNano()
		c.lastTx.Store(now)
		if activity {
			c.lastActTx.Store(now)
			n.markActive(c)
		}
		for _, b := range bufs {
			if len(b) > 0 && (b[0] != 4 || c.hsAwaiting.Load()) {
				c.trackTx(n, b, now)
			}
		}
	}
	if e.alloc != nil {
		if err := e.alloc.writeBatch(bufs, e.dst); err != nil {
			if e.alloc.gone.Load() {
				// Closed under this send (the relay was dropped between the bind's check and the
				// write): lost like any packet on a path that just died, no error to log.
				return nil
			}
			return err
		}
		return nil
	}
	s := n.sockFor(e.dst)
	if s == nil {
		return fmt.Errorf("send to %s: no socket for address family", e.dst)
	}
	return s.writeBatch(bufs, e.dst)
}

// directEndpoint returns the endpoint for a direct source/destination.
func (n *Node) directEndpoint(addr netip.AddrPort) *endpoint {
	if e := (*n.epDirect.Load())[addr]; e != nil {
		return e
	}
	return &endpoint{dst: addr}
}

// relayEndpoint returns the endpoint for a peer reached through allocation a.
func (n *Node) relayEndpoint(a *allocation, peer netip.AddrPort) *endpoint {
	if e := (*n.epRelay.Load())[relayKey{a, peer}]; e != nil {
		return e
	}
	return &endpoint{alloc: a, dst: peer}
}

// registerEndpoint makes received packets along e count for its connection.
func (n *Node) registerEndpoint(e *endpoint) {
	n.epMu.Lock()
	defer n.epMu.Unlock()
	if e.alloc != nil {
		old := *n.epRelay.Load()
		m := make(map[relayKey]*endpoint, len(old)+1)
		for k, v := range old {
			m[k] = v
		}
		m[relayKey{e.alloc, e.dst}] = e
		n.epRelay.Store(&m)
		return
	}
	old := *n.epDirect.Load()
	m := make(map[netip.AddrPort]*endpoint, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	m[e.dst] = e
	n.epDirect.Store(&m)
}

// unregisterConnEndpoints forgets every endpoint of c.
func (n *Node) unregisterConnEndpoints(c *connection) {
	n.epMu.Lock()
	defer n.epMu.Unlock()
	od := *n.epDirect.Load()
	md := make(map[netip.AddrPort]*endpoint, len(od))
	for k, v := range od {
		if v.conn != c {
			md[k] = v
		}
	}
	n.epDirect.Store(&md)
	or := *n.epRelay.Load()
	mr := make(map[relayKey]*endpoint, len(or))
	for k, v := range or {
		if v.conn != c {
			mr[k] = v
		}
	}
	n.epRelay.Store(&mr)
}

func (n *Node) rebuildAllocIndex() {
	m := make(map[netip.AddrPort]*allocation)
	for _, r := range n.relays {
		for _, a := range r.allocs {
			m[a.server] = a
		}
	}
	n.allocByAddr.Store(&m)
}
