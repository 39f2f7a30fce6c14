package core

import (
	"context"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/tunnel"
)

func TestMetrics(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	h := newHarness(t, Config{MeterProvider: mp})
	h.c.HandlePortalState(tunnel.PortalJoined, h.now)
	h.portal(initMsg(cidrRes(rid(1), "198.51.100.0/24")))
	h.tunIn(packet(clientV4, lan, ippacket.ProtoUDP, 9, 1))
	h.tunIn(packet(clientV4, lanOther, ippacket.ProtoUDP, 9, 2))
	h.portal(portalapi.FlowCreationFailed{ResourceID: rid(1), Reason: portalapi.FailOffline})
	h.tunIn(packet(clientV4, netip4("192.0.2.1"), ippacket.ProtoUDP, 9, 3))

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				continue
			}
			for _, dp := range sum.DataPoints {
				key := m.Name
				for _, kv := range dp.Attributes.ToSlice() {
					key += "/" + string(kv.Key) + "=" + kv.Value.Emit()
				}
				got[key] = dp.Value
			}
		}
	}
	for key, want := range map[string]int64{
		"snowgate.client.flows/outcome=requested":            1,
		"snowgate.client.flows/outcome=failed":               1,
		"snowgate.client.packets.buffered/kind=flow":         2,
		"snowgate.client.icmp.sent/type=unreachable":         2,
		"snowgate.client.packets.dropped/reason=no_resource": 1,
	} {
		if got[key] != want {
			t.Errorf("%s = %d, want %d", key, got[key], want)
		}
	}
	if _, ok := got["snowgate.client.dns.queries/outcome=local"]; !ok {
		t.Errorf("the resolver's metrics are not on the meter provider: %v", got)
	}
}
