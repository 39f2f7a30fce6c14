package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/snowgate/snowgate/internal/netlab"
)

// bins is the directory of the binaries TestMain built ("" when the suite is skipped).
var bins string

func TestMain(m *testing.M) {
	flag.Parse()
	if reason := netlab.SkipReason(); reason == "" && !testing.Short() {
		dir, err := os.MkdirTemp("", "snowgate-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			os.Exit(1)
		}
		cmd := exec.Command("go", "build", "-o", dir+"/",
			"../cmd/snowgate-portal", "../cmd/snowgate-relay", "../cmd/snowgate-client", "../cmd/snowgate-gateway")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: building the binaries:", err)
			os.Exit(1)
		}
		bins = dir
		code := m.Run()
		_ = os.RemoveAll(dir)
		os.Exit(code)
	}
	// One line for the whole suite, shown without -v too; each test then skips with the same reason.
	if reason := netlab.SkipReason(); reason != "" {
		fmt.Fprintln(os.Stderr, "e2e: every scenario skipped:", reason)
	} else {
		fmt.Fprintln(os.Stderr, "e2e: every scenario skipped in -short mode")
	}
	os.Exit(m.Run())
}

// skipUnlessLab skips a test that needs root and network namespaces, with one line saying why.
func skipUnlessLab(t *testing.T) {
	t.Helper()
	if reason := netlab.SkipReason(); reason != "" {
		t.Skip("e2e: " + reason)
	}
	if testing.Short() {
		t.Skip("e2e: skipped in -short mode")
	}
}

// Addresses and names of the lab (netlab.StandardTopology) and of its portal configuration.
var (
	portalIP   = netip.MustParseAddr("198.18.0.100")
	resourceIP = netip.MustParseAddr("203.0.113.100")
	resource6  = netip.MustParseAddr("2001:db8:3::100")
)

const (
	adminToken   = "e2e-admin-token"
	relayToken   = "e2e-relay-token"
	clientToken  = "e2e-client-token"
	gatewayToken = "e2e-gateway-token-1"
	gateway2Tok  = "e2e-gateway-token-2"
	gateway3Tok  = "e2e-gateway-token-3"
	legacyToken  = "e2e-legacy-client-token"
	webName      = "web.corp.test"
	// bigFile is the size of the download scenarios' file.
	bigFile = 10 << 20
)

// portalConfig is the lab's portal configuration: one site with two gateways, the resources network as a
// CIDR resource, DNS resources for the resource host's names, and policies for the client. The scenarios of
// dns_test.go, policy_test.go and failover_test.go add: an old-protocol client (legacy_gateway_protocol);
// site B with gateway 3, carrying the more specific 203.0.113.101/32 inside the /24; and two filtered
// IPv6 /128 resources on extra addresses of the resource host (IPv6 because the IPv4 /24 covers the whole
// resources network, and overlapping CIDR resources' filters are the union of theirs: an unfiltered /24
// would allow everything). Every policy is for "*".
const portalConfig = `
admin_token: e2e-admin-token
relays:
  - name: e2e-relays
    token: e2e-relay-token
accounts:
  - id: 7e57ac00-0000-4000-8000-0000000000e2
    slug: e2e
    upstream_dns: ["198.18.0.100"]
    sites:
      - id: 5173e000-0000-4000-8000-0000000000e2
        name: e2e-site
      - id: 5173e000-0000-4000-8000-0000000000eb
        name: e2e-site-b
    clients:
      - id: c11e0000-0000-4000-8000-0000000000e2
        name: client-1
        token: e2e-client-token
      - id: c11e0000-0000-4000-8000-0000000000e3
        name: legacy-client
        token: e2e-legacy-client-token
        legacy_gateway_protocol: true
    gateways:
      - id: 9a7e0000-0000-4000-8000-0000000000e1
        name: gateway-1
        site: 5173e000-0000-4000-8000-0000000000e2
        token: e2e-gateway-token-1
      - id: 9a7e0000-0000-4000-8000-0000000000e2
        name: gateway-2
        site: 5173e000-0000-4000-8000-0000000000e2
        token: e2e-gateway-token-2
      - id: 9a7e0000-0000-4000-8000-0000000000e3
        name: gateway-3
        site: 5173e000-0000-4000-8000-0000000000eb
        token: e2e-gateway-token-3
    resources:
      - id: 2e50c000-0000-4000-8000-0000000000e1
        type: cidr
        name: resources network
        address: 203.0.113.0/24
        sites: [5173e000-0000-4000-8000-0000000000e2]
      - id: 2e50c000-0000-4000-8000-0000000000e2
        type: dns
        name: corp web
        address: "*.corp.test"
        sites: [5173e000-0000-4000-8000-0000000000e2]
      - id: 2e50c000-0000-4000-8000-0000000000e3
        type: cidr
        name: resource host via site B
        address: 203.0.113.101/32
        sites: [5173e000-0000-4000-8000-0000000000eb]
      - id: 2e50c000-0000-4000-8000-0000000000e4
        type: cidr
        name: web and ping only
        address: 2001:db8:3::102/128
        sites: [5173e000-0000-4000-8000-0000000000e2]
        filters:
          - {protocol: tcp, port_range_start: 80, port_range_end: 80}
          - {protocol: icmp}
      - id: 2e50c000-0000-4000-8000-0000000000e5
        type: cidr
        name: web only
        address: 2001:db8:3::103/128
        sites: [5173e000-0000-4000-8000-0000000000e2]
        filters:
          - {protocol: tcp, port_range_start: 80, port_range_end: 80}
    policies:
      - id: 9011c000-0000-4000-8000-0000000000e1
        client: "*"
        resource: 2e50c000-0000-4000-8000-0000000000e1
      - id: 9011c000-0000-4000-8000-0000000000e2
        client: "*"
        resource: 2e50c000-0000-4000-8000-0000000000e2
      - id: 9011c000-0000-4000-8000-0000000000e3
        client: "*"
        resource: 2e50c000-0000-4000-8000-0000000000e3
      - id: 9011c000-0000-4000-8000-0000000000e4
        client: "*"
        resource: 2e50c000-0000-4000-8000-0000000000e4
      - id: 9011c000-0000-4000-8000-0000000000e5
        client: "*"
        resource: 2e50c000-0000-4000-8000-0000000000e5
`

// lab is one end-to-end world: netlab's standard topology with the snowgate binaries running in it as
// separate processes, and the resource host's services (HTTP, DNS) in-process inside its namespace.
type lab struct {
	t *testing.T
	*netlab.Standard
	dir   string
	procs []*proc
	// expected are log lines (regexps) of WARN or ERROR level a scenario expects; any other fails it.
	expected []*regexp.Regexp
	payload  []byte // the big file the HTTP server serves
	// gwHosts are the hosts of gateways 2 and 3, created on first use (gatewayHost).
	gwHosts map[int]*netlab.Host
}

// proc is one process of the lab.
type proc struct {
	name string
	ns   *netlab.Namespace
	cmd  *exec.Cmd
	log  *lockedBuffer
	done chan struct{}
	err  error
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// newLab builds the topology, starts the resource host's services and the portal (with portalConfig) and
// relays.
func newLab(t *testing.T, opts netlab.StandardOptions) *lab {
	t.Helper()
	return newLabConfig(t, opts, portalConfig)
}

// newLabConfig is newLab with another portal configuration (a variant of portalConfig).
func newLabConfig(t *testing.T, opts netlab.StandardOptions, config string) *lab {
	t.Helper()
	skipUnlessLab(t)
	return newLabOn(t, netlab.StandardTopology(t, opts), config)
}

// newLabOn is newLabConfig on a topology the caller built with netlab's primitives (e.g. more routers); it
// must have every node of netlab.Standard, with the standard addresses of the portal, relays and resources.
func newLabOn(t *testing.T, s *netlab.Standard, config string) *lab {
	t.Helper()
	l := &lab{t: t, Standard: s, dir: t.TempDir()}
	l.payload = make([]byte, bigFile)
	for i := range l.payload {
		l.payload[i] = byte(i*7 + i>>11)
	}
	l.startResourceServices()
	cfg := filepath.Join(l.dir, "portal.yaml")
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	// The gateway resolves DNS resource names with the resource host's DNS server.
	l.resolvConf(l.Gateway.Namespace, "nameserver 203.0.113.100\n")
	l.resolvConf(l.Client.Namespace, "nameserver 198.18.0.100\n")
	l.startPortal()
	l.startRelay(1)
	l.startRelay(2)
	t.Cleanup(l.cleanup)
	return l
}

// startPortal starts the portal with the lab's configuration and waits until it listens.
func (l *lab) startPortal() *proc {
	p := l.start(l.Portal.Namespace, "portal", nil, "snowgate-portal", "--config", filepath.Join(l.dir, "portal.yaml"),
		"--listen", "198.18.0.100:8081", "--admin-addr", "198.18.0.100:8082", "--metrics-addr", "")
	l.waitTCP(l.Portal.Namespace, "198.18.0.100:8081")
	return p
}

// startRelay starts relay n (1 or 2) as an operator would.
func (l *lab) startRelay(n int) *proc {
	h := l.Relay1
	if n == 2 {
		h = l.Relay2
	}
	env := []string{"SNOWGATE_API_URL=ws://198.18.0.100:8081", "SNOWGATE_TOKEN=" + relayToken,
		"PUBLIC_IP4_ADDR=" + h.Addr4().String(), "HEALTH_CHECK_ADDR=" + h.Addr4().String() + ":8080",
		"SNOWGATE_NAME=relay-" + strconv.Itoa(n),
		// A lab relay need not keep allocations alive for 30 s on SIGTERM: the allocations of a roamed or killed
		// client are never released and would hold the test's clean-up for the whole drain.
		"DRAIN_TIMEOUT=1s"}
	if a := h.Addr6(); a.IsValid() {
		env = append(env, "PUBLIC_IP6_ADDR="+a.String())
	}
	p := l.start(h.Namespace, "relay-"+strconv.Itoa(n), env, "snowgate-relay")
	l.waitHTTP(h.Namespace, "http://"+h.Addr4().String()+":8080/readyz")
	return p
}

// startGateway starts gateway n: 1 and 2 are the site's two gateways, 3 is site B's. Gateway 1 runs on the
// gateway host; 2 and 3 on hosts of their own (gatewayHost), because a kernel-mode gateway owns its network
// namespace's tunnel routing table, policy rules and nftables table (internal/hostfwd: one gateway per
// namespace). All use port 0.
func (l *lab) startGateway(n int, extra ...string) *proc {
	tok, name, tunName := gatewayToken, "gateway-1", "tun-sg-gw1"
	switch n {
	case 2:
		tok, name, tunName = gateway2Tok, "gateway-2", "tun-sg-gw2"
	case 3:
		tok, name, tunName = gateway3Tok, "gateway-3", "tun-sg-gw3"
	}
	env := []string{"SNOWGATE_API_URL=ws://198.18.0.100:8081", "SNOWGATE_TOKEN=" + tok, "SNOWGATE_NAME=" + name,
		"SNOWGATE_ID_FILE=" + filepath.Join(l.dir, name+"-id"), "LOG_LEVEL=info"}
	args := append([]string{"--tun-name", tunName, "--status-socket", l.socket(name)}, extra...)
	return l.start(l.gatewayHost(n).Namespace, name, env, "snowgate-gateway", args...)
}

// gatewayHost returns the host of gateway n, creating hosts 2 and 3 on first use: on the gateway LAN
// (198.51.100.2n) and the resources network (203.0.113.n, 2001:db8:3::n), resolving with the resource
// host's DNS server like the gateway host.
func (l *lab) gatewayHost(n int) *netlab.Host {
	if n == 1 {
		return l.Gateway
	}
	if h := l.gwHosts[n]; h != nil {
		return h
	}
	lan := []string{fmt.Sprintf("198.51.100.%d", 20+n)}
	res := []string{fmt.Sprintf("203.0.113.%d", n)}
	if l.Resources.Prefix6().IsValid() {
		lan = append(lan, fmt.Sprintf("2001:db8:2::%d", 20+n))
		res = append(res, fmt.Sprintf("2001:db8:3::%d", n))
	}
	h := l.Lab.Host(fmt.Sprintf("gateway%d", n), l.GatewayLAN, lan...)
	l.Lab.Attach(h, l.Resources, res...)
	l.resolvConf(h.Namespace, "nameserver 203.0.113.100\n")
	if l.gwHosts == nil {
		l.gwHosts = map[int]*netlab.Host{}
	}
	l.gwHosts[n] = h
	return h
}

// startClient starts the client in kernel mode with resolv.conf control.
func (l *lab) startClient(extra ...string) *proc { return l.startClientToken(clientToken, extra...) }

// startClientToken is startClient with another token (another client of the configuration, or a bad one).
func (l *lab) startClientToken(token string, extra ...string) *proc {
	env := []string{"SNOWGATE_API_URL=ws://198.18.0.100:8081", "SNOWGATE_TOKEN=" + token,
		"SNOWGATE_ID_FILE=" + filepath.Join(l.dir, "client-id"), "SNOWGATE_DNS_CONTROL=etc-resolv-conf",
		"SNOWGATE_RESOLV_CONF=" + l.resolvConfPath(l.Client.Namespace), "LOG_LEVEL=info"}
	args := append([]string{"--status-socket", l.socket("client")}, extra...)
	return l.start(l.Client.Namespace, "client", env, "snowgate-client", args...)
}

func (l *lab) socket(name string) string { return filepath.Join(l.dir, name+".sock") }

// start runs a binary of the suite in ns with env, logging to a buffer the failure report shows.
func (l *lab) start(ns *netlab.Namespace, name string, env []string, bin string, args ...string) *proc {
	l.t.Helper()
	full := append([]string{"netns", "exec", ns.Name(), filepath.Join(bins, bin)}, args...)
	cmd := exec.Command("ip", full...)
	cmd.Env = append(os.Environ(), env...)
	p := &proc{name: name, ns: ns, cmd: cmd, log: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.log, p.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		l.t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	l.procs = append(l.procs, p)
	return p
}

// signal sends sig to the process (ip netns exec execs the binary, so the pid is the binary's).
func (p *proc) signal(sig syscall.Signal) { _ = p.cmd.Process.Signal(sig) }

// wait waits for the process to exit and returns its exit code (-1 if it did not within timeout).
func (p *proc) wait(timeout time.Duration) int {
	select {
	case <-p.done:
		var ee *exec.ExitError
		if errors.As(p.err, &ee) {
			return ee.ExitCode()
		}
		if p.err != nil {
			return -1
		}
		return 0
	case <-time.After(timeout):
		return -1
	}
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// expect declares WARN/ERROR log lines the scenario expects (regexps).
func (l *lab) expect(patterns ...string) {
	for _, p := range patterns {
		l.expected = append(l.expected, regexp.MustCompile(p))
	}
}

var levelRe = regexp.MustCompile(`\b(WARN|ERROR)\b`)

// cleanup stops every process (SIGTERM, then SIGKILL), checks that no unexpected WARN or ERROR was logged,
// and on failure prints every log and the daemons' status.
func (l *lab) cleanup() {
	if l.t.Failed() {
		l.report()
	}
	// Stop in dependency order: clients and gateways first, then relays, the portal last (a portal gone
	// before its peers would make them log reconnect warnings).
	for _, group := range [][]string{{"client"}, {"gateway-1", "gateway-2", "gateway-3"}, {"relay-1", "relay-2"}, {"portal"}} {
		for _, p := range l.procs {
			if slices.Contains(group, p.name) && p.running() {
				p.signal(syscall.SIGTERM)
			}
		}
		for _, p := range l.procs {
			if slices.Contains(group, p.name) && p.wait(10*time.Second) == -1 && p.running() {
				p.signal(syscall.SIGKILL)
				p.wait(5 * time.Second)
			}
		}
	}
	if l.t.Failed() {
		return
	}
	for _, p := range l.procs {
		for _, line := range strings.Split(p.log.String(), "\n") {
			if !levelRe.MatchString(line) {
				continue
			}
			if !slices.ContainsFunc(l.expected, func(re *regexp.Regexp) bool { return re.MatchString(line) }) {
				l.t.Errorf("%s logged an unexpected warning or error:\n%s", p.name, line)
			}
		}
	}
	if l.t.Failed() {
		l.report()
	}
}

// report prints every process's log and the daemons' status.
func (l *lab) report() {
	for _, name := range []string{"client", "gateway-1", "gateway-2", "gateway-3"} {
		for _, p := range l.procs {
			if p.name == name && p.running() {
				out, err := l.statusJSON(p)
				l.t.Logf("---- %s status --json ----\n%s%v", name, out, errOrNil(err))
				break
			}
		}
	}
	for _, p := range l.procs {
		l.t.Logf("---- log of %s ----\n%s", p.name, p.log.String())
	}
	nss := []*netlab.Namespace{l.Client.Namespace, l.Gateway.Namespace}
	for _, n := range []int{2, 3} {
		if h := l.gwHosts[n]; h != nil {
			nss = append(nss, h.Namespace)
		}
	}
	for _, ns := range nss {
		var b strings.Builder
		for _, args := range [][]string{{"-br", "addr"}, {"rule"}, {"-6", "rule"}, {"route", "show", "table", "all"}} {
			out, _ := l.run(ns, 5*time.Second, "ip", args...)
			fmt.Fprintf(&b, "$ ip %s\n%s", strings.Join(args, " "), out)
		}
		out, _ := l.run(ns, 5*time.Second, "nft", "list", "ruleset")
		fmt.Fprintf(&b, "$ nft list ruleset\n%s", out)
		l.t.Logf("---- network state of %s ----\n%s", ns.Node(), b.String())
	}
}

func errOrNil(err error) string {
	if err == nil {
		return ""
	}
	return "\n(" + err.Error() + ")"
}

// statusJSON runs `<binary> status --json` the way an operator would.
func (l *lab) statusJSON(p *proc) (string, error) {
	bin := "snowgate-client"
	if strings.HasPrefix(p.name, "gateway") {
		bin = "snowgate-gateway"
	}
	out, err := exec.Command(filepath.Join(bins, bin), "status", "--json", "--socket", l.socket(p.name)).CombinedOutput()
	return string(out), err
}

// resolvConf gives a namespace its own resolv.conf (ip netns exec bind-mounts /etc/netns/<ns>/resolv.conf).
// The file lives in the lab's directory (resolvConfPath) and /etc/netns/<ns>/resolv.conf is a symbolic link to
// it: the client is pointed at that file (SNOWGATE_RESOLV_CONF) and keeps its backup next to it. Through
// /etc/resolv.conf the backup would be the host's /etc/resolv.conf.snowgate-backup (ip netns exec binds only
// resolv.conf itself), shared by every lab's client and by other test binaries running at the same time.
func (l *lab) resolvConf(ns *netlab.Namespace, content string) {
	dir := filepath.Join("/etc/netns", ns.Name())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.WriteFile(l.resolvConfPath(ns), []byte(content), 0o644); err != nil {
		l.t.Fatal(err)
	}
	if err := os.Symlink(l.resolvConfPath(ns), filepath.Join(dir, "resolv.conf")); err != nil {
		l.t.Fatal(err)
	}
}

// resolvConfPath is the file behind ns's /etc/resolv.conf.
func (l *lab) resolvConfPath(ns *netlab.Namespace) string {
	return filepath.Join(l.dir, "resolv-"+ns.Node()+".conf")
}

// run runs a command in ns and returns its combined output.
func (l *lab) run(ns *netlab.Namespace, timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name(), name}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// eventually retries f until it succeeds or the timeout passes, and returns its last error.
func eventually(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitTCP waits until something listens on addr in ns.
func (l *lab) waitTCP(ns *netlab.Namespace, addr string) {
	l.t.Helper()
	err := eventually(10*time.Second, func() error {
		c, err := ns.DialTCP(context.Background(), "tcp", addr)
		if err == nil {
			_ = c.Close()
		}
		return err
	})
	if err != nil {
		l.t.Fatalf("nothing listens on %s: %v", addr, err)
	}
}

// waitHTTP waits until url answers 200 from ns.
func (l *lab) waitHTTP(ns *netlab.Namespace, url string) {
	l.t.Helper()
	err := eventually(15*time.Second, func() error {
		out, err := l.run(ns, 3*time.Second, "curl", "-fsS", "--max-time", "2", url)
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	if err != nil {
		l.t.Fatalf("%s not ready: %v", url, err)
	}
}

// startResourceServices runs the resource host's HTTP server (the demo page and the big file) and its DNS
// server (the private names), and a public DNS server on the portal host, in-process inside the namespaces.
func (l *lab) startResourceServices() {
	t := l.t
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "resource page for %s\n", r.Host)
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(l.payload)))
		_, _ = w.Write(l.payload)
	})
	for _, addr := range []string{"0.0.0.0:80", "[::]:80"} {
		network := "tcp4"
		if strings.HasPrefix(addr, "[") {
			network = "tcp6"
		}
		ln, err := l.Resource.Namespace.ListenTCP(network, addr)
		if err != nil {
			if strings.HasPrefix(addr, "[") {
				continue // IPv4-only lab
			}
			t.Fatalf("resource HTTP server: %v", err)
		}
		// 30 s: with 20 % loss each way (TestDownloadPacketLoss) TCP's retransmissions of a request can take
		// more than 5 s, and a server giving up on its header makes curl see an empty reply.
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 30 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() { _ = srv.Close() })
	}
	private := map[string][]netip.Addr{
		webName + ".":         {resourceIP, resource6},
		"files.corp.test.":    {resourceIP, resource6},
		"v4only.corp.test.":   {resourceIP},
		"nothing.corp.test.":  nil,
		"public.example.net.": {netip.MustParseAddr("198.18.0.100")},
	}
	l.dnsServer(l.Resource.Namespace, "203.0.113.100:53", private)
	l.dnsServer(l.Portal.Namespace, "198.18.0.100:53", map[string][]netip.Addr{
		"public.example.net.": {netip.MustParseAddr("198.18.0.100")},
	})
}

// dnsServer serves names (A/AAAA) on addr in ns over UDP and TCP; a TXT query for big.<anything> gets an
// answer over 1212 bytes.
func (l *lab) dnsServer(ns *netlab.Namespace, addr string, names map[string][]netip.Addr) {
	t := l.t
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		if opt := q.IsEdns0(); opt != nil {
			m.SetEdns0(opt.UDPSize(), opt.Do()) // RFC 6891: an EDNS query gets an OPT record back
		}
		if len(q.Question) == 1 {
			qn := strings.ToLower(q.Question[0].Name)
			qt := q.Question[0].Qtype
			addrs, known := names[qn]
			switch {
			case qt == dns.TypeTXT && strings.HasPrefix(qn, "big."):
				for i := range 12 {
					m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: qn, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60},
						Txt: []string{strings.Repeat(strconv.Itoa(i%10), 200)}}) // a string holds at most 255 bytes
				}
			case !known:
				m.Rcode = dns.RcodeNameError
			default:
				for _, a := range addrs {
					if a.Is4() && qt == dns.TypeA {
						m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: qn, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: a.AsSlice()})
					}
					if a.Is6() && qt == dns.TypeAAAA {
						m.Answer = append(m.Answer, &dns.AAAA{Hdr: dns.RR_Header{Name: qn, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: 60}, AAAA: a.AsSlice()})
					}
				}
			}
		}
		_ = w.WriteMsg(m)
	})
	pc, err := ns.ListenUDP("udp", addr)
	if err != nil {
		t.Fatalf("DNS server %s: %v", addr, err)
	}
	ln, err := ns.ListenTCP("tcp", addr)
	if err != nil {
		t.Fatalf("DNS server %s: %v", addr, err)
	}
	udp := &dns.Server{PacketConn: pc, Handler: h}
	tcp := &dns.Server{Listener: ln, Handler: h}
	go func() { _ = udp.ActivateAndServe() }()
	go func() { _ = tcp.ActivateAndServe() }()
	t.Cleanup(func() { _ = udp.Shutdown(); _ = tcp.Shutdown() })
}

// sha256Hex is the hex SHA-256 of b.
func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// download fetches url with curl in the client's namespace and checks the big file's checksum.
func (l *lab) download(url string, timeout time.Duration) error {
	out, err := l.run(l.Client.Namespace, timeout, "sh", "-c",
		fmt.Sprintf("curl -fsS --max-time %d %s | sha256sum", int(timeout.Seconds()), url))
	if err != nil {
		return fmt.Errorf("download %s: %v: %s", url, err, out)
	}
	if got := strings.Fields(out); len(got) == 0 || got[0] != sha256Hex(l.payload) {
		return fmt.Errorf("download %s: sha256 %q, want %s", url, out, sha256Hex(l.payload))
	}
	return nil
}
