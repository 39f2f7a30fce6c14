package core

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	"github.com/snowgate/snowgate/client/dns"
	"github.com/snowgate/snowgate/gateway/filter"
	"github.com/snowgate/snowgate/internal/dnspattern"
	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/internal/tunnel"
)

// resource is a resource the portal gave us, parsed.
type resource struct {
	r      portalapi.Resource
	kind   filter.Kind
	prefix netip.Prefix       // cidr
	pat    dnspattern.Pattern // dns
	stack  dns.IPStack        // dns
	set    *filter.Set        // compiled filters (DNS resources: checked here, they are not in the table)
	names  map[string]*nameEntry
	// tableSig is what the routing table holds for the resource ("" not there), to skip unchanged Sets.
	tableSig string
}

// nameEntry is a name the stub resolver assigned proxy IPs to. The IPs never change for the life of the
// core; the resource the name routes to follows the resources (most specific pattern wins).
type nameEntry struct {
	name  string
	v4    []netip.Addr
	v6    []netip.Addr
	rid   string // "" while no resource matches
	order int    // assignment order (replayed when the resolver is rebuilt)
}

// routedIPs returns the proxy IPs of ne that route to its resource (its ip_stack decides the families).
func (c *Client) routedIPs(ne *nameEntry) []netip.Addr {
	res := c.resources[ne.rid]
	if res == nil {
		return nil
	}
	var out []netip.Addr
	if res.stack != dns.IPv6Only {
		out = append(out, ne.v4...)
	}
	if res.stack != dns.IPv4Only {
		out = append(out, ne.v6...)
	}
	return out
}

func parseResource(r portalapi.Resource) (*resource, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	kind, _ := filter.KindOf(r.Type)
	set, err := filter.Compile(r.Filters)
	if err != nil {
		return nil, err
	}
	res := &resource{r: r, kind: kind, set: set}
	switch kind {
	case filter.KindCIDR:
		p, err := r.Prefix()
		if err != nil {
			return nil, err
		}
		res.prefix = p
	case filter.KindDNS:
		p, err := dnspattern.Parse(r.Address)
		if err != nil {
			return nil, err
		}
		st, err := dns.ParseIPStack(string(r.IPStack))
		if err != nil {
			return nil, err
		}
		res.pat, res.stack = p, st
		res.names = make(map[string]*nameEntry)
	}
	return res, nil
}

// addressed reports whether a and b reach the same destinations through the same sites: if not, an
// update is a removal (its flow and connection link dropped) followed by an addition, as in Firezone.
func addressed(a, b *resource) bool {
	if a.kind != b.kind || a.prefix != b.prefix || a.pat.String() != b.pat.String() || a.stack != b.stack {
		return false
	}
	sites := func(r *resource) []string {
		var s []string
		for _, x := range r.r.Sites {
			s = append(s, x.ID)
		}
		slices.Sort(s)
		return s
	}
	return slices.Equal(sites(a), sites(b))
}

// upsertResources adds or updates resources; invalid ones are skipped with a warning. A resource whose
// destinations or sites changed loses its flow; a change of name or filters applies in place (the
// gateway gets the new filters from the portal, the client checks them from the next packet on).
func (c *Client) upsertResources(rs []portalapi.Resource, isInit bool, now time.Time) {
	changed := false
	for _, r := range rs {
		res, err := parseResource(r)
		if err != nil {
			c.log.Warn("invalid resource ignored", "resource", r.ID, telemetry.Err(err))
			continue
		}
		old := c.resources[r.ID]
		if old != nil && addressed(old, res) {
			res.names, res.tableSig = old.names, old.tableSig
			if res.names == nil && res.kind == filter.KindDNS {
				res.names = make(map[string]*nameEntry)
			}
			c.resources[r.ID] = res
			changed = true
			continue
		}
		if old != nil {
			c.log.Debug("resource destinations changed: its flow is dropped", "resource", r.ID)
			c.removeResources([]string{r.ID}, now)
		} else if !isInit {
			c.log.Info("resource added", "resource", r.ID, "name", r.Name, "type", string(r.Type), "address", r.Address)
		}
		c.resources[r.ID] = res
		changed = true
	}
	if changed || isInit {
		c.resourcesChanged(now)
	}
}

// removeResources drops resources: their flows end (buffered packets answered unreachable), names of
// DNS resources stop routing to them, and the control protocol forgets their names on their gateway.
// The caller runs resourcesChanged afterwards. A gateway left with no resource keeps its connection
// (its AllowedIPs shrink to its tunnel addresses); it goes when it fails or the client roams.
func (c *Client) removeResources(ids []string, now time.Time) {
	for _, id := range ids {
		res := c.resources[id]
		if res == nil {
			continue
		}
		delete(c.resources, id)
		c.log.Info("resource removed", "resource", id, "name", res.r.Name)
		if res.tableSig != "" {
			c.table.Remove(id)
			res.tableSig = ""
		}
		for _, ne := range res.names {
			ne.rid = ""
		}
		f := c.flows[id]
		if f == nil {
			continue
		}
		delete(c.flows, id)
		c.ctr.flows[flowRemoved].Add(1)
		pkts := f.buf.take()
		if g := c.gateways[f.gw]; f.authorized && g != nil {
			delete(g.resources, id)
			for name, e := range g.nat {
				if e.rid != id {
					continue
				}
				pkts = append(pkts, e.held.take()...)
				delete(g.nat, name)
				if c.p2p != nil && g.ipv6.IsValid() {
					c.p2p.Forget(g.ipv6, name)
				}
			}
			g.allowedDirty = true
		}
		c.answerAll(pkts, icmpUnreachable)
	}
}

// resourcesChanged recomputes everything derived from the resource set: the DNS pattern index, the
// resolver's resources, where each known name routes, the routing table, AllowedIPs and routes.
func (c *Client) resourcesChanged(now time.Time) {
	clear(c.dnsExact)
	c.dnsWild = c.dnsWild[:0]
	clear(c.cidrOwner)
	c.internet = ""
	for _, id := range sortedKeys(c.resources) {
		res := c.resources[id]
		switch res.kind {
		case filter.KindDNS:
			if res.pat.Exact() {
				if _, ok := c.dnsExact[res.pat.String()]; !ok {
					c.dnsExact[res.pat.String()] = res
				}
			} else {
				c.dnsWild = append(c.dnsWild, res)
			}
		case filter.KindCIDR:
			if _, ok := c.cidrOwner[res.prefix]; !ok {
				c.cidrOwner[res.prefix] = id
			}
		case filter.KindInternet:
			if c.internet == "" {
				c.internet = id
			}
		}
	}
	c.resolverResources()
	c.rematchNames()
	c.syncTable()
	for _, g := range c.gateways {
		g.allowedDirty = true
	}
	c.syncAllowedIPs()
	c.updateRoutes()
	c.touch()
	c.moveBuffered(now)
}

// moveBuffered routes again the buffered packets whose destination now belongs to another resource (a
// more specific one was added, a pattern changed), so that they follow the new routing in order. A pending
// flow left with nothing to send stays until the portal answers or FlowTimeout (its create_flow is in
// flight), without resending.
func (c *Client) moveBuffered(now time.Time) {
	var moved [][]byte
	for _, rid := range sortedKeys(c.flows) {
		f := c.flows[rid]
		pkts := f.buf.take()
		for _, pkt := range pkts {
			p, err := ippacket.Parse(pkt)
			if err != nil {
				continue
			}
			if owner, _ := c.classify(p); owner == rid {
				f.buf.pkts = append(f.buf.pkts, pkt)
			} else {
				moved = append(moved, pkt)
			}
		}
	}
	for _, pkt := range moved {
		c.reroute(pkt, now)
	}
}

// resolverResources gives the resolver the DNS resources (by id, so that the lowest id wins among equal
// patterns) and the CIDR prefixes (upstreams inside them are reached through the tunnel).
func (c *Client) resolverResources() {
	if c.resolver == nil {
		return
	}
	var dnsRes []dns.Resource
	var cidrs []netip.Prefix
	for _, id := range sortedKeys(c.resources) {
		switch res := c.resources[id]; res.kind {
		case filter.KindDNS:
			dnsRes = append(dnsRes, dns.Resource{ID: id, Address: res.pat.String(), IPStack: res.stack})
		case filter.KindCIDR:
			cidrs = append(cidrs, res.prefix)
		}
	}
	if err := c.resolver.SetResources(dnsRes, cidrs); err != nil {
		c.log.Warn("DNS resources not all applied", telemetry.Err(err))
	}
}

// matchName returns the resource a name routes to: the most specific DNS pattern (the stub resolver's rule:
// exact names first, the lowest id among equal patterns).
func (c *Client) matchName(name string) *resource {
	if res := c.dnsExact[name]; res != nil {
		return res
	}
	var best *resource
	for _, res := range c.dnsWild {
		if res.pat.Match(name) && (best == nil || res.pat.MoreSpecificThan(best.pat)) {
			best = res
		}
	}
	return best
}

// setNameResource moves ne to the resource res (nil: none).
func (c *Client) setNameResource(ne *nameEntry, res *resource) {
	rid := ""
	if res != nil {
		rid = res.r.ID
	}
	if ne.rid == rid {
		return
	}
	if old := c.resources[ne.rid]; old != nil && old.names != nil {
		delete(old.names, ne.name)
	}
	ne.rid = rid
	if res != nil {
		res.names[ne.name] = ne
	}
}

// rematchNames routes every known name to its current resource.
func (c *Client) rematchNames() {
	for _, res := range c.resources {
		if res.names != nil {
			clear(res.names)
		}
	}
	for _, ne := range c.names {
		ne.rid = ""
		c.setNameResource(ne, c.matchName(ne.name))
	}
}

// handleNameAssigned records a name the resolver assigned proxy IPs to, and routes them.
func (c *Client) handleNameAssigned(ev dns.NameAssigned) {
	ne := c.names[ev.Name]
	isNew := ne == nil
	if isNew {
		c.nameSeq++
		ne = &nameEntry{name: ev.Name, order: c.nameSeq}
		c.names[ev.Name] = ne
	}
	var v4, v6 []netip.Addr
	for _, ip := range ev.IPs {
		if ip.Is4() {
			v4 = append(v4, ip)
		} else {
			v6 = append(v6, ip)
		}
	}
	if len(v4) > 0 && !slices.Equal(v4, ne.v4) {
		c.replaceIPs(ne, ne.v4, v4)
		ne.v4 = v4
	}
	if len(v6) > 0 && !slices.Equal(v6, ne.v6) {
		c.replaceIPs(ne, ne.v6, v6)
		ne.v6 = v6
	}
	res := c.matchName(ev.Name)
	if res == nil || res.r.ID != ev.ResourceID {
		c.log.Debug("resolver and core disagree on a name's resource", "name", ev.Name, "resolver", ev.ResourceID)
	}
	oldRid := ne.rid
	c.setNameResource(ne, res)
	if g := c.gatewayOf(oldRid); g != nil && oldRid != ne.rid {
		g.allowedDirty = true
	}
	if g := c.gatewayOf(ne.rid); g != nil {
		if isNew && !g.allowedDirty {
			// The common case, a new name: insert its proxy IPs instead of recomputing everything.
			c.addAllowed(g, c.routedIPs(ne))
		} else {
			g.allowedDirty = true
		}
	}
	c.syncAllowedIPs()
}

// gatewayOf returns the gateway a resource's flow is authorized through (nil: none).
func (c *Client) gatewayOf(rid string) *gateway {
	if f := c.flows[rid]; f != nil && f.authorized {
		return c.gateways[f.gw]
	}
	return nil
}

// addAllowed adds host prefixes for ips to a gateway's AllowedIPs, kept sorted, and sends them.
func (c *Client) addAllowed(g *gateway, ips []netip.Addr) {
	changed := false
	for _, ip := range ips {
		p := netip.PrefixFrom(ip, ip.BitLen())
		if i, found := slices.BinarySearchFunc(g.allowed, p, comparePrefix); !found {
			g.allowed = slices.Insert(g.allowed, i, p)
			changed = true
		}
	}
	if changed {
		c.emit(tunnel.NodeAllowedIPs{ID: g.id, Prefixes: slices.Clone(g.allowed)})
	}
}

// replaceIPs re-indexes a name's proxy IPs (they only change if a rebuilt resolver did not reproduce them).
func (c *Client) replaceIPs(ne *nameEntry, old, ips []netip.Addr) {
	if len(old) > 0 {
		c.log.Warn("proxy IPs of a name changed", "name", ne.name, "old", old, "new", ips)
	}
	for _, ip := range old {
		if c.nameByIP[ip] == ne {
			delete(c.nameByIP, ip)
		}
	}
	for _, ip := range ips {
		if prev := c.nameByIP[ip]; prev != nil && prev != ne {
			// Cannot happen with one resolver; a rebuilt one may hand an IP to another name.
			prev.v4 = slices.DeleteFunc(prev.v4, func(a netip.Addr) bool { return a == ip })
			prev.v6 = slices.DeleteFunc(prev.v6, func(a netip.Addr) bool { return a == ip })
		}
		c.nameByIP[ip] = ne
	}
}

// syncTable brings the routing table in line with the CIDR and Internet resources and their filters.
// DNS resources are not in the table: a proxy IP is looked up among the names (classify), which spares a
// rebuild of the whole table for every name the resolver assigns (measured: 25 ms per new name with a
// thousand names, against microseconds).
func (c *Client) syncTable() {
	for _, id := range sortedKeys(c.resources) {
		res := c.resources[id]
		var dsts []netip.Prefix
		switch res.kind {
		case filter.KindCIDR:
			dsts = []netip.Prefix{res.prefix}
		case filter.KindDNS:
			continue
		}
		sig := tableSignature(res, dsts)
		if sig == res.tableSig {
			continue
		}
		if err := c.table.Set(id, res.kind, dsts, res.r.Filters); err != nil {
			c.log.Warn("resource not routed", "resource", id, telemetry.Err(err))
			if res.tableSig != "" {
				c.table.Remove(id)
			}
			res.tableSig = ""
			continue
		}
		res.tableSig = sig
	}
}

func tableSignature(res *resource, dsts []netip.Prefix) string {
	b := make([]byte, 0, 64)
	b = append(b, res.kind.String()...)
	for _, p := range dsts {
		b = append(b, ' ')
		b = p.AppendTo(b)
	}
	for _, f := range res.r.Filters {
		b = append(b, '|')
		b = append(b, f.Protocol...)
		b = append(b, byte(f.PortRangeStart>>8), byte(f.PortRangeStart), byte(f.PortRangeEnd>>8), byte(f.PortRangeEnd))
	}
	return string(b)
}

// allowedFor computes a gateway's AllowedIPs: what is routed to it. Each destination goes to one gateway
// only (wireguard-go moves a prefix to the last peer given it): a CIDR prefix only for the resource that
// owns it in the routing table (the lowest id among resources with the same prefix), 0.0.0.0/0 and ::/0
// only for the Internet resource in use, proxy IPs of the names each DNS resource holds, and the
// gateway's own tunnel addresses.
func (c *Client) allowedFor(g *gateway) []netip.Prefix {
	var out []netip.Prefix
	for rid := range g.resources {
		res := c.resources[rid]
		if res == nil {
			continue
		}
		switch res.kind {
		case filter.KindCIDR:
			if c.cidrOwner[res.prefix] == rid && !(res.prefix.IsSingleIP() && c.nameByIP[res.prefix.Addr()] != nil) {
				out = append(out, res.prefix)
			}
		case filter.KindInternet:
			if c.internet == rid {
				out = append(out, netip.PrefixFrom(netip.IPv4Unspecified(), 0), netip.PrefixFrom(netip.IPv6Unspecified(), 0))
			}
		case filter.KindDNS:
			for _, ne := range res.names {
				for _, ip := range c.routedIPs(ne) {
					out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
				}
			}
		}
	}
	if g.ipv4.IsValid() {
		out = append(out, netip.PrefixFrom(g.ipv4, 32))
	}
	if g.ipv6.IsValid() {
		out = append(out, netip.PrefixFrom(g.ipv6, 128))
	}
	slices.SortFunc(out, comparePrefix)
	return slices.Compact(out)
}

// syncAllowedIPs sends the AllowedIPs of every gateway marked dirty whose set changed.
func (c *Client) syncAllowedIPs() {
	for _, id := range sortedKeys(c.gateways) {
		g := c.gateways[id]
		if !g.allowedDirty {
			continue
		}
		g.allowedDirty = false
		a := c.allowedFor(g)
		if slices.Equal(a, g.allowed) {
			continue
		}
		g.allowed = a
		c.emit(tunnel.NodeAllowedIPs{ID: id, Prefixes: slices.Clone(a)})
	}
}

// updateRoutes emits SetRoutes when the routes changed.
func (c *Client) updateRoutes() {
	if !c.configured {
		return
	}
	routes := []netip.Prefix{dns.ProxyRangeV4, dns.ProxyRangeV6, dns.SentinelRangeV4, dns.SentinelRangeV6}
	for _, res := range c.resources {
		if res.kind == filter.KindCIDR {
			routes = append(routes, res.prefix)
		}
	}
	var excludes []netip.Prefix
	if c.internet != "" {
		routes = append(routes, netip.PrefixFrom(netip.IPv4Unspecified(), 0), netip.PrefixFrom(netip.IPv6Unspecified(), 0))
		for _, r := range c.relays {
			for _, ap := range []netip.AddrPort{r.Addr4, r.Addr6} {
				if a := ap.Addr().Unmap(); ap.IsValid() && a.IsValid() {
					excludes = append(excludes, netip.PrefixFrom(a, a.BitLen()))
				}
			}
		}
	}
	slices.SortFunc(routes, comparePrefix)
	routes = slices.Compact(routes)
	slices.SortFunc(excludes, comparePrefix)
	excludes = slices.Compact(excludes)
	if c.lastRoute != nil && slices.Equal(c.lastRoute.Routes, routes) && slices.Equal(c.lastRoute.Excludes, excludes) {
		return
	}
	c.lastRoute = &SetRoutes{Routes: routes, Excludes: excludes}
	c.emit(SetRoutes{Routes: slices.Clone(routes), Excludes: slices.Clone(excludes)})
}

// comparePrefix orders prefixes: IPv4 first, then by address, then by length.
func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}
