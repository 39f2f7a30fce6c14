package core

import (
	"context"
	"fmt"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// flowOutcome labels snowgate.client.flows.
type flowOutcome int

const (
	flowRequested        flowOutcome = iota // a create_flow pushed (first or resent)
	flowCreated                             // flow_created accepted
	flowFailed                              // flow_creation_failed
	flowTimedOut                            // no answer within FlowTimeout
	flowConnectionFailed                    // the gateway connection failed (or did not come up in time)
	flowNoRelays                            // the node had no relay for the new connection
	flowGoodbye                             // the gateway said Goodbye
	flowRemoved                             // the resource was removed while its flow existed
	flowRoamed                              // dropped by roaming
	flowStale                               // a flow_created / flow_creation_failed nobody waited for
	numFlowOutcomes
)

var flowOutcomeNames = [numFlowOutcomes]string{
	"requested", "created", "failed", "timeout", "connection_failed", "no_relays", "goodbye", "removed",
	"roamed", "stale",
}

// dropReason labels snowgate.client.packets.dropped.
type dropReason int

const (
	dropMalformed      dropReason = iota // not an IP packet ippacket can parse
	dropNotConfigured                    // no init yet
	dropSource                           // source is not one of our tunnel addresses
	dropNoResource                       // no resource covers the destination
	dropBufferFull                       // the oldest of a full flow buffer
	dropNATBufferFull                    // the oldest of a full DNS-resource NAT hold
	dropSentinel                         // a non-DNS packet to a sentinel address, or to an unknown sentinel
	dropDNSUnavailable                   // a DNS query while the core has no resolver
	dropUnanswerable                     // an ICMP error was due but cannot be built (ICMP errors, fragments)
	dropNoGateway                        // control packet for a gateway without connection
	numDropReasons
)

var dropReasonNames = [numDropReasons]string{
	"malformed", "not_configured", "source", "no_resource", "buffer_full", "nat_buffer_full", "sentinel",
	"dns_unavailable", "unanswerable", "no_gateway",
}

// icmpKind labels snowgate.client.icmp.sent.
type icmpKind int

const (
	icmpProhibited  icmpKind = iota // a filter denied the packet (or the portal refused the flow)
	icmpUnreachable                 // the flow or the NAT could not be set up
	numICMPKinds
)

var icmpKindNames = [numICMPKinds]string{"prohibited", "unreachable"}

// bufferKind labels snowgate.client.packets.buffered.
type bufferKind int

const (
	bufFlow bufferKind = iota // waiting for a flow / connection
	bufNAT                    // waiting for a DNS-resource NAT
	numBufferKinds
)

var bufferKindNames = [numBufferKinds]string{"flow", "nat"}

// counters are the core's counters. They are written under the driver's lock and read by the metric
// callbacks on the exporter's goroutine, hence atomics.
type counters struct {
	flows    [numFlowOutcomes]atomic.Uint64
	dropped  [numDropReasons]atomic.Uint64
	icmp     [numICMPKinds]atomic.Uint64
	buffered [numBufferKinds]atomic.Uint64
	// sent counts packets handed to the tunnel: passed through, or injected (SendToTunnel) after waiting.
	sent atomic.Uint64
	// dnsLocal counts DNS answers built by the core (UDP packets written to the TUN device, TCP replies).
	dnsReplies atomic.Uint64
}

func observeAll(o metric.Int64Observer, vals []atomic.Uint64, opts []metric.ObserveOption) {
	for i := range vals {
		o.Observe(int64(vals[i].Load()), opts[i])
	}
}

func attrOpts(key string, names []string) []metric.ObserveOption {
	out := make([]metric.ObserveOption, len(names))
	for i, n := range names {
		out[i] = metric.WithAttributeSet(attribute.NewSet(attribute.String(key, n)))
	}
	return out
}

// register creates the core's instruments on mp; their callbacks read c.
func (c *counters) register(mp metric.MeterProvider) error {
	m := mp.Meter("github.com/snowgate/snowgate/client/core")
	flowOpts := attrOpts("outcome", flowOutcomeNames[:])
	dropOpts := attrOpts("reason", dropReasonNames[:])
	icmpOpts := attrOpts("type", icmpKindNames[:])
	bufOpts := attrOpts("kind", bufferKindNames[:])
	for _, inst := range []struct {
		name, desc string
		cb         metric.Int64Callback
	}{
		{"snowgate.client.flows", "Flows (create_flow requests and their outcomes), by outcome",
			func(_ context.Context, o metric.Int64Observer) error {
				observeAll(o, c.flows[:], flowOpts)
				return nil
			}},
		{"snowgate.client.packets.dropped", "Packets from the TUN device the client dropped, by reason",
			func(_ context.Context, o metric.Int64Observer) error {
				observeAll(o, c.dropped[:], dropOpts)
				return nil
			}},
		{"snowgate.client.packets.buffered", "Packets the client buffered while a flow or a DNS-resource NAT was set up, by kind",
			func(_ context.Context, o metric.Int64Observer) error {
				observeAll(o, c.buffered[:], bufOpts)
				return nil
			}},
		{"snowgate.client.icmp.sent", "ICMP errors the client answered packets with, by type",
			func(_ context.Context, o metric.Int64Observer) error {
				observeAll(o, c.icmp[:], icmpOpts)
				return nil
			}},
		{"snowgate.client.packets.tunneled", "Packets from the TUN device handed to the tunnel",
			func(_ context.Context, o metric.Int64Observer) error {
				o.Observe(int64(c.sent.Load()))
				return nil
			}},
	} {
		if _, err := m.Int64ObservableCounter(inst.name, metric.WithDescription(inst.desc), metric.WithInt64Callback(inst.cb)); err != nil {
			return fmt.Errorf("client core: metric %s: %w", inst.name, err)
		}
	}
	return nil
}
