package userfwd

import (
	"context"
	"fmt"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// Protocol is a flow's transport protocol, as counted in Stats and metrics.
type Protocol int

// Protocols.
const (
	TCP Protocol = iota
	UDP
	ICMP
	numProtocols
)

var protocolNames = [numProtocols]string{"tcp", "udp", "icmp"}

func (p Protocol) String() string {
	if p < 0 || p >= numProtocols {
		return "unknown"
	}
	return protocolNames[p]
}

// FailReason says why a flow could not be opened.
type FailReason int

// Reasons a flow fails to open.
const (
	// FailLimit: MaxFlows (or, for TCP, MaxPendingTCP) was reached.
	FailLimit FailReason = iota
	// FailRefused: the destination refused the connection (TCP RST from the host's point of view).
	FailRefused
	// FailUnreachable: the host has no route to the destination, or it is unreachable.
	FailUnreachable
	// FailTimeout: the host dial timed out.
	FailTimeout
	// FailProhibited: the destination is the gateway's loopback or unspecified address and AllowLoopback
	// is off.
	FailProhibited
	// FailUnavailable: ICMP echo cannot leave the host (no ping socket, no raw socket).
	FailUnavailable
	// FailOther: any other error (socket limits, stack errors).
	FailOther
	// NumFailReasons is the number of FailReason values (the length of ProtoStats.Failed).
	NumFailReasons
)

var failReasonNames = [NumFailReasons]string{"limit", "refused", "unreachable", "timeout", "prohibited", "unavailable", "other"}

func (r FailReason) String() string {
	if r < 0 || r >= NumFailReasons {
		return "unknown"
	}
	return failReasonNames[r]
}

// ProtoStats are the counters of one protocol.
type ProtoStats struct {
	// Opened counts flows opened (TCP: host connection made and client handshake completed; UDP, ICMP: host
	// socket opened).
	Opened int64
	// Active is the number of live flows.
	Active int64
	// Failed counts flows that could not be opened, by reason.
	Failed [NumFailReasons]int64
}

// FailedTotal is the sum of Failed.
func (s ProtoStats) FailedTotal() int64 {
	var n int64
	for _, v := range s.Failed {
		n += v
	}
	return n
}

// Stats is a snapshot of a Device's counters.
type Stats struct {
	// TCP, UDP and ICMP are per-protocol flow counters.
	TCP, UDP, ICMP ProtoStats
	// Malformed counts packets from the clients that were not valid IP packets (dropped).
	Malformed int64
	// QueueDrops counts packets towards the clients dropped because Read did not keep up or a packet did not
	// fit the caller's buffer.
	QueueDrops int64
}

// Proto returns the counters of p.
func (s Stats) Proto(p Protocol) ProtoStats {
	switch p {
	case TCP:
		return s.TCP
	case UDP:
		return s.UDP
	default:
		return s.ICMP
	}
}

type protoCounters struct {
	opened atomic.Int64
	active atomic.Int64
	failed [NumFailReasons]atomic.Int64
}

type counters struct {
	proto      [numProtocols]protoCounters
	malformed  atomic.Int64
	queueDrops atomic.Int64
}

func (c *counters) snapshot() Stats {
	var s Stats
	ps := [numProtocols]*ProtoStats{&s.TCP, &s.UDP, &s.ICMP}
	for i := range c.proto {
		ps[i].Opened = c.proto[i].opened.Load()
		ps[i].Active = c.proto[i].active.Load()
		for r := range c.proto[i].failed {
			ps[i].Failed[r] = c.proto[i].failed[r].Load()
		}
	}
	s.Malformed = c.malformed.Load()
	s.QueueDrops = c.queueDrops.Load()
	return s
}

// registerMetrics registers the device's instruments with mp (nil: noop):
//   - snowgate.gateway.userfwd.flows.opened{protocol}: flows opened;
//   - snowgate.gateway.userfwd.flows.failed{protocol,reason}: flows that could not be opened;
//   - snowgate.gateway.userfwd.flows.active{protocol}: live flows;
//   - snowgate.gateway.userfwd.packets.dropped{reason}: malformed client packets and packets towards the
//     clients dropped at the queue.
func registerMetrics(mp metric.MeterProvider, c *counters) (metric.Registration, error) {
	if mp == nil {
		mp = noop.NewMeterProvider()
	}
	m := mp.Meter("github.com/snowgate/snowgate/gateway/userfwd")
	opened, err := m.Int64ObservableCounter("snowgate.gateway.userfwd.flows.opened",
		metric.WithDescription("Flows the userspace forwarder opened from host sockets, by protocol"))
	if err != nil {
		return nil, fmt.Errorf("creating flows opened counter: %w", err)
	}
	failed, err := m.Int64ObservableCounter("snowgate.gateway.userfwd.flows.failed",
		metric.WithDescription("Flows the userspace forwarder could not open, by protocol and reason"))
	if err != nil {
		return nil, fmt.Errorf("creating flows failed counter: %w", err)
	}
	active, err := m.Int64ObservableGauge("snowgate.gateway.userfwd.flows.active",
		metric.WithDescription("Live flows of the userspace forwarder, by protocol"))
	if err != nil {
		return nil, fmt.Errorf("creating flows active gauge: %w", err)
	}
	dropped, err := m.Int64ObservableCounter("snowgate.gateway.userfwd.packets.dropped",
		metric.WithDescription("Packets the userspace forwarder dropped: malformed from the clients, or queue overflow towards them"))
	if err != nil {
		return nil, fmt.Errorf("creating packets dropped counter: %w", err)
	}
	var protoOpts [numProtocols]metric.ObserveOption
	var failOpts [numProtocols][NumFailReasons]metric.ObserveOption
	for p := range numProtocols {
		protoOpts[p] = metric.WithAttributeSet(attribute.NewSet(attribute.String("protocol", p.String())))
		for r := range NumFailReasons {
			failOpts[p][r] = metric.WithAttributeSet(attribute.NewSet(
				attribute.String("protocol", p.String()), attribute.String("reason", r.String())))
		}
	}
	malformedOpt := metric.WithAttributeSet(attribute.NewSet(attribute.String("reason", "malformed")))
	queueOpt := metric.WithAttributeSet(attribute.NewSet(attribute.String("reason", "queue")))
	reg, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for p := range numProtocols {
			pc := &c.proto[p]
			o.ObserveInt64(opened, pc.opened.Load(), protoOpts[p])
			o.ObserveInt64(active, pc.active.Load(), protoOpts[p])
			for r := range NumFailReasons {
				o.ObserveInt64(failed, pc.failed[r].Load(), failOpts[p][r])
			}
		}
		o.ObserveInt64(dropped, c.malformed.Load(), malformedOpt)
		o.ObserveInt64(dropped, c.queueDrops.Load(), queueOpt)
		return nil
	}, opened, failed, active, dropped)
	if err != nil {
		return nil, fmt.Errorf("registering userfwd metrics callback: %w", err)
	}
	return reg, nil
}
