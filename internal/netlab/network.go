package netlab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// ErrNetemUnavailable is returned (wrapped) by Link.SetImpairment when the kernel lacks sch_netem.
var ErrNetemUnavailable = errors.New("netlab: netem qdisc unavailable")

// Network is one layer-2 segment: a Linux bridge inside a namespace, with at most one IPv4 and one
// IPv6 prefix. The internet and other plain segments (Lab.Switch) live in a namespace of their own
// that holds only the bridge; a router's LAN (Lab.NATRouter) is a bridge inside the router's
// namespace, and the router owns the first address of each prefix as the LAN's gateway.
type Network struct {
	lab      *Lab
	name     string
	ns       *Namespace
	bridge   string
	prefixes []netip.Prefix
	allocs   []*allocator
	gateway4 netip.Addr
	gateway6 netip.Addr
	router   *Router
	ports    int
}

// Name returns the name the network was created with (a router's LAN is named after the router).
func (nw *Network) Name() string { return nw.name }

// Prefixes returns the network's prefixes (one per address family present).
func (nw *Network) Prefixes() []netip.Prefix { return append([]netip.Prefix(nil), nw.prefixes...) }

// Router returns the NAT router whose LAN this is, or nil for a switch (such as the internet).
func (nw *Network) Router() *Router { return nw.router }

// Prefix4 returns the network's IPv4 prefix, or the zero Prefix if it has none.
func (nw *Network) Prefix4() netip.Prefix { return nw.prefix(true) }

// Prefix6 returns the network's IPv6 prefix, or the zero Prefix if it has none.
func (nw *Network) Prefix6() netip.Prefix { return nw.prefix(false) }

func (nw *Network) prefix(v4 bool) netip.Prefix {
	for _, p := range nw.prefixes {
		if p.Addr().Is4() == v4 {
			return p
		}
	}
	return netip.Prefix{}
}

// Iface is one interface of a node: its name inside the node's namespace, the network it is
// plugged into, its addresses there (zero if the network lacks that family) and the veth link.
type Iface struct {
	// Name is the interface name inside the node's namespace (e.g. "nleth0", "nlwan").
	Name string
	// Network is the network the interface is plugged into.
	Network *Network
	// Addr4 and Addr6 are the interface's addresses (zero when Network lacks the family).
	Addr4, Addr6 netip.Addr
	// Link is the veth pair behind the interface.
	Link *Link
}

// Link is the veth pair that plugs an interface into a network's bridge.
type Link struct {
	lab      *Lab
	nodeNS   *Namespace
	nodeDev  string
	netNS    *Namespace
	bridgeIf string
	routes   []string // ip commands restoring the node's routes through this link
}

// Impairment is a netem setting for a link. Delay, Jitter and Loss apply in each direction (netem
// runs on the egress of both veth ends), so a link with Delay d adds 2d to any round trip over it.
type Impairment struct {
	Delay  time.Duration
	Jitter time.Duration
	// Loss is the percentage (0–100) of packets dropped in each direction.
	Loss float64
}

func (im Impairment) zero() bool { return im.Delay == 0 && im.Jitter == 0 && im.Loss == 0 }

// SetImpairment replaces the netem qdisc on both ends of the link; the zero Impairment removes it.
// It returns an error wrapping ErrNetemUnavailable if the kernel has no sch_netem; callers that
// can do without latency should log and carry on, callers that cannot should skip the test.
func (lk *Link) SetImpairment(im Impairment) error {
	if ok, reason := lk.lab.netemStatus(); !ok {
		return fmt.Errorf("%w: %s", ErrNetemUnavailable, reason)
	}
	if im.Loss < 0 || im.Loss > 100 || im.Delay < 0 || im.Jitter < 0 {
		return fmt.Errorf("netlab: invalid impairment %+v", im)
	}
	for _, end := range [][2]string{{lk.nodeNS.name, lk.nodeDev}, {lk.netNS.name, lk.bridgeIf}} {
		if im.zero() {
			_ = run(nil, "tc", "-n", end[0], "qdisc", "del", "dev", end[1], "root")
			continue
		}
		args := []string{"-n", end[0], "qdisc", "replace", "dev", end[1], "root", "netem", "limit", "100000"}
		if im.Delay > 0 || im.Jitter > 0 {
			args = append(args, "delay", usec(im.Delay))
			if im.Jitter > 0 {
				args = append(args, usec(im.Jitter))
			}
		}
		if im.Loss > 0 {
			args = append(args, "loss", strconv.FormatFloat(im.Loss, 'f', -1, 64)+"%")
		}
		if err := run(nil, "tc", args...); err != nil {
			return fmt.Errorf("netlab: set impairment: %w", err)
		}
	}
	return nil
}

func usec(d time.Duration) string { return strconv.FormatInt(d.Microseconds(), 10) + "us" }

// SetUp brings the node's end of the link up or down, like pulling and re-plugging a cable. Taking
// it down removes the node's routes through it; bringing it up restores its default routes.
func (lk *Link) SetUp(up bool) error {
	cmds := []string{"link set " + lk.nodeDev + " down"}
	if up {
		cmds = append([]string{"link set " + lk.nodeDev + " up"}, lk.routes...)
	}
	if err := lk.nodeNS.ip(cmds...); err != nil {
		return fmt.Errorf("netlab: link %s: %w", lk.nodeDev, err)
	}
	return nil
}

// Switch creates a plain layer-2 network: a namespace named after it holding a bridge. It takes at
// most one IPv4 and one IPv6 prefix (each checked with ParseLabPrefix). Failures are fatal.
func (l *Lab) Switch(name string, prefixes ...string) *Network {
	l.tb.Helper()
	nw := &Network{lab: l, name: name, bridge: Prefix + "br0"}
	nw.setPrefixes(prefixes)
	nw.ns = l.newNamespace(name)
	nw.ns.mustIP(
		"link add "+nw.bridge+" type bridge forward_delay 0 mcast_snooping 0",
		"link set "+nw.bridge+" up",
	)
	return nw
}

// Internet creates the switch named "internet". Without prefixes it uses 198.18.0.0/15 and
// 2001:db8:ffff::/64.
func (l *Lab) Internet(prefixes ...string) *Network {
	l.tb.Helper()
	if len(prefixes) == 0 {
		prefixes = []string{"198.18.0.0/15", "2001:db8:ffff::/64"}
	}
	return l.Switch("internet", prefixes...)
}

func (nw *Network) setPrefixes(prefixes []string) {
	tb := nw.lab.tb
	tb.Helper()
	if len(prefixes) == 0 {
		tb.Fatalf("netlab: network %q needs at least one prefix", nw.name)
	}
	var have4, have6 bool
	for _, s := range prefixes {
		p, err := ParseLabPrefix(s)
		if err != nil {
			tb.Fatalf("netlab: network %q: %v", nw.name, err)
		}
		if (p.Addr().Is4() && have4) || (p.Addr().Is6() && have6) {
			tb.Fatalf("netlab: network %q: at most one prefix per address family", nw.name)
		}
		have4, have6 = have4 || p.Addr().Is4(), have6 || p.Addr().Is6()
		nw.prefixes = append(nw.prefixes, p)
		nw.allocs = append(nw.allocs, newAllocator(p))
	}
}

// assign returns one address per prefix of nw: the caller's address of that family if given
// (it must lie in the prefix and be free), otherwise the lowest free one.
func (nw *Network) assign(addrs []string) (v4, v6 netip.Addr, err error) {
	nw.lab.mu.Lock()
	defer nw.lab.mu.Unlock()
	explicit := map[bool]netip.Addr{}
	for _, s := range addrs {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return v4, v6, fmt.Errorf("netlab: network %q: %w", nw.name, err)
		}
		if _, dup := explicit[a.Is4()]; dup {
			return v4, v6, fmt.Errorf("netlab: network %q: two addresses of one family: %v", nw.name, addrs)
		}
		explicit[a.Is4()] = a
	}
	for fam, a := range explicit {
		found := false
		for _, al := range nw.allocs {
			if al.prefix.Addr().Is4() == fam {
				if err := al.reserve(a); err != nil {
					return v4, v6, err
				}
				found = true
			}
		}
		if !found {
			return v4, v6, fmt.Errorf("netlab: network %q has no prefix for %s", nw.name, a)
		}
	}
	for _, al := range nw.allocs {
		fam := al.prefix.Addr().Is4()
		a, ok := explicit[fam]
		if !ok {
			if a, err = al.take(); err != nil {
				return v4, v6, err
			}
		}
		if fam {
			v4 = a
		} else {
			v6 = a
		}
	}
	return v4, v6, nil
}

// attach plugs a new interface named dev of ns into nw: a veth pair created inside the network's
// namespace, its bridge end enslaved there, its other end moved straight into ns (so nothing ever
// appears in the host's namespace), addressed and brought up. With defaultRoute, default routes go
// through the network's gateway (if it has one).
func (l *Lab) attach(ns *Namespace, dev string, nw *Network, addrs []string, defaultRoute bool) *Iface {
	l.tb.Helper()
	v4, v6, err := nw.assign(addrs)
	if err != nil {
		l.tb.Fatalf("netlab: %s: %v", ns.node, err)
	}
	l.mu.Lock()
	port := fmt.Sprintf("%sp%d", Prefix, nw.ports)
	nw.ports++
	l.mu.Unlock()

	nw.ns.mustIP(
		fmt.Sprintf("link add %s type veth peer name %s netns %s", port, dev, ns.name),
		fmt.Sprintf("link set %s master %s", port, nw.bridge),
		fmt.Sprintf("link set %s up", port),
	)
	var cmds []string
	if v4.IsValid() {
		cmds = append(cmds, fmt.Sprintf("addr add %s/%d dev %s", v4, nw.Prefix4().Bits(), dev))
	}
	if v6.IsValid() {
		cmds = append(cmds, fmt.Sprintf("addr add %s/%d dev %s nodad", v6, nw.Prefix6().Bits(), dev))
	}
	cmds = append(cmds, "link set "+dev+" up")
	var routes []string
	if defaultRoute && nw.gateway4.IsValid() && v4.IsValid() {
		routes = append(routes, fmt.Sprintf("route replace default via %s dev %s", nw.gateway4, dev))
	}
	if defaultRoute && nw.gateway6.IsValid() && v6.IsValid() {
		routes = append(routes, fmt.Sprintf("route replace default via %s dev %s", nw.gateway6, dev))
	}
	ns.mustIP(append(cmds, routes...)...)
	return &Iface{
		Name: dev, Network: nw, Addr4: v4, Addr6: v6,
		Link: &Link{lab: l, nodeNS: ns, nodeDev: dev, netNS: nw.ns, bridgeIf: port, routes: routes},
	}
}

// Host is an end node: a namespace with one interface per network it is attached to. The first
// interface carries the default routes (when its network is a router's LAN).
type Host struct {
	*Namespace
	ifaces []*Iface
}

// Host creates a host named name on nw. addrs optionally fixes its addresses (at most one per
// family, as IP literals inside nw's prefixes); otherwise the lowest free ones are used. Behind a
// router the host gets default routes via the router; on a switch, only nw's prefixes are
// reachable (on-link). Failures are fatal.
func (l *Lab) Host(name string, nw *Network, addrs ...string) *Host {
	l.tb.Helper()
	h := &Host{Namespace: l.newNamespace(name)}
	h.ifaces = append(h.ifaces, l.attach(h.Namespace, Prefix+"eth0", nw, addrs, true))
	return h
}

// Attach plugs h into one more network (a second interface, no default route: the network's
// prefixes are on-link), e.g. a gateway into its resources LAN.
func (l *Lab) Attach(h *Host, nw *Network, addrs ...string) *Iface {
	l.tb.Helper()
	l.mu.Lock()
	dev := fmt.Sprintf("%seth%d", Prefix, len(h.ifaces))
	l.mu.Unlock()
	ifc := l.attach(h.Namespace, dev, nw, addrs, false)
	l.mu.Lock()
	h.ifaces = append(h.ifaces, ifc)
	l.mu.Unlock()
	return ifc
}

// Ifaces returns the host's interfaces in the order they were attached.
func (h *Host) Ifaces() []*Iface {
	h.lab.mu.Lock()
	defer h.lab.mu.Unlock()
	return append([]*Iface(nil), h.ifaces...)
}

// Iface returns the host's interface on nw, or nil.
func (h *Host) Iface(nw *Network) *Iface {
	for _, ifc := range h.Ifaces() {
		if ifc.Network == nw {
			return ifc
		}
	}
	return nil
}

// Addr4 returns the IPv4 address of the host's first interface (zero if none).
func (h *Host) Addr4() netip.Addr { return h.ifaces[0].Addr4 }

// Addr6 returns the IPv6 address of the host's first interface (zero if none).
func (h *Host) Addr6() netip.Addr { return h.ifaces[0].Addr6 }

// Link returns the link of the host's first interface (its uplink).
func (h *Host) Link() *Link { return h.ifaces[0].Link }

// NATType selects how a router maps LAN sources to its public address.
type NATType int

const (
	// NATEndpointIndependent is nftables `masquerade`: one LAN ip:port keeps its public port for
	// every destination while the port is free (endpoint-independent mapping). Linux conntrack
	// still filters inbound by the exact remote ip:port (address- and port-dependent filtering),
	// i.e. a "port-restricted cone" NAT.
	NATEndpointIndependent NATType = iota + 1
	// NATSymmetric is nftables `masquerade random`: every new (LAN ip:port, destination) flow gets a
	// randomly chosen public port (endpoint-dependent mapping), as in Firezone's symmetric-NAT
	// compose scenarios.
	NATSymmetric
)

// String returns the NAT type's name.
func (t NATType) String() string {
	switch t {
	case NATEndpointIndependent:
		return "endpoint-independent"
	case NATSymmetric:
		return "symmetric"
	default:
		return "NATType(" + strconv.Itoa(int(t)) + ")"
	}
}

// Router is a NAT router: a namespace with a WAN interface ("nlwan") on an upstream network and a
// LAN bridge ("nllan") holding the LAN's gateway addresses, IP forwarding enabled (only inside its
// namespace), and an nftables table "inet netlab" that masquerades both IPv4 and IPv6 (NAT66)
// leaving the WAN and drops unsolicited inbound traffic.
type Router struct {
	*Namespace
	nat NATType
	wan *Iface
	lan *Network
}

const (
	wanDev = Prefix + "wan"
	lanDev = Prefix + "lan"
	// dropComment marks the rules that count and drop unsolicited inbound packets.
	dropComment = "netlab-unsolicited"
)

// NATRouter creates a router named name whose WAN is on upstream (normally the internet; another
// router's LAN gives double NAT) and returns its LAN network, with lanPrefixes (at most one per
// family, defaults 192.0.2.0/24 and 2001:db8:1::/64 when none are given). The router takes the first
// address of each LAN prefix. Failures are fatal; a missing `nft` skips the test.
func (l *Lab) NATRouter(name string, upstream *Network, nat NATType, lanPrefixes ...string) *Network {
	l.tb.Helper()
	if nat != NATEndpointIndependent && nat != NATSymmetric {
		l.tb.Fatalf("netlab: router %q: unknown NAT type %v", name, nat)
	}
	if err := run(nil, "nft", "--version"); err != nil {
		l.tb.Skipf("netlab: router %q needs nftables (`nft`, apt-get install nftables): %v", name, err)
	}
	if len(lanPrefixes) == 0 {
		lanPrefixes = []string{"192.0.2.0/24", "2001:db8:1::/64"}
	}
	lan := &Network{lab: l, name: name, bridge: lanDev}
	lan.setPrefixes(lanPrefixes)
	r := &Router{Namespace: l.newNamespace(name), nat: nat, lan: lan}
	lan.ns, lan.router = r.Namespace, r

	err := r.sysctl(map[string]string{
		"net/ipv4/ip_forward":              "1",
		"net/ipv6/conf/all/forwarding":     "1",
		"net/ipv6/conf/default/forwarding": "1",
	})
	if err != nil {
		l.tb.Fatalf("netlab: %v", err)
	}
	var err4, err6 error
	for _, al := range lan.allocs {
		a, err := al.take()
		if al.prefix.Addr().Is4() {
			lan.gateway4, err4 = a, err
		} else {
			lan.gateway6, err6 = a, err
		}
	}
	if err := errors.Join(err4, err6); err != nil {
		l.tb.Fatalf("netlab: router %q: %v", name, err)
	}
	cmds := []string{"link add " + lanDev + " type bridge forward_delay 0 mcast_snooping 0"}
	if lan.gateway4.IsValid() {
		cmds = append(cmds, fmt.Sprintf("addr add %s/%d dev %s", lan.gateway4, lan.Prefix4().Bits(), lanDev))
	}
	if lan.gateway6.IsValid() {
		cmds = append(cmds, fmt.Sprintf("addr add %s/%d dev %s nodad", lan.gateway6, lan.Prefix6().Bits(), lanDev))
	}
	r.mustIP(append(cmds, "link set "+lanDev+" up")...)
	r.wan = l.attach(r.Namespace, wanDev, upstream, nil, true)

	if err := run([]byte(r.ruleset()), "ip", "netns", "exec", r.name, "nft", "-f", "-"); err != nil {
		l.tb.Fatalf("netlab: router %q: load nftables ruleset: %v", name, err)
	}
	return lan
}

// ruleset returns the router's nftables table: it follows Firezone's scripts/router/router.nft
// (drop inbound except established, related and ICMP) with a stateful forward chain added, so only
// LAN-initiated flows and port forwards cross the router.
func (r *Router) ruleset() string {
	masq := "masquerade"
	if r.nat == NATSymmetric {
		masq = "masquerade random"
	}
	var nat []string
	if p := r.lan.Prefix4(); p.IsValid() {
		nat = append(nat, fmt.Sprintf("\t\toifname %q ip saddr %s %s", wanDev, p, masq))
	}
	if p := r.lan.Prefix6(); p.IsValid() {
		nat = append(nat, fmt.Sprintf("\t\toifname %q ip6 saddr %s %s", wanDev, p, masq))
	}
	return fmt.Sprintf(`table inet netlab {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
%s
	}
	chain input {
		type filter hook input priority filter; policy accept;
		ct state established,related accept
		iifname != %[2]q accept
		meta l4proto { icmp, ipv6-icmp } accept
		counter drop comment %[3]q
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		ct state established,related accept
		iifname != %[2]q accept
		ct status dnat accept
		counter drop comment %[3]q
	}
}
`, strings.Join(nat, "\n"), wanDev, dropComment)
}

// LAN returns the router's LAN network.
func (r *Router) LAN() *Network { return r.lan }

// WAN returns the router's WAN interface (its public addresses and uplink).
func (r *Router) WAN() *Iface { return r.wan }

// NAT returns the router's NAT type.
func (r *Router) NAT() NATType { return r.nat }

// PublicAddr4 returns the router's IPv4 address on its upstream network (zero if none).
func (r *Router) PublicAddr4() netip.Addr { return r.wan.Addr4 }

// PublicAddr6 returns the router's IPv6 address on its upstream network (zero if none).
func (r *Router) PublicAddr6() netip.Addr { return r.wan.Addr6 }

// ForwardPort forwards proto ("udp" or "tcp") traffic arriving on the router's public addresses at
// port to host's LAN address at hostPort, for each family both have (DNAT in the prerouting chain;
// the forward chain accepts DNATed flows). host must be on the router's LAN.
func (r *Router) ForwardPort(proto string, port uint16, host *Host, hostPort uint16) error {
	return r.forward(proto, strconv.Itoa(int(port)), host, ":"+strconv.Itoa(int(hostPort)))
}

// ForwardPorts forwards proto traffic arriving on the router's public addresses at any port in
// [first, last] to the same port on host (compose forwards a relay's udp/49152-65535 this way).
func (r *Router) ForwardPorts(proto string, first, last uint16, host *Host) error {
	if first > last {
		return fmt.Errorf("netlab: router %s: forward: empty port range %d-%d", r.node, first, last)
	}
	return r.forward(proto, fmt.Sprintf("%d-%d", first, last), host, "")
}

func (r *Router) forward(proto, ports string, host *Host, toPort string) error {
	if proto != "udp" && proto != "tcp" {
		return fmt.Errorf("netlab: router %s: forward: protocol %q is not udp or tcp", r.node, proto)
	}
	ifc := host.Iface(r.lan)
	if ifc == nil {
		return fmt.Errorf("netlab: router %s: forward: host %s is not on its LAN", r.node, host.node)
	}
	var rules []string
	if r.wan.Addr4.IsValid() && ifc.Addr4.IsValid() {
		rules = append(rules, fmt.Sprintf("add rule inet netlab prerouting iifname %q ip daddr %s %s dport %s dnat ip to %s%s",
			wanDev, r.wan.Addr4, proto, ports, ifc.Addr4, toPort))
	}
	if r.wan.Addr6.IsValid() && ifc.Addr6.IsValid() {
		to := ifc.Addr6.String()
		if toPort != "" {
			to = "[" + to + "]" + toPort
		}
		rules = append(rules, fmt.Sprintf("add rule inet netlab prerouting iifname %q ip6 daddr %s %s dport %s dnat ip6 to %s",
			wanDev, r.wan.Addr6, proto, ports, to))
	}
	if len(rules) == 0 {
		return fmt.Errorf("netlab: router %s: forward: no address family in common with %s", r.node, host.node)
	}
	if err := run([]byte(strings.Join(rules, "\n")+"\n"), "ip", "netns", "exec", r.name, "nft", "-f", "-"); err != nil {
		return fmt.Errorf("netlab: router %s: forward %s/%s: %w", r.node, proto, ports, err)
	}
	return nil
}

// SetUDPTimeout sets how long the router keeps an idle UDP mapping (conntrack's
// nf_conntrack_udp_timeout and nf_conntrack_udp_timeout_stream in the router's namespace; Linux
// defaults are 30 s and 120 s). Short timeouts let tests watch NAT mappings expire.
func (r *Router) SetUDPTimeout(d time.Duration) error {
	secs := int(d.Round(time.Second) / time.Second)
	if secs < 1 {
		return fmt.Errorf("netlab: router %s: UDP timeout %v is below one second", r.node, d)
	}
	v := strconv.Itoa(secs)
	return r.sysctl(map[string]string{
		"net/netfilter/nf_conntrack_udp_timeout":        v,
		"net/netfilter/nf_conntrack_udp_timeout_stream": v,
	})
}

// DroppedUnsolicited returns how many inbound packets the router's firewall has dropped because no
// LAN-initiated flow or port forward matched them (input and forward chains together).
func (r *Router) DroppedUnsolicited(ctx context.Context) (uint64, error) {
	out, err := r.Exec(ctx, "nft", "list", "table", "inet", "netlab")
	if err != nil {
		return 0, err
	}
	var total uint64
	for _, line := range strings.Split(string(out), "\n") {
		if !strings.Contains(line, dropComment) {
			continue
		}
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "packets" {
				n, err := strconv.ParseUint(f[i+1], 10, 64)
				if err != nil {
					return 0, fmt.Errorf("netlab: router %s: parse counter in %q: %w", r.node, line, err)
				}
				total += n
			}
		}
	}
	return total, nil
}
