package core

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	"github.com/snowgate/snowgate/gateway/filter"
)

// Status is the core's state for the daemon's status socket; the daemon adds the node's per-connection
// statistics (paths, RTT) by client id. It marshals to JSON as is.
type Status struct {
	// TunnelIPv4 and TunnelIPv6 are the gateway's tunnel addresses (from init).
	TunnelIPv4 netip.Addr `json:"tunnel_ipv4"`
	TunnelIPv6 netip.Addr `json:"tunnel_ipv6"`
	// PortalJoined says whether the portal session is joined.
	PortalJoined bool `json:"portal_joined"`
	// Relays are the ids of the relays the node was given.
	Relays []string `json:"relays"`
	// Clients are the clients the gateway keeps state for, by id.
	Clients []ClientStatus `json:"clients"`
	// Flows is the number of live (client, resource) authorisations.
	Flows int `json:"flows"`
	// NAT counts the DNS-resource NAT table's state.
	NAT NATStats `json:"nat"`
	// Counters are the core's packet and NAT counters (the same as its metrics).
	Counters Counters `json:"counters"`
}

// ClientStatus is one client's state.
type ClientStatus struct {
	ID   string     `json:"id"`
	IPv4 netip.Addr `json:"ipv4"`
	IPv6 netip.Addr `json:"ipv6"`
	// Legacy says the connection came from the old protocol (request_connection).
	Legacy bool `json:"legacy,omitempty"`
	// Resources are the authorised resources, by id.
	Resources []ResourceStatus `json:"resources"`
	// NAT lists the client's DNS-resource NAT translations, by proxy IP.
	NAT []NATEntry `json:"nat,omitempty"`
}

// ResourceStatus is one authorised resource of a client.
type ResourceStatus struct {
	ID      string `json:"id"`
	Type    string `json:"type"`
	Address string `json:"address,omitempty"`
	// Filters are the resource's filters in filter.Set's notation ("all", "icmp tcp:80 udp:53").
	Filters string `json:"filters"`
	// ExpiresAt is when the authorisation ends (absent: never).
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

// NATEntry is one proxy IP's translation.
type NATEntry struct {
	ProxyIP netip.Addr `json:"proxy_ip"`
	// RealIP is the address new flows go to; absent when the proxy IP's family has none (unreachable).
	RealIP   netip.Addr `json:"real_ip,omitzero"`
	Resource string     `json:"resource"`
	Domain   string     `json:"domain"`
}

// NATStats counts the NAT table's state.
type NATStats struct {
	Clients      int `json:"clients"`
	Sessions     int `json:"sessions"`
	Translations int `json:"translations"`
}

// Counters are the core's counters since it was created.
type Counters struct {
	// Dropped counts dropped packets by reason (see the package doc); zero counts are left out.
	Dropped map[string]int64 `json:"dropped"`
	// Filtered counts packets denied by a resource's filters.
	Filtered int64 `json:"filtered"`
	// ToResources and ToClients count the packets let through in each direction.
	ToResources int64 `json:"to_resources"`
	ToClients   int64 `json:"to_clients"`
	// Assignments counts DNS-resource NAT set-ups by result.
	Assignments map[string]int64 `json:"assignments"`
}

// Status returns the core's state at now (it does not change the core).
func (g *Gateway) Status(now time.Time) Status {
	s := Status{
		TunnelIPv4: g.v4, TunnelIPv6: g.v6, PortalJoined: g.joined,
		Relays:   make([]string, 0, len(g.relays)),
		Clients:  make([]ClientStatus, 0, len(g.clients)),
		Counters: g.m.snapshot(),
	}
	for id := range g.relays {
		s.Relays = append(s.Relays, id)
	}
	slices.Sort(s.Relays)
	ns := g.nat.Stats()
	s.NAT = NATStats{Clients: ns.Clients, Sessions: ns.Sessions, Translations: ns.Translations}
	for _, c := range g.clients {
		cs := ClientStatus{ID: c.id, IPv4: c.v4, IPv6: c.v6, Legacy: c.legacy, Resources: make([]ResourceStatus, 0, len(c.auths))}
		for rid, a := range c.auths {
			if !a.live(now) {
				continue
			}
			rs := ResourceStatus{ID: rid, Type: string(a.res.Type), Address: a.res.Address, Filters: "all"}
			if set, err := filter.Compile(a.res.Filters); err == nil {
				rs.Filters = set.String()
			}
			if !a.expires.IsZero() {
				t := a.expires
				rs.ExpiresAt = &t
			}
			cs.Resources = append(cs.Resources, rs)
			s.Flows++
		}
		slices.SortFunc(cs.Resources, func(a, b ResourceStatus) int { return cmp.Compare(a.ID, b.ID) })
		for p, o := range c.proxies {
			e := NATEntry{ProxyIP: p, Resource: o.resource, Domain: o.domain}
			if m, ok := g.nat.Mapping(c.v6, p); ok {
				e.RealIP = m.Real
			}
			cs.NAT = append(cs.NAT, e)
		}
		slices.SortFunc(cs.NAT, func(a, b NATEntry) int { return a.ProxyIP.Compare(b.ProxyIP) })
		s.Clients = append(s.Clients, cs)
	}
	slices.SortFunc(s.Clients, func(a, b ClientStatus) int { return cmp.Compare(a.ID, b.ID) })
	return s
}
