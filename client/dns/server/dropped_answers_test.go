package server

import (
	"context"
	"maps"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/snowgate/snowgate/client/dns"
)

// TestTunnelUDPDroppedAnswersCounted: over a socket of its own (an upstream inside a CIDR resource, dialled
// through the tunnel), a mismatching UDP answer is dropped, counted by reason, and the real answer that follows
// still reaches the application.
func TestTunnelUDPDroppedAnswersCounted(t *testing.T) {
	ru := newRawUpstream(t)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background()) //nolint:errcheck
	r, err := dns.New(dns.Config{UpstreamDNS: []netip.AddrPort{ru.addr()}, UpstreamTimeout: 5 * time.Second, MeterProvider: mp})
	if err != nil {
		t.Fatal(err)
	}
	_ = r.SetResources(nil, []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")})
	var tunnelDials atomic.Int32
	var d net.Dialer
	srv, err := New(Config{Resolver: r, TunnelDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		tunnelDials.Add(1)
		return d.DialContext(ctx, network, addr)
	}})
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ctx, sentinel, []net.PacketConn{pc}, nil) }()
	defer func() { cancel(); <-done; _ = srv.Close() }()
	st := &stub{srv: srv, metrics: reader}

	app, err := net.Dial("udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	q := new(mdns.Msg)
	q.SetQuestion("tunnel.example.org.", mdns.TypeA)
	q.Id = 77
	qb, _ := q.Pack()
	if _, err := app.Write(qb); err != nil {
		t.Fatal(err)
	}
	up, from := ru.readQuery(t)
	for _, b := range [][]byte{
		reply(t, up, 66, nil)[:11],
		reply(t, up, 66, func(m *mdns.Msg) { m.Id++ }),
		reply(t, up, 66, func(m *mdns.Msg) { m.Question[0].Name = "evil.test." }),
		reply(t, up, 7, nil),
	} {
		if _, err := ru.conn.WriteToUDPAddrPort(b, from); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 4096)
	_ = app.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, err := app.Read(buf)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	m := new(mdns.Msg)
	if err := m.Unpack(buf[:n]); err != nil {
		t.Fatal(err)
	}
	if m.Id != 77 || len(m.Answer) != 1 || !m.Answer[0].(*mdns.A).A.Equal(net.IPv4(198, 51, 100, 7)) {
		t.Errorf("application got %v", m)
	}
	if tunnelDials.Load() != 1 {
		t.Errorf("%d tunnel dials, want 1", tunnelDials.Load())
	}
	want := map[string]int64{"source": 0, "id": 1, "question": 1, "malformed": 1, "late": 0}
	if got := st.droppedAnswers(t); !maps.Equal(got, want) {
		t.Errorf("dropped answers %v, want %v", got, want)
	}
}
