package devstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// CheckResult is what Check found for one client.
type CheckResult struct {
	Client string
	// Relayed says the client is relay-only: its path must be a relay's.
	Relayed bool
	// First is the first request for the demo page by name: DNS through the client's stub, the flow,
	// ICE and the WireGuard handshake, then HTTP. Again is the same request once the connection is up;
	// ByAddress the demo page by its address in the CIDR resource.
	First, Again, ByAddress time.Duration
	// Path describes the connection's path as the client's status reports it ("direct, host", "relayed via
	// relay-1").
	Path string
	Err  error
}

// String is one line for people: the client, both timings and the path, or what failed.
func (r CheckResult) String() string {
	want := "direct"
	if r.Relayed {
		want = "relay-only"
	}
	if r.Err != nil {
		return fmt.Sprintf("FAIL %s (%s): %v", r.Client, want, r.Err)
	}
	return fmt.Sprintf("ok   %s (%s): demo page by name in %s (first request, sets up the connection), %s again, %s by address; path %s",
		r.Client, want, ms(r.First), ms(r.Again), ms(r.ByAddress), r.Path)
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000)
}

// Check fetches the demo page through every client's SOCKS5 proxy (by name, again, and by its address
// in the CIDR resource) and reads the client's status to verify the connection's path: direct for a
// client that may use direct paths, through a relay for a relay-only one. Clients are checked one after
// the other, so the timings are each client's own. The error joins the failures.
func (st *Stack) Check(ctx context.Context) ([]CheckResult, error) {
	if len(st.Clients) == 0 {
		return nil, errors.New("devstack: check: no clients")
	}
	names := st.relayNames()
	var results []CheckResult
	var errs []error
	for _, c := range st.Clients {
		r := st.checkClient(ctx, c, names)
		results = append(results, r)
		if r.Err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", c.Name, r.Err))
		}
	}
	return results, errors.Join(errs...)
}

func (st *Stack) checkClient(ctx context.Context, c *Client, names map[string]string) CheckResult {
	r := CheckResult{Client: c.Name, Relayed: c.Relayed}
	proxy := &url.URL{Scheme: "socks5h", Host: c.SOCKS.String()} // names resolved by the proxy: the client's stub
	hc := &http.Client{
		Transport: &http.Transport{Proxy: http.ProxyURL(proxy), DisableKeepAlives: true},
		Timeout:   20 * time.Second,
	}
	defer hc.CloseIdleConnections()
	for _, step := range []struct {
		url string
		d   *time.Duration
	}{
		{"http://" + DemoName + "/check", &r.First},
		{"http://" + DemoName + "/check-again", &r.Again},
		{"http://" + DemoAddr4.String() + "/check-by-address", &r.ByAddress},
	} {
		start := time.Now()
		if r.Err = fetchDemo(ctx, hc, step.url); r.Err != nil {
			return r
		}
		*step.d = time.Since(start)
	}
	s, err := c.Status(ctx)
	if err != nil {
		r.Err = err
		return r
	}
	for _, conn := range s.Connections {
		if conn.State != "established" {
			continue
		}
		r.Path = pathOf(conn.Path, conn.RelayID, names)
		switch {
		case c.Relayed && (conn.Path != "relay" || conn.RelayID == ""):
			r.Err = fmt.Errorf("relay-only client, but its connection's path is %q", conn.Path)
		case !c.Relayed && !conn.Direct:
			r.Err = fmt.Errorf("direct paths allowed on loopback, but the connection's path is %s", r.Path)
		}
		return r
	}
	r.Err = fmt.Errorf("the demo page came back, but the status shows no established connection: %+v", s.Connections)
	return r
}

// fetchDemo GETs u and checks that it is the demo page.
func fetchDemo(ctx context.Context, hc *http.Client, u string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if err != nil {
		return fmt.Errorf("GET %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), DemoPage) {
		return fmt.Errorf("GET %s: %s, not the demo page: %q", u, resp.Status, body)
	}
	return nil
}
