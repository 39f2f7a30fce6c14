package node

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// TestMetrics: an established relayed connection shows up in the node's instruments: established and setup
// time by path, the connection gauge by path and state, no live ICE agent once WireGuard is up, and the
// scheduler's wake-up counter.
func TestMetrics(t *testing.T) {
	relay := startRelay(t)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	a := newTestNode(t, "100.64.0.1", func(c *Config) { c.MeterProvider = mp })
	b := newTestNode(t, "100.64.0.2", nil)
	giveRelays(t, a, b, relay)
	connect(t, a, b, "c1", credsA, credsB)
	roundTrip(t, a, b, 5*time.Second)
	ev, ok := a.waitEvent(5*time.Second, established("c1"))
	if !ok {
		t.Fatal("no established event")
	}
	path := ev.Path.String()

	// The agent closes after a short grace once WireGuard is up.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(t.Context(), &rm); err != nil {
			t.Fatal(err)
		}
		got := map[string]metricdata.Aggregation{}
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				got[m.Name] = m.Data
			}
		}
		est, _ := got["node.connections.established"].(metricdata.Sum[int64])
		setup, _ := got["node.connection.setup.duration"].(metricdata.Histogram[float64])
		conns, _ := got["node.connections"].(metricdata.Gauge[int64])
		agents, _ := got["node.ice.agents"].(metricdata.Gauge[int64])
		ok := len(est.DataPoints) == 1 && est.DataPoints[0].Value == 1 && attr(est.DataPoints[0].Attributes, "path") == path &&
			len(setup.DataPoints) == 1 && setup.DataPoints[0].Count == 1 &&
			len(conns.DataPoints) == 1 && conns.DataPoints[0].Value == 1 &&
			attr(conns.DataPoints[0].Attributes, "path") == path && attr(conns.DataPoints[0].Attributes, "state") == "active" &&
			len(agents.DataPoints) == 1 && agents.DataPoints[0].Value == 0
		if _, hasWakeups := got["snowgate.node.wakeups"]; ok && hasWakeups {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics never matched (path %s):\nestablished %+v\nsetup %+v\nconnections %+v\nagents %+v\nall %v",
				path, est.DataPoints, setup.DataPoints, conns.DataPoints, agents.DataPoints, keys(got))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func attr(set attribute.Set, key attribute.Key) string {
	v, _ := set.Value(key)
	return v.AsString()
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
