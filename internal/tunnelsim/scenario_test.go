package tunnelsim

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"pgregory.net/rapid"

	clcore "github.com/snowgate/snowgate/client/core"
	"github.com/snowgate/snowgate/client/dns"
	gwcore "github.com/snowgate/snowgate/gateway/core"
	"github.com/snowgate/snowgate/internal/ippacket"
	ipt "github.com/snowgate/snowgate/internal/ippacket/ippackettest"
	"github.com/snowgate/snowgate/internal/p2pcontrol"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/tunnel"
	"github.com/snowgate/snowgate/node/nodetest"
	"github.com/snowgate/snowgate/portalmock"
)

// Bounds of the scenario's checks, in simulated time.
const (
	// pingWindow bounds the wait for the first answer to a resource that has a path: a new flow (portal
	// round trip, ICE, WireGuard handshake) or the repair of a broken one (failure detection, a new flow
	// through the site's other gateway or relay).
	pingWindow = 90 * time.Second
	// pingInterval is the application's retransmission interval while it gets no answer.
	pingInterval = time.Second
	// steadyWindow bounds the round trip of a packet sent right after an answer came back.
	steadyWindow = 3 * time.Second
	// siteDownWindow bounds the wait for the client's ICMP error for a resource without gateway: at once
	// (flow_creation_failed), after the flow timeout, or once a connection to a gateway that went away
	// unheard is found dead (wireguard-go gives up a handshake after 90 s).
	siteDownWindow = 150 * time.Second
	// rejoinWindow bounds the reconnection of every daemon to a restarted portal (their backoff is 30 s
	// at most).
	rejoinWindow = 90 * time.Second
	// drainWindow bounds the clean-up once every resource is gone: a connection whose Goodbye cannot get
	// through (no path left) goes when it is found dead.
	drainWindow = 5 * time.Minute
)

// Resources 0 to numCIDR-1 are CIDR resources; the others are DNS resources (dnsPatterns).
const (
	numCIDR      = 4
	numResources = numCIDR + 3
)

// isDNS reports whether resource r is a DNS resource.
func isDNS(r int) bool { return r >= numCIDR }

// resourcePrefix is CIDR resource r's prefix (203.0.113.128/27 + 32r); cidrHost its probed host.
func resourcePrefix(r int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(128 + 32*r)}), 27)
}

func cidrHost(r int) netip.Addr { return resourcePrefix(r).Addr().Next().Next().Next().Next().Next() }

func resourceID(r int) string { return fmt.Sprintf("2e50c000-0000-4000-8000-00000000000%d", r) }
func policyID(r int) string   { return fmt.Sprintf("90110000-0000-4000-8000-00000000000%d", r) }

// resourceOf returns the CIDR resource whose prefix holds a (-1: none).
func resourceOf(a netip.Addr) int {
	for r := range numCIDR {
		if resourcePrefix(r).Contains(a) {
			return r
		}
	}
	return -1
}

// ---- reference model ---------------------------------------------------------------------------------

// filterKind is a resource's traffic filter.
type filterKind int

const (
	filterNone   filterKind = iota // everything allowed
	filterUDP53                    // UDP port 53 only (ICMP, TCP and other ports prohibited)
	filterTCP443                   // TCP port 443 only
)

func (f filterKind) String() string { return [...]string{"none", "udp/53", "tcp/443"}[f] }

type modelResource struct {
	sites  []int
	filter filterKind
}

// model is what the scenario did: the portal's resources and policies, who is up, the network.
type model struct {
	resources   map[int]modelResource
	policies    map[int]bool
	gwUp        []bool
	relayUp     []bool
	partitioned []bool // the direct path client↔gateway is blocked
	clientNAT   nodetest.NAT
	gwNAT       []nodetest.NAT
}

func (m *model) visible(r int) bool {
	_, ok := m.resources[r]
	return ok && m.policies[r]
}

// serves reports whether gateway g's site is one of resource r's.
func (m *model) serves(g, r int) bool {
	res, ok := m.resources[r]
	return ok && slices.Contains(res.sites, gatewaySpecs[g].site)
}

// allows reports whether r's filters let a probe of kind through.
func (m *model) allows(r int, k probeKind) bool {
	switch m.resources[r].filter {
	case filterUDP53:
		return k == probeUDP53
	case filterTCP443:
		return k == probeTCP443
	}
	return true
}

// siteUp reports whether some gateway serving r is up.
func (m *model) siteUp(r int) bool {
	for g := range gatewaySpecs {
		if m.gwUp[g] && m.serves(g, r) {
			return true
		}
	}
	return false
}

// pathCertain reports whether resource r certainly has a path from the client: some relay is up. A new
// connection needs a relay allocation on both sides by design (node.UpsertConnection fails with
// node.ErrNoRelays without one, the seed's relay-loss recovery, design.md), even where a direct path
// exists; an existing direct connection outlives the relays, but the model does not count on it.
func (m *model) pathCertain(int) bool {
	return slices.Contains(m.relayUp, true)
}

// ---- probes ------------------------------------------------------------------------------------------

type probeKind int

const (
	probeICMP   probeKind = iota // ICMP echo request
	probeUDP53                   // UDP to port 53
	probeUDP80                   // UDP to port 80
	probeTCP443                  // TCP SYN to port 443
	probeTCP80                   // TCP SYN to port 80
)

var probeKinds = []probeKind{probeICMP, probeUDP53, probeUDP80, probeTCP443, probeTCP80}

func (k probeKind) String() string {
	return [...]string{"icmp", "udp/53", "udp/80", "tcp/443", "tcp/80"}[k]
}

func (k probeKind) port() uint16 { return [...]uint16{0, 53, 80, 443, 80}[k] }

// target is where an application sends a probe: dst, the address it uses (a CIDR resource's host or a
// DNS name's proxy IP), and real, where the probe must come out behind the gateway (the host, or the
// address the gateway resolved the name to; invalid when the name does not resolve there).
type target struct {
	res       int
	dst, real netip.Addr
	name      string // the DNS name behind a proxy IP
}

func cidrTarget(r int) target { return target{res: r, dst: cidrHost(r), real: cidrHost(r)} }

func (t target) String() string {
	if t.name != "" {
		return fmt.Sprintf("resource %d (%s via %v)", t.res, t.name, t.dst)
	}
	return fmt.Sprintf("resource %d", t.res)
}

// probe is one packet an application on the client sent to a resource, and what became of it.
type probe struct {
	id        uint16
	to        target
	kind      probeKind
	query     []byte        // a DNS query (a forward through the tunnel), else nil
	fwd       dns.ForwardID // the forward the query belongs to
	delivered []int         // gateways that handed it to the resource
	replies   int           // answers that reached the client
	icmpCodes []uint8
}

// port is the probe's source port (UDP, TCP).
func (p *probe) port() uint16 { return 20000 + p.id }

// packet builds the probe's packet from the client's tunnel address.
func (p *probe) packet() []byte {
	payload := []byte(fmt.Sprintf("probe-%d", p.id))
	if p.query != nil {
		payload = p.query
	}
	from := clientAddr(p.to.dst)
	src, dst := netip.AddrPortFrom(from, p.port()), netip.AddrPortFrom(p.to.dst, p.kind.port())
	switch p.kind {
	case probeICMP:
		return ipt.Echo(from, p.to.dst, p.id, 1, payload)
	case probeTCP443, probeTCP80:
		return ipt.TCP(src, dst, uint32(p.id)<<16, 0, ipt.SYN, nil)
	default:
		return ipt.UDP(src, dst, payload)
	}
}

// probeID finds the probe a packet (or the packet an ICMP error quotes) belongs to.
func probeID(p ippacket.Packet) (uint16, bool) {
	switch p.Protocol() {
	case ippacket.ProtoICMP, ippacket.ProtoICMPv6:
		id, err := p.EchoID()
		return id, err == nil
	case ippacket.ProtoUDP, ippacket.ProtoTCP:
		src, dst, err := p.Ports()
		if err != nil {
			return 0, false
		}
		if isClient(p.Src()) {
			return src - 20000, src >= 20000
		}
		return dst - 20000, dst >= 20000
	}
	return 0, false
}

// ---- the simulation ----------------------------------------------------------------------------------

// stats counts what the scenarios of one test did, for its summary line.
type stats struct {
	mu       sync.Mutex
	outcomes map[string]int
	slowest  time.Duration
	// slowestDrain is the longest clean-up after the last resource went.
	slowestDrain time.Duration
	steps        int
	// current is the running scenario's step log (for the heap watchdog).
	current *sim
	// firstFailure is set once the first broken invariant of the run was printed (see sim.fatalf).
	firstFailure bool
}

func (st *stats) count(outcome string) {
	st.mu.Lock()
	st.outcomes[outcome]++
	st.mu.Unlock()
}

func (st *stats) String() string {
	st.mu.Lock()
	defer st.mu.Unlock()
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(st.outcomes)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, st.outcomes[k]))
	}
	return fmt.Sprintf("%d steps; %s; slowest first answer %v; slowest clean-up %v", st.steps, strings.Join(parts, ", "),
		st.slowest, st.slowestDrain)
}

type sim struct {
	stats  *stats
	t      *rapid.T
	w      *nodetest.World
	log    *slog.Logger
	portal *portal
	relays []*simRelay

	clientHost *nodetest.Host
	client     *daemon
	clientCore *clcore.Client
	gwHosts    []*nodetest.Host
	gws        []*daemon
	gwCores    []*gwcore.Gateway

	mu         sync.Mutex // guards the fields below (the TUN readers write them)
	m          model
	probes     map[uint16]*probe
	nextProbe  uint16
	routes     []netip.Prefix
	violations []string
	// DNS (dns_test.go)
	sentinels  []netip.Addr
	queries    map[uint16]*dnsQuery // by the application's port
	nextQuery  uint16
	proxyIPs   map[string][]netip.Addr // "name/A", "name/AAAA" → the proxy IPs first answered
	proxyOwner map[netip.Addr]string
	steps      []string
}

// violate records a broken invariant seen on a reader goroutine; the next check fails the scenario.
func (s *sim) violateLocked(format string, args ...any) {
	s.violations = append(s.violations, fmt.Sprintf(format, args...))
}

// fatalf fails the scenario. The first failure of the run is also written to stderr with its steps:
// when rapid cannot make a failing scenario fail again on replay, it reports only "flaky test" and
// drops the message, and this is then the only record of what broke.
func (s *sim) fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.stats.mu.Lock()
	first := !s.stats.firstFailure
	s.stats.firstFailure = true
	s.stats.mu.Unlock()
	if first {
		s.mu.Lock()
		steps := strings.Join(s.steps, "\n  ")
		s.mu.Unlock()
		fmt.Fprintf(os.Stderr, "tunnelsim: first failure of the run: %s\n  steps:\n  %s\n", msg, steps)
	}
	s.t.Fatal(msg)
}

// note logs a step of the scenario (rapid prints them with the failure).
func (s *sim) note(format string, args ...any) {
	s.stats.mu.Lock()
	s.stats.steps++
	s.stats.mu.Unlock()
	msg := fmt.Sprintf("[%s] ", time.Now().UTC().Format("15:04:05.000")) + fmt.Sprintf(format, args...)
	s.mu.Lock()
	s.steps = append(s.steps, msg)
	s.mu.Unlock()
	s.t.Log(msg)
}

func newSim(t *rapid.T, st *stats) *sim {
	s := &sim{t: t, stats: st, probes: map[uint16]*probe{}, nextProbe: 1, queries: map[uint16]*dnsQuery{},
		proxyIPs: map[string][]netip.Addr{}, proxyOwner: map[netip.Addr]string{}}
	st.mu.Lock()
	st.current = s
	st.mu.Unlock()
	s.log = logger(t)
	s.w = nodetest.NewWorld(t)
	nats := []nodetest.NAT{nodetest.NATNone, nodetest.NATEndpointIndependent, nodetest.NATSymmetric}
	s.m = model{
		resources: map[int]modelResource{}, policies: map[int]bool{},
		clientNAT: rapid.SampledFrom(nats).Draw(t, "client_nat"),
	}
	for range gatewaySpecs {
		s.m.gwNAT = append(s.m.gwNAT, rapid.SampledFrom(nats).Draw(t, "gateway_nat"))
	}
	nRelays := rapid.IntRange(1, 2).Draw(t, "relays")
	var err error
	if s.portal, err = newPortal(s.log.With("component", "portal")); err != nil {
		t.Fatalf("portal: %v", err)
	}
	for i := range nRelays {
		s.relays = append(s.relays, addRelay(s.w, s.portal, fmt.Sprintf("relay-%d", i), s.log.With("relay", i)))
		s.m.relayUp = append(s.m.relayUp, true)
	}
	s.clientHost = s.w.AddHost(nodetest.HostOptions{Name: "client", NAT: s.m.clientNAT})
	for g := range gatewaySpecs {
		s.gwHosts = append(s.gwHosts, s.w.AddHost(nodetest.HostOptions{Name: fmt.Sprintf("gateway-%d", g), NAT: s.m.gwNAT[g]}))
		s.gws = append(s.gws, nil)
		s.gwCores = append(s.gwCores, nil)
		s.m.gwUp = append(s.m.gwUp, false)
		s.m.partitioned = append(s.m.partitioned, false)
	}
	s.note("topology: client behind %s, gateways behind %v, %d relay(s)", s.m.clientNAT, s.m.gwNAT, nRelays)
	s.startClient()
	for g := range gatewaySpecs {
		s.startGateway(g)
	}
	t.Cleanup(s.shutdown)
	s.settle()
	// A few resources the client may reach from the start, so that most scenarios carry traffic.
	// (rapid draws small numbers most: 0 is the common case in these draws.)
	for range rapid.IntRange(1, 3).Draw(t, "initial_resources") {
		if r := s.putResource(t); rapid.IntRange(0, 3).Draw(t, "initially_hidden") < 3 {
			s.allow(r)
		}
	}
	return s
}

// settle lets every goroutine of the bubble run until all wait (for a timer, a packet, an event).
func (s *sim) settle() { synctest.Wait() }

// advance lets d of simulated time pass.
func (s *sim) advance(d time.Duration) {
	time.Sleep(d)
	s.settle()
}

func (s *sim) startClient() {
	core, err := clcore.New(clcore.Config{Logger: s.log.With("core", "client")})
	if err != nil {
		s.fatalf("client core: %v", err)
	}
	s.clientCore = core
	dm := newDaemon("client", s.clientHost)
	exec := func(_ context.Context, a tunnel.Action) error {
		switch a := a.(type) {
		case clcore.SetRoutes:
			s.mu.Lock()
			s.routes = slices.Clone(a.Routes)
			s.mu.Unlock()
		case clcore.SetDNS:
			s.setDNS(a)
		case clcore.DNSForward:
			// (Exec runs outside the core's lock: Do may be called from it.)
			s.forward(dm, a.Forward)
		}
		return nil
	}
	dm.run(s.portal, tunnel.DaemonConfig{
		Topic: portalapi.TopicClient, Decode: portalapi.DecodeClientIngress, Core: core, Exec: exec,
		Token: clientToken, Stop: core.HandleShutdown,
	}, s.log)
	if dm.d == nil {
		s.fatalf("client daemon did not start: %v", dm.err)
	}
	s.client = dm
	dm.read(s.clientReceived)
}

func (s *sim) startGateway(g int) {
	core, err := gwcore.New(gwcore.Config{Logger: s.log.With("core", fmt.Sprintf("gateway-%d", g))})
	if err != nil {
		s.fatalf("gateway core: %v", err)
	}
	dm := newDaemon(fmt.Sprintf("gateway-%d", g), s.gwHosts[g])
	exec := func(_ context.Context, a tunnel.Action) error {
		if a, ok := a.(gwcore.ResolveName); ok {
			addrs, err := gatewayResolve(a.Domain)
			dm.d.Driver.Do(func(now time.Time) { core.HandleResolved(a.ClientID, a.Assignment, addrs, err, now) })
		}
		return nil
	}
	dm.run(s.portal, tunnel.DaemonConfig{
		Topic: portalapi.TopicGateway, Decode: portalapi.DecodeGatewayIngress, Core: core, Exec: exec,
		Token: gatewaySpecs[g].token, Stop: core.Shutdown, LeaveFirst: true,
	}, s.log)
	if dm.d == nil {
		s.fatalf("gateway %d did not start: %v", g, dm.err)
	}
	s.gws[g], s.gwCores[g] = dm, core
	s.mu.Lock()
	s.m.gwUp[g] = true
	s.mu.Unlock()
	dm.read(func(pkt []byte) { s.resourceReceived(g, dm, pkt) })
}

// resourceReceived is the network behind gateway g: every packet the gateway forwards is checked against
// the model, counted for its probe and answered (echo reply, UDP echo, SYN-ACK; the DNS upstream inside
// resource upstreamRes answers queries).
func (s *sim) resourceReceived(g int, dm *daemon, pkt []byte) {
	p, ok := parse(pkt)
	if !ok {
		s.mu.Lock()
		s.violateLocked("gateway %d forwarded an unparsable packet %x", g, pkt)
		s.mu.Unlock()
		return
	}
	id, idOK := probeID(p)
	s.mu.Lock()
	pr := s.probes[id]
	switch {
	case !idOK || pr == nil || !isClient(p.Src()):
		s.violateLocked("gateway %d forwarded a packet the client never sent: %v → %v", g, p.Src(), p.Dst())
	case p.Dst() != pr.to.real:
		s.violateLocked("probe %d to %v came out of gateway %d to %v, want %v", id, pr.to, g, p.Dst(), pr.to.real)
	case !s.m.visible(pr.to.res):
		s.violateLocked("probe %d reached %v through gateway %d, but the client is not authorised for it", id, pr.to, g)
	case !s.m.serves(g, pr.to.res):
		s.violateLocked("probe %d reached %v through gateway %d, whose site does not serve it", id, pr.to, g)
	case !s.m.allows(pr.to.res, pr.kind):
		s.violateLocked("probe %d (%s) reached %v through gateway %d, which its filters deny", id, pr.kind, pr.to, g)
	}
	if pr != nil {
		pr.delivered = append(pr.delivered, g)
		if len(pr.delivered) > 1 {
			s.violateLocked("probe %d reached %v %d times (gateways %v)", id, pr.to, len(pr.delivered), pr.delivered)
		}
	}
	s.mu.Unlock()
	if pr == nil {
		return
	}
	var reply []byte
	switch p.Protocol() {
	case ippacket.ProtoICMP, ippacket.ProtoICMPv6:
		seq := uint16(1)
		reply = ipt.EchoReply(p.Dst(), p.Src(), id, seq, []byte(fmt.Sprintf("probe-%d", id)))
	case ippacket.ProtoUDP:
		sp, dp, _ := p.Ports()
		payload, _ := p.UDPPayload()
		if p.Dst() == upstreamIn.Addr() && dp == upstreamIn.Port() {
			payload = upstreamAnswer(payload, markerTunnel)
			if payload == nil {
				return
			}
		}
		reply = ipt.UDP(netip.AddrPortFrom(p.Dst(), dp), netip.AddrPortFrom(p.Src(), sp), payload)
	case ippacket.ProtoTCP:
		sp, dp, _ := p.Ports()
		reply = ipt.TCP(netip.AddrPortFrom(p.Dst(), dp), netip.AddrPortFrom(p.Src(), sp), 7, uint32(id)<<16+1, ipt.SYN|ipt.ACK, nil)
	default:
		return
	}
	dm.write(reply)
}

// clientReceived is the client's operating system: answers and ICMP errors are counted for their probes,
// the stub resolver's answers for their queries, and answers of an upstream inside the tunnel go to the
// core as the driver's exchanger would hand them.
func (s *sim) clientReceived(pkt []byte) {
	p, ok := parse(pkt)
	if !ok {
		s.mu.Lock()
		s.violateLocked("the client's TUN got an unparsable packet %x", pkt)
		s.mu.Unlock()
		return
	}
	if p2pcontrol.IsControl(pkt) {
		s.mu.Lock()
		s.violateLocked("the client wrote a control-protocol packet to its TUN")
		s.mu.Unlock()
		return
	}
	if p.IsICMPError() {
		q, err := p.Quoted()
		if err != nil {
			return
		}
		id, ok := probeID(q)
		typ, code, _ := p.ICMP()
		s.mu.Lock()
		pr := s.probes[id]
		if !ok || pr == nil || q.Dst() != pr.to.dst {
			s.mu.Unlock()
			return
		}
		switch {
		case p.Version() == 6 && typ == 1:
			// ICMPv6 destination unreachable, as its IPv4 twin: no route → network, administratively
			// prohibited → 13, address unreachable → host.
			code = map[uint8]uint8{0: 0, 1: 13, 3: 1}[code]
		case p.Version() == 4 && typ == 3:
		default:
			s.violateLocked("probe %d answered with ICMP type %d code %d", id, typ, code)
		}
		pr.icmpCodes = append(pr.icmpCodes, code)
		if len(pr.delivered) > 0 {
			s.violateLocked("probe %d reached its resource and was answered with ICMP unreachable (code %d) too", id, code)
		}
		first, fwd := len(pr.icmpCodes) == 1, pr.fwd
		s.mu.Unlock()
		if first && pr.query != nil {
			// A connected UDP socket reports the ICMP error on its next read: the exchange fails.
			s.client.d.Driver.Do(func(now time.Time) {
				s.clientCore.HandleDNSResponse(fwd, nil, fmt.Errorf("ICMP unreachable code %d", code), now)
			})
		}
		return
	}
	if dns.SentinelRangeV4.Contains(p.Src()) || dns.SentinelRangeV6.Contains(p.Src()) {
		s.stubAnswered(p)
		return
	}
	id, ok := probeID(p)
	s.mu.Lock()
	pr := s.probes[id]
	if !ok || pr == nil || p.Src() != pr.to.dst || !isClient(p.Dst()) {
		if resourceOf(p.Src()) >= 0 || dns.ProxyRangeV4.Contains(p.Src()) || dns.ProxyRangeV6.Contains(p.Src()) {
			s.violateLocked("the client got a packet from %v it never asked for", p.Src())
		}
		s.mu.Unlock()
		return
	}
	pr.replies++
	if pr.replies > len(pr.delivered) {
		s.violateLocked("probe %d: %d answers for %d deliveries", id, pr.replies, len(pr.delivered))
	}
	first, fwd := pr.replies == 1, pr.fwd
	s.mu.Unlock()
	if first && pr.query != nil {
		payload, err := p.UDPPayload()
		if err != nil {
			return
		}
		payload = slices.Clone(payload)
		s.client.d.Driver.Do(func(now time.Time) { s.clientCore.HandleDNSResponse(fwd, payload, nil, now) })
	}
}

// send sends a new probe from the client's applications.
func (s *sim) send(to target, k probeKind) *probe {
	s.mu.Lock()
	pr := &probe{id: s.nextProbe, to: to, kind: k}
	s.nextProbe++
	s.probes[pr.id] = pr
	s.mu.Unlock()
	s.client.write(pr.packet())
	return pr
}

// snapshot returns a copy of the probe's outcome.
func (s *sim) snapshot(pr *probe) probe {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := *pr
	c.delivered = slices.Clone(pr.delivered)
	c.icmpCodes = slices.Clone(pr.icmpCodes)
	return c
}

// waitFor advances time in small steps until cond holds or d passed; it reports whether cond held.
func (s *sim) waitFor(d time.Duration, cond func() bool) bool {
	end := time.Now().Add(d)
	for {
		s.settle()
		if cond() {
			return true
		}
		if !time.Now().Before(end) {
			return false
		}
		time.Sleep(min(100*time.Millisecond, time.Until(end)))
	}
}

// ping is an application sending probes of kind k to a target (ICMP echo, UDP to port 53 or 80, TCP SYN to
// port 443 or 80) once a second until it gets an answer, and what the model says must become of them.
// Outcomes are counted as "<what>-…" ("ping" for CIDR resources, "dns-ping" for proxy IPs).
func (s *sim) ping(to target, k probeKind) {
	what := "ping"
	if to.name != "" {
		what = "dns-ping"
	}
	r := to.res
	s.mu.Lock()
	m := s.m
	visible, allows, siteUp, path := m.visible(r), m.allows(r, k), m.siteUp(r), m.pathCertain(r)
	s.mu.Unlock()
	// retry sends a probe every second until done holds for one of them or d passed.
	retry := func(d time.Duration, done func(probe) bool) ([]*probe, bool) {
		start := time.Now()
		var sent []*probe
		ok := func() bool {
			return slices.ContainsFunc(sent, func(pr *probe) bool { return done(s.snapshot(pr)) })
		}
		for !ok() && time.Since(start) < d {
			sent = append(sent, s.send(to, k))
			s.waitFor(pingInterval, ok)
		}
		return sent, ok()
	}
	told := func(o probe) bool { return len(o.icmpCodes) > 0 }
	switch {
	case !visible:
		// Not routed to the tunnel (or stale route): dropped without a word.
		pr := s.send(to, k)
		s.advance(2 * time.Second)
		if o := s.snapshot(pr); len(o.delivered) > 0 || o.replies > 0 || len(o.icmpCodes) > 0 {
			s.fatalf("probe %d to %v, which the client may not reach, got %+v", pr.id, to, o)
		}
		s.stats.count(what + "-unauthorised")
	case !allows:
		pr := s.send(to, k)
		if !s.waitFor(2*time.Second, func() bool { return len(s.snapshot(pr).icmpCodes) > 0 }) {
			s.fatalf("probe %d (%s) to %v, which its filters deny, got no ICMP prohibited", pr.id, k, to)
		}
		if o := s.snapshot(pr); o.icmpCodes[0] != 13 {
			s.fatalf("probe %d (%s) to %v, which its filters deny, got ICMP code %d, want 13 (prohibited)", pr.id, k, to, o.icmpCodes[0])
		}
		s.stats.count(what + "-filtered")
	case !siteUp:
		// The application retries every second until it is told: a connection to a gateway that stopped
		// while no path led to it (its Goodbye lost) swallows packets until the client finds it dead.
		sent, ok := retry(siteDownWindow, told)
		if !ok {
			s.fatalf("%v, whose site has no gateway up, got no ICMP unreachable within %v (%d probes)", to, siteDownWindow, len(sent))
		}
		for _, pr := range sent {
			if o := s.snapshot(pr); len(o.icmpCodes) > 0 && o.icmpCodes[0] != 1 {
				s.fatalf("probe %d to %v, whose site has no gateway up, got ICMP code %d, want 1 (host unreachable)", pr.id, to, o.icmpCodes[0])
			}
		}
		s.stats.count(what + "-site-down")
	case !to.real.IsValid():
		// The gateway cannot resolve the name: it refuses the NAT and the client answers host unreachable.
		// It resolves the name, but not in the proxy IP's family: the gateway answers network unreachable.
		want := uint8(1)
		if len(gatewayHosts[to.name]) > 0 {
			want = 0
		}
		sent, ok := retry(pingWindow, func(o probe) bool { return len(o.icmpCodes) > 0 || o.replies > 0 })
		if !ok {
			if path {
				s.fatalf("%v, which the gateway cannot resolve, got no ICMP unreachable within %v although a path exists (%d probes)", to, pingWindow, len(sent))
			}
			s.stats.count(what + "-no-path")
			return
		}
		for _, pr := range sent {
			// Without a certain path the flow may fail first: the client answers host unreachable.
			if o := s.snapshot(pr); o.replies > 0 || len(o.icmpCodes) > 0 && o.icmpCodes[0] != want && (path || o.icmpCodes[0] != 1) {
				s.fatalf("probe %d to %v, which the gateway cannot resolve in its family: %+v, want ICMP unreachable code %d", pr.id, to, o, want)
			}
		}
		s.stats.count(what + "-unresolved")
	default:
		start := time.Now()
		sent, ok := retry(pingWindow, func(o probe) bool { return o.replies > 0 })
		if !ok {
			if path {
				s.fatalf("%v (%s) not answered within %v although a path exists (%d probes)", to, k, pingWindow, len(sent))
			}
			s.note("no answer from %v without a certain path (%d probes)", to, len(sent))
			s.stats.count(what + "-no-path")
			return
		}
		took := time.Since(start)
		s.note("%v answered %s after %v (%d probes)", to, k, took.Round(time.Millisecond), len(sent))
		s.stats.count(what + "-answered")
		if !path {
			s.stats.count(what + "-answered-without-certain-path")
		}
		s.stats.mu.Lock()
		s.stats.slowest = max(s.stats.slowest, took)
		s.stats.mu.Unlock()
		// Steady state: the next packet arrives exactly once and is answered.
		pr := s.send(to, k)
		if !s.waitFor(steadyWindow, func() bool { return s.snapshot(pr).replies > 0 }) {
			s.fatalf("probe %d to %v right after an answer: %+v within %v", pr.id, to, s.snapshot(pr), steadyWindow)
		}
		if o := s.snapshot(pr); len(o.delivered) != 1 || o.replies != 1 {
			s.fatalf("probe %d to %v: delivered %v, %d answers; want exactly once", pr.id, to, o.delivered, o.replies)
		}
	}
}

// resourceConfig is resource r as the portal's admin API takes it.
func resourceConfig(r int, mr modelResource) portalmock.ResourceConfig {
	rc := portalmock.ResourceConfig{ID: resourceID(r), Type: "cidr", Name: fmt.Sprintf("res-%d", r)}
	if isDNS(r) {
		rc.Type, rc.Address = "dns", dnsPatterns[r]
	} else {
		rc.Address = resourcePrefix(r).String()
	}
	for _, site := range mr.sites {
		rc.Sites = append(rc.Sites, siteIDs[site])
	}
	switch mr.filter {
	case filterUDP53:
		p := uint16(53)
		rc.Filters = []portalmock.FilterConfig{{Protocol: "udp", PortRangeStart: &p, PortRangeEnd: &p}}
	case filterTCP443:
		p := uint16(443)
		rc.Filters = []portalmock.FilterConfig{{Protocol: "tcp", PortRangeStart: &p, PortRangeEnd: &p}}
	}
	return rc
}

func policyConfig(r int) portalmock.PolicyConfig {
	return portalmock.PolicyConfig{ID: policyID(r), Client: clientID, Resource: resourceID(r)}
}

// ---- invariants after every step -------------------------------------------------------------------

func (s *sim) check() {
	s.settle()
	s.mu.Lock()
	vs := slices.Clone(s.violations)
	m := s.m
	routes := slices.Clone(s.routes)
	s.mu.Unlock()
	if len(vs) > 0 {
		s.fatalf("invariant broken:\n  %s", strings.Join(vs, "\n  "))
	}
	if s.client.d.PortalState() != tunnel.PortalJoined {
		return
	}
	// Routes: every resource the client may reach is routed to the tunnel, no other one is.
	for r := range numCIDR {
		routed := slices.Contains(routes, resourcePrefix(r))
		if routed != m.visible(r) {
			s.fatalf("resource %d routed %v, visible %v (routes %v)", r, routed, m.visible(r), routes)
		}
	}
	// No gateway keeps an authorisation the model does not have.
	for g, dm := range s.gws {
		if dm == nil || dm.d.PortalState() != tunnel.PortalJoined {
			continue
		}
		var st gwcore.Status
		dm.d.Driver.Inspect(func(now time.Time) { st = s.gwCores[g].Status(now) })
		for _, c := range st.Clients {
			for _, rs := range c.Resources {
				r := -1
				for i := range numResources {
					if resourceID(i) == rs.ID {
						r = i
					}
				}
				if r < 0 || !m.visible(r) || !m.serves(g, r) {
					s.fatalf("gateway %d keeps resource %s authorised for client %s (model: visible %v, served %v)",
						g, rs.ID, c.ID, r >= 0 && m.visible(r), r >= 0 && m.serves(g, r))
				}
			}
		}
	}
}

// ---- transitions -----------------------------------------------------------------------------------

func (s *sim) putResourceAction(t *rapid.T) { s.putResource(t) }

// putResource creates or changes a resource (sites, filters) and returns its number.
func (s *sim) putResource(t *rapid.T) int {
	r := rapid.IntRange(0, numResources-1).Draw(t, "resource")
	mr := modelResource{
		sites:  rapid.SampledFrom([][]int{{0}, {1}, {0, 1}, {1, 0}}).Draw(t, "sites"),
		filter: rapid.SampledFrom([]filterKind{filterNone, filterUDP53, filterTCP443}).Draw(t, "filter"),
	}
	s.note("put resource %d: sites %v, filter %v", r, mr.sites, mr.filter)
	s.mu.Lock()
	s.m.resources[r] = mr
	s.mu.Unlock()
	if err := s.portal.server().PutResource(resourceConfig(r, mr)); err != nil {
		t.Fatalf("put resource: %v", err)
	}
	s.settle()
	return r
}

func (s *sim) deleteResource(t *rapid.T) {
	r := rapid.IntRange(0, numResources-1).Draw(t, "resource")
	s.mu.Lock()
	_, ok := s.m.resources[r]
	s.mu.Unlock()
	if !ok {
		t.Skip("no such resource")
	}
	s.note("delete resource %d", r)
	s.mu.Lock()
	delete(s.m.resources, r)
	delete(s.m.policies, r)
	s.mu.Unlock()
	if err := s.portal.server().DeleteResource(resourceID(r)); err != nil {
		t.Fatalf("delete resource: %v", err)
	}
	s.settle()
}

func (s *sim) putPolicy(t *rapid.T) {
	r := rapid.IntRange(0, numResources-1).Draw(t, "resource")
	s.mu.Lock()
	_, ok := s.m.resources[r]
	has := s.m.policies[r]
	s.mu.Unlock()
	if !ok || has {
		t.Skip("no such resource, or already allowed")
	}
	s.allow(r)
}

// allow adds the policy that lets the client reach resource r, if r exists.
func (s *sim) allow(r int) {
	s.mu.Lock()
	_, ok := s.m.resources[r]
	if ok {
		s.m.policies[r] = true
	}
	s.mu.Unlock()
	if !ok {
		return
	}
	s.note("allow resource %d", r)
	if err := s.portal.server().PutPolicy(policyConfig(r)); err != nil {
		s.fatalf("put policy: %v", err)
	}
	s.settle()
}

func (s *sim) deletePolicy(t *rapid.T) {
	r := rapid.IntRange(0, numResources-1).Draw(t, "resource")
	s.mu.Lock()
	has := s.m.policies[r]
	s.mu.Unlock()
	if !has {
		t.Skip("no such policy")
	}
	s.note("revoke resource %d", r)
	s.mu.Lock()
	delete(s.m.policies, r)
	s.mu.Unlock()
	if err := s.portal.server().DeletePolicy(policyID(r)); err != nil {
		t.Fatalf("delete policy: %v", err)
	}
	s.settle()
}

// pingAllowedAction pings a CIDR resource the client may reach (skipped when there is none; DNS resources
// are pinged by dnsQuery).
func (s *sim) pingAllowedAction(t *rapid.T) {
	s.mu.Lock()
	var visible []int
	for r := range numCIDR {
		if s.m.visible(r) {
			visible = append(visible, r)
		}
	}
	s.mu.Unlock()
	if len(visible) == 0 {
		t.Skip("no resource the client may reach")
	}
	r := rapid.SampledFrom(visible).Draw(t, "allowed_resource")
	k := rapid.SampledFrom(probeKinds).Draw(t, "kind")
	s.note("ping resource %d (%s)", r, k)
	s.ping(cidrTarget(r), k)
}

func (s *sim) pingAction(t *rapid.T) {
	s.mu.Lock()
	var visible []int
	for r := range numCIDR {
		if s.m.visible(r) {
			visible = append(visible, r)
		}
	}
	s.mu.Unlock()
	var r int
	if len(visible) > 0 && rapid.IntRange(0, 3).Draw(t, "any_resource") < 3 {
		r = rapid.SampledFrom(visible).Draw(t, "allowed_resource")
	} else {
		r = rapid.IntRange(0, numCIDR-1).Draw(t, "resource")
	}
	k := rapid.SampledFrom(probeKinds).Draw(t, "kind")
	s.note("ping resource %d (%s)", r, k)
	s.ping(cidrTarget(r), k)
}

func (s *sim) roam(*rapid.T) {
	s.note("client roams")
	s.client.d.Driver.Do(func(now time.Time) { s.clientCore.HandleRoam(now) })
	s.settle()
}

func (s *sim) killRelay(t *rapid.T) {
	i := rapid.IntRange(0, len(s.relays)-1).Draw(t, "relay")
	if !s.relays[i].alive() {
		t.Skip("relay down")
	}
	s.note("relay %d dies", i)
	s.mu.Lock()
	s.m.relayUp[i] = false
	s.mu.Unlock()
	s.relays[i].kill()
	s.settle()
}

func (s *sim) reviveRelay(t *rapid.T) {
	i := rapid.IntRange(0, len(s.relays)-1).Draw(t, "relay")
	if s.relays[i].alive() {
		t.Skip("relay up")
	}
	s.note("relay %d reboots", i)
	s.relays[i].revive()
	s.mu.Lock()
	s.m.relayUp[i] = true
	s.mu.Unlock()
	s.settle()
}

func (s *sim) stopGateway(t *rapid.T) {
	g := rapid.IntRange(0, len(gatewaySpecs)-1).Draw(t, "gateway")
	if s.gws[g] == nil {
		t.Skip("gateway down")
	}
	s.note("gateway %d stops", g)
	s.mu.Lock()
	s.m.gwUp[g] = false
	s.mu.Unlock()
	if err := s.gws[g].stop(); err != nil {
		t.Fatalf("gateway %d: %v", g, err)
	}
	s.gws[g], s.gwCores[g] = nil, nil
	s.settle()
}

func (s *sim) startGatewayAction(t *rapid.T) {
	g := rapid.IntRange(0, len(gatewaySpecs)-1).Draw(t, "gateway")
	if s.gws[g] != nil {
		t.Skip("gateway up")
	}
	s.note("gateway %d starts", g)
	s.startGateway(g)
	s.settle()
}

func (s *sim) partition(t *rapid.T) {
	g := rapid.IntRange(0, len(gatewaySpecs)-1).Draw(t, "gateway")
	s.mu.Lock()
	on := !s.m.partitioned[g]
	s.m.partitioned[g] = on
	s.mu.Unlock()
	if on {
		s.note("UDP blocked between the client and gateway %d", g)
		s.w.PartitionHosts(s.clientHost, s.gwHosts[g])
	} else {
		s.note("UDP between the client and gateway %d flows again", g)
		s.w.HealHosts(s.clientHost, s.gwHosts[g])
	}
	s.settle()
}

func (s *sim) idle(t *rapid.T) {
	d := rapid.SampledFrom([]time.Duration{time.Second, 10 * time.Second, 45 * time.Second, 3 * time.Minute}).Draw(t, "for")
	s.note("idle for %v", d)
	s.advance(d)
}

func (s *sim) restartPortal(t *rapid.T) {
	down := rapid.SampledFrom([]time.Duration{0, 2 * time.Second, 20 * time.Second}).Draw(t, "down_for")
	s.note("portal restarts (down for %v)", down)
	if err := s.portal.stop(); err != nil {
		t.Fatalf("portal stop: %v", err)
	}
	s.advance(down)
	s.mu.Lock()
	var rs []portalmock.ResourceConfig
	var ps []portalmock.PolicyConfig
	for r := range numResources {
		if mr, ok := s.m.resources[r]; ok {
			rs = append(rs, resourceConfig(r, mr))
			if s.m.policies[r] {
				ps = append(ps, policyConfig(r))
			}
		}
	}
	s.mu.Unlock()
	if err := s.portal.start(rs, ps); err != nil {
		t.Fatalf("portal start: %v", err)
	}
	joined := func() bool {
		if s.client.d.PortalState() != tunnel.PortalJoined {
			return false
		}
		for _, dm := range s.gws {
			if dm != nil && dm.d.PortalState() != tunnel.PortalJoined {
				return false
			}
		}
		return true
	}
	if !s.waitFor(rejoinWindow, joined) {
		t.Fatalf("daemons not back on the portal within %v of its restart", rejoinWindow)
	}
}

// ---- end of a scenario -----------------------------------------------------------------------------

// drain removes every policy and resource and checks that nothing is left behind: no resource, flow or
// gateway at the client, no client at any gateway, no connection in any node.
func (s *sim) drain() {
	s.note("drain: every resource removed")
	for r := range numResources {
		s.mu.Lock()
		_, ok := s.m.resources[r]
		delete(s.m.resources, r)
		delete(s.m.policies, r)
		s.mu.Unlock()
		if ok {
			if err := s.portal.server().DeleteResource(resourceID(r)); err != nil {
				s.fatalf("delete resource: %v", err)
			}
		}
	}
	s.advance(time.Second)
	s.check()
	// Everything must go: at once where the Goodbye gets through, else once the connection is found dead
	// (no path back: a partition, a dead relay).
	var leftover string
	clean := func() bool {
		leftover = s.leftovers()
		return leftover == ""
	}
	start := time.Now()
	if !s.waitFor(drainWindow, clean) {
		s.fatalf("%v after every resource was removed: %s", drainWindow, leftover)
	}
	s.stats.mu.Lock()
	s.stats.slowestDrain = max(s.stats.slowestDrain, time.Since(start))
	s.stats.mu.Unlock()
}

// leftovers describes the state left at the client and the gateways ("" when there is none).
func (s *sim) leftovers() string {
	var out []string
	var st clcore.Status
	s.client.d.Driver.Inspect(func(now time.Time) { st = s.clientCore.Status(now) })
	if len(st.Resources) != 0 || len(st.PendingFlows) != 0 || len(st.Gateways) != 0 {
		out = append(out, fmt.Sprintf("client keeps resources %v, pending flows %v, gateways %+v", st.Resources, st.PendingFlows, st.Gateways))
	}
	if n := len(s.client.d.Node.Stats()); n != 0 {
		out = append(out, fmt.Sprintf("client's node keeps %d connections", n))
	}
	for g, dm := range s.gws {
		if dm == nil {
			continue
		}
		var gs gwcore.Status
		dm.d.Driver.Inspect(func(now time.Time) { gs = s.gwCores[g].Status(now) })
		if len(gs.Clients) != 0 || gs.Flows != 0 {
			out = append(out, fmt.Sprintf("gateway %d keeps clients %+v (%d flows)", g, gs.Clients, gs.Flows))
		}
		if n := len(dm.d.Node.Stats()); n != 0 {
			out = append(out, fmt.Sprintf("gateway %d's node keeps %d connections", g, n))
		}
	}
	return strings.Join(out, "; ")
}

// shutdown stops every daemon, relay and the portal (the bubble then checks that no goroutine is left).
func (s *sim) shutdown() {
	if err := s.client.stop(); err != nil {
		s.t.Errorf("client: %v", err)
	}
	for g, dm := range s.gws {
		if dm != nil {
			if err := dm.stop(); err != nil {
				s.t.Errorf("gateway %d: %v", g, err)
			}
		}
	}
	for _, r := range s.relays {
		r.kill()
	}
	if err := s.portal.stop(); err != nil {
		s.t.Errorf("portal: %v", err)
	}
}

// ---- the test --------------------------------------------------------------------------------------

// heapLimit is the heap beyond which the watchdog stops the test: no scenario needs more than a few tens
// of MiB, so a heap this large is a runaway (a packet storm, a queue without bound).
const heapLimit = 2 << 30

// stallLimit is the real time without a new step after which the watchdog stops the test: a scenario's
// step takes well under a second of real time, so a minute without one is a deadlock (which synctest
// cannot see when a goroutine waits for a mutex).
const stallLimit = time.Minute

// watchHeap checks the heap and the progress of the scenarios every second until stop is closed; past
// heapLimit, or after stallLimit without a step, it prints the running scenario's steps and every
// goroutine, and panics.
func watchHeap(st *stats, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastSteps, lastChange := -1, time.Now()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		st.mu.Lock()
		n := st.steps
		st.mu.Unlock()
		if n != lastSteps {
			lastSteps, lastChange = n, time.Now()
		}
		stalled := time.Since(lastChange) > stallLimit
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if ms.HeapAlloc < heapLimit && !stalled {
			continue
		}
		st.mu.Lock()
		s := st.current
		st.mu.Unlock()
		steps := []string{"(the scenario's lock is held)"}
		if s != nil && s.mu.TryLock() { // a deadlock may hold it
			steps = slices.Clone(s.steps)
			s.mu.Unlock()
		}
		fmt.Fprintf(os.Stderr, "heap %d MiB, no step for %v: runaway scenario:\n  %s\n", ms.HeapAlloc>>20,
			time.Since(lastChange).Round(time.Second), strings.Join(steps, "\n  "))
		_ = pprof.Lookup("goroutine").WriteTo(os.Stderr, 2)
		if stalled {
			panic(fmt.Sprintf("tunnelsim: no step for %v", stallLimit))
		}
		panic(fmt.Sprintf("tunnelsim: heap grew to %d MiB", ms.HeapAlloc>>20))
	}
}

func TestScenarios(t *testing.T) {
	st := &stats{outcomes: map[string]int{}}
	stop, watched := make(chan struct{}), make(chan struct{})
	go watchHeap(st, stop, watched)
	defer func() { close(stop); <-watched }()
	defer func() {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		t.Logf("scenarios: %v; heap in use afterwards %d MiB", st, ms.HeapInuse>>20)
	}()
	rapid.Check(t, func(rt *rapid.T) {
		rapid.SyncTest(rt, func(t *rapid.T) {
			s := newSim(t, st)
			t.Repeat(map[string]func(*rapid.T){
				"put_resource":    s.putResourceAction,
				"delete_resource": s.deleteResource,
				"put_policy":      s.putPolicy,
				"delete_policy":   s.deletePolicy,
				"ping":            s.pingAction,
				"ping_allowed":    s.pingAllowedAction, // traffic is what the invariants are about
				"ping_allowed_2":  s.pingAllowedAction,
				"dns_query":       s.dnsQueryAction,
				"dns_query_2":     s.dnsQueryAction,
				"roam":            s.roam,
				"kill_relay":      s.killRelay,
				"revive_relay":    s.reviveRelay,
				"stop_gateway":    s.stopGateway,
				"start_gateway":   s.startGatewayAction,
				"partition":       s.partition,
				"idle":            s.idle,
				"restart_portal":  s.restartPortal,
				"":                func(*rapid.T) { s.check() },
			})
			s.drain()
		})
	})
}
