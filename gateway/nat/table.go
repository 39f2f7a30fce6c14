package nat

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/snowgate/snowgate/internal/ippacket"
)

// Session lifetimes (Firezone's nat_table.rs; TCP follows RFC 5382's
// 2 h 4 min).
const (
	// TCPTTL is how long a TCP session lives after its last packet.
	TCPTTL = 2*time.Hour + 4*time.Minute
	// UDPTTL is how long a UDP session lives after its last packet.
	UDPTTL = 2 * time.Minute
	// ICMPTTL is how long an ICMP echo session lives after its last packet.
	ICMPTTL = 2 * time.Minute
	// UnconfirmedTTL is how long a session that has seen no reply lives after
	// its last outgoing packet.
	UnconfirmedTTL = 60 * time.Second
	// FinLinger is how long a TCP session lives after its last packet once
	// FINs were seen in both directions.
	FinLinger = 5 * time.Second
)

// scanInterval is the shortest time between two expiry scans of a client.
const scanInterval = time.Second

// Defaults for Config.
const (
	// DefaultMaxSessionsPerClient bounds a client's live sessions.
	DefaultMaxSessionsPerClient = 16384
	// DefaultMaxProxyIPsPerClient bounds a client's translations: 8 proxy IPs
	// for each of p2pcontrol's DefaultMaxDomainsPerPeer domains.
	DefaultMaxProxyIPsPerClient = 8 * 4096
)

// DefaultProxyPrefixes returns the DNS-resource proxy IP ranges
// (Firezone's 100.96.0.0/11 and fd00:2021:1111:8000::/107).
func DefaultProxyPrefixes() []netip.Prefix {
	return []netip.Prefix{
		netip.MustParsePrefix("100.96.0.0/11"),
		netip.MustParsePrefix("fd00:2021:1111:8000::/107"),
	}
}

// Config configures a Table.
type Config struct {
	// ProxyPrefixes are the proxy IP ranges; packets to them are NAT traffic.
	// nil → DefaultProxyPrefixes().
	ProxyPrefixes []netip.Prefix
	// MaxSessionsPerClient bounds a client's live sessions (0 → default).
	MaxSessionsPerClient int
	// MaxProxyIPsPerClient bounds a client's translations (0 → default).
	MaxProxyIPsPerClient int
	// Logger receives debug logs (new and expired sessions); nil discards.
	Logger *slog.Logger
	// MeterProvider receives the table's metrics (see package doc); nil →
	// noop.
	MeterProvider metric.MeterProvider
}

// ClientIPs are a client's tunnel addresses; at least one must be valid.
type ClientIPs struct {
	// V4 is the client's tunnel IPv4 address.
	V4 netip.Addr
	// V6 is the client's tunnel IPv6 address (p2pcontrol's peer address).
	V6 netip.Addr
}

// Assignment is one domain's configuration for a client: the proxy IPs the
// client assigned (p2pcontrol.AssignedIPs) and the real IPs the gateway
// resolved for the domain.
type Assignment struct {
	// Resource is the DNS resource's ID.
	Resource string
	// Domain is the resolved name.
	Domain string
	// ProxyIPs are the client's proxy IPs for Domain.
	ProxyIPs []netip.Addr
	// RealIPs are the addresses Domain resolved to (any number, any family).
	RealIPs []netip.Addr
}

// Mapping is one proxy IP's translation.
type Mapping struct {
	// Proxy is the proxy IP.
	Proxy netip.Addr
	// Real is the real IP new flows to Proxy go to; the zero Addr when the
	// proxy IP's family has no real IP (packets to it get Unreachable).
	Real netip.Addr
}

// Setup is the outcome of Table.Configure.
type Setup struct {
	// Mappings lists every proxy IP of the assignment, sorted.
	Mappings []Mapping
}

// Unreachable returns the proxy IPs whose family has no real IP.
func (s Setup) Unreachable() []netip.Addr {
	var out []netip.Addr
	for _, m := range s.Mappings {
		if !m.Real.IsValid() {
			out = append(out, m.Proxy)
		}
	}
	return out
}

// Stats counts a Table's state.
type Stats struct {
	// Clients is the number of registered clients.
	Clients int
	// Sessions is the number of live sessions over all clients.
	Sessions int
	// Translations is the number of proxy IP translations over all clients.
	Translations int
}

// flowKey identifies one side of a session: the inside (protocol, client
// port or echo id, proxy IP) or the outside (protocol, port, real IP).
type flowKey struct {
	addr  netip.Addr
	port  uint16
	proto ippacket.Protocol
}

type owner struct {
	resource, domain string
}

type translation struct {
	owner
	real netip.Addr
}

type client struct {
	ips          ClientIPs
	translations map[netip.Addr]translation
	byInside     map[flowKey]*session
	byOutside    map[flowKey]*session
	// expired remembers outside keys of removed sessions (and when) so that
	// late replies are dropped rather than passed on.
	expired  map[flowKey]time.Time
	counters *counters
	// maxExpired bounds expired (Config.MaxSessionsPerClient).
	maxExpired int
	// nextCheck is when HandleTimeout scans the client next: no later than
	// the earliest session removal, no earlier than scanInterval after the
	// last scan (zero: nothing to scan).
	nextCheck time.Time
	// lastScan is when expire last ran.
	lastScan time.Time
}

// Table is the DNS-resource NAT of all clients of a gateway.
type Table struct {
	prefixes    []netip.Prefix
	maxSessions int
	maxProxyIPs int
	log         *slog.Logger
	clients     map[netip.Addr]*client // by each tunnel IP
	counters    *counters
}

// New returns an empty Table.
func New(cfg Config) (*Table, error) {
	t := &Table{
		prefixes:    cfg.ProxyPrefixes,
		maxSessions: cfg.MaxSessionsPerClient,
		maxProxyIPs: cfg.MaxProxyIPsPerClient,
		log:         cfg.Logger,
		clients:     make(map[netip.Addr]*client),
		counters:    &counters{},
	}
	if t.prefixes == nil {
		t.prefixes = DefaultProxyPrefixes()
	} else {
		t.prefixes = slices.Clone(t.prefixes)
	}
	for _, p := range t.prefixes {
		if !p.IsValid() {
			return nil, fmt.Errorf("proxy prefix %v: %w", p, ErrInvalidConfig)
		}
	}
	if t.maxSessions < 0 || t.maxProxyIPs < 0 {
		return nil, fmt.Errorf("negative limit: %w", ErrInvalidConfig)
	}
	if t.maxSessions == 0 {
		t.maxSessions = DefaultMaxSessionsPerClient
	}
	if t.maxProxyIPs == 0 {
		t.maxProxyIPs = DefaultMaxProxyIPsPerClient
	}
	if t.log == nil {
		t.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if err := registerMetrics(cfg.MeterProvider, t.counters); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *Table) isProxy(a netip.Addr) bool {
	for _, p := range t.prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// AddClient registers a client by its tunnel IPs. Registering a client again
// with the same addresses keeps its state; an address already used by another
// client is an error.
func (t *Table) AddClient(ips ClientIPs) error {
	ips.V4, ips.V6 = ips.V4.Unmap(), ips.V6.Unmap()
	if (ips.V4.IsValid() && !ips.V4.Is4()) || (ips.V6.IsValid() && !ips.V6.Is6()) ||
		(!ips.V4.IsValid() && !ips.V6.IsValid()) {
		return fmt.Errorf("client tunnel IPs %v/%v: %w", ips.V4, ips.V6, ErrInvalidConfig)
	}
	var existing *client
	for _, a := range []netip.Addr{ips.V4, ips.V6} {
		if c := t.clients[a]; a.IsValid() && c != nil {
			if c.ips != ips || (existing != nil && existing != c) {
				return fmt.Errorf("client tunnel IP %v already registered: %w", a, ErrInvalidConfig)
			}
			existing = c
		}
	}
	if existing != nil {
		return nil
	}
	c := &client{
		ips:          ips,
		translations: make(map[netip.Addr]translation),
		byInside:     make(map[flowKey]*session),
		byOutside:    make(map[flowKey]*session),
		expired:      make(map[flowKey]time.Time),
		maxExpired:   t.maxSessions,
		counters:     t.counters,
	}
	for _, a := range []netip.Addr{ips.V4, ips.V6} {
		if a.IsValid() {
			t.clients[a] = c
		}
	}
	return nil
}

// RemoveClient drops all state of the client with tunnel IP peer (either of
// its addresses). Removing an unknown client does nothing.
func (t *Table) RemoveClient(peer netip.Addr) {
	c := t.clients[peer.Unmap()]
	if c == nil {
		return
	}
	delete(t.clients, c.ips.V4)
	delete(t.clients, c.ips.V6)
	t.counters.sessions.Add(-int64(len(c.byInside)))
}

func (t *Table) client(peer netip.Addr) (*client, error) {
	c := t.clients[peer.Unmap()]
	if c == nil {
		return nil, fmt.Errorf("client %v: %w", peer, ErrUnknownClient)
	}
	return c, nil
}

// Configure installs (or updates) the translations of one domain for the
// client with tunnel IP peer: the gateway loop calls it on
// p2pcontrol.EventSetupNAT once it has resolved a.Domain. Proxy IPs map to
// real IPs of their family round-robin; the returned Setup says which proxy
// IPs have none. Existing sessions keep their real IP until they expire;
// sessions of a proxy IP previously assigned to another resource or domain
// are dropped. Nothing changes if an error is returned.
func (t *Table) Configure(peer netip.Addr, a Assignment, now time.Time) (Setup, error) {
	c, err := t.client(peer)
	if err != nil {
		return Setup{}, err
	}
	proxies := make([]netip.Addr, 0, len(a.ProxyIPs))
	for _, p := range a.ProxyIPs {
		p = p.Unmap()
		if !p.IsValid() || !t.isProxy(p) {
			return Setup{}, fmt.Errorf("domain %q proxy IP %v: %w", a.Domain, p, ErrNotProxyIP)
		}
		proxies = append(proxies, p)
	}
	slices.SortFunc(proxies, netip.Addr.Compare)
	proxies = slices.Compact(proxies)
	added := 0
	for _, p := range proxies {
		if _, ok := c.translations[p]; !ok {
			added++
		}
	}
	if len(c.translations)+added > t.maxProxyIPs {
		return Setup{}, fmt.Errorf("client %v domain %q: %d proxy IPs, limit %d: %w",
			peer, a.Domain, len(c.translations)+added, t.maxProxyIPs, ErrTooManyProxyIPs)
	}
	var real4, real6 []netip.Addr
	for _, r := range a.RealIPs {
		r = r.Unmap()
		switch {
		case r.Is4():
			real4 = append(real4, r)
		case r.Is6():
			real6 = append(real6, r)
		}
	}
	for _, rs := range []*[]netip.Addr{&real4, &real6} {
		slices.SortFunc(*rs, netip.Addr.Compare)
		*rs = slices.Compact(*rs)
	}
	o := owner{resource: a.Resource, domain: a.Domain}
	setup := Setup{Mappings: make([]Mapping, 0, len(proxies))}
	var i4, i6 int
	for _, p := range proxies {
		var real netip.Addr
		if p.Is4() && len(real4) > 0 {
			real = real4[i4%len(real4)]
			i4++
		} else if p.Is6() && len(real6) > 0 {
			real = real6[i6%len(real6)]
			i6++
		}
		if old, ok := c.translations[p]; ok && old.owner != o {
			n := c.dropInside(p, now)
			t.log.Debug("proxy IP re-assigned, sessions dropped", "proxy_ip", p,
				"domain", a.Domain, "old_domain", old.domain, "sessions", n)
		}
		c.translations[p] = translation{owner: o, real: real}
		setup.Mappings = append(setup.Mappings, Mapping{Proxy: p, Real: real})
	}
	t.log.Debug("DNS resource NAT set up", "client", peer, "domain", a.Domain,
		"proxy_ips", len(proxies), "real_ips", len(real4)+len(real6))
	return setup, nil
}

// Remove drops the translations of (resource, domain) for the client with
// tunnel IP peer, and the sessions of those proxy IPs. It returns the number
// of proxy IPs removed.
func (t *Table) Remove(peer netip.Addr, resource, domain string, now time.Time) (int, error) {
	c, err := t.client(peer)
	if err != nil {
		return 0, err
	}
	o := owner{resource: resource, domain: domain}
	n := 0
	for p, tr := range c.translations {
		if tr.owner == o {
			delete(c.translations, p)
			c.dropInside(p, now)
			n++
		}
	}
	return n, nil
}

// dropInside removes the sessions whose proxy IP is p.
func (c *client) dropInside(p netip.Addr, now time.Time) int {
	n := 0
	for k, s := range c.byInside {
		if k.addr == p {
			c.removeSession(s, now)
			n++
		}
	}
	return n
}

// Mapping returns the current translation of proxy IP proxy for the client
// with tunnel IP peer.
func (t *Table) Mapping(peer, proxy netip.Addr) (Mapping, bool) {
	c := t.clients[peer.Unmap()]
	if c == nil {
		return Mapping{}, false
	}
	tr, ok := c.translations[proxy.Unmap()]
	if !ok {
		return Mapping{}, false
	}
	return Mapping{Proxy: proxy.Unmap(), Real: tr.real}, true
}

// Stats returns the table's current counts.
func (t *Table) Stats() Stats {
	var s Stats
	for a, c := range t.clients {
		if a != c.primary() {
			continue
		}
		s.Clients++
		s.Sessions += len(c.byInside)
		s.Translations += len(c.translations)
	}
	return s
}

// primary is the address under which a client is counted once.
func (c *client) primary() netip.Addr {
	if c.ips.V6.IsValid() {
		return c.ips.V6
	}
	return c.ips.V4
}

// PollTimeout returns when HandleTimeout must be called next; false when no
// session is live.
func (t *Table) PollTimeout() (time.Time, bool) {
	var next time.Time
	for a, c := range t.clients {
		if a != c.primary() || c.nextCheck.IsZero() {
			continue
		}
		if next.IsZero() || c.nextCheck.Before(next) {
			next = c.nextCheck
		}
	}
	return next, !next.IsZero()
}

// HandleTimeout removes the sessions that have expired at now.
func (t *Table) HandleTimeout(now time.Time) {
	for a, c := range t.clients {
		if a != c.primary() || c.nextCheck.IsZero() || now.Before(c.nextCheck) {
			continue
		}
		t.expire(c, now)
	}
}

// expire removes c's expired sessions, forgets expired markers older than
// TCPTTL and recomputes c.nextCheck.
func (t *Table) expire(c *client, now time.Time) {
	var next time.Time
	for _, s := range c.byInside {
		at := s.removeAt()
		if !now.Before(at) {
			c.removeSession(s, now)
			t.log.Debug("NAT session removed", "proxy_ip", s.inside.addr, "real_ip", s.outside.addr,
				"proto", s.inside.proto, "port", s.inside.port, "confirmed", !s.lastIn.IsZero())
			continue
		}
		if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	for k, at := range c.expired {
		if now.Sub(at) >= TCPTTL {
			delete(c.expired, k)
		}
	}
	// Scan a client at most once per scanInterval: a session may stay in
	// memory up to that long after it expired (lookups already treat it as
	// expired), and a table whose sessions expire one by one costs one scan
	// per interval, not one per session.
	if !next.IsZero() && next.Before(now.Add(scanInterval)) {
		next = now.Add(scanInterval)
	}
	c.nextCheck = next
	c.lastScan = now
}

// removeSession deletes s and remembers its outside key as expired.
func (c *client) removeSession(s *session, now time.Time) {
	delete(c.byInside, s.inside)
	delete(c.byOutside, s.outside)
	c.counters.sessions.Add(-1)
	if len(c.expired) >= c.maxExpired {
		// Bounded: forget an arbitrary marker.
		for k := range c.expired {
			delete(c.expired, k)
			break
		}
	}
	c.expired[s.outside] = now
}

// schedule lowers c.nextCheck to at if earlier, but not below scanInterval
// after the last scan.
func (c *client) schedule(at time.Time) {
	if !c.lastScan.IsZero() && at.Before(c.lastScan.Add(scanInterval)) {
		at = c.lastScan.Add(scanInterval)
	}
	if c.nextCheck.IsZero() || at.Before(c.nextCheck) {
		c.nextCheck = at
	}
}
