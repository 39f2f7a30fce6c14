package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/snowgate/snowgate/internal/netlab"
)

// Addresses of netlab's standard topology and of the benchmark's services in it.
const (
	portalAddr   = "198.18.0.100"
	resourceAddr = "203.0.113.100"
	rgPublic     = "198.18.0.2" // the gateway router's public address
	iperfPort    = 5201         // iperf3 on the resource
	rawPort      = 5202         // iperf3 on the gateway host, port-forwarded by its router (no tunnel)
	wgPort       = 51820        // plain wireguard-go on the gateway host, port-forwarded
)

const (
	adminToken  = "bench-admin-token"
	relayToken  = "bench-relay-token"
	clientToken = "bench-client-token"
)

// gatewayToken is gateway i's portal token.
func gatewayToken(i int) string { return fmt.Sprintf("bench-gateway-token-%d", i) }

// uuid returns a fixed UUID-shaped id for a kind (a short hex tag) and index.
func uuid(kind string, i int) string { return fmt.Sprintf("%8s-0000-4000-8000-%012x", kind, i) }

// portalConfig is the portal's configuration: one account and client, n sites with one gateway each.
// With n == 1 the site's resource is the whole resources network; otherwise site i's resource is
// the single address resourceN(i) (the idle benchmark's hundred gateways).
func portalConfig(n int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "admin_token: %s\nrelays:\n  - name: bench-relays\n    token: %s\naccounts:\n", adminToken, relayToken)
	fmt.Fprintf(&b, "  - id: %s\n    slug: bench\n    upstream_dns: [\"%s\"]\n", uuid("acc00000", 0), portalAddr)
	fmt.Fprintf(&b, "    clients:\n      - id: %s\n        name: client-1\n        token: %s\n", uuid("c1100000", 0), clientToken)
	b.WriteString("    sites:\n")
	for i := range n {
		fmt.Fprintf(&b, "      - id: %s\n        name: site-%d\n", uuid("5173e000", i), i)
	}
	b.WriteString("    gateways:\n")
	for i := range n {
		fmt.Fprintf(&b, "      - id: %s\n        name: gateway-%d\n        site: %s\n        token: %s\n",
			uuid("9a7e0000", i), i, uuid("5173e000", i), gatewayToken(i))
	}
	b.WriteString("    resources:\n")
	for i := range n {
		addr := "203.0.113.0/24"
		if n > 1 {
			addr = resourceN(i) + "/32"
		}
		fmt.Fprintf(&b, "      - id: %s\n        type: cidr\n        name: resource-%d\n        address: %s\n        sites: [%s]\n",
			uuid("2e50c000", i), i, addr, uuid("5173e000", i))
	}
	b.WriteString("    policies:\n")
	for i := range n {
		fmt.Fprintf(&b, "      - id: %s\n        client: \"*\"\n        resource: %s\n", uuid("9011c000", i), uuid("2e50c000", i))
	}
	return b.String()
}

// resourceN is the address of the idle benchmark's resource i (extra addresses of the resource host).
func resourceN(i int) string { return fmt.Sprintf("203.0.113.%d", 101+i) }

// lab is one netlab standard topology with its own cleanup scope.
type lab struct {
	name string
	tb   *benchTB
	*netlab.Standard
	dir   string
	procs []*proc
	// delayers are the NFQUEUE delay helpers of setLatency (kernels without netem).
	delayers []*proc
}

// newLab builds a standard topology; it must be called from the main goroutine (netlab failures
// panic with errFatal). close tears it down.
func newLab(root *benchTB, name string, opts netlab.StandardOptions) *lab {
	tb := &benchTB{dir: root.TempDir()}
	root.Cleanup(tb.close) // in case main fails before the lab's own close
	l := &lab{name: name, tb: tb, dir: tb.dir}
	l.Standard = netlab.StandardTopology(tb, opts)
	return l
}

// start runs a program in ns for the lab's lifetime.
func (l *lab) start(ns *netlab.Namespace, name string, env []string, bin string, args ...string) *proc {
	p, err := startProc(ns, l.dir, name, env, bin, args...)
	if err != nil {
		l.tb.Fatalf("%s: %v", l.name, err)
	}
	l.procs = append(l.procs, p)
	return p
}

// close stops the lab's processes (newest first) and deletes its namespaces.
func (l *lab) close() {
	for i := len(l.procs) - 1; i >= 0; i-- {
		l.procs[i].stop(5 * time.Second)
	}
	l.procs = nil
	l.tb.close()
}

// must fails the run with the process logs' tails if err is not nil.
func (l *lab) must(err error, what string) {
	if err == nil {
		return
	}
	for _, p := range l.procs {
		out := p.log()
		if len(out) > 3000 {
			out = out[len(out)-3000:]
		}
		fmt.Fprintf(os.Stderr, "---- %s/%s (tail) ----\n%s\n", l.name, p.name, out)
	}
	l.tb.Fatalf("%s: %s: %v", l.name, what, err)
}

// forward port-forwards proto/port on the gateway router to the gateway host.
func (l *lab) forward(proto string, port uint16) {
	l.must(l.RG.ForwardPort(proto, port, l.Gateway, port), "port forward")
}

// world is a lab running snowgate: the portal, two relays, a gateway and a client, kernel mode, as an
// operator starts them (the e2e harness's way), and iperf3 on the resource host.
type world struct {
	*lab
	bins                                    string
	portal, relay1, relay2, gateway, client *proc
	// allocations is how many "relay allocation ready" lines the client logs after a (re)start.
	allocations int
}

// newWorld builds the lab and starts portal and relays; gateways and client are started separately.
func newWorld(ctx context.Context, root *benchTB, name, bins string, opts netlab.StandardOptions, gateways int) *world {
	w := &world{lab: newLab(root, name, opts), bins: bins}
	cfg := filepath.Join(w.dir, "portal.yaml")
	if err := os.WriteFile(cfg, []byte(portalConfig(gateways)), 0o600); err != nil {
		w.tb.Fatalf("%v", err)
	}
	w.portal = w.start(w.Portal.Namespace, "portal", []string{"LOG_LEVEL=warn"}, w.bin("snowgate-portal"),
		"--config", cfg, "--listen", portalAddr+":8081", "--admin-addr", portalAddr+":8082", "--metrics-addr", "")
	w.must(eventually(ctx, 10*time.Second, 50*time.Millisecond, func() error {
		c, err := w.Portal.DialTCP(ctx, "tcp", portalAddr+":8081")
		if err == nil {
			_ = c.Close()
		}
		return err
	}), "portal did not listen")
	w.relay1 = w.startRelay(ctx, 1, w.Relay1)
	w.relay2 = w.startRelay(ctx, 2, w.Relay2)
	return w
}

func (w *world) bin(name string) string { return filepath.Join(w.bins, name) }

func (w *world) startRelay(ctx context.Context, n int, h *netlab.Host) *proc {
	env := []string{"SNOWGATE_API_URL=ws://" + portalAddr + ":8081", "SNOWGATE_TOKEN=" + relayToken,
		"PUBLIC_IP4_ADDR=" + h.Addr4().String(), "HEALTH_CHECK_ADDR=" + h.Addr4().String() + ":8080",
		"SNOWGATE_NAME=relay-" + strconv.Itoa(n), "LOG_LEVEL=warn"}
	if a := h.Addr6(); a.IsValid() {
		env = append(env, "PUBLIC_IP6_ADDR="+a.String())
	}
	p := w.start(h.Namespace, "relay-"+strconv.Itoa(n), env, w.bin("snowgate-relay"))
	url := "http://" + h.Addr4().String() + ":8080/readyz"
	w.must(eventually(ctx, 15*time.Second, 100*time.Millisecond, func() error {
		out, err := nsRun(ctx, h.Namespace, 3*time.Second, "curl", "-fsS", "--max-time", "2", url)
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}), "relay not ready")
	return p
}

// startGateway starts the kernel-mode gateway 0 on the gateway host.
func (w *world) startGateway() {
	env := []string{"SNOWGATE_API_URL=ws://" + portalAddr + ":8081", "SNOWGATE_TOKEN=" + gatewayToken(0),
		"SNOWGATE_NAME=gateway-0", "SNOWGATE_ID_FILE=" + filepath.Join(w.dir, "gateway-id"), "LOG_LEVEL=info", "LOG_FORMAT=json"}
	w.gateway = w.start(w.Gateway.Namespace, "gateway", env, w.bin("snowgate-gateway"),
		"--status-socket", filepath.Join(w.dir, "gateway.sock"))
}

// clientLogLevel shows the client's stage timestamps: the core's first packet of a flow and the
// node's nominated ICE pair are debug lines (neither logs per packet).
const clientLogLevel = "info,client/core=debug,node=debug"

// startClient starts the kernel-mode client and waits until it joined the portal and its relay
// allocations are ready.
func (w *world) startClient(ctx context.Context) {
	env := []string{"SNOWGATE_API_URL=ws://" + portalAddr + ":8081", "SNOWGATE_TOKEN=" + clientToken,
		"SNOWGATE_ID_FILE=" + filepath.Join(w.dir, "client-id"), "LOG_LEVEL=" + clientLogLevel, "LOG_FORMAT=json",
		"METRICS_ADDR=127.0.0.1:9464"}
	w.client = w.start(w.Client.Namespace, "client", env, w.bin("snowgate-client"),
		"--status-socket", filepath.Join(w.dir, "client.sock"))
	w.waitClientReady(ctx, 0, 0)
	// The number of allocations after start (one per relay and address family), waited for after roaming.
	w.allocations = strings.Count(w.client.log(), `"relay allocation ready"`)
}

// waitClientReady waits until the client's portal session is joined and, after the log offset, at
// least allocs relay allocations are ready (allocs 0: at least one, and no new one for 300 ms).
func (w *world) waitClientReady(ctx context.Context, offset int64, allocs int) {
	var last int
	var stable time.Time
	w.must(eventually(ctx, 20*time.Second, 20*time.Millisecond, func() error {
		st, err := w.clientStatus()
		if err != nil {
			return err
		}
		if st.Portal != "joined" {
			return fmt.Errorf("portal %s", st.Portal)
		}
		n := strings.Count(w.client.logSince(offset), `"relay allocation ready"`)
		if allocs > 0 {
			if n < allocs {
				return fmt.Errorf("%d of %d relay allocations ready", n, allocs)
			}
			return nil
		}
		if n == 0 || n != last {
			last, stable = n, time.Now()
			return fmt.Errorf("%d relay allocations ready", n)
		}
		if time.Since(stable) < 300*time.Millisecond {
			return fmt.Errorf("waiting for more allocations (%d)", n)
		}
		return nil
	}), "client not ready")
}

// clientStatus is the part of `snowgate-client status --json` the benchmark reads.
type clientStatus struct {
	Portal      string `json:"portal"`
	Connections []struct {
		ID    string `json:"id"`
		State string `json:"state"`
		Idle  bool   `json:"idle"`
		Path  string `json:"path"`
	} `json:"connections"`
}

func (w *world) clientStatus() (clientStatus, error) {
	var st clientStatus
	out, err := exec.Command(w.bin("snowgate-client"), "status", "--json", "--socket", filepath.Join(w.dir, "client.sock")).CombinedOutput()
	if err != nil {
		return st, fmt.Errorf("status: %v: %s", err, out)
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return st, fmt.Errorf("status: %v: %s", err, out)
	}
	return st, nil
}

// connect pings the resource until it answers and returns the path of the client's connection.
func (w *world) connect(ctx context.Context, addr string) string {
	w.must(eventually(ctx, 30*time.Second, 100*time.Millisecond, func() error {
		out, err := nsRun(ctx, w.Client.Namespace, 5*time.Second, "ping", "-n", "-c", "1", "-W", "2", addr)
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}), "resource unreachable through the tunnel")
	st, err := w.clientStatus()
	w.must(err, "client status")
	for _, c := range st.Connections {
		if c.State == "established" {
			return c.Path
		}
	}
	return "none"
}

// roam makes the client drop its connections and allocations and start a new portal session
// (SIGHUP), and waits until it is ready again; it returns the log offset from before the signal.
func (w *world) roam(ctx context.Context) int64 {
	off := w.client.logSize()
	w.must(w.client.signal(syscall.SIGHUP), "SIGHUP")
	w.waitClientReady(ctx, off, w.allocations)
	return off
}

// iperfServer starts iperf3 servers: on the resource (through the tunnel) and, with raw, on the
// gateway host behind a port forward (no tunnel).
func (l *lab) iperfServer(raw bool) {
	l.start(l.Resource.Namespace, "iperf3-resource", nil, "iperf3", "-s", "-p", strconv.Itoa(iperfPort))
	if raw {
		l.forward("tcp", rawPort)
		l.forward("udp", rawPort)
		l.start(l.Gateway.Namespace, "iperf3-gateway", nil, "iperf3", "-s", "-p", strconv.Itoa(rawPort))
	}
}
