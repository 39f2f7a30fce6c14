package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pion/turn/v5"

	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/internal/telemetry/teltest"
	"github.com/snowgate/snowgate/portalmock"
	"github.com/snowgate/snowgate/relay"
)

// TestRelayScenario runs a relay the way main does (relay.New, Run, and
// telemetry.Serve for /healthz, /readyz, /metrics) at trace level against an
// in-process mock portal, then: a TURN allocation with portal-derived
// credentials, a refused credential, a refused peer, data both ways. It
// scrapes /metrics after the allocation and after the data (issue 6: the
// relay metrics are there), and asserts that neither the relay's nor the
// portal's output holds the token, the stamp secret or a TURN password.
func TestRelayScenario(t *testing.T) {
	tel, out := teltest.Setup(t, telemetry.Options{Component: "relay"})
	portalTel, portalOut := teltest.Setup(t, telemetry.Options{Component: "portal"})
	pm, err := portalmock.New(portalmock.Config{Logger: portalTel.Logger, MeterProvider: portalTel.MeterProvider})
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := pm.Start(ln); err != nil {
		t.Fatal(err)
	}

	lo := netip.MustParseAddr("127.0.0.1")
	srv, err := relay.New(relay.Config{
		PublicIP4: lo, ListenAddr4: lo, ListenPort: -1, Sockets: 1,
		LowestPort: 61000, HighestPort: 65535,
		AllowPeers:   []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")},
		DrainTimeout: -1,
		Portal:       &relay.PortalConfig{APIURL: pm.URL(), Token: portalmock.DefaultRelayToken, Name: "relay-scenario"},
		Logger:       tel.Logger, MeterProvider: tel.MeterProvider,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	runDone := make(chan error, 1)
	go func() { runDone <- srv.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-runDone; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	healthCtx, stopHealth := context.WithCancel(t.Context())
	defer stopHealth()
	haddr, err := telemetry.Serve(healthCtx, "127.0.0.1:0", srv.Ready, tel.MetricsHandler, tel.Logger)
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + haddr.String()
	deadline := time.Now().Add(10 * time.Second)
	for httpStatus(t, base+"/readyz") != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatalf("relay never ready (joined the portal)\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code := healthcheck([]string{"--addr", haddr.String()}, func(string) string { return "" }, io.Discard); code != 0 {
		t.Fatalf("healthcheck subcommand: exit %d", code)
	}

	user := strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10) + ":scenario-salt"
	pass := relay.FirezonePassword(user, srv.StampSecret())
	// A wrong password first (refused), then the right one.
	if _, err := pionAllocate(t, srv, user, "not-"+pass); err == nil {
		t.Fatal("allocation with a wrong password succeeded")
	}
	relayed, err := pionAllocate(t, srv, user, pass)
	if err != nil {
		t.Fatal(err)
	}
	m := scrape(t, base)
	if v := metricValue(m, `relay_allocations{family="ipv4"`); v != 1 {
		t.Errorf("relay_allocations{family=ipv4} = %v after one allocation\n%s", v, m)
	}
	if v := metricValue(m, `relay_auth_failures_total{reason="bad_password"`); v < 1 {
		t.Errorf("relay_auth_failures_total{reason=bad_password} = %v after a wrong password", v)
	}

	// A refused peer (RFC 1918): pion's client asks for the permission on write.
	_, _ = relayed.WriteTo([]byte("x"), &net.UDPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 9})
	// Data both ways with an allowed peer.
	peer, err := net.ListenPacket("udp4", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	buf := make([]byte, 1500)
	got := false
	for i := 0; i < 50 && !got; i++ {
		if _, err := relayed.WriteTo([]byte("to-peer"), peer.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		_ = peer.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, _, err := peer.ReadFrom(buf)
		got = err == nil && string(buf[:n]) == "to-peer"
	}
	if !got {
		t.Fatal("peer never got data")
	}
	if _, err := peer.WriteTo([]byte("to-client"), relayed.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	_ = relayed.SetReadDeadline(time.Now().Add(3 * time.Second))
	if n, _, err := relayed.ReadFrom(buf); err != nil || string(buf[:n]) != "to-client" {
		t.Fatalf("client read %q: %v", buf[:n], err)
	}
	waitMetrics := time.Now().Add(3 * time.Second)
	for {
		m = scrape(t, base)
		ok := metricValue(m, `relay_relayed_packets_total{direction="client_to_peer"`) >= 1 &&
			metricValue(m, `relay_relayed_packets_total{direction="peer_to_client"`) >= 1 &&
			metricValue(m, `relay_relayed_bytes_total{direction="peer_to_client"`) >= float64(len("to-client")) &&
			metricValue(m, `relay_peers_refused_total`) >= 1
		if ok {
			break
		}
		if time.Now().After(waitMetrics) {
			t.Fatalf("traffic/refusal metrics missing:\n%s", m)
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = relayed.Close()

	if !strings.Contains(out.String(), "relay listening") {
		t.Fatalf("no relay logs captured:\n%s", out.String())
	}
	if testing.Verbose() {
		t.Logf("relay output:\n%s\nportal output:\n%s", out.String(), portalOut.String())
	}
	for name, o := range map[string]string{"relay": out.String(), "portal": portalOut.String()} {
		t.Run("no secrets in "+name+" output", func(t *testing.T) {
			teltest.AssertNoSecrets(t, o, portalmock.DefaultRelayToken, srv.StampSecret(), pass)
		})
	}
}

// pionAllocate allocates with pion/turn's client; the allocation and client
// close at cleanup.
func pionAllocate(t *testing.T, srv *relay.Server, user, pass string) (net.PacketConn, error) {
	t.Helper()
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	addr := srv.Addr().String()
	client, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: addr, TURNServerAddr: addr, Conn: conn,
		Username: user, Password: pass, Realm: relay.DefaultRealm,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.Close)
	if err := client.Listen(); err != nil {
		t.Fatal(err)
	}
	relayed, err := client.Allocate()
	if err != nil {
		return nil, fmt.Errorf("allocate: %w", err)
	}
	t.Cleanup(func() { _ = relayed.Close() })
	return relayed, nil
}

func httpStatus(t *testing.T, url string) int {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}

func scrape(t *testing.T, base string) string {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, base+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	return string(b)
}

// metricValue returns the value of the first sample line starting with
// prefix (a metric name, optionally with the first labels), or -1.
func metricValue(text, prefix string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(prefix) + `[^ ]* ([0-9.eE+-]+)$`)
	m := re.FindStringSubmatch(text)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return -1
	}
	return v
}
