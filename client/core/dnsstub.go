package core

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/snowgate/snowgate/client/dns"
	"github.com/snowgate/snowgate/internal/dnspattern"
	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/internal/tunnel"
)

// ErrNoResolver is returned by HandleDNSTCPAccept while the core has no upstream resolver.
var ErrNoResolver = errors.New("client core: no upstream DNS resolver")

// Forward IDs the core hands out are the resolver's IDs tagged with the resolver's generation (the
// resolver is rebuilt when the upstreams change): an answer for a forward of an older resolver is dropped
// instead of reaching a forward of the new one that happens to have the same number.
const fwdGenShift = 40

func (c *Client) encodeFwd(id dns.ForwardID) dns.ForwardID {
	return dns.ForwardID(c.resolverGen<<fwdGenShift | uint64(id)&(1<<fwdGenShift-1))
}

func (c *Client) decodeFwd(id dns.ForwardID) (dns.ForwardID, bool) {
	if uint64(id)>>fwdGenShift != c.resolverGen {
		return 0, false
	}
	return dns.ForwardID(uint64(id) & (1<<fwdGenShift - 1)), true
}

// applyInterface applies the portal's interface: tunnel addresses, upstream resolvers, search domain.
func (c *Client) applyInterface(iface portalapi.Interface, now time.Time) {
	v4, v6 := unmap(iface.IPv4), unmap(iface.IPv6)
	if !c.ifaceSet || v4 != c.ipv4 || v6 != c.ipv6 {
		v6Changed := !c.ifaceSet || v6 != c.ipv6
		c.ifaceSet = true
		c.ipv4, c.ipv6 = v4, v6
		c.emit(tunnel.SetInterface{IPv4: v4, IPv6: v6})
		if v6Changed {
			c.newP2P()
		}
	}
	var ups []netip.AddrPort
	for _, s := range iface.UpstreamDNS {
		if (s.Protocol == "" || s.Protocol == portalapi.DNSProtocolIPPort) && s.Address.IsValid() {
			ups = append(ups, s.Address)
		}
	}
	for _, s := range iface.UpstreamDo53 {
		if s.IP.IsValid() {
			ups = append(ups, netip.AddrPortFrom(s.IP, 53))
		}
	}
	for i, u := range ups {
		port := u.Port()
		if port == 0 {
			port = 53
		}
		ups[i] = netip.AddrPortFrom(u.Addr().Unmap().WithZone(""), port)
	}
	c.portalUpstreams = dedupe(ups)
	c.searchDomain = iface.SearchDomain
	c.configureDNS(now)
}

func dedupe(ups []netip.AddrPort) []netip.AddrPort {
	var out []netip.AddrPort
	for _, u := range ups {
		if !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	return out
}

// SetSystemResolvers replaces Config.SystemResolvers (e.g. after a network change): they are the upstreams
// whenever the portal names none.
func (c *Client) SetSystemResolvers(rs []netip.AddrPort, now time.Time) {
	var out []netip.AddrPort
	for _, r := range rs {
		if !r.Addr().IsValid() {
			continue
		}
		port := r.Port()
		if port == 0 {
			port = 53
		}
		out = append(out, netip.AddrPortFrom(r.Addr().Unmap().WithZone(""), port))
	}
	c.cfg.SystemResolvers = dedupe(out)
	if c.configured {
		c.configureDNS(now)
	}
}

// reservedRanges are where an upstream resolver may not be (the stub resolver refuses them): skipped here
// with a warning, so that one bad upstream does not cost the client all DNS.
var reservedRanges = []netip.Prefix{
	dns.TunnelRangeV4, dns.TunnelRangeV6, dns.ProxyRangeV4, dns.ProxyRangeV6, dns.SentinelRangeV4, dns.SentinelRangeV6,
}

// configureDNS (re)builds the stub resolver when the effective upstreams changed, and emits SetDNS.
func (c *Client) configureDNS(now time.Time) {
	want := c.portalUpstreams
	if len(want) == 0 {
		want = c.cfg.SystemResolvers
	}
	var ups []netip.AddrPort
	for _, u := range want {
		if u.Addr().IsUnspecified() || slices.ContainsFunc(reservedRanges, func(p netip.Prefix) bool { return p.Contains(u.Addr()) }) {
			c.log.Warn("upstream DNS resolver in a reserved range skipped", "upstream", u)
			continue
		}
		ups = append(ups, u)
	}
	if !c.upstreamsApplied || !slices.Equal(ups, c.upstreams) {
		c.upstreamsApplied = true
		c.rebuildResolver(ups, now)
	}
	c.updateDNS()
}

// rebuildResolver replaces the stub resolver for new upstreams. The old one's exchanges are abandoned
// (DNSCancel; its queries in flight are answered SERVFAIL). client/dns cannot change a Resolver's upstreams,
// and a new Resolver hands out proxy IPs from the start of the range, so the names the old one assigned are
// replayed into the new one in their original order: the allocation is sequential, so every name gets its
// proxy IPs back (checked: a name whose IPs differ is logged and re-routed).
func (c *Client) rebuildResolver(ups []netip.AddrPort, now time.Time) {
	old := c.resolver
	c.upstreams = slices.Clone(ups)
	if old != nil {
		res := old.Roam(now)
		for {
			if _, ok := old.PollForward(); !ok {
				break
			}
		}
		c.drainReplies(old)
		if len(res.Cancelled) > 0 {
			ids := make([]dns.ForwardID, len(res.Cancelled))
			for i, id := range res.Cancelled {
				ids[i] = c.encodeFwd(id)
			}
			c.emit(DNSCancel{IDs: ids})
		}
	}
	c.resolver = nil
	c.resolverGen++
	if len(ups) == 0 {
		c.log.Warn("no upstream DNS resolver: DNS through the tunnel is off")
		return
	}
	r, err := dns.New(dns.Config{
		UpstreamDNS:     ups,
		UpstreamTimeout: c.cfg.DNSUpstreamTimeout,
		Logger:          c.log,
		MeterProvider:   c.cfg.MeterProvider,
	})
	if err != nil {
		c.log.Warn("stub resolver not configured: DNS through the tunnel is off", "upstreams", ups, telemetry.Err(err))
		return
	}
	c.resolver = r
	c.log.Info("DNS upstreams configured", "upstreams", ups)
	if len(c.names) > 0 && c.replayNames(now) {
		c.syncTable()
		for _, g := range c.gateways {
			g.allowedDirty = true
		}
		c.syncAllowedIPs()
	}
	c.resolverResources()
}

// replayNames makes the fresh resolver assign every known name again, in the original order. It reports
// whether a name's proxy IPs came out different (then re-indexed, with a warning).
func (c *Client) replayNames(now time.Time) (changed bool) {
	order := make([]*nameEntry, 0, len(c.names))
	for _, ne := range c.names {
		order = append(order, ne)
	}
	slices.SortFunc(order, func(a, b *nameEntry) int { return a.order - b.order })
	var tmp []dns.Resource
	for _, ne := range order {
		if _, err := dnspattern.Parse(ne.name); err == nil {
			tmp = append(tmp, dns.Resource{ID: "replay", Address: ne.name, IPStack: dns.Dual})
		}
	}
	if err := c.resolver.SetResources(tmp, nil); err != nil {
		c.log.Debug("replay resources not all applied", telemetry.Err(err))
	}
	src := dns.Source{Transport: dns.UDP, Client: netip.AddrPortFrom(netip.IPv4Unspecified(), 0)}
	for i, ne := range order {
		q := buildQuery(uint16(i), ne.name)
		c.resolver.HandleQuery(src, q, now, c.dnsScratch[:0])
	}
	for {
		ev, ok := c.resolver.PollEvent()
		if !ok {
			break
		}
		ne := c.names[ev.Name]
		if ne == nil {
			continue
		}
		var v4, v6 []netip.Addr
		for _, ip := range ev.IPs {
			if ip.Is4() {
				v4 = append(v4, ip)
			} else {
				v6 = append(v6, ip)
			}
		}
		if len(ne.v4) > 0 && !slices.Equal(v4, ne.v4) {
			c.replaceIPs(ne, ne.v4, v4)
			ne.v4, changed = v4, true
		}
		if len(ne.v6) > 0 && !slices.Equal(v6, ne.v6) {
			c.replaceIPs(ne, ne.v6, v6)
			ne.v6, changed = v6, true
		}
	}
	for {
		if _, ok := c.resolver.PollReply(); !ok {
			break
		}
	}
	for {
		if _, ok := c.resolver.PollForward(); !ok {
			break
		}
	}
	return changed
}

// buildQuery returns a DNS query for the A records of name.
func buildQuery(id uint16, name string) []byte {
	b := make([]byte, 12, 12+len(name)+6)
	binary.BigEndian.PutUint16(b[0:], id)
	binary.BigEndian.PutUint16(b[2:], 0x0100) // RD
	binary.BigEndian.PutUint16(b[4:], 1)      // QDCOUNT
	for label := range strings.SplitSeq(name, ".") {
		b = append(b, byte(len(label)))
		b = append(b, label...)
	}
	return append(b, 0, 0, 1, 0, 1) // root, type A, class IN
}

// updateDNS emits SetDNS when the sentinels or the search domain changed.
func (c *Client) updateDNS() {
	clear(c.sentinels)
	servers := []netip.Addr{}
	if c.resolver != nil {
		for _, s := range c.resolver.Sentinels() {
			servers = append(servers, s.Addr)
			c.sentinels[s.Addr] = struct{}{}
		}
	}
	if c.lastDNS != nil && slices.Equal(c.lastDNS.Servers, servers) && c.lastDNS.SearchDomain == c.searchDomain {
		return
	}
	c.lastDNS = &SetDNS{Servers: servers, SearchDomain: c.searchDomain}
	c.emit(SetDNS{Servers: slices.Clone(servers), SearchDomain: c.searchDomain})
}

// handleUDPQuery hands a UDP query to a sentinel to the resolver.
func (c *Client) handleUDPQuery(client, server netip.AddrPort, payload []byte, now time.Time) {
	if c.resolver == nil {
		c.ctr.dropped[dropDNSUnavailable].Add(1)
		return
	}
	c.touch()
	reply, ok := c.resolver.HandleQuery(dns.Source{Transport: dns.UDP, Client: client, Server: server}, payload, now, c.dnsScratch[:0])
	// Names assigned by this query are routed before the answer reaches the application.
	c.drainEvents()
	if ok {
		c.sendUDPReply(server, client, reply)
	}
	c.drainResolver(now)
}

// sendUDPReply writes a DNS answer from a sentinel to an application as a UDP packet to the TUN device.
func (c *Client) sendUDPReply(from, to netip.AddrPort, payload []byte) {
	hl := ippacket.IPv6HeaderLen
	if from.Addr().Is4() {
		hl = ippacket.IPv4MinHeaderLen
	}
	buf := make([]byte, hl+ippacket.UDPHeaderLen+len(payload))
	n, err := ippacket.BuildUDP(buf, from, to, payload)
	if err != nil {
		c.log.Debug("DNS answer not sent", "to", to, telemetry.Err(err))
		return
	}
	c.ctr.dnsReplies.Add(1)
	c.toTUN(buf[:n])
}

// drainEvents routes the names the resolver assigned.
func (c *Client) drainEvents() {
	if c.resolver == nil {
		return
	}
	for {
		ev, ok := c.resolver.PollEvent()
		if !ok {
			return
		}
		c.handleNameAssigned(ev)
	}
}

// drainResolver turns the resolver's outputs into actions: name events, forwards, replies.
func (c *Client) drainResolver(now time.Time) {
	if c.resolver == nil {
		return
	}
	c.drainEvents()
	for {
		f, ok := c.resolver.PollForward()
		if !ok {
			break
		}
		f.ID = c.encodeFwd(f.ID)
		c.emit(DNSForward{Forward: f})
	}
	c.drainReplies(c.resolver)
	_ = now
}

// drainReplies sends r's asynchronous replies to the applications.
func (c *Client) drainReplies(r *dns.Resolver) {
	for {
		rep, ok := r.PollReply()
		if !ok {
			return
		}
		if rep.To.Transport == dns.TCP {
			c.ctr.dnsReplies.Add(1)
			c.emit(DNSTCPReply{Handle: rep.To.Handle, Payload: rep.Payload})
			continue
		}
		c.sendUDPReply(rep.To.Server, rep.To.Client, rep.Payload)
	}
}

// HandleDNSResponse reports the outcome of a DNSForward: the upstream's answer, or the error that ended
// the exchange (dns.ErrUpstreamTimeout or a net.Error timeout for a UDP query that got no answer: the
// application is not answered, as without snowgate; any other error: SERVFAIL). Answers for forwards the
// core no longer knows are dropped.
func (c *Client) HandleDNSResponse(id dns.ForwardID, resp []byte, err error, now time.Time) {
	local, ok := c.decodeFwd(id)
	if c.resolver == nil || !ok {
		c.log.Debug("answer of an abandoned DNS forward dropped", "forward", uint64(id))
		return
	}
	c.touch()
	if err != nil {
		c.resolver.HandleUpstreamError(local, err, now)
	} else {
		c.resolver.HandleUpstreamResponse(local, resp, now)
	}
	c.drainResolver(now)
}

// HandleDNSTCPAccept registers an application's DNS-over-TCP connection (handle, chosen by the driver) to
// sentinel server. An error (dns.ErrTCPConnLimit: too many connections to that sentinel; ErrNoResolver)
// tells the driver to reset the connection.
func (c *Client) HandleDNSTCPAccept(server netip.AddrPort, handle uint64, now time.Time) error {
	if c.resolver == nil {
		return ErrNoResolver
	}
	if err := c.resolver.HandleTCPAccept(server.Addr(), handle); err != nil {
		return fmt.Errorf("client core: DNS over TCP: %w", err)
	}
	return nil
}

// HandleDNSTCPQuery hands the resolver a query (without its length prefix) read from connection handle,
// from the application's client address to sentinel server. The answer comes as a DNSTCPReply.
func (c *Client) HandleDNSTCPQuery(handle uint64, client, server netip.AddrPort, msg []byte, now time.Time) {
	if c.resolver == nil {
		c.ctr.dropped[dropDNSUnavailable].Add(1)
		return
	}
	c.touch()
	src := dns.Source{Transport: dns.TCP, Client: client, Server: server, Handle: handle}
	reply, ok := c.resolver.HandleQuery(src, msg, now, nil)
	c.drainEvents()
	if ok {
		c.ctr.dnsReplies.Add(1)
		c.emit(DNSTCPReply{Handle: handle, Payload: reply})
	}
	c.drainResolver(now)
}

// HandleDNSTCPClose reports that connection handle closed: its queries in flight are abandoned
// (DNSCancel for their forwards).
func (c *Client) HandleDNSTCPClose(handle uint64, now time.Time) {
	if c.resolver == nil {
		return
	}
	c.touch()
	res := c.resolver.HandleTCPClose(handle)
	if len(res.Cancelled) > 0 {
		ids := make([]dns.ForwardID, len(res.Cancelled))
		for i, id := range res.Cancelled {
			ids[i] = c.encodeFwd(id)
		}
		c.emit(DNSCancel{IDs: ids})
	}
	c.drainResolver(now)
}

var _ tunnel.Core = (*Client)(nil)
