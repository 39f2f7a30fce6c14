package e2e

// Helpers of the path and fault scenarios (paths_test.go, faults_test.go): topologies beyond the standard
// one, router knobs netlab lacks or this kernel lacks (UDP blocking, packet loss without netem), the
// connection's path as status --json reports it, the portal's admin state, and timing.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/snowgate/snowgate/internal/netlab"
	"github.com/snowgate/snowgate/internal/tunnel"
	"github.com/snowgate/snowgate/portalmock"
)

// bigURL is the 10 MiB file on the resource host, reached through the CIDR resource by address.
var bigURL = "http://" + resourceIP.String() + "/big"

// doubleNATTopology is netlab.StandardTopology (see its address plan) with the client behind two chained
// symmetric NAT routers and the gateway behind a symmetric one (Firezone's download-double-symmetric-nat,
// with the client's NAT doubled):
//
//	internet 198.18.0.0/15
//	  rco (outer client router, symmetric) WAN 198.18.0.1
//	    middle LAN 198.51.100.0/24, 2001:db8:11::/64
//	      rc (inner client router, symmetric) WAN 198.51.100.2
//	        client LAN 192.0.2.0/24, 2001:db8:1::/64: client .2/::2
//	  rg (gateway router, symmetric) WAN 198.18.0.2, LAN 198.51.100.0/24 as in the standard lab
func doubleNATTopology(t *testing.T) *netlab.Standard {
	t.Helper()
	skipUnlessLab(t)
	l := netlab.New(t)
	s := &netlab.Standard{Lab: l}
	s.Internet = l.Internet("198.18.0.0/15", "2001:db8:ffff::/64")
	middle := l.NATRouter("rco", s.Internet, netlab.NATSymmetric, "198.51.100.0/24", "2001:db8:11::/64")
	s.GatewayLAN = l.NATRouter("rg", s.Internet, netlab.NATSymmetric, "198.51.100.0/24", "2001:db8:2::/64")
	s.ClientLAN = l.NATRouter("rc", middle, netlab.NATSymmetric, "192.0.2.0/24", "2001:db8:1::/64")
	s.RC, s.RG = s.ClientLAN.Router(), s.GatewayLAN.Router()
	s.Portal = l.Host("portal", s.Internet, "198.18.0.100", "2001:db8:ffff::100")
	s.Relay1 = l.Host("relay1", s.Internet, "198.18.0.101", "2001:db8:ffff::101")
	s.Relay2 = l.Host("relay2", s.Internet, "198.18.0.102", "2001:db8:ffff::102")
	s.Client = l.Host("client", s.ClientLAN)
	s.Gateway = l.Host("gateway", s.GatewayLAN)
	s.Resources = l.Switch("resources", "203.0.113.0/24", "2001:db8:3::/64")
	l.Attach(s.Gateway, s.Resources)
	s.Resource = l.Host("resource", s.Resources, "203.0.113.100", "2001:db8:3::100")
	return s
}

// nft loads an nftables script into a namespace.
func (l *lab) nft(ns *netlab.Namespace, script string) {
	l.t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns.Name(), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		l.t.Fatalf("nft in %s: %v: %s\n%s", ns.Node(), err, out, script)
	}
}

// blockUDPBetweenSites drops every UDP datagram between the client's and the gateway's public addresses on
// the client's router (forward chain, both directions, both families): only relays can carry the tunnel.
func (l *lab) blockUDPBetweenSites() {
	l.t.Helper()
	var rules []string
	if a := l.RG.PublicAddr4(); a.IsValid() {
		rules = append(rules, fmt.Sprintf("ip daddr %s meta l4proto udp counter drop", a),
			fmt.Sprintf("ip saddr %s meta l4proto udp counter drop", a))
	}
	if a := l.RG.PublicAddr6(); a.IsValid() {
		rules = append(rules, fmt.Sprintf("ip6 daddr %s meta l4proto udp counter drop", a),
			fmt.Sprintf("ip6 saddr %s meta l4proto udp counter drop", a))
	}
	l.nft(l.RC.Namespace, "table inet e2eblock {\n\tchain forward {\n\t\ttype filter hook forward priority filter - 10; policy accept;\n\t\t"+
		strings.Join(rules, "\n\t\t")+"\n\t}\n}\n")
}

// packetLoss drops pct percent of the packets the router forwards into its LAN: the download direction
// (the data segments, and the gateway's side of every handshake and ICE check). This kernel has no
// sch_netem (netlab's Link.SetImpairment returns ErrNetemUnavailable), so the drop is nftables' numgen
// random, which every netlab router has. One direction, not both: with 20 % on the data and on the ACKs
// as well, a retransmission and its ACK get through only 64 % of the time, and Linux's exponential RTO
// backoff then stalled a 10 MiB download for minutes once in a few dozen runs (TCP's tail, not the
// tunnel's: the connection stayed established and direct throughout). Note that the node sends bursts
// with UDP GSO and a veth forwards them unsegmented, so the router drops whole bursts (up to 64 KiB) of
// tunnel traffic, not single datagrams: harsher than a wire's loss (a few hundred drops per download).
func (l *lab) packetLoss(r *netlab.Router, lan *netlab.Network, pct int) {
	l.t.Helper()
	var rules []string
	for _, p := range lan.Prefixes() {
		family := "ip"
		if p.Addr().Is6() {
			family = "ip6"
		}
		rules = append(rules, fmt.Sprintf("%s daddr %s numgen random mod 100 < %d counter drop", family, p, pct))
	}
	l.nft(r.Namespace, "table inet e2eloss {\n\tchain forward {\n\t\ttype filter hook forward priority filter - 20; policy accept;\n\t\t"+
		strings.Join(rules, "\n\t\t")+"\n\t}\n}\n")
}

// nftCounter sums the packets counted by the rules of a table (what the loss or block rules dropped).
func (l *lab) nftCounter(ns *netlab.Namespace, table string) uint64 {
	out, err := l.run(ns, 5*time.Second, "nft", "list", "table", "inet", table)
	if err != nil {
		l.t.Logf("nft list %s: %v: %s", table, err, out)
		return 0
	}
	var total uint64
	for _, m := range regexp.MustCompile(`counter packets (\d+)`).FindAllStringSubmatch(out, -1) {
		n, _ := strconv.ParseUint(m[1], 10, 64)
		total += n
	}
	return total
}

// procNamed returns the newest process of the lab with that name.
func (l *lab) procNamed(name string) *proc {
	l.t.Helper()
	for i := len(l.procs) - 1; i >= 0; i-- {
		if l.procs[i].name == name {
			return l.procs[i]
		}
	}
	l.t.Fatalf("no process %q in the lab", name)
	return nil
}

// kill sends SIGKILL to p and waits for it to be gone.
func (l *lab) kill(p *proc) {
	l.t.Helper()
	_ = p.cmd.Process.Kill()
	if p.wait(10*time.Second) == -1 && p.running() {
		l.t.Fatalf("%s did not die after SIGKILL", p.name)
	}
}

// connection waits until the status of the client (or a gateway) shows exactly one connection that is
// established and satisfies ok, and returns it.
func (l *lab) connection(p *proc, timeout time.Duration, ok func(tunnel.ConnectionStatus) error) tunnel.ConnectionStatus {
	l.t.Helper()
	var got tunnel.ConnectionStatus
	err := eventually(timeout, func() error {
		out, err := l.statusJSON(p)
		if err != nil {
			return fmt.Errorf("status: %v: %s", err, out)
		}
		var st struct {
			Connections []tunnel.ConnectionStatus `json:"connections"`
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return fmt.Errorf("status: %v: %s", err, out)
		}
		if len(st.Connections) != 1 || st.Connections[0].State != "established" {
			return fmt.Errorf("connections %+v, want one established", st.Connections)
		}
		got = st.Connections[0]
		if ok != nil {
			return ok(got)
		}
		return nil
	})
	if err != nil {
		l.t.Fatalf("%s: %v", p.name, err)
	}
	return got
}

// isDirect accepts a direct path.
func isDirect(c tunnel.ConnectionStatus) error {
	if !c.Direct || c.Path == "relay" {
		return fmt.Errorf("path %s (%s → %s), want direct", c.Path, c.Local, c.Remote)
	}
	return nil
}

// isRelayed accepts a relayed path.
func isRelayed(c tunnel.ConnectionStatus) error {
	if c.Direct || c.Path != "relay" || c.RelayID == "" {
		return fmt.Errorf("path %s relay %q (%s → %s), want relayed", c.Path, c.RelayID, c.Local, c.Remote)
	}
	return nil
}

// relayHosts names the relay hosts ("relay-1", "relay-2") whose address is an end of the connection's
// path: the client's own allocation (local) and the gateway's (remote).
func (l *lab) relayHosts(c tunnel.ConnectionStatus) []string {
	var out []string
	for _, end := range []string{c.Local, c.Remote} {
		ap, err := netip.ParseAddrPort(end)
		if err != nil {
			continue
		}
		for i, h := range []*netlab.Host{l.Relay1, l.Relay2} {
			name := "relay-" + strconv.Itoa(i+1)
			if (ap.Addr() == h.Addr4() || ap.Addr() == h.Addr6()) && !strings.Contains(strings.Join(out, ","), name) {
				out = append(out, name)
			}
		}
	}
	return out
}

// portalState reads the portal's admin state (online clients with their keys, gateways, relays, flows) with
// curl on the portal host.
func (l *lab) portalState() portalmock.State {
	l.t.Helper()
	var st portalmock.State
	out, err := l.run(l.Portal.Namespace, 5*time.Second, "curl", "-fsS", "--max-time", "4",
		"-H", "Authorization: Bearer "+adminToken, "http://198.18.0.100:8082/v1/state")
	if err == nil {
		err = json.Unmarshal([]byte(out), &st)
	}
	if err != nil {
		l.t.Fatalf("portal state: %v: %s", err, out)
	}
	return st
}

// relayName returns the name of the online relay with that id ("" if none).
func relayName(st portalmock.State, id string) string {
	for _, r := range st.Relays {
		if r.ID == id {
			return r.Name
		}
	}
	return ""
}

// measure runs f and logs how long it took under label.
func measure(t *testing.T, label string, f func() error) time.Duration {
	t.Helper()
	start := time.Now()
	if err := f(); err != nil {
		t.Fatalf("%s: %v", label, err)
	}
	d := time.Since(start)
	t.Logf("%s: %v", label, d.Round(time.Millisecond))
	return d
}

// downloadBig downloads the 10 MiB file with a sha256 check and logs the time and rate.
func (l *lab) downloadBig(url string, timeout time.Duration) {
	l.t.Helper()
	d := measure(l.t, "10 MiB download of "+url+" (sha256 checked)", func() error { return l.download(url, timeout) })
	l.t.Logf("download rate %.1f Mbit/s", float64(bigFile)*8/d.Seconds()/1e6)
}

// fetchBig downloads the 10 MiB file with curl in the client's namespace, with extra curl flags (e.g. a
// rate limit), and checks its sha256. Cancelling ctx kills the whole pipeline (its process group).
func (l *lab) fetchBig(ctx context.Context, url string, timeout time.Duration, curlArgs ...string) error {
	ctx, cancel := context.WithTimeout(ctx, timeout+5*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", l.Client.Namespace.Name(), "sh", "-c",
		fmt.Sprintf("curl -fsS --max-time %d %s %s | sha256sum", int(timeout.Seconds()), strings.Join(curlArgs, " "), url))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("download %s: %v: %s", url, err, out)
	}
	if got := strings.Fields(string(out)); len(got) == 0 || got[0] != sha256Hex(l.payload) {
		return fmt.Errorf("download %s: sha256 %q, want %s", url, out, sha256Hex(l.payload))
	}
	return nil
}

// gatewayName is the lab's process name of the gateway with that id.
func gatewayName(id string) string {
	switch id {
	case gateway1ID:
		return "gateway-1"
	case gateway2ID:
		return "gateway-2"
	case gateway3ID:
		return "gateway-3"
	}
	return "gateway " + id
}

// clientKey returns the client's public key as the portal sees it ("" while it is offline).
func clientKey(st portalmock.State) string {
	for _, c := range st.Clients {
		if c.Online {
			return c.PublicKey
		}
	}
	return ""
}

// carrier checks that a relayed connection's status names the relay that carries it (its relay_id is the
// online relay whose address is an end of the path) and returns that relay's host name.
func (l *lab) carrier(c tunnel.ConnectionStatus) string {
	l.t.Helper()
	hosts := l.relayHosts(c)
	name := relayName(l.portalState(), c.RelayID)
	if name == "" || !slices.Contains(hosts, name) {
		l.t.Fatalf("status names relay %q (%s), but the path %s → %s goes through %v", c.RelayID, name, c.Local, c.Remote, hosts)
	}
	return name
}

// startSite starts gateway 1 and the client, and waits until both have joined the portal and the client's
// resolv.conf points at its DNS stub (the client's status shows sentinels a moment before the file is
// rewritten; a flow requested before the gateway joined is refused as offline).
func (l *lab) startSite() (gw, c *proc) {
	l.t.Helper()
	gw = l.startGateway(1)
	c = l.startClient()
	l.waitGatewayJoined(gw, 15*time.Second)
	l.waitClientJoined(c)
	err := eventually(10*time.Second, func() error {
		b, err := os.ReadFile(l.resolvConfPath(l.Client.Namespace))
		if err != nil || !strings.Contains(string(b), "nameserver 100.100.111.") {
			return fmt.Errorf("client's resolv.conf not pointed at the stub: %q %v", b, err)
		}
		return nil
	})
	if err != nil {
		l.t.Fatal(err)
	}
	return gw, c
}

// pacedBigURL serves the big file from the resource host at rate bytes per second (an extra in-process
// server, port 8090, started on first use) and returns its URL: a download that lasts long enough for
// something to happen in its middle. (curl's --limit-rate does not pace here: curl 7.88 fetched 10 MiB
// from loopback in 0.14 s with --limit-rate 2M.)
func (l *lab) pacedBigURL(rate int) string {
	l.t.Helper()
	const chunk = 64 << 10
	ln, err := l.Resource.Namespace.ListenTCP("tcp4", "0.0.0.0:8090")
	if err != nil {
		l.t.Fatalf("paced HTTP server: %v", err)
	}
	srv := &http.Server{ReadHeaderTimeout: 30 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(l.payload)))
		tick := time.NewTicker(time.Second * chunk / time.Duration(rate))
		defer tick.Stop()
		for off := 0; off < len(l.payload); off += chunk {
			if _, err := w.Write(l.payload[off:min(off+chunk, len(l.payload))]); err != nil {
				return
			}
			select {
			case <-tick.C:
			case <-r.Context().Done():
				return
			}
		}
	})}
	var serving sync.WaitGroup
	serving.Go(func() { _ = srv.Serve(ln) })
	l.t.Cleanup(func() { _ = srv.Close(); serving.Wait() })
	return "http://" + resourceIP.String() + ":8090/big"
}
