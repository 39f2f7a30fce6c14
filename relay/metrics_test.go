package relay

import (
	"context"
	"testing"
	"time"

	"github.com/pion/stun/v4"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// TestMetrics checks the instruments exported through an otel SDK reader.
func TestMetrics(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background()) //nolint:errcheck
	cfg := loopbackConfig()
	cfg.MeterProvider = mp
	s := startRelay(t, cfg)
	user, pass := firezoneCreds(s, "salt", time.Hour)
	r := newRawClient(t, s.Addr(), user, pass)
	if _, err := r.allocate(); err != nil {
		t.Fatal(err)
	}
	newRawClient(t, s.Addr(), user, "wrong").request(stun.MethodAllocate, requestedTransportUDP())
	r.request(stun.MethodCreatePermission, peerAttr(mustAddrPort("127.0.0.2:9")))
	// A datagram longer than the relay's buffers is dropped and counted.
	if _, err := r.conn.WriteTo(make([]byte, 3000), r.server); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "oversized drop", func() bool { return s.stats.dropped[dropOversized].Load() == 1 })

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					got[m.Name+label(p.Attributes)] = p.Value
				}
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					got[m.Name+label(p.Attributes)] = p.Value
				}
			}
		}
	}
	want := map[string]int64{
		"relay.allocations{family=ipv4}":                  1,
		"relay.allocations{family=ipv6}":                  0,
		"relay.permissions":                               0,
		"relay.channels":                                  0,
		"relay.peers.refused":                             1,
		"relay.auth.failures{reason=bad_password}":        1,
		"relay.auth.failures{reason=expired}":             0,
		"relay.relayed.packets{direction=client_to_peer}": 0,
		"relay.relayed.bytes{direction=peer_to_client}":   0,
		"relay.allocations.refused":                       0,
		"relay.datagrams.dropped{reason=oversized}":       1,
		"relay.datagrams.dropped{reason=backlog}":         0,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %d (present %v), want %d", k, g, ok, v)
		}
	}
}

func label(s attribute.Set) string {
	if s.Len() == 0 {
		return ""
	}
	out := "{"
	for i, kv := range s.ToSlice() {
		if i > 0 {
			out += ","
		}
		out += string(kv.Key) + "=" + kv.Value.String()
	}
	return out + "}"
}
