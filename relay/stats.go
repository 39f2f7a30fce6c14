package relay

import (
	"context"
	"fmt"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/snowgate/snowgate/relay/kernelpath"
)

// Auth failure reasons (metric attribute "reason").
const (
	reasonMalformed = "malformed_username"
	reasonExpired   = "expired"
	reasonRealm     = "wrong_realm"
	reasonIntegrity = "bad_password"
)

var authReasons = []string{reasonMalformed, reasonExpired, reasonRealm, reasonIntegrity}

// Reasons a datagram was dropped inside the relay (metric attribute
// "reason"; indexes of stats.dropped).
const (
	dropOversized = iota // longer than the relay's buffers
	dropBacklog          // pion's read loop for the socket is behind (inbox full)
	dropSend             // the send failed (full socket buffer, unreachable)
	dropRead             // the socket reported an error
	dropReasons
)

var dropReasonNames = [dropReasons]string{"oversized", "backlog", "send_failed", "read_error"}

// trafficShard holds relayed-traffic counters, padded to its own cache lines
// so that sockets on different cores do not share them.
type trafficShard struct {
	toPeerPackets, toPeerBytes     atomic.Uint64
	toClientPackets, toClientBytes atomic.Uint64
	_                              [32]byte
}

// stats are the relay's counters: plain atomics on the hot path, read by
// otel observable instruments at collection time.
type stats struct {
	shards []trafficShard

	allocations4, allocations6 atomic.Int64
	permissions, channels      atomic.Int64
	refusedPeers               atomic.Uint64
	quotaRefusals              atomic.Uint64
	authFailures               [4]atomic.Uint64 // indexed like authReasons
	dropped                    [dropReasons]atomic.Uint64

	// kernel is the kernel path while attached; kernelRetired what it
	// relayed in total once detached.
	kernel        atomic.Pointer[kernelpath.Path]
	kernelRetired atomic.Pointer[kernelpath.Counters]

	reg metric.Registration
}

func newStats(shards int) *stats {
	return &stats{shards: make([]trafficShard, shards)}
}

func (s *stats) shard(i int) *trafficShard { return &s.shards[i%len(s.shards)] }

func (s *stats) authFailure(reason string) {
	for i, r := range authReasons {
		if r == reason {
			s.authFailures[i].Add(1)
			return
		}
	}
}

// readError counts a socket read error (a worker's readErr hook).
func (s *stats) readError(error) { s.dropped[dropRead].Add(1) }

type trafficTotals struct{ toPeerPackets, toPeerBytes, toClientPackets, toClientBytes uint64 }

// kernelTotals is what the kernel path relayed (zero without one).
func (s *stats) kernelTotals() kernelpath.Counters {
	if k := s.kernel.Load(); k != nil {
		return k.Totals()
	}
	if c := s.kernelRetired.Load(); c != nil {
		return *c
	}
	return kernelpath.Counters{}
}

// retireKernel keeps the kernel path's final totals before it is closed.
func (s *stats) retireKernel() {
	if k := s.kernel.Load(); k != nil {
		c := k.Totals()
		s.kernelRetired.Store(&c)
		s.kernel.Store(nil)
	}
}

// traffic sums what userspace and the kernel path relayed.
func (s *stats) traffic() trafficTotals {
	k := s.kernelTotals()
	t := trafficTotals{
		toPeerPackets: k.ToPeerPackets, toPeerBytes: k.ToPeerBytes,
		toClientPackets: k.ToClientPackets, toClientBytes: k.ToClientBytes,
	}
	for i := range s.shards {
		sh := &s.shards[i]
		t.toPeerPackets += sh.toPeerPackets.Load()
		t.toPeerBytes += sh.toPeerBytes.Load()
		t.toClientPackets += sh.toClientPackets.Load()
		t.toClientBytes += sh.toClientBytes.Load()
	}
	return t
}

// register creates the observable instruments on mp (nil → noop).
func (s *stats) register(mp metric.MeterProvider) error {
	if mp == nil {
		mp = noop.NewMeterProvider()
	}
	m := mp.Meter("github.com/snowgate/snowgate/relay")
	allocs, err := m.Int64ObservableGauge("relay.allocations", metric.WithDescription("Active TURN allocations"))
	if err != nil {
		return fmt.Errorf("create instrument: %w", err)
	}
	perms, err := m.Int64ObservableGauge("relay.permissions", metric.WithDescription("Active TURN permissions"))
	if err != nil {
		return fmt.Errorf("create instrument: %w", err)
	}
	chans, err := m.Int64ObservableGauge("relay.channels", metric.WithDescription("Active TURN channel bindings"))
	if err != nil {
		return fmt.Errorf("create instrument: %w", err)
	}
	pkts, err := m.Int64ObservableCounter("relay.relayed.packets", metric.WithDescription("Datagrams relayed, by direction"))
	if err != nil {
		return fmt.Errorf("create instrument: %w", err)
	}
	bytes, err := m.Int64ObservableCounter("relay.relayed.bytes", metric.WithUnit("By"),
		metric.WithDescription("Bytes relayed, by direction (ChannelData payloads; whole Data indications)"))
	if err != nil {
		return fmt.Errorf("create instrument: %w", err)
	}
	authFail, err := m.Int64ObservableCounter("relay.auth.failures", metric.WithDescription("Refused credentials, by reason"))
	if err != nil {
		return fmt.Errorf("create instrument: %w", err)
	}
	refused, err := m.Int64ObservableCounter("relay.peers.refused",
		metric.WithDescription("Permissions and channel bindings refused by the peer policy"))
	if err != nil {
		return fmt.Errorf("create instrument: %w", err)
	}
	quota, err := m.Int64ObservableCounter("relay.allocations.refused",
		metric.WithDescription("Allocations refused by quota or drain (486)"))
	if err != nil {
		return fmt.Errorf("create instrument: %w", err)
	}
	dropped, err := m.Int64ObservableCounter("relay.datagrams.dropped",
		metric.WithDescription("Datagrams the relay dropped, by reason (oversized, backlog, send_failed, read_error)"))
	if err != nil {
		return fmt.Errorf("create instrument: %w", err)
	}
	kChans, err := m.Int64ObservableGauge("relay.kernel.channels",
		metric.WithDescription("Channel bindings installed in the kernel path (XDP)"))
	if err != nil {
		return fmt.Errorf("create instrument: %w", err)
	}
	kPkts, err := m.Int64ObservableCounter("relay.kernel.relayed.packets",
		metric.WithDescription("Datagrams relayed by the kernel path, by direction (included in relay.relayed.packets)"))
	if err != nil {
		return fmt.Errorf("create instrument: %w", err)
	}
	kBytes, err := m.Int64ObservableCounter("relay.kernel.relayed.bytes", metric.WithUnit("By"),
		metric.WithDescription("Payload bytes relayed by the kernel path, by direction (included in relay.relayed.bytes)"))
	if err != nil {
		return fmt.Errorf("create instrument: %w", err)
	}
	kPassed, err := m.Int64ObservableCounter("relay.kernel.passed",
		metric.WithDescription("Datagrams of installed channels the kernel path left to userspace, by reason"))
	if err != nil {
		return fmt.Errorf("create instrument: %w", err)
	}
	v4 := metric.WithAttributes(attribute.String("family", "ipv4"))
	v6 := metric.WithAttributes(attribute.String("family", "ipv6"))
	toPeer := metric.WithAttributes(attribute.String("direction", "client_to_peer"))
	toClient := metric.WithAttributes(attribute.String("direction", "peer_to_client"))
	reasonOpts := make([]metric.ObserveOption, len(authReasons))
	for i, r := range authReasons {
		reasonOpts[i] = metric.WithAttributes(attribute.String("reason", r))
	}
	var dropOpts [dropReasons]metric.ObserveOption
	for i, r := range dropReasonNames {
		dropOpts[i] = metric.WithAttributes(attribute.String("reason", r))
	}
	s.reg, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(allocs, s.allocations4.Load(), v4)
		o.ObserveInt64(allocs, s.allocations6.Load(), v6)
		o.ObserveInt64(perms, s.permissions.Load())
		o.ObserveInt64(chans, s.channels.Load())
		t := s.traffic()
		o.ObserveInt64(pkts, int64(t.toPeerPackets), toPeer)     //nolint:gosec // counters stay far below 2^63
		o.ObserveInt64(pkts, int64(t.toClientPackets), toClient) //nolint:gosec
		o.ObserveInt64(bytes, int64(t.toPeerBytes), toPeer)      //nolint:gosec
		o.ObserveInt64(bytes, int64(t.toClientBytes), toClient)  //nolint:gosec
		for i := range authReasons {
			o.ObserveInt64(authFail, int64(s.authFailures[i].Load()), reasonOpts[i]) //nolint:gosec
		}
		o.ObserveInt64(refused, int64(s.refusedPeers.Load())) //nolint:gosec
		o.ObserveInt64(quota, int64(s.quotaRefusals.Load()))  //nolint:gosec
		for i := range dropOpts {
			o.ObserveInt64(dropped, int64(s.dropped[i].Load()), dropOpts[i]) //nolint:gosec
		}
		k := s.kernelTotals()
		o.ObserveInt64(kPkts, int64(k.ToPeerPackets), toPeer)     //nolint:gosec
		o.ObserveInt64(kPkts, int64(k.ToClientPackets), toClient) //nolint:gosec
		o.ObserveInt64(kBytes, int64(k.ToPeerBytes), toPeer)      //nolint:gosec
		o.ObserveInt64(kBytes, int64(k.ToClientBytes), toClient)  //nolint:gosec
		if kp := s.kernel.Load(); kp != nil {
			o.ObserveInt64(kChans, int64(kp.Status().Bindings))
			p := kp.Passed()
			for _, r := range []struct {
				reason string
				n      uint64
			}{
				{"partial_checksum", p.PartialChecksum}, {"no_checksum", p.NoChecksum}, {"other_interface", p.OtherInterface},
				{"mtu", p.MTU}, {"malformed", p.Malformed}, {"destination", p.Destination},
				{"adjust_failed", p.AdjustFailed}, {"tail_failed", p.TailFailed},
			} {
				o.ObserveInt64(kPassed, int64(r.n), metric.WithAttributes(attribute.String("reason", r.reason))) //nolint:gosec
			}
		} else {
			o.ObserveInt64(kChans, 0)
		}
		return nil
	}, allocs, perms, chans, pkts, bytes, authFail, refused, quota, dropped, kChans, kPkts, kBytes, kPassed)
	if err != nil {
		return fmt.Errorf("register metrics callback: %w", err)
	}
	return nil
}

func (s *stats) unregister() {
	if s.reg != nil {
		_ = s.reg.Unregister()
	}
}
