package nat_test

import (
	"context"
	"net/netip"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/snowgate/snowgate/gateway/nat"
)

// collect returns every int64 data point as "name" or "name{reason}".
func collect(t *testing.T, reader sdkmetric.Reader) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			var pts []metricdata.DataPoint[int64]
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				pts = d.DataPoints
			case metricdata.Gauge[int64]:
				pts = d.DataPoints
			}
			for _, p := range pts {
				name := m.Name
				if r, ok := p.Attributes.Value("reason"); ok {
					name += "{" + r.AsString() + "}"
				}
				out[name] = p.Value
			}
		}
	}
	return out
}

func TestMetrics(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	tb := newTable(t, nat.Config{MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))})
	configure(t, tb, "a.example", []netip.Addr{pA4a, pA6a}, []netip.Addr{r4a}, t0)
	sendUDP(t, tb, pA4a, 1, t0)
	sendUDP(t, tb, pA4a, 2, t0)
	sendUDP(t, tb, pA6a, 1, t0)                               // no AAAA
	sendUDP(t, tb, netip.MustParseAddr("100.96.0.77"), 1, t0) // unassigned
	tb.HandleTimeout(t0.Add(nat.UnconfirmedTTL))
	sendUDP(t, tb, pA4a, 3, t0.Add(nat.UnconfirmedTTL))
	got := collect(t, reader)
	want := map[string]int64{
		"snowgate.gateway.nat.sessions.created":                3,
		"snowgate.gateway.nat.sessions":                        1,
		"snowgate.gateway.nat.packets.dropped{no_real_ip}":     1,
		"snowgate.gateway.nat.packets.dropped{no_translation}": 1,
		"snowgate.gateway.nat.packets.dropped{table_full}":     0,
		"snowgate.gateway.nat.packets.dropped{unknown_client}": 0,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d (all: %v)", k, got[k], v, got)
		}
	}
	tb.RemoveClient(cV6)
	if got := collect(t, reader)["snowgate.gateway.nat.sessions"]; got != 0 {
		t.Errorf("sessions after RemoveClient = %d", got)
	}
}
