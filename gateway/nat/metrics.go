package nat

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// dropReason labels the snowgate.gateway.nat.packets.dropped metric.
type dropReason uint8

const (
	reasonUnknownClient dropReason = iota
	reasonNoTranslation
	reasonNoRealIP
	reasonUnsupported
	reasonTableFull
	reasonExpired
	reasonMalformed
	reasonOther
	numReasons
)

var reasonNames = [numReasons]string{
	"unknown_client", "no_translation", "no_real_ip", "unsupported_protocol",
	"table_full", "expired_session", "malformed", "other",
}

func reasonOf(err error) dropReason {
	switch {
	case errors.Is(err, ErrUnknownClient):
		return reasonUnknownClient
	case errors.Is(err, ErrNoTranslation):
		return reasonNoTranslation
	case errors.Is(err, ErrNoRealIP):
		return reasonNoRealIP
	case errors.Is(err, ErrUnsupportedProtocol):
		return reasonUnsupported
	case errors.Is(err, ErrTableFull):
		return reasonTableFull
	case errors.Is(err, ErrExpiredSession):
		return reasonExpired
	case errors.Is(err, ErrMalformed):
		return reasonMalformed
	default:
		return reasonOther
	}
}

// counters are read by the metric callbacks (another goroutine), hence
// atomic; the per-packet path of an existing flow touches none of them.
type counters struct {
	dropped  [numReasons]atomic.Int64
	created  atomic.Int64
	sessions atomic.Int64
}

func (c *counters) drop(err error) { c.dropped[reasonOf(err)].Add(1) }

// registerMetrics registers the table's instruments with mp (nil: noop):
//   - snowgate.gateway.nat.packets.dropped{reason}: packets answered Drop or
//     Unreachable;
//   - snowgate.gateway.nat.sessions.created: sessions created;
//   - snowgate.gateway.nat.sessions: live sessions.
func registerMetrics(mp metric.MeterProvider, c *counters) error {
	if mp == nil {
		mp = noop.NewMeterProvider()
	}
	m := mp.Meter("github.com/snowgate/snowgate/gateway/nat")
	var opts [numReasons]metric.ObserveOption
	for i, n := range reasonNames {
		opts[i] = metric.WithAttributeSet(attribute.NewSet(attribute.String("reason", n)))
	}
	if _, err := m.Int64ObservableCounter("snowgate.gateway.nat.packets.dropped",
		metric.WithDescription("Packets the DNS-resource NAT dropped or answered with ICMP unreachable, by reason"),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			for i := range c.dropped {
				o.Observe(c.dropped[i].Load(), opts[i])
			}
			return nil
		})); err != nil {
		return fmt.Errorf("creating NAT dropped packets counter: %w", err)
	}
	if _, err := m.Int64ObservableCounter("snowgate.gateway.nat.sessions.created",
		metric.WithDescription("DNS-resource NAT sessions created"),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(c.created.Load())
			return nil
		})); err != nil {
		return fmt.Errorf("creating NAT sessions created counter: %w", err)
	}
	if _, err := m.Int64ObservableGauge("snowgate.gateway.nat.sessions",
		metric.WithDescription("Live DNS-resource NAT sessions over all clients"),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			o.Observe(c.sessions.Load())
			return nil
		})); err != nil {
		return fmt.Errorf("creating NAT sessions gauge: %w", err)
	}
	return nil
}
