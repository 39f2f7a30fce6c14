package devstack

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/portalmock"
)

func startStack(t *testing.T, o Options) *Stack {
	t.Helper()
	tel, err := telemetry.Setup(context.Background(), telemetry.Options{Component: "devstack", LogLevel: "info", Output: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	o.Logger = tel.Logger
	o.StateDir = t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := Start(ctx, o)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := st.Stop(); err != nil {
			t.Errorf("stack stopped with: %v", err)
		}
	})
	if err := st.WaitReady(ctx, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	return st
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// fetch gets u through the client's SOCKS5 proxy (names resolved by the proxy, i.e. by the client's stub).
func fetch(t *testing.T, c *Client, u string) string {
	t.Helper()
	proxy, _ := url.Parse("socks5h://" + c.SOCKS.String())
	hc := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxy)}, Timeout: 20 * time.Second}
	resp, err := hc.Get(u)
	if err != nil {
		t.Fatalf("GET %s through %s: %v", u, c.Name, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", u, resp.Status)
	}
	return string(b)
}

func TestReachResourceInProcess(t *testing.T) {
	for _, tc := range []struct {
		name    string
		relayed bool
		path    string
	}{
		{"direct", false, ""},
		{"relayed", true, "relay"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := startStack(t, Options{Relays: 1, Clients: 1, Relayed: tc.relayed})
			c := st.Clients[0]
			if body := fetch(t, c, "http://"+DemoName+"/by-name"); !strings.Contains(body, DemoPage) {
				t.Fatalf("by DNS name: %q", body)
			}
			if body := fetch(t, c, "http://"+DemoAddr4.String()+"/by-address"); !strings.Contains(body, DemoPage) {
				t.Fatalf("by CIDR address: %q", body)
			}
			if curl, err := exec.LookPath("curl"); err == nil {
				out, err := exec.Command(curl, "-sS", "--max-time", "20", "--socks5-hostname", c.SOCKS.String(), "http://"+DemoName+"/curl").CombinedOutput()
				if err != nil || !strings.Contains(string(out), DemoPage) {
					t.Fatalf("curl --socks5-hostname: %v\n%s", err, out)
				}
			}
			s, err := c.Status(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if len(s.Connections) != 1 || s.Connections[0].State != "established" {
				t.Fatalf("status connections %+v", s.Connections)
			}
			conn := s.Connections[0]
			if tc.relayed && (conn.Path != "relay" || conn.RelayID == "") {
				t.Fatalf("relayed stack: path %q via %q", conn.Path, conn.RelayID)
			}
			if !tc.relayed && !conn.Direct {
				t.Fatalf("direct stack: path %q", conn.Path)
			}
		})
	}
}

// Check fails when a client's path is not the one expected of it: a client that may use direct paths
// connects directly on loopback, so expecting a relay of it must fail (and the direct expectation pass).
func TestCheckVerifiesPath(t *testing.T) {
	st := startStack(t, Options{Relays: 1, Clients: 1})
	results, err := st.Check(t.Context())
	if err != nil || len(results) != 1 || !strings.HasPrefix(results[0].Path, "direct") || results[0].First <= 0 {
		t.Fatalf("direct client: %v %+v", err, results)
	}
	st.Clients[0].Relayed = true // what the check expects, not what the client does
	results, err = st.Check(t.Context())
	if err == nil || len(results) != 1 || results[0].Err == nil || !strings.Contains(results[0].Err.Error(), "relay-only client") {
		t.Fatalf("relay expected of a direct client: %v %+v", err, results)
	}
	if !strings.HasPrefix(results[0].String(), "FAIL client-1 (relay-only)") {
		t.Fatalf("result line %q", results[0])
	}
}

// A relay-only client beside a direct one: one stack, both paths (what --check runs).
func TestMixedPaths(t *testing.T) {
	st := startStack(t, Options{Relays: 2, Clients: 2, ClientRelayed: []bool{false, true}})
	results, err := st.Check(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(results[0].Path, "direct") || !strings.HasPrefix(results[1].Path, "relayed via relay-") {
		t.Fatalf("paths %q, %q", results[0].Path, results[1].Path)
	}
}

func TestRoster(t *testing.T) {
	r, err := newRoster(nil, 2, 4)
	if err != nil {
		t.Fatal(err)
	}
	if r.relayToken != RelayToken || r.gatewayTok != GatewayToken1 || r.gatewayName != "gateway-1" || len(r.clients) != 4 {
		t.Fatalf("roster %+v", r)
	}
	for i, c := range r.clients {
		if want := fmt.Sprintf("dev-client-token-%d", i+1); c.Token != want || c.Name != fmt.Sprintf("client-%d", i+1) {
			t.Errorf("client %d: %+v, want token %s", i, c, want)
		}
	}
	// The portal accepts the extended configuration.
	if _, err := portalmock.New(portalmock.Config{File: r.file}); err != nil {
		t.Fatalf("extended configuration: %v", err)
	}
	if _, err := newRoster(nil, 0, MaxClients+1); err == nil {
		t.Error("more than MaxClients clients accepted")
	}
	f := portalmock.DefaultFile()
	if _, err := newRoster(f, 1, 3); err == nil || !strings.Contains(err.Error(), "3 clients wanted") {
		t.Errorf("a file with 2 clients asked for 3: %v", err)
	}
	if len(f.Accounts[0].Clients) != 2 {
		t.Errorf("newRoster changed the caller's file")
	}
	f.Relays = nil
	if _, err := newRoster(f, 1, 1); err == nil {
		t.Error("relays without a relay token accepted")
	}
}

// A busy listen address moves to a free port with fallback, and fails without.
func TestListenFallback(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	st := &Stack{}
	if _, err := st.listen("portal", busy.Addr().String(), false); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("without fallback: %v", err)
	}
	ln, err := st.listen("portal", busy.Addr().String(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if len(st.Moved) != 1 || st.Moved[0].Got.String() != ln.Addr().String() || ln.Addr().String() == busy.Addr().String() {
		t.Fatalf("moved %+v, listening on %s", st.Moved, ln.Addr())
	}
	addr, err := st.freeSOCKS("client-1 SOCKS5", busy.Addr().String(), true)
	if err != nil || addr == busy.Addr().String() {
		t.Fatalf("SOCKS5 fallback: %q %v", addr, err)
	}
	if _, err := st.freeSOCKS("client-1 SOCKS5", busy.Addr().String(), false); err == nil {
		t.Fatal("busy SOCKS5 address without fallback accepted")
	}
}
