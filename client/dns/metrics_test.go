package dns

import (
	"context"
	"net/netip"
	"testing"

	mdns "github.com/miekg/dns"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// collect returns every int64 sum data point the reader has, as "name{attr=value}" → value.
func collect(t *testing.T, reader sdkmetric.Reader) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			d, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				continue
			}
			for _, p := range d.DataPoints {
				key := m.Name
				for _, kv := range p.Attributes.ToSlice() {
					key += "{" + string(kv.Key) + "=" + kv.Value.String() + "}"
				}
				got[key] = p.Value
			}
		}
	}
	return got
}

// TestDroppedAnswersMetric: upstream answers the stub drops are exported by reason through the MeterProvider,
// those the core drops (HandleUpstreamPacket, HandleUpstreamResponse) and those a driver reports
// (ReportDroppedAnswer); every reason is exported, zero included. Before, no such metric existed.
func TestDroppedAnswersMetric(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background()) //nolint:errcheck
	r, err := New(Config{UpstreamDNS: []netip.AddrPort{up1}, MeterProvider: mp})
	if err != nil {
		t.Fatal(err)
	}
	r.HandleQuery(udpSrc(sent1), query(t, "x.org", mdns.TypeA, 9), t0, nil)
	f, _ := r.PollForward()
	const name = "snowgate.client.dns.upstream.answers.dropped"
	want := map[string]int64{}
	for _, reason := range []string{"source", "id", "question", "malformed", "late"} {
		want[name+"{reason="+reason+"}"] = 0
	}
	check := func(step string) {
		t.Helper()
		got := collect(t, reader)
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: %s = %d, want %d", step, k, got[k], v)
			}
			if _, ok := got[k]; !ok {
				t.Errorf("%s: %s not exported", step, k)
			}
		}
	}
	check("before any answer")

	good := answerTo(t, f.Query, nil)
	if r.HandleUpstreamPacket(up1, good[:11], t0) {
		t.Fatal("short answer matched")
	}
	want[name+"{reason=malformed}"]++
	other := answerTo(t, f.Query, func(m *mdns.Msg) { m.Id++ })
	if r.HandleUpstreamPacket(up1, other, t0) {
		t.Fatal("answer with another id matched")
	}
	want[name+"{reason=id}"]++
	if r.HandleUpstreamPacket(up2, good, t0) { // an upstream this query was not sent to
		t.Fatal("answer from another upstream matched")
	}
	want[name+"{reason=id}"]++
	evil := answerTo(t, f.Query, func(m *mdns.Msg) { m.Question[0].Name = "evil.org." })
	if r.HandleUpstreamPacket(up1, evil, t0) {
		t.Fatal("answer to another question matched")
	}
	want[name+"{reason=question}"]++
	check("after spoofed answers")

	if !r.HandleUpstreamPacket(up1, good, t0) {
		t.Fatal("the real answer did not match")
	}
	if r.HandleUpstreamPacket(up1, good, t0) {
		t.Fatal("a duplicate answer matched")
	}
	want[name+"{reason=id}"]++
	r.HandleUpstreamResponse(f.ID, good, t0) // the forward is finished
	want[name+"{reason=late}"]++
	r.ReportDroppedAnswer(DropWrongSource)
	want[name+"{reason=source}"]++
	r.ReportDroppedAnswer(AnswerDropReason(200)) // out of range: ignored, no panic
	check("after the answer")

	if got := collect(t, reader)["snowgate.client.dns.queries{outcome=forwarded}"]; got != 1 {
		t.Errorf("forwarded queries = %d, want 1", got)
	}
}
