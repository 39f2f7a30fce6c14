package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/snowgate/snowgate/gateway"
	"github.com/snowgate/snowgate/portalmock"
)

// Ids of portalConfig the scenarios refer to.
const (
	siteA         = "5173e000-0000-4000-8000-0000000000e2"
	gateway1ID    = "9a7e0000-0000-4000-8000-0000000000e1"
	gateway2ID    = "9a7e0000-0000-4000-8000-0000000000e2"
	gateway3ID    = "9a7e0000-0000-4000-8000-0000000000e3"
	legacyID      = "c11e0000-0000-4000-8000-0000000000e3"
	resNetwork    = "2e50c000-0000-4000-8000-0000000000e1" // 203.0.113.0/24, site A
	resCorpWeb    = "2e50c000-0000-4000-8000-0000000000e2" // *.corp.test, site A
	resSiteB      = "2e50c000-0000-4000-8000-0000000000e3" // 203.0.113.101/32, site B
	resWebPing    = "2e50c000-0000-4000-8000-0000000000e4" // 2001:db8:3::102/128: tcp/80, icmp
	resWebOnly    = "2e50c000-0000-4000-8000-0000000000e5" // 2001:db8:3::103/128: tcp/80
	policyNetwork = "9011c000-0000-4000-8000-0000000000e1"
)

// Extra addresses of the resource host (addResourceAddrs) and the port of its whoami server.
var (
	siteBAddr   = netip.MustParseAddr("203.0.113.101")
	webPingAddr = netip.MustParseAddr("2001:db8:3::102")
	webOnlyAddr = netip.MustParseAddr("2001:db8:3::103")
)

const whoamiPort = 8081

// proxyRange is the DNS resources' IPv4 proxy range (reference/firezone.md §4).
var proxyRange = netip.MustParsePrefix("100.96.0.0/11")

// TestPortalConfigParses checks portalConfig against the portal's own parser, without root.
func TestPortalConfigParses(t *testing.T) {
	if _, err := portalmock.ParseFile([]byte(portalConfig)); err != nil {
		t.Fatal(err)
	}
}

// addResourceAddrs gives the resource host the extra addresses of the overlap and filter scenarios, and
// starts its whoami server: port 8081 answers every request with the requester's address (the gateway's
// address on the resources network, since gateways masquerade), which tells which gateway carried a flow.
func (l *lab) addResourceAddrs() {
	l.t.Helper()
	dev := l.Resource.Iface(l.Resources).Name
	cmds := [][]string{{"addr", "add", siteBAddr.String() + "/24", "dev", dev}}
	if l.Resources.Prefix6().IsValid() {
		for _, a := range []netip.Addr{webPingAddr, webOnlyAddr} {
			cmds = append(cmds, []string{"-6", "addr", "add", a.String() + "/64", "dev", dev, "nodad"})
		}
	}
	for _, c := range cmds {
		if out, err := l.run(l.Resource.Namespace, 5*time.Second, "ip", c...); err != nil {
			l.t.Fatalf("ip %s: %v: %s", strings.Join(c, " "), err, out)
		}
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintln(w, host)
	})
	for _, network := range []string{"tcp4", "tcp6"} {
		addr := fmt.Sprintf("0.0.0.0:%d", whoamiPort)
		if network == "tcp6" {
			if !l.Resources.Prefix6().IsValid() {
				continue
			}
			addr = fmt.Sprintf("[::]:%d", whoamiPort)
		}
		ln, err := l.Resource.Namespace.ListenTCP(network, addr)
		if err != nil {
			l.t.Fatalf("whoami server: %v", err)
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		l.t.Cleanup(func() { _ = srv.Close() })
	}
}

// whoami fetches the whoami page of addr from the client's namespace (retrying while the flow comes up) and
// returns the source address the resource saw.
func (l *lab) whoami(addr netip.Addr) netip.Addr {
	l.t.Helper()
	url := "http://" + netip.AddrPortFrom(addr, whoamiPort).String() + "/"
	out := l.must(20*time.Second, "curl", "-fsS", "--max-time", "5", url)
	a, err := netip.ParseAddr(strings.TrimSpace(out))
	if err != nil {
		l.t.Fatalf("whoami %s: %q", url, out)
	}
	return a
}

// gatewayStatus reads gateway p's status document.
func (l *lab) gatewayStatus(p *proc) (gateway.Status, error) {
	var st gateway.Status
	out, err := l.statusJSON(p)
	if err != nil {
		return st, fmt.Errorf("status: %v: %s", err, out)
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, fmt.Errorf("status: %v: %s", err, out)
	}
	return st, nil
}

// waitGatewayJoined waits until gateway p's portal session is joined.
func (l *lab) waitGatewayJoined(p *proc, timeout time.Duration) {
	l.t.Helper()
	err := eventually(timeout, func() error {
		st, err := l.gatewayStatus(p)
		if err != nil {
			return err
		}
		if st.Portal != "joined" {
			return fmt.Errorf("%s: portal %s", p.name, st.Portal)
		}
		return nil
	})
	if err != nil {
		l.t.Fatalf("%s did not join the portal: %v", p.name, err)
	}
}

// resourceGateway returns the gateway that carries resource id's flow on client c ("" without a flow that
// is up).
func (l *lab) resourceGateway(c *proc, id string) (string, error) {
	st, err := l.clientStatus(c)
	if err != nil {
		return "", err
	}
	for _, r := range st.Resources {
		if r.ID == id {
			if r.Flow != "up" {
				return "", fmt.Errorf("resource %s: flow %s", id, r.Flow)
			}
			return r.Gateway, nil
		}
	}
	return "", fmt.Errorf("resource %s unknown to the client", id)
}

// admin calls the portal's admin API from the portal host and returns the HTTP status.
func (l *lab) admin(method, path string) (int, error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return l.Portal.Namespace.DialTCP(ctx, network, addr)
	}}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://198.18.0.100:8082"+path, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// pinger is a `ping -D` running in the client's namespace; its replies' receive times tell when traffic
// flowed.
type pinger struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  strings.Builder
	done chan struct{}
}

// startPing pings addr every interval from the client's namespace until stop (at most limit).
func (l *lab) startPing(addr netip.Addr, interval, limit time.Duration) *pinger {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", l.Client.Namespace.Name(), "ping", "-D", "-n",
		"-i", strconv.FormatFloat(interval.Seconds(), 'f', 3, 64), "-W", "1", addr.String())
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGINT) }
	cmd.WaitDelay = 2 * time.Second
	p := &pinger{cmd: cmd, done: make(chan struct{})}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		l.t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		cancel()
		l.t.Fatal(err)
	}
	go func() {
		defer close(p.done)
		defer cancel()
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.mu.Lock()
			p.out.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
		}
		_ = cmd.Wait()
	}()
	l.t.Cleanup(p.stop)
	return p
}

// stop ends the ping (SIGINT) and waits for it.
func (p *pinger) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	<-p.done
}

var replyRe = regexp.MustCompile(`^\[(\d+)\.(\d+)\] \d+ bytes from .*icmp_seq=(\d+)`)

// replies returns the receive times of the echo replies so far, in order.
func (p *pinger) replies() []time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []time.Time
	for _, line := range strings.Split(p.out.String(), "\n") {
		m := replyRe.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		sec, _ := strconv.ParseInt(m[1], 10, 64)
		frac := m[2]
		for len(frac) < 9 {
			frac += "0"
		}
		nsec, _ := strconv.ParseInt(frac[:9], 10, 64)
		out = append(out, time.Unix(sec, nsec))
	}
	return out
}

// output is everything ping printed.
func (p *pinger) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// waitReplies waits until the ping has n replies after since.
func (p *pinger) waitReplies(t *testing.T, since time.Time, n int, timeout time.Duration) {
	t.Helper()
	err := eventually(timeout, func() error {
		got := 0
		for _, r := range p.replies() {
			if r.After(since) {
				got++
			}
		}
		if got < n {
			return fmt.Errorf("%d replies since %s, want %d", got, since.Format(time.StampMilli), n)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("ping: %v\n%s", err, p.output())
	}
}

// digResult is the parts of dig's output the scenarios check.
type digResult struct {
	status  string   // NOERROR, NXDOMAIN, ...
	flags   []string // qr, rd, ra, tc, ...
	answers int
	rrs     []string // the answer section's records
	opt     bool     // the reply has an OPT record
	raw     string
}

var (
	digHeaderRe = regexp.MustCompile(`status: (\w+),`)
	digFlagsRe  = regexp.MustCompile(`;; flags: ([a-z ]*);.*ANSWER: (\d+),`)
)

// dig runs dig in the client's namespace (the system resolver: the client's stub) and parses its reply.
func (l *lab) dig(args ...string) (digResult, error) {
	out, err := l.run(l.Client.Namespace, 15*time.Second, "dig", append([]string{"+time=2", "+tries=2"}, args...)...)
	r := digResult{raw: out}
	if err != nil {
		return r, fmt.Errorf("dig %s: %v: %s", strings.Join(args, " "), err, out)
	}
	m := digHeaderRe.FindStringSubmatch(out)
	f := digFlagsRe.FindStringSubmatch(out)
	if m == nil || f == nil {
		return r, fmt.Errorf("dig %s: no reply header: %s", strings.Join(args, " "), out)
	}
	r.status, r.flags = m[1], strings.Fields(f[1])
	r.answers, _ = strconv.Atoi(f[2])
	r.opt = strings.Contains(out, "OPT PSEUDOSECTION")
	inAnswer := false
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, ";; ANSWER SECTION:"):
			inAnswer = true
		case inAnswer && strings.TrimSpace(line) == "":
			inAnswer = false
		case inAnswer:
			r.rrs = append(r.rrs, line)
		}
	}
	return r, nil
}

// mustDig is dig that retries until the reply's status is NOERROR.
func (l *lab) mustDig(args ...string) digResult {
	l.t.Helper()
	var r digResult
	err := eventually(15*time.Second, func() error {
		var err error
		r, err = l.dig(args...)
		if err == nil && r.status != "NOERROR" {
			err = fmt.Errorf("dig %s: status %s", strings.Join(args, " "), r.status)
		}
		return err
	})
	if err != nil {
		l.t.Fatal(err)
	}
	return r
}

// addrsOf returns the addresses of A and AAAA records among rrs.
func addrsOf(rrs []string) []netip.Addr {
	var out []netip.Addr
	for _, rr := range rrs {
		f := strings.Fields(rr)
		if len(f) == 5 && (f[3] == "A" || f[3] == "AAAA") {
			if a, err := netip.ParseAddr(f[4]); err == nil {
				out = append(out, a)
			}
		}
	}
	return out
}

// timed logs how long a scenario took (the report's per-scenario wall time).
func timed(t *testing.T) {
	start := time.Now()
	t.Cleanup(func() { t.Logf("wall time %s", time.Since(start).Round(10*time.Millisecond)) })
}
