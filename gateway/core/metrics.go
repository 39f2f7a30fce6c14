package core

import (
	"context"
	"fmt"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// dropReason labels snowgate.gateway.packets.dropped.
type dropReason uint8

const (
	// Client → resource (HandleNetworkInput).
	reasonMalformed        dropReason = iota // not an IP packet ippacket can parse
	reasonSpoofedSource                      // source is no known client's tunnel address
	reasonICMPError                          // an ICMP error sent by a client (Firezone drops them)
	reasonPeerDestination                    // destination in the tunnel ranges (another client, a gateway)
	reasonUnauthorized                       // no authorised resource covers the destination
	reasonInternetExcluded                   // only the Internet resource, which excludes it: ICMP unreachable
	reasonNATUnreachable                     // DNS-resource proxy IP without a real IP: ICMP unreachable
	reasonNATDrop                            // the NAT dropped it (unsupported protocol, table full, …)
	// Control protocol (HandleNetworkInput).
	reasonNotInitialized     // a control packet before the portal's init gave the tunnel address
	reasonControlSource      // a control packet whose source is no known client's tunnel IPv6
	reasonControlDestination // a control packet not addressed to the gateway's tunnel IPv6
	reasonControlMalformed   // a control packet that does not decode, or of an unexpected event
	reasonControlUnknown     // a control packet of an event kind this version does not know
	// Resource → client (HandleTunInput).
	reasonUnknownClient      // destination is no known client's tunnel address
	reasonUnauthorizedSource // source is no authorised resource of the client (or its filters deny it)
	reasonControlFromTUN     // a control-protocol packet from the TUN device (spoofed)
	reasonNATExpired         // reply of an expired NAT session (or another NAT drop)
	numReasons
)

var reasonNames = [numReasons]string{
	"malformed", "spoofed_source", "icmp_error", "peer_destination", "unauthorized_destination",
	"internet_excluded", "nat_unreachable", "nat_drop",
	"not_initialized", "control_source", "control_destination", "control_malformed", "control_unknown",
	"unknown_client", "unauthorized_source", "control_from_tun", "nat_expired",
}

// String returns the reason's metric label.
func (r dropReason) String() string { return reasonNames[r] }

// assignResult labels snowgate.gateway.nat.assignments.
type assignResult uint8

const (
	assignActive        assignResult = iota // NAT set up, answered Active
	assignUnauthorized                      // no live authorisation of the DNS resource, or the name is outside its pattern
	assignResolveFailed                     // the name did not resolve
	assignNATFailed                         // the NAT table refused the assignment
	assignTooMany                           // the client has too many domains
	numResults
)

var resultNames = [numResults]string{"active", "unauthorized", "resolve_failed", "nat_failed", "too_many_domains"}

// counters are written by the core and read by metric callbacks on another goroutine, hence atomic.
type counters struct {
	dropped     [numReasons]atomic.Int64
	filtered    atomic.Int64
	toResource  atomic.Int64
	toClient    atomic.Int64
	assignments [numResults]atomic.Int64
	// gauges, refreshed by the core when they change
	clients        atomic.Int64
	authorizations atomic.Int64
	translations   atomic.Int64
}

// registerMetrics registers the core's instruments with mp (nil: noop); see the package doc.
func registerMetrics(mp metric.MeterProvider, c *counters) error {
	if mp == nil {
		mp = noop.NewMeterProvider()
	}
	m := mp.Meter("github.com/snowgate/snowgate/gateway/core")
	reasonOpts := make([]metric.ObserveOption, numReasons)
	for i, n := range reasonNames {
		reasonOpts[i] = metric.WithAttributeSet(attribute.NewSet(attribute.String("reason", n)))
	}
	resultOpts := make([]metric.ObserveOption, numResults)
	for i, n := range resultNames {
		resultOpts[i] = metric.WithAttributeSet(attribute.NewSet(attribute.String("result", n)))
	}
	toResource := metric.WithAttributeSet(attribute.NewSet(attribute.String("direction", "to_resource")))
	toClient := metric.WithAttributeSet(attribute.NewSet(attribute.String("direction", "to_client")))
	type inst struct {
		name, desc string
		gauge      bool
		observe    func(metric.Int64Observer)
	}
	insts := []inst{
		{"snowgate.gateway.packets.dropped", "Packets the gateway dropped (or answered with ICMP unreachable), by reason", false,
			func(o metric.Int64Observer) {
				for i := range c.dropped {
					o.Observe(c.dropped[i].Load(), reasonOpts[i])
				}
			}},
		{"snowgate.gateway.packets.filtered", "Packets from clients denied by a resource's filters (answered with ICMP prohibited)", false,
			func(o metric.Int64Observer) { o.Observe(c.filtered.Load()) }},
		{"snowgate.gateway.packets.forwarded", "Packets the gateway let through, by direction", false,
			func(o metric.Int64Observer) {
				o.Observe(c.toResource.Load(), toResource)
				o.Observe(c.toClient.Load(), toClient)
			}},
		{"snowgate.gateway.nat.assignments", "DNS-resource NAT set-ups the clients asked for, by result", false,
			func(o metric.Int64Observer) {
				for i := range c.assignments {
					o.Observe(c.assignments[i].Load(), resultOpts[i])
				}
			}},
		{"snowgate.gateway.clients", "Clients the gateway keeps state for", true,
			func(o metric.Int64Observer) { o.Observe(c.clients.Load()) }},
		{"snowgate.gateway.authorizations", "Live (client, resource) authorisations", true,
			func(o metric.Int64Observer) { o.Observe(c.authorizations.Load()) }},
		{"snowgate.gateway.nat.translations", "DNS-resource NAT proxy IP translations over all clients", true,
			func(o metric.Int64Observer) { o.Observe(c.translations.Load()) }},
	}
	for _, in := range insts {
		cb := func(_ context.Context, o metric.Int64Observer) error { in.observe(o); return nil }
		var err error
		if in.gauge {
			_, err = m.Int64ObservableGauge(in.name, metric.WithDescription(in.desc), metric.WithInt64Callback(cb))
		} else {
			_, err = m.Int64ObservableCounter(in.name, metric.WithDescription(in.desc), metric.WithInt64Callback(cb))
		}
		if err != nil {
			return fmt.Errorf("creating %s: %w", in.name, err)
		}
	}
	return nil
}

// snapshot returns the counters as maps, for Status.
func (c *counters) snapshot() Counters {
	out := Counters{
		Dropped:     make(map[string]int64, numReasons),
		Assignments: make(map[string]int64, numResults),
		Filtered:    c.filtered.Load(),
		ToResources: c.toResource.Load(),
		ToClients:   c.toClient.Load(),
	}
	for i := range c.dropped {
		if v := c.dropped[i].Load(); v != 0 {
			out.Dropped[reasonNames[i]] = v
		}
	}
	for i := range c.assignments {
		if v := c.assignments[i].Load(); v != 0 {
			out.Assignments[resultNames[i]] = v
		}
	}
	return out
}
