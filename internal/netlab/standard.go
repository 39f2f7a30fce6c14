package netlab

import (
	"errors"
	"testing"
	"time"
)

// StandardOptions configures StandardTopology. The zero value gives endpoint-independent NAT on
// both edges, dual stack, and no latency.
type StandardOptions struct {
	// ClientNAT and GatewayNAT select the routers' NAT types (compose's CLIENT_MASQUERADE and
	// GATEWAY_MASQUERADE; "random" there is NATSymmetric here). Zero means NATEndpointIndependent.
	ClientNAT, GatewayNAT NATType
	// NoIPv6 builds an IPv4-only lab (compose's download-ipv4-only scenario).
	NoIPv6 bool
	// EdgeLatency, RelayLatency and PortalLatency are the round-trip times added on the client's and
	// gateway's router uplinks, the relays' uplinks and the portal's uplink, like compose's
	// {EDGE,RELAY,PORTAL}_ROUTER_LATENCY_MS (CI uses 10/30/50 ms): half of it is applied in each
	// direction. Without sch_netem they are ignored with a log line, unless RequireNetem is set.
	EdgeLatency, RelayLatency, PortalLatency time.Duration
	// RequireNetem skips the test when latency is asked for but netem is unavailable.
	RequireNetem bool
}

// Standard is the lab StandardTopology builds, mirroring Firezone's docker-compose stack.
//
//	internet  198.18.0.0/15, 2001:db8:ffff::/64
//	  portal    198.18.0.100   2001:db8:ffff::100
//	  relay1    198.18.0.101   2001:db8:ffff::101
//	  relay2    198.18.0.102   2001:db8:ffff::102
//	  rc (client router, NAT ClientNAT)  WAN 198.18.0.1   2001:db8:ffff::1
//	    client LAN 192.0.2.0/24, 2001:db8:1::/64: rc .1/::1, client .2/::2
//	  rg (gateway router, NAT GatewayNAT) WAN 198.18.0.2  2001:db8:ffff::2
//	    gateway LAN 198.51.100.0/24, 2001:db8:2::/64: rg .1/::1, gateway .2/::2
//	resources 203.0.113.0/24, 2001:db8:3::/64 (a switch only the gateway is plugged into)
//	    gateway .1/::1 (second interface), resource .100/::100
type Standard struct {
	Lab                                        *Lab
	Internet, ClientLAN, GatewayLAN, Resources *Network
	Portal, Relay1, Relay2                     *Host
	Client, Gateway, Resource                  *Host
	RC, RG                                     *Router
}

// StandardTopology builds the Standard lab (see its doc for the addresses). It skips like New when
// not root; failures are fatal; everything is removed when the test ends.
func StandardTopology(tb testing.TB, opts StandardOptions) *Standard {
	tb.Helper()
	if opts.ClientNAT == 0 {
		opts.ClientNAT = NATEndpointIndependent
	}
	if opts.GatewayNAT == 0 {
		opts.GatewayNAT = NATEndpointIndependent
	}
	// pick drops the IPv6 entries when NoIPv6 is set.
	pick := func(v4, v6 string) []string {
		if opts.NoIPv6 {
			return []string{v4}
		}
		return []string{v4, v6}
	}
	l := New(tb)
	s := &Standard{Lab: l}
	s.Internet = l.Internet(pick("198.18.0.0/15", "2001:db8:ffff::/64")...)
	s.ClientLAN = l.NATRouter("rc", s.Internet, opts.ClientNAT, pick("192.0.2.0/24", "2001:db8:1::/64")...)
	s.GatewayLAN = l.NATRouter("rg", s.Internet, opts.GatewayNAT, pick("198.51.100.0/24", "2001:db8:2::/64")...)
	s.RC, s.RG = s.ClientLAN.Router(), s.GatewayLAN.Router()
	s.Portal = l.Host("portal", s.Internet, pick("198.18.0.100", "2001:db8:ffff::100")...)
	s.Relay1 = l.Host("relay1", s.Internet, pick("198.18.0.101", "2001:db8:ffff::101")...)
	s.Relay2 = l.Host("relay2", s.Internet, pick("198.18.0.102", "2001:db8:ffff::102")...)
	s.Client = l.Host("client", s.ClientLAN)
	s.Gateway = l.Host("gateway", s.GatewayLAN)
	s.Resources = l.Switch("resources", pick("203.0.113.0/24", "2001:db8:3::/64")...)
	l.Attach(s.Gateway, s.Resources)
	s.Resource = l.Host("resource", s.Resources, pick("203.0.113.100", "2001:db8:3::100")...)

	impair := func(lk *Link, rtt time.Duration) {
		if rtt <= 0 {
			return
		}
		err := lk.SetImpairment(Impairment{Delay: rtt / 2})
		switch {
		case errors.Is(err, ErrNetemUnavailable) && opts.RequireNetem:
			tb.Skipf("netlab: latency requested but %v", err)
		case errors.Is(err, ErrNetemUnavailable):
			tb.Logf("netlab: ignoring requested latency: %v", err)
		case err != nil:
			tb.Fatalf("netlab: %v", err)
		}
	}
	impair(s.RC.WAN().Link, opts.EdgeLatency)
	impair(s.RG.WAN().Link, opts.EdgeLatency)
	impair(s.Relay1.Link(), opts.RelayLatency)
	impair(s.Relay2.Link(), opts.RelayLatency)
	impair(s.Portal.Link(), opts.PortalLatency)
	return s
}
