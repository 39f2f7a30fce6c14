package core

import (
	"net/netip"
	"slices"
	"time"

	"github.com/snowgate/snowgate/gateway/filter"
)

// Status is a JSON-friendly snapshot of the core for the daemon's status socket. The daemon merges the
// node's per-connection statistics (path, relay, RTT, bytes) into Gateways by ID.
type Status struct {
	// Portal is the portal session's state: "connecting", "joined" or "disconnected".
	Portal    string           `json:"portal"`
	Interface InterfaceStatus  `json:"interface"`
	Resources []ResourceStatus `json:"resources"`
	Gateways  []GatewayStatus  `json:"gateways"`
	// FailedGateways are the last gateways whose connection was dropped (oldest first).
	FailedGateways []FailedGatewayStatus `json:"failed_gateways,omitempty"`
	PendingFlows   []PendingFlowStatus   `json:"pending_flows"`
	DNS            DNSStatus             `json:"dns"`
	Counters       CounterStatus         `json:"counters"`
}

// InterfaceStatus is the tunnel interface as the portal configured it.
type InterfaceStatus struct {
	IPv4 netip.Addr `json:"ipv4,omitzero"`
	IPv6 netip.Addr `json:"ipv6,omitzero"`
}

// ResourceStatus is one resource.
type ResourceStatus struct {
	ID      string `json:"id"`
	Name    string `json:"name,omitempty"`
	Type    string `json:"type"`
	Address string `json:"address,omitempty"`
	// Gateway is the gateway the resource's flow goes through ("" without flow).
	Gateway string `json:"gateway,omitempty"`
	// Flow is "none", "requested" (create_flow sent, no answer yet), "connecting" (authorized, the
	// gateway's connection not up yet) or "up".
	Flow string `json:"flow"`
}

// GatewayStatus is one gateway connection.
type GatewayStatus struct {
	ID   string     `json:"id"`
	IPv4 netip.Addr `json:"ipv4,omitzero"`
	IPv6 netip.Addr `json:"ipv6,omitzero"`
	Site string     `json:"site,omitempty"`
	// State is "connecting" or "established".
	State string    `json:"state"`
	Since time.Time `json:"since"`
	// Resources are the ids of the resources authorized through the gateway.
	Resources []string `json:"resources"`
	// AllowedIPs are the prefixes routed to the gateway.
	AllowedIPs []netip.Prefix `json:"allowed_ips"`
	// NAT lists the names whose DNS-resource NAT the gateway was asked for, with its state ("pending",
	// "confirmed", "failed").
	NAT map[string]string `json:"nat,omitempty"`
	// Buffered counts the packets waiting on the gateway (its connection, or a NAT).
	Buffered int `json:"buffered"`
}

// FailedGatewayStatus is a gateway whose connection was dropped, and why.
type FailedGatewayStatus struct {
	ID     string    `json:"id"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

// PendingFlowStatus is a flow waiting for the portal's answer.
type PendingFlowStatus struct {
	ResourceID string    `json:"resource_id"`
	Since      time.Time `json:"since"`
	Requests   int       `json:"requests"`
	Buffered   int       `json:"buffered"`
}

// DNSStatus describes the stub resolver.
type DNSStatus struct {
	SearchDomain string           `json:"search_domain,omitempty"`
	Sentinels    []SentinelStatus `json:"sentinels"`
	// Names maps every name with proxy IPs to them and to the resource it routes to.
	Names []NameStatus `json:"names"`
}

// SentinelStatus maps a sentinel to its upstream.
type SentinelStatus struct {
	Sentinel netip.Addr     `json:"sentinel"`
	Upstream netip.AddrPort `json:"upstream"`
}

// NameStatus is a name with proxy IPs.
type NameStatus struct {
	Name       string       `json:"name"`
	ResourceID string       `json:"resource_id,omitempty"`
	ProxyIPs   []netip.Addr `json:"proxy_ips"`
}

// CounterStatus holds the core's counters (the same as its metrics).
type CounterStatus struct {
	Flows      map[string]uint64 `json:"flows"`
	Dropped    map[string]uint64 `json:"dropped"`
	Buffered   map[string]uint64 `json:"buffered"`
	ICMP       map[string]uint64 `json:"icmp"`
	Tunneled   uint64            `json:"tunneled"`
	DNSReplies uint64            `json:"dns_replies"`
}

// Status returns a snapshot of the core.
func (c *Client) Status(now time.Time) Status {
	_ = now
	st := Status{
		Portal:       c.portal.String(),
		Interface:    InterfaceStatus{IPv4: c.ipv4, IPv6: c.ipv6},
		Resources:    []ResourceStatus{},
		Gateways:     []GatewayStatus{},
		PendingFlows: []PendingFlowStatus{},
		DNS:          DNSStatus{SearchDomain: c.searchDomain, Sentinels: []SentinelStatus{}, Names: []NameStatus{}},
		Counters:     c.counterStatus(),
	}
	st.FailedGateways = slices.Clone(c.failed)
	for _, id := range sortedKeys(c.resources) {
		res := c.resources[id]
		rs := ResourceStatus{ID: id, Name: res.r.Name, Type: string(res.r.Type), Address: res.r.Address, Flow: "none"}
		if res.kind == filter.KindCIDR {
			rs.Address = res.prefix.String()
		}
		if f := c.flows[id]; f != nil {
			switch {
			case !f.authorized:
				rs.Flow = "requested"
			case c.gateways[f.gw] != nil && c.gateways[f.gw].state == gwEstablished:
				rs.Flow, rs.Gateway = "up", f.gw
			default:
				rs.Flow, rs.Gateway = "connecting", f.gw
			}
		}
		st.Resources = append(st.Resources, rs)
	}
	for _, id := range sortedKeys(c.gateways) {
		g := c.gateways[id]
		gs := GatewayStatus{ID: id, IPv4: g.ipv4, IPv6: g.ipv6, Site: g.siteID, State: g.state.String(), Since: g.since,
			Resources: sortedKeys(g.resources), AllowedIPs: slices.Clone(g.allowed)}
		if gs.AllowedIPs == nil {
			gs.AllowedIPs = []netip.Prefix{}
		}
		for rid := range g.resources {
			if f := c.flows[rid]; f != nil {
				gs.Buffered += f.buf.len()
			}
		}
		if len(g.nat) > 0 {
			gs.NAT = make(map[string]string, len(g.nat))
			for name, e := range g.nat {
				gs.NAT[name] = e.state.String()
				gs.Buffered += e.held.len()
			}
		}
		st.Gateways = append(st.Gateways, gs)
	}
	for _, rid := range sortedKeys(c.flows) {
		f := c.flows[rid]
		if f.authorized {
			continue
		}
		st.PendingFlows = append(st.PendingFlows, PendingFlowStatus{ResourceID: rid, Since: f.started, Requests: f.requests, Buffered: f.buf.len()})
	}
	if c.resolver != nil {
		for _, s := range c.resolver.Sentinels() {
			st.DNS.Sentinels = append(st.DNS.Sentinels, SentinelStatus{Sentinel: s.Addr, Upstream: s.Upstream})
		}
	}
	for _, name := range sortedKeys(c.names) {
		ne := c.names[name]
		ips := append(slices.Clone(ne.v4), ne.v6...)
		st.DNS.Names = append(st.DNS.Names, NameStatus{Name: name, ResourceID: ne.rid, ProxyIPs: ips})
	}
	return st
}

func (c *Client) counterStatus() CounterStatus {
	cs := CounterStatus{
		Flows:      make(map[string]uint64),
		Dropped:    make(map[string]uint64),
		Buffered:   make(map[string]uint64),
		ICMP:       make(map[string]uint64),
		Tunneled:   c.ctr.sent.Load(),
		DNSReplies: c.ctr.dnsReplies.Load(),
	}
	for i := range c.ctr.flows {
		cs.Flows[flowOutcomeNames[i]] = c.ctr.flows[i].Load()
	}
	for i := range c.ctr.dropped {
		cs.Dropped[dropReasonNames[i]] = c.ctr.dropped[i].Load()
	}
	for i := range c.ctr.buffered {
		cs.Buffered[bufferKindNames[i]] = c.ctr.buffered[i].Load()
	}
	for i := range c.ctr.icmp {
		cs.ICMP[icmpKindNames[i]] = c.ctr.icmp[i].Load()
	}
	return cs
}
