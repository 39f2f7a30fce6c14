package core

import (
	"container/heap"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/snowgate/snowgate/gateway/filter"
	"github.com/snowgate/snowgate/gateway/nat"
	"github.com/snowgate/snowgate/internal/dnspattern"
	"github.com/snowgate/snowgate/internal/p2pcontrol"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/internal/tunnel"
	"github.com/snowgate/snowgate/node"
)

// client is the gateway's state of one client: its connection parameters, tunnel addresses, authorised
// resources, its filter table and the DNS-resource NAT it set up.
type client struct {
	id     string
	params node.ConnectionParams
	legacy bool // created by an old-protocol request_connection
	v4, v6 netip.Addr

	auths    map[string]*authorization // by normalised resource id
	internet int                       // authorised Internet resources
	filters  *filter.Table

	// proxies mirrors the NAT table's translations: proxy IP → (resource, domain). A DNS resource's
	// destinations in filters are the proxy IPs it owns here.
	proxies map[netip.Addr]natOwner
	// legacyPending are old-protocol domains waiting for their resolution, by domain.
	legacyPending map[string]p2pcontrol.AssignedIPs
}

type natOwner struct {
	resource, domain string
}

// authorization is one authorised resource of a client.
type authorization struct {
	res     portalapi.Resource // ID normalised
	pattern dnspattern.Pattern // DNS resources
	expires time.Time          // zero: never
}

func (a *authorization) live(now time.Time) bool { return a.expires.IsZero() || now.Before(a.expires) }

// initialised reports whether an init gave the gateway its tunnel addresses.
func (g *Gateway) initialised() bool { return g.p2p != nil }

// ensureClient returns the client id with these parameters and addresses, creating it if needed. An
// existing client whose key or addresses changed (it roamed or signed in again), or any existing client
// when replace is set (the old protocol's new connection), loses all its state first: its authorisations,
// NAT and control-protocol state. The caller's NodeUpsert then keeps or replaces the node's connection.
// A client holding one of the addresses under another id is stale and removed. It returns nil (and logs)
// at the client limit.
func (g *Gateway) ensureClient(params node.ConnectionParams, v4, v6 netip.Addr, replace bool) *client {
	id := params.ID
	if c := g.clients[id]; c != nil {
		if !replace && c.params.RemoteKey == params.RemoteKey && c.v4 == v4 && c.v6 == v6 {
			c.params = params
			return c
		}
		g.log.Info("client changed key, addresses or connection: its state is rebuilt", "client", id,
			"key_changed", c.params.RemoteKey != params.RemoteKey, "addresses_changed", c.v4 != v4 || c.v6 != v6)
		g.removeClient(c, false, false)
	}
	for _, a := range []netip.Addr{v4, v6} {
		if o := g.byIP[a]; o != nil {
			g.log.Warn("tunnel address now belongs to another client; the stale client is removed",
				"address", a, "client", id, "stale_client", o.id)
			g.removeClient(o, false, true)
		}
	}
	if len(g.clients) >= g.cfg.MaxClients {
		g.log.Warn("client limit reached; authorisation refused", "client", id, "max", g.cfg.MaxClients)
		return nil
	}
	if err := g.nat.AddClient(nat.ClientIPs{V4: v4, V6: v6}); err != nil {
		g.log.Warn("client refused by the NAT table", "client", id, telemetry.Err(err))
		return nil
	}
	ft, err := filter.NewTable(filter.Options{InternetExcludes: g.cfg.InternetExcludes})
	if err != nil { // cannot happen: the prefixes were validated by New
		g.nat.RemoveClient(v6)
		g.log.Warn("filter table refused", "client", id, telemetry.Err(err))
		return nil
	}
	delete(g.departing, id) // back before its connection went: the upsert that follows keeps or replaces it
	c := &client{
		id: id, params: params, v4: v4, v6: v6,
		auths:         make(map[string]*authorization),
		filters:       ft,
		proxies:       make(map[netip.Addr]natOwner),
		legacyPending: make(map[string]p2pcontrol.AssignedIPs),
	}
	g.clients[id] = c
	g.byIP[v4] = c
	g.byIP[v6] = c
	g.m.clients.Store(int64(len(g.clients)))
	return c
}

// upsert emits the NodeUpsert of c's connection; answer is pushed once the connection exists.
func (g *Gateway) upsert(c *client, answer tunnel.PortalPush) {
	g.emit(tunnel.NodeUpsert{
		Params: c.params,
		AllowedIPs: []netip.Prefix{
			netip.PrefixFrom(c.v4, 32),
			netip.PrefixFrom(c.v6, 128),
		},
		Then: []tunnel.Action{answer},
	})
}

// authorize grants c access to res until expires (zero: no expiry), or updates an existing
// authorisation's description and expiry. res must be valid.
func (g *Gateway) authorize(c *client, res portalapi.Resource, expires time.Time, now time.Time) error {
	res.ID = normID(res.ID)
	res = res.GatewayView()
	rid := res.ID
	old := c.auths[rid]
	if !expires.IsZero() && !now.Before(expires) {
		return fmt.Errorf("resource %s: authorisation expired at %v, before it arrived", rid, expires)
	}
	if old == nil && len(c.auths) >= g.cfg.MaxResourcesPerClient {
		return fmt.Errorf("client %s has %d resources, the limit", c.id, len(c.auths))
	}
	a := &authorization{res: res, expires: expires}
	if res.Type == portalapi.ResourceDNS {
		p, err := dnspattern.Parse(res.Address)
		if err != nil {
			return fmt.Errorf("resource %s: %w", rid, err)
		}
		a.pattern = p
	}
	if err := c.filters.SetResource(res, c.proxiesOf(rid)); err != nil {
		return fmt.Errorf("resource %s: %w", rid, err)
	}
	c.auths[rid] = a
	if old != nil {
		g.retarget(c, old, a, now)
		if old.res.Type == portalapi.ResourceInternet {
			c.internet--
		}
	} else {
		g.nAuths++
		g.m.authorizations.Store(int64(g.nAuths))
	}
	if res.Type == portalapi.ResourceInternet {
		c.internet++
	}
	if !expires.IsZero() {
		g.expiries.add(expiry{at: expires, c: c, rid: rid})
		g.tidyExpiries()
	}
	g.log.Info("access to resource allowed", "client", c.id, "resource", rid, "type", string(res.Type),
		"expires_in", expiresIn(expires, now))
	return nil
}

// retarget drops the NAT that no longer fits a resource's new description: all of it if the type
// changed, the domains outside the new pattern of a DNS resource.
func (g *Gateway) retarget(c *client, old, nu *authorization, now time.Time) {
	switch {
	case old.res.Type != nu.res.Type:
		g.dropResourceNAT(c, old.res.ID, func(string) bool { return true }, now)
	case nu.res.Type == portalapi.ResourceDNS && old.pattern.String() != nu.pattern.String():
		g.dropResourceNAT(c, old.res.ID, func(d string) bool { return !nu.pattern.Match(d) }, now)
	}
}

func expiresIn(expires, now time.Time) any {
	if expires.IsZero() {
		return "never"
	}
	return expires.Sub(now).Round(time.Second)
}

// proxiesOf returns the proxy IPs a resource owns in c's NAT.
func (c *client) proxiesOf(rid string) []netip.Addr {
	var out []netip.Addr
	for p, o := range c.proxies {
		if o.resource == rid {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// authorizedFor reports whether c may set up the NAT of domain under DNS resource rid at now.
func (c *client) authorizedFor(rid, domain string, now time.Time) bool {
	a := c.auths[normID(rid)]
	return a != nil && a.live(now) && a.res.Type == portalapi.ResourceDNS && a.pattern.Match(domain)
}

// goodbyeGrace is how long the connection of a client told Goodbye outlives its state: time for
// wireguard-go to send the Goodbye, with a handshake if the session went stale (a round trip; wireguard-go
// retries an unanswered initiation after 5 s).
const goodbyeGrace = 5 * time.Second

// revoke ends c's access to resource rid at once: its filter entry and its NAT go; a client left with
// no resource is removed (with a Goodbye, best effort).
func (g *Gateway) revoke(c *client, rid, reason string, now time.Time) {
	a := c.auths[rid]
	if a == nil {
		g.log.Debug("access to revoke not found", "client", c.id, "resource", rid, "reason", reason)
		return
	}
	delete(c.auths, rid)
	g.nAuths--
	g.m.authorizations.Store(int64(g.nAuths))
	if a.res.Type == portalapi.ResourceInternet {
		c.internet--
	}
	c.filters.Remove(rid)
	g.dropResourceNAT(c, rid, func(string) bool { return true }, now)
	for d, p := range c.legacyPending {
		if normID(p.Resource) == rid {
			delete(c.legacyPending, d)
		}
	}
	g.log.Info("access to resource removed", "client", c.id, "resource", rid, "reason", reason)
	if len(c.auths) == 0 {
		g.log.Info("client has no resource left; removed", "client", c.id)
		g.removeClient(c, true, false)
		// The connection goes once the Goodbye had time to leave (the driver injects it into wireguard-go,
		// which sends it asynchronously; an immediate NodeRemove would drop it with the peer).
		g.departing[c.id] = now.Add(goodbyeGrace)
	}
}

// dropResourceNAT removes the NAT of resource rid's domains that match which, forgets them in the
// control protocol (the client's next AssignedIPs sets them up again), and updates the filter.
func (g *Gateway) dropResourceNAT(c *client, rid string, which func(domain string) bool, now time.Time) {
	domains := make(map[string]struct{})
	for p, o := range c.proxies {
		if o.resource == rid && which(o.domain) {
			domains[o.domain] = struct{}{}
			delete(c.proxies, p)
			g.addTranslations(-1)
		}
	}
	if len(domains) == 0 {
		return
	}
	for d := range domains {
		if _, err := g.nat.Remove(c.v6, rid, d, now); err != nil {
			g.log.Debug("NAT removal failed", "client", c.id, "domain", d, telemetry.Err(err))
		}
		if g.p2p != nil {
			g.p2p.Forget(c.v6, d)
		}
	}
	if a := c.auths[rid]; a != nil {
		if err := c.filters.SetResource(a.res, c.proxiesOf(rid)); err != nil {
			g.log.Warn("filter update failed", "client", c.id, "resource", rid, telemetry.Err(err))
		}
	}
}

// removeClient drops all of c's state. goodbye sends it a Goodbye first; nodeRemove removes its
// connection from the node.
func (g *Gateway) removeClient(c *client, goodbye, nodeRemove bool) {
	if g.clients[c.id] != c {
		return
	}
	if g.p2p != nil {
		if goodbye {
			if err := g.p2p.SayGoodbye(c.v6); err != nil {
				g.log.Debug("goodbye not sent", "client", c.id, telemetry.Err(err))
			}
			g.drainTransmits()
		} else {
			g.p2p.RemovePeer(c.v6)
		}
	}
	g.nat.RemoveClient(c.v6)
	delete(g.clients, c.id)
	delete(g.byIP, c.v4)
	delete(g.byIP, c.v6)
	delete(g.held, c.id)
	g.nAuths -= len(c.auths)
	g.m.authorizations.Store(int64(g.nAuths))
	g.m.clients.Store(int64(len(g.clients)))
	g.addTranslations(-len(c.proxies))
	if nodeRemove {
		g.emit(tunnel.NodeRemove{ID: c.id})
	}
}

// expireDue ends the authorisations whose expiry is at or before now. The data path calls it first, so
// an expiry takes effect from the next packet on even if the timer fires late.
func (g *Gateway) expireDue(now time.Time) {
	for len(g.expiries) > 0 && !now.Before(g.expiries[0].at) {
		e := heap.Pop(&g.expiries).(expiry)
		if g.valid(e) {
			g.revoke(e.c, e.rid, "expired", now)
		}
	}
	g.tidyExpiries()
}

// valid reports whether e is still the expiry of a live authorisation.
func (g *Gateway) valid(e expiry) bool {
	if g.clients[e.c.id] != e.c {
		return false
	}
	a := e.c.auths[e.rid]
	return a != nil && a.expires.Equal(e.at)
}

// tidyExpiries pops stale entries off the top (so PollTimeout does not wake for them) and rebuilds the
// heap when stale entries dominate it.
func (g *Gateway) tidyExpiries() {
	for len(g.expiries) > 0 && !g.valid(g.expiries[0]) {
		heap.Pop(&g.expiries)
	}
	if len(g.expiries) > 2*g.nAuths+64 {
		live := g.expiries[:0]
		for _, e := range g.expiries {
			if g.valid(e) {
				live = append(live, e)
			}
		}
		clear(g.expiries[len(live):])
		g.expiries = live
		heap.Init(&g.expiries)
	}
}

// expiry is an authorisation's end in the expiry heap; entries of changed or revoked authorisations
// stay until they surface and are skipped (valid).
type expiry struct {
	at  time.Time
	c   *client
	rid string
}

// expiryHeap is a min-heap of expiries (container/heap).
type expiryHeap []expiry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiry)) }
func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = expiry{}
	*h = old[:len(old)-1]
	return e
}
func (h *expiryHeap) add(e expiry) { heap.Push(h, e) }
