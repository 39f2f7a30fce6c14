package core

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/snowgate/snowgate/gateway/nat"
	"github.com/snowgate/snowgate/internal/p2pcontrol"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/telemetry"
)

// handleControl handles a control-protocol packet from a client. Its source must be a known client's
// tunnel IPv6 and its destination the gateway's; wireguard-go has already checked that the source belongs
// to the peer that sent it.
func (g *Gateway) handleControl(pkt []byte, now time.Time) {
	if g.p2p == nil {
		g.drop(reasonNotInitialized)
		return
	}
	src := netip.AddrFrom16([16]byte(pkt[8:24]))
	dst := netip.AddrFrom16([16]byte(pkt[24:40]))
	c := g.byIP[src]
	if c == nil || c.v6 != src {
		g.drop(reasonControlSource)
		g.log.Debug("control packet from outside an authorised connection dropped", "source", src)
		return
	}
	if dst != g.v6 {
		g.drop(reasonControlDestination)
		return
	}
	if err := g.p2p.HandlePacket(pkt, now); err != nil {
		switch {
		case errors.Is(err, p2pcontrol.ErrTooManyDomains):
			g.m.assignments[assignTooMany].Add(1)
		case errors.Is(err, p2pcontrol.ErrUnknownKind):
			g.drop(reasonControlUnknown)
		default:
			g.drop(reasonControlMalformed)
			g.log.Debug("control packet dropped", "client", c.id, telemetry.Err(err))
		}
	}
	g.drainControl(now)
}

// drainControl acts on the control protocol's events and sends its transmits.
func (g *Gateway) drainControl(now time.Time) {
	for ev, ok := g.p2p.PollEvent(); ok; ev, ok = g.p2p.PollEvent() {
		switch ev.Kind {
		case p2pcontrol.EventSetupNAT:
			g.setupNAT(ev.Peer, ev.Assignment, now)
		case p2pcontrol.EventClientGoodbye:
			if c := g.byIP[ev.Peer]; c != nil {
				g.log.Info("client said goodbye; removed", "client", c.id)
				g.removeClient(c, false, true)
			}
		}
	}
	g.drainTransmits()
}

// setupNAT checks a client's AssignedIPs: authorised for the DNS resource and the name within its
// pattern → ResolveName; otherwise answered Inactive at once.
func (g *Gateway) setupNAT(peer netip.Addr, a p2pcontrol.AssignedIPs, now time.Time) {
	c := g.byIP[peer]
	if c == nil || !c.authorizedFor(a.Resource, a.Domain, now) {
		g.m.assignments[assignUnauthorized].Add(1)
		id := ""
		if c != nil {
			id = c.id
		}
		g.log.Debug("DNS-resource NAT refused: resource not authorised or name outside it",
			"client", id, "resource", a.Resource, "domain", a.Domain)
		_ = g.p2p.Complete(peer, a, p2pcontrol.NatInactive, now)
		return
	}
	g.log.Debug("resolving name for DNS-resource NAT", "client", c.id, "resource", a.Resource, "domain", a.Domain)
	g.emit(ResolveName{ClientID: c.id, Domain: normDomain(a.Domain), Assignment: a})
}

// legacyDomain sets up the NAT of an old-protocol request's domain, as an AssignedIPs would (no answer).
func (g *Gateway) legacyDomain(c *client, rid string, req portalapi.ResolveRequest, now time.Time) {
	domain := normDomain(req.Name)
	ok := domain != "" && len(domain) <= p2pcontrol.MaxDomainLen && len(req.ProxyIPs) > 0 &&
		len(req.ProxyIPs) <= maxLegacyProxyIPs
	for _, p := range req.ProxyIPs {
		ok = ok && p.IsValid() && containedIn(g.cfg.ProxyPrefixes, p.Unmap())
	}
	if !ok {
		g.log.Warn("old-protocol domain ignored: bad name or proxy IPs", "client", c.id, "resource", rid,
			"domain", req.Name, "proxy_ips", len(req.ProxyIPs))
		return
	}
	a := p2pcontrol.AssignedIPs{Resource: rid, Domain: domain, ProxyIPs: unmapAll(req.ProxyIPs)}
	if !c.authorizedFor(rid, domain, now) {
		g.m.assignments[assignUnauthorized].Add(1)
		g.log.Debug("DNS-resource NAT refused: resource not authorised or name outside it",
			"client", c.id, "resource", rid, "domain", domain)
		return
	}
	c.legacyPending[domain] = a
	g.emit(ResolveName{ClientID: c.id, Domain: domain, Assignment: a})
}

func unmapAll(as []netip.Addr) []netip.Addr {
	out := make([]netip.Addr, len(as))
	for i, a := range as {
		out[i] = a.Unmap()
	}
	return out
}

// HandleResolved takes the result of a ResolveName. For a control-protocol assignment that is still
// current it sets up the NAT (if the client is still authorised and the name resolved; a family without
// addresses makes its proxy IPs answer ICMP unreachable), lets the DNS resource's filters cover its proxy
// IPs, and answers DomainStatus Active, or Inactive on any failure. An old-protocol domain is set up the
// same way without an answer. Results for superseded assignments, revoked access or removed clients are
// ignored.
func (g *Gateway) HandleResolved(clientID string, a p2pcontrol.AssignedIPs, addrs []netip.Addr, err error, now time.Time) {
	g.expireDue(now)
	c := g.clients[clientID]
	if c == nil {
		return
	}
	if g.p2p != nil && g.p2p.IsCurrent(c.v6, a) {
		status := p2pcontrol.NatInactive
		if g.resolved(c, a, addrs, err, now) {
			status = p2pcontrol.NatActive
		}
		if cerr := g.p2p.Complete(c.v6, a, status, now); cerr != nil {
			g.log.Debug("DNS-resource NAT completion", "client", c.id, telemetry.Err(cerr))
		}
		g.drainTransmits()
		return
	}
	d := normDomain(a.Domain)
	if p, ok := c.legacyPending[d]; ok && strings.EqualFold(p.Resource, a.Resource) && slices.Equal(p.ProxyIPs, a.ProxyIPs) {
		delete(c.legacyPending, d)
		g.resolved(c, a, addrs, err, now)
		return
	}
	g.log.Debug("stale name resolution ignored", "client", c.id, "domain", a.Domain)
}

// resolved sets up the NAT of a resolved assignment; it reports whether it is active.
func (g *Gateway) resolved(c *client, a p2pcontrol.AssignedIPs, addrs []netip.Addr, err error, now time.Time) bool {
	rid, domain := normID(a.Resource), normDomain(a.Domain)
	switch {
	case !c.authorizedFor(rid, domain, now):
		g.m.assignments[assignUnauthorized].Add(1)
		g.log.Info("DNS-resource NAT not set up: access ended while resolving", "client", c.id, "resource", rid, "domain", domain)
		return false
	case err != nil:
		g.m.assignments[assignResolveFailed].Add(1)
		g.log.Debug("DNS-resource NAT not set up: name did not resolve", "client", c.id, "domain", domain, telemetry.Err(err))
		return false
	}
	setup, err := g.nat.Configure(c.v6, nat.Assignment{Resource: rid, Domain: domain, ProxyIPs: a.ProxyIPs, RealIPs: addrs}, now)
	if err != nil {
		g.m.assignments[assignNATFailed].Add(1)
		g.log.Debug("DNS-resource NAT not set up", "client", c.id, "domain", domain, telemetry.Err(err))
		return false
	}
	affected := map[string]struct{}{rid: {}}
	for _, m := range setup.Mappings {
		o, ok := c.proxies[m.Proxy]
		switch {
		case !ok:
			g.addTranslations(1)
		case o.resource != rid:
			affected[o.resource] = struct{}{}
		}
		c.proxies[m.Proxy] = natOwner{resource: rid, domain: domain}
	}
	for r := range affected {
		if au := c.auths[r]; au != nil {
			if err := c.filters.SetResource(au.res, c.proxiesOf(r)); err != nil {
				g.log.Warn("filter update failed", "client", c.id, "resource", r, telemetry.Err(err))
			}
		}
	}
	g.m.assignments[assignActive].Add(1)
	g.log.Debug("DNS-resource NAT set up", "client", c.id, "resource", rid, "domain", domain,
		"real_ips", len(addrs), "unreachable", len(setup.Unreachable()))
	return true
}
