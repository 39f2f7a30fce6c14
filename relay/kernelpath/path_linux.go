//go:build linux

package kernelpath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/snowgate/snowgate/internal/threadns"
)

// Event indexes of the program's events map (enum event in turnrouter.c).
const (
	evPassPartialCsum = iota
	evPassNoCsum
	evPassIface
	evPassMTU
	evPassMalformed
	evPassDest
	evAdjustFailed
	evTailFailed
	evC2PPackets
	evC2PBytes
	evP2CPackets
	evP2CBytes
	evMax
)

// Backoff of a direction whose neighbour is not resolved yet.
const (
	firstRetry = 50 * time.Millisecond
	maxRetry   = 5 * time.Second
)

// Path is the loaded and attached program and the bindings it relays. Its
// methods are safe for concurrent use.
type Path struct {
	cfg   Config
	log   *slog.Logger
	objs  turnrouterObjects
	links []link.Link
	// ifaces are the attached interfaces by index; descs name them for
	// Status.
	ifaces map[int]string
	descs  []string
	ncpu   int

	// The namespace goroutine (loop) runs netlink queries and
	// attachments in the network namespace Open was called in.
	reqs chan func()
	wake chan struct{}
	stop chan struct{}
	done chan struct{}

	mu       sync.Mutex
	closed   bool
	bindings map[Binding]*entry
	free     []uint32
	next     uint32
}

// direction is one half of a binding: client → peer or peer → client.
type direction struct {
	installed bool
	hop       hop
	// due is when to resolve again: retry (not installed) or refresh.
	due     time.Time
	backoff time.Duration
	reason  string // why it is not installed (for logs and tests)
}

type entry struct {
	b        Binding
	slot     uint32
	c2p, p2c direction
}

// hop is struct hop of turnrouter.c: where a direction's frames go.
type hop struct {
	Src     [16]uint8
	Smac    [6]uint8
	Dmac    [6]uint8
	Ifindex uint32
	Mtu     uint16
}

// Open loads the program, attaches it and starts the goroutine that
// resolves next hops. It must be called from the thread (network
// namespace) the relay's sockets live in. Errors wrap ErrUnavailable.
func Open(cfg Config) (*Path, error) {
	cfg.normalize()
	nsfd, err := threadns.Current()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	p := &Path{
		cfg:      cfg,
		log:      cfg.Logger,
		ifaces:   map[int]string{},
		reqs:     make(chan func()),
		wake:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		bindings: map[Binding]*entry{},
	}
	ready := make(chan error, 1)
	go p.loop(nsfd, ready)
	if err := <-ready; err != nil {
		<-p.done
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	var setupErr error
	p.do(func() { setupErr = p.setup() })
	if setupErr != nil {
		p.shutdown()
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, setupErr)
	}
	p.log.Info("kernel path attached", "interfaces", p.descs, "max_channels", cfg.MaxChannels)
	return p, nil
}

// setup loads the program and attaches it (on the namespace goroutine).
func (p *Path) setup() error {
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return fmt.Errorf("count CPUs: %w", err)
	}
	p.ncpu = ncpu
	ifaces, err := p.interfaces()
	if err != nil {
		return err
	}
	if len(ifaces) == 0 {
		return ErrNoInterface
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("raise RLIMIT_MEMLOCK: %w", err)
	}
	spec, err := loadTurnrouter()
	if err != nil {
		return fmt.Errorf("load BPF object: %w", err)
	}
	for name, v := range map[string]uint16{"relay_port_low": p.cfg.LowestPort, "relay_port_high": p.cfg.HighestPort} {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	for _, name := range []string{"c2p", "p2c", "chan_stats"} {
		spec.Maps[name].MaxEntries = uint32(p.cfg.MaxChannels) //nolint:gosec // positive, bounded by the caller
	}
	if err := spec.LoadAndAssign(&p.objs, nil); err != nil {
		return fmt.Errorf("load BPF program: %w", err)
	}
	for _, ifc := range ifaces {
		mode := "native"
		l, err := link.AttachXDP(link.XDPOptions{Program: p.objs.TurnRouter, Interface: ifc.Index, Flags: link.XDPDriverMode})
		if err != nil {
			mode = "generic"
			var gerr error
			l, gerr = link.AttachXDP(link.XDPOptions{Program: p.objs.TurnRouter, Interface: ifc.Index, Flags: link.XDPGenericMode})
			if gerr != nil {
				p.detach()
				_ = p.objs.Close()
				return fmt.Errorf("attach XDP to %s: native: %w; generic: %w", ifc.Name, err, gerr)
			}
		}
		p.links = append(p.links, l)
		p.ifaces[ifc.Index] = ifc.Name
		p.descs = append(p.descs, ifc.Name+" ("+mode+")")
	}
	return nil
}

// interfaces lists the interfaces to attach to: those holding the
// configured addresses, or carrying a family's default route for an
// unspecified one; loopback never.
func (p *Path) interfaces() ([]net.Interface, error) {
	idx := map[int]bool{}
	for _, a := range p.cfg.Addrs {
		if !a.IsValid() {
			continue
		}
		family := netlink.FAMILY_V4
		if a.Is6() && !a.Is4In6() {
			family = netlink.FAMILY_V6
		}
		if a.IsUnspecified() {
			routes, err := netlink.RouteList(nil, family)
			if err != nil {
				return nil, fmt.Errorf("list routes: %w", err)
			}
			for _, r := range routes {
				if r.Dst == nil || r.Dst.IP.IsUnspecified() && maskBits(r.Dst) == 0 {
					idx[r.LinkIndex] = true
				}
			}
			continue
		}
		addrs, err := netlink.AddrList(nil, family)
		if err != nil {
			return nil, fmt.Errorf("list addresses: %w", err)
		}
		for _, la := range addrs {
			if ip, ok := netip.AddrFromSlice(la.IP); ok && ip.Unmap() == a.Unmap() {
				idx[la.LinkIndex] = true
			}
		}
	}
	var out []net.Interface
	for i := range idx {
		ifc, err := net.InterfaceByIndex(i)
		if err != nil {
			return nil, fmt.Errorf("interface %d: %w", i, err)
		}
		if ifc.Flags&net.FlagLoopback != 0 {
			p.log.Info("kernel path: not attaching to loopback", "interface", ifc.Name)
			continue
		}
		out = append(out, *ifc)
	}
	slices.SortFunc(out, func(a, b net.Interface) int { return a.Index - b.Index })
	return out, nil
}

func maskBits(n *net.IPNet) int {
	ones, _ := n.Mask.Size()
	return ones
}

// loop is the namespace goroutine: it runs requests and resolves due
// directions until Close, on a thread in the relay's network namespace.
func (p *Path) loop(nsfd int, ready chan<- error) {
	defer close(p.done)
	release, err := threadns.Enter(nsfd)
	_ = unix.Close(nsfd)
	ready <- err
	if err != nil {
		return
	}
	defer release()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case f := <-p.reqs:
			f()
		case <-p.wake:
		case <-timer.C:
			p.maintain(time.Now())
		case <-p.stop:
			timer.Stop()
			return
		}
		if due, ok := p.nextDue(); ok {
			timer.Reset(max(time.Until(due), time.Millisecond))
		} else {
			timer.Stop()
		}
	}
}

// do runs f on the namespace goroutine and waits; false if closed.
func (p *Path) do(f func()) bool {
	done := make(chan struct{})
	select {
	case p.reqs <- func() { defer close(done); f() }:
	case <-p.stop:
		return false
	}
	<-done
	return true
}

func (p *Path) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Add installs b: both directions whose next hop resolves now, the others
// later. It returns ErrFull when MaxChannels bindings are installed and
// ErrClosed after Close; adding an installed binding does nothing.
func (p *Path) Add(b Binding) error {
	if !b.Client.IsValid() || !b.Peer.IsValid() || !b.Listen.IsValid() || !b.Relay.IsValid() {
		return fmt.Errorf("kernel path: incomplete binding %+v", b)
	}
	b = normalize(b)
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrClosed
	}
	if _, ok := p.bindings[b]; ok {
		p.mu.Unlock()
		return nil
	}
	if len(p.bindings) >= p.cfg.MaxChannels {
		p.mu.Unlock()
		return ErrFull
	}
	var slot uint32
	if n := len(p.free); n > 0 {
		slot, p.free = p.free[n-1], p.free[:n-1]
	} else {
		slot = p.next
		p.next++
	}
	e := &entry{b: b, slot: slot}
	p.bindings[b] = e
	// The slot's counters start at zero (a reused slot keeps the last
	// channel's); no packet can count in it before a direction is installed.
	zero := make([]turnrouterChanStats, p.ncpu)
	err := p.objs.ChanStats.Update(slot, zero, ebpf.UpdateAny)
	p.mu.Unlock()
	if err != nil {
		_, _ = p.Remove(b)
		return fmt.Errorf("kernel path: reset counters: %w", err)
	}

	var toPeer, toClient resolution
	if !p.do(func() {
		toPeer = p.resolve(b.Peer.Addr(), b.Relay.Addr())
		toClient = p.resolve(b.Client.Addr(), b.Listen.Addr())
	}) {
		return ErrClosed
	}
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bindings[b] != e {
		return nil // removed meanwhile
	}
	if err := p.apply(e, true, toPeer, now); err != nil {
		p.removeLocked(e)
		return err
	}
	if err := p.apply(e, false, toClient, now); err != nil {
		p.removeLocked(e)
		return err
	}
	p.poke()
	return nil
}

// Remove uninstalls b and returns its final counters; false if b was not
// added.
func (p *Path) Remove(b Binding) (Counters, bool) {
	b = normalize(b)
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.bindings[b]
	if e == nil {
		return Counters{}, false
	}
	c := p.slotCounters(e.slot)
	p.removeLocked(e)
	return c, true
}

func (p *Path) removeLocked(e *entry) {
	if e.c2p.installed && !p.closed {
		_ = p.objs.C2p.Delete(c2pKey(e.b))
	}
	if e.p2c.installed && !p.closed {
		_ = p.objs.P2c.Delete(p2cKey(e.b))
	}
	e.c2p.installed, e.p2c.installed = false, false
	delete(p.bindings, e.b)
	p.free = append(p.free, e.slot)
}

// resolution is the next hop of one direction, or why there is none.
type resolution struct {
	hop hop
	err error
	// retry: the cause may go away soon (neighbour unresolved); else the
	// direction waits for the next refresh.
	retry bool
}

var (
	errLocal        = errors.New("destination is local")
	errOtherIface   = errors.New("next hop is behind an interface without the program")
	errNoNeighbour  = errors.New("neighbour not resolved")
	errNoSource     = errors.New("no source address")
	errNoHardware   = errors.New("interface has no Ethernet address")
	errMTUTooLarge  = errors.New("MTU above 65535")
	errBadFamily    = errors.New("address family mismatch")
	errUnresolvable = errors.New("no route")
)

// resolve finds how the kernel would send a datagram to dst from bound
// (the socket's address; unspecified: the route's preferred source). Runs
// on the namespace goroutine.
func (p *Path) resolve(dst, bound netip.Addr) resolution {
	dst = dst.Unmap()
	bound = bound.Unmap()
	if bound.IsValid() && !bound.IsUnspecified() && bound.Is4() != dst.Is4() {
		return resolution{err: errBadFamily}
	}
	opts := &netlink.RouteGetOptions{}
	if bound.IsValid() && !bound.IsUnspecified() {
		opts.SrcAddr = bound.AsSlice()
	}
	routes, err := netlink.RouteGetWithOptions(dst.AsSlice(), opts)
	if err != nil {
		return resolution{err: fmt.Errorf("route to %s: %w", dst, err), retry: true}
	}
	if len(routes) == 0 {
		return resolution{err: errUnresolvable, retry: true}
	}
	r := routes[0]
	if r.Type == unix.RTN_LOCAL {
		return resolution{err: errLocal}
	}
	if _, ok := p.ifaces[r.LinkIndex]; !ok {
		return resolution{err: errOtherIface}
	}
	src := bound
	if !src.IsValid() || src.IsUnspecified() {
		a, ok := netip.AddrFromSlice(r.Src)
		if !ok {
			return resolution{err: errNoSource, retry: true}
		}
		src = a.Unmap()
	}
	lk, err := netlink.LinkByIndex(r.LinkIndex)
	if err != nil {
		return resolution{err: fmt.Errorf("link %d: %w", r.LinkIndex, err), retry: true}
	}
	attrs := lk.Attrs()
	if len(attrs.HardwareAddr) != 6 {
		return resolution{err: errNoHardware}
	}
	if attrs.MTU > 65535 || attrs.MTU < 0 {
		return resolution{err: errMTUTooLarge}
	}
	nh := dst
	if gw, ok := netip.AddrFromSlice(r.Gw); ok && !gw.IsUnspecified() {
		nh = gw.Unmap()
	}
	family := netlink.FAMILY_V4
	if nh.Is6() {
		family = netlink.FAMILY_V6
	}
	neighs, err := netlink.NeighList(r.LinkIndex, family)
	if err != nil {
		return resolution{err: fmt.Errorf("neighbours: %w", err), retry: true}
	}
	const valid = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY | netlink.NUD_PROBE | netlink.NUD_PERMANENT
	for _, n := range neighs {
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok || ip.Unmap() != nh || n.State&valid == 0 || len(n.HardwareAddr) != 6 {
			continue
		}
		var h hop
		h.Src = src.As16()
		copy(h.Smac[:], attrs.HardwareAddr)
		copy(h.Dmac[:], n.HardwareAddr)
		h.Ifindex = uint32(r.LinkIndex) //nolint:gosec // an interface index
		h.Mtu = uint16(attrs.MTU)       //nolint:gosec // checked above
		return resolution{hop: h}
	}
	return resolution{err: fmt.Errorf("%w: %s", errNoNeighbour, nh), retry: true}
}

// apply installs, updates or uninstalls one direction of e after a
// resolution (p.mu held). A full map is ErrFull.
func (p *Path) apply(e *entry, toPeer bool, res resolution, now time.Time) error {
	d := &e.p2c
	if toPeer {
		d = &e.c2p
	}
	if res.err != nil {
		if d.installed {
			if toPeer {
				_ = p.objs.C2p.Delete(c2pKey(e.b))
			} else {
				_ = p.objs.P2c.Delete(p2cKey(e.b))
			}
			d.installed = false
		}
		d.reason = res.err.Error()
		if res.retry {
			d.backoff = min(max(d.backoff*2, firstRetry), maxRetry)
			d.due = now.Add(d.backoff)
		} else {
			d.backoff = 0
			d.due = now.Add(p.cfg.RefreshInterval)
		}
		return nil
	}
	d.backoff = 0
	d.due = now.Add(p.cfg.RefreshInterval)
	d.reason = ""
	if d.installed && d.hop == res.hop {
		return nil
	}
	var err error
	if toPeer {
		err = p.objs.C2p.Update(c2pKey(e.b), c2pValue(e, res.hop), ebpf.UpdateAny)
	} else {
		err = p.objs.P2c.Update(p2cKey(e.b), p2cValue(e, res.hop), ebpf.UpdateAny)
	}
	if err != nil {
		if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.ENOMEM) {
			return fmt.Errorf("%w: %w", ErrFull, err)
		}
		return fmt.Errorf("kernel path: install binding: %w", err)
	}
	d.installed, d.hop = true, res.hop
	return nil
}

// nextDue is the earliest time a direction needs resolving.
func (p *Path) nextDue() (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var due time.Time
	for _, e := range p.bindings {
		for _, d := range []*direction{&e.c2p, &e.p2c} {
			if due.IsZero() || d.due.Before(due) {
				due = d.due
			}
		}
	}
	return due, !due.IsZero()
}

// maintain resolves the directions that are due (namespace goroutine).
func (p *Path) maintain(now time.Time) {
	type job struct {
		e      *entry
		toPeer bool
	}
	var jobs []job
	p.mu.Lock()
	for _, e := range p.bindings {
		if !e.c2p.due.After(now) {
			jobs = append(jobs, job{e, true})
		}
		if !e.p2c.due.After(now) {
			jobs = append(jobs, job{e, false})
		}
	}
	p.mu.Unlock()
	// One query per destination and source in this round.
	type target struct{ dst, src netip.Addr }
	cache := map[target]resolution{}
	for _, j := range jobs {
		// Channel binds waiting for their first resolution go first: a
		// long round must not hold up pion's ChannelBind handling.
		select {
		case f := <-p.reqs:
			f()
		default:
		}
		t := target{j.e.b.Client.Addr(), j.e.b.Listen.Addr()}
		if j.toPeer {
			t = target{j.e.b.Peer.Addr(), j.e.b.Relay.Addr()}
		}
		res, ok := cache[t]
		if !ok {
			res = p.resolve(t.dst, t.src)
			cache[t] = res
		}
		p.mu.Lock()
		if p.bindings[j.e.b] == j.e && !p.closed {
			if err := p.apply(j.e, j.toPeer, res, time.Now()); err != nil {
				p.log.Warn("kernel path: cannot install a resolved binding; it stays in userspace", "error", err.Error())
				p.removeLocked(j.e)
			}
		}
		p.mu.Unlock()
	}
}

// Counters returns b's per-channel counters (summed over CPUs); false if
// b is not added.
func (p *Path) Counters(b Binding) (Counters, bool) {
	b = normalize(b)
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.bindings[b]
	if e == nil || p.closed {
		return Counters{}, false
	}
	return p.slotCounters(e.slot), true
}

// slotCounters sums a slot's per-CPU counters (p.mu held).
func (p *Path) slotCounters(slot uint32) Counters {
	var c Counters
	var per []turnrouterChanStats
	if p.closed || p.objs.ChanStats.Lookup(slot, &per) != nil {
		return c
	}
	for _, s := range per {
		c.ToPeerPackets += s.C2pPackets
		c.ToPeerBytes += s.C2pBytes
		c.ToClientPackets += s.P2cPackets
		c.ToClientBytes += s.P2cBytes
	}
	return c
}

// events sums the events map over CPUs.
func (p *Path) events() [evMax]uint64 {
	var out [evMax]uint64
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return out
	}
	for i := range uint32(evMax) {
		var per []uint64
		if err := p.objs.Events.Lookup(i, &per); err != nil {
			continue
		}
		for _, v := range per {
			out[i] += v
		}
	}
	return out
}

// Totals returns what the program relayed since Open (all channels, also
// removed ones).
func (p *Path) Totals() Counters {
	ev := p.events()
	return Counters{
		ToPeerPackets: ev[evC2PPackets], ToPeerBytes: ev[evC2PBytes],
		ToClientPackets: ev[evP2CPackets], ToClientBytes: ev[evP2CBytes],
	}
}

// Passed returns the packets of installed bindings left to the stack.
func (p *Path) Passed() Passed {
	ev := p.events()
	return Passed{
		PartialChecksum: ev[evPassPartialCsum], NoChecksum: ev[evPassNoCsum], OtherInterface: ev[evPassIface],
		MTU: ev[evPassMTU], Malformed: ev[evPassMalformed], Destination: ev[evPassDest],
		AdjustFailed: ev[evAdjustFailed], TailFailed: ev[evTailFailed],
	}
}

// Status returns a snapshot of the bindings and attachments.
func (p *Path) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := Status{Bindings: len(p.bindings), Interfaces: slices.Clone(p.descs)}
	for _, e := range p.bindings {
		for _, d := range []*direction{&e.c2p, &e.p2c} {
			if d.installed {
				s.Installed++
			} else {
				s.Pending++
			}
		}
	}
	return s
}

// Installed reports which directions of b are in the maps (looked up in
// the maps themselves, so tests see what the program sees).
func (p *Path) Installed(b Binding) (toPeer, toClient bool) {
	b = normalize(b)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false, false
	}
	var cv turnrouterC2pVal
	var pv turnrouterP2cVal
	toPeer = p.objs.C2p.Lookup(c2pKey(b), &cv) == nil
	toClient = p.objs.P2c.Lookup(p2cKey(b), &pv) == nil
	return toPeer, toClient
}

// MapEntries counts the entries of the two binding maps (iterating the
// maps, not the bookkeeping).
func (p *Path) MapEntries() (c2p, p2c int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return 0, 0
	}
	var k1 turnrouterC2pKey
	var v1 turnrouterC2pVal
	for it := p.objs.C2p.Iterate(); it.Next(&k1, &v1); {
		c2p++
	}
	var k2 turnrouterP2cKey
	var v2 turnrouterP2cVal
	for it := p.objs.P2c.Iterate(); it.Next(&k2, &v2); {
		p2c++
	}
	return c2p, p2c
}

// Close detaches the program and frees the maps; later calls do nothing.
func (p *Path) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	err := p.detach()
	p.shutdown()
	if cerr := p.objs.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("kernel path: close: %w", cerr)
	}
	return err
}

func (p *Path) detach() error {
	var errs []error
	for _, l := range p.links {
		if err := l.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	p.links = nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("kernel path: detach: %w", err)
	}
	return nil
}

// shutdown stops the namespace goroutine.
func (p *Path) shutdown() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

// normalize unmaps addresses so that a binding has one spelling.
func normalize(b Binding) Binding {
	un := func(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }
	b.Client, b.Listen, b.Peer, b.Relay = un(b.Client), un(b.Listen), un(b.Peer), un(b.Relay)
	return b
}

// be16 is v laid out in memory in network byte order, as the program
// compares it.
func be16(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

// addr16 is a in the program's 16-byte form (IPv4-mapped for IPv4); the
// unspecified address (any) is all zeros.
func addr16(a netip.Addr) [16]byte {
	if !a.IsValid() || a.IsUnspecified() {
		return [16]byte{}
	}
	return a.As16()
}

func c2pKey(b Binding) turnrouterC2pKey {
	return turnrouterC2pKey{Client: addr16(b.Client.Addr()), ClientPort: be16(b.Client.Port()), Channel: be16(b.Channel)}
}

func p2cKey(b Binding) turnrouterP2cKey {
	return turnrouterP2cKey{Peer: addr16(b.Peer.Addr()), PeerPort: be16(b.Peer.Port()), RelayPort: be16(b.Relay.Port())}
}

func c2pValue(e *entry, h hop) turnrouterC2pVal {
	v := turnrouterC2pVal{
		Listen: addr16(e.b.Listen.Addr()), Peer: addr16(e.b.Peer.Addr()), ListenPort: be16(e.b.Listen.Port()),
		PeerPort: be16(e.b.Peer.Port()), RelayPort: be16(e.b.Relay.Port()), Slot: e.slot,
	}
	v.Hop.Src, v.Hop.Smac, v.Hop.Dmac, v.Hop.Ifindex, v.Hop.Mtu = h.Src, h.Smac, h.Dmac, h.Ifindex, h.Mtu
	return v
}

func p2cValue(e *entry, h hop) turnrouterP2cVal {
	v := turnrouterP2cVal{
		Relay: addr16(e.b.Relay.Addr()), Client: addr16(e.b.Client.Addr()),
		ClientPort: be16(e.b.Client.Port()), ListenPort: be16(e.b.Listen.Port()), Channel: be16(e.b.Channel), Slot: e.slot,
	}
	v.Hop.Src, v.Hop.Smac, v.Hop.Dmac, v.Hop.Ifindex, v.Hop.Mtu = h.Src, h.Smac, h.Dmac, h.Ifindex, h.Mtu
	return v
}
