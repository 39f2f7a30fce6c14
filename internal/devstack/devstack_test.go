package devstack

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/snowgate/snowgate/client"
	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/internal/tunnel"
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

func clientStatus(t *testing.T, c *Client) client.Status {
	t.Helper()
	b, err := tunnel.FetchStatus(context.Background(), c.StatusSocket)
	if err != nil {
		t.Fatal(err)
	}
	var st client.Status
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("status %s: %v", b, err)
	}
	return st
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
			s := clientStatus(t, c)
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
