package deploy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/snowgate/snowgate/internal/netlab"
)

// labScripts are the compose lab's shell scripts (POSIX sh: the images' /bin/sh is dash).
var labScripts = []string{"lab-entrypoint.sh", "router.sh"}

// TestLabScripts checks the scripts are executable and parse as POSIX sh (dash -n), and runs shellcheck on
// them when it is installed.
func TestLabScripts(t *testing.T) {
	sh, err := exec.LookPath("dash")
	if err != nil {
		if sh, err = exec.LookPath("sh"); err != nil {
			t.Fatal("neither dash nor sh in PATH")
		}
	}
	shellcheck, scErr := exec.LookPath("shellcheck")
	if scErr != nil {
		t.Log("shellcheck not installed (Debian package shellcheck); only `sh -n` ran")
	}
	for _, s := range labScripts {
		p := repoPath("deploy", "docker", s)
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode()&0o111 == 0 {
			t.Errorf("%s is not executable", s)
		}
		if !strings.HasPrefix(readFile(t, "deploy", "docker", s), "#!/bin/sh\n") {
			t.Errorf("%s does not start with #!/bin/sh", s)
		}
		if out, err := runTool(t, ".", sh, "-n", p); err != nil {
			t.Errorf("%s -n %s: %v\n%s", sh, s, err, out)
		}
		if scErr == nil {
			if out, err := runTool(t, ".", shellcheck, "-s", "sh", p); err != nil {
				t.Errorf("shellcheck %s: %v\n%s", s, err, out)
			}
		}
	}
}

// labExec runs a command in a netlab namespace with a bounded time and returns its output; failure is fatal.
func labExec(t *testing.T, ns interface {
	Exec(context.Context, string, ...string) ([]byte, error)
}, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	out, err := ns.Exec(ctx, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// TestLabRouter runs the compose lab's scripts in network namespaces shaped like the lab: a router with a WAN
// (default route, as Docker gives it) and a LAN, a client on the LAN with no route but the one
// lab-entrypoint.sh adds, and a server on the internet. It checks, for both MASQUERADE_TYPE values, that the
// client reaches the server from the router's public address over IPv4 and IPv6, that the mapping is
// endpoint-independent or per destination as promised, that replies come back and unsolicited packets are
// dropped and counted, and (with sch_netem) that NETWORK_LATENCY_MS lands on both interfaces. Needs root.
func TestLabRouter(t *testing.T) {
	entry, err := filepath.Abs(repoPath("deploy", "docker", "lab-entrypoint.sh"))
	if err != nil {
		t.Fatal(err)
	}
	router, err := filepath.Abs(repoPath("deploy", "docker", "router.sh"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, masq string
		symmetric  bool
		latencyMS  int
	}{
		{name: "endpoint-independent", masq: ""},
		{name: "symmetric", masq: "random", symmetric: true, latencyMS: 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := exec.LookPath("nft"); err != nil {
				t.Skip("nft not installed (Debian package nftables)")
			}
			l := netlab.New(t)
			inet := l.Internet("198.18.0.0/15", "2001:db8:ffff::/64")
			server := l.Host("server", inet, "198.18.0.101", "2001:db8:ffff::101")
			rt := l.Host("router", inet, "198.18.0.1", "2001:db8:ffff::1")
			lan := l.Switch("lan", "192.0.2.0/24", "2001:db8:1::/64")
			l.Attach(rt, lan, "192.0.2.1", "2001:db8:1::1")
			client := l.Host("client", lan, "192.0.2.2", "2001:db8:1::2")

			// What Docker and compose's sysctls give the router container.
			labExec(t, rt, "ip", "-4", "route", "replace", "default", "via", "198.18.0.254")
			labExec(t, rt, "ip", "-6", "route", "replace", "default", "via", "2001:db8:ffff::254")
			labExec(t, rt, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding")

			// lab-entrypoint.sh: default routes via the router, variables gone, then the program.
			out := labExec(t, client, "env", "ROUTER_IP4=192.0.2.1", "ROUTER_IP6=2001:db8:1::1", "sh", entry,
				"sh", "-c", `echo "vars=${ROUTER_IP4:-}${ROUTER_IP6:-}"; ip -4 route show default; ip -6 route show default`)
			for _, want := range []string{"vars=\n", "default via 192.0.2.1 ", "default via 2001:db8:1::1 "} {
				if !strings.Contains(out, want) {
					t.Errorf("after lab-entrypoint.sh: output lacks %q:\n%s", want, out)
				}
			}

			latency := 0
			if tc.latencyMS > 0 && l.NetemAvailable() {
				latency = tc.latencyMS
			} else if tc.latencyMS > 0 {
				t.Log("sch_netem unavailable: NETWORK_LATENCY_MS not checked")
			}
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			rt.Run(t, ctx, "env", "MASQUERADE_TYPE="+tc.masq, "NETWORK_LATENCY_MS="+strconv.Itoa(latency), "sh", router)
			waitRouter(t, rt, latency)

			if latency > 0 {
				for _, dev := range []string{netlab.Prefix + "eth0", netlab.Prefix + "eth1"} {
					q := labExec(t, rt, "tc", "qdisc", "show", "dev", dev)
					if want := fmt.Sprintf("delay %dms", latency/2); !strings.Contains(q, "netem") || !strings.Contains(q, want) {
						t.Errorf("%s qdisc %q lacks netem %s (half of NETWORK_LATENCY_MS=%d)", dev, q, want, latency)
					}
				}
			}

			for _, fam := range []struct{ network, client, server, public string }{
				{"udp4", "192.0.2.2", "198.18.0.101", "198.18.0.1"},
				{"udp6", "2001:db8:1::2", "2001:db8:ffff::101", "2001:db8:ffff::1"},
			} {
				checkNAT(t, client, server, fam.network, fam.client, fam.server, fam.public, tc.symmetric)
			}
			if n := droppedUnsolicited(t, rt); n == 0 {
				t.Error("the router's lab-unsolicited counters are 0 after unsolicited packets from the internet")
			}
		})
	}
}

// waitRouter polls (bounded) until router.sh has loaded its table and, with latency, its qdiscs.
func waitRouter(t *testing.T, rt *netlab.Host, latency int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		_, err := rt.Exec(ctx, "nft", "list", "table", "inet", "lab_router")
		if err == nil && latency > 0 {
			var q []byte
			q, err = rt.Exec(ctx, "tc", "qdisc", "show", "dev", netlab.Prefix+"eth1")
			if err == nil && !strings.Contains(string(q), "netem") {
				err = errors.New("no netem qdisc yet")
			}
		}
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("router.sh did not set up the router within 15 s: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // polling external state (another process's setup)
	}
}

// checkNAT sends from one client socket to three server ports and checks what the server sees: the router's
// public address, one public port for all (endpoint-independent) or not (symmetric); that each reply gets
// back; and that a packet from a port the client never contacted does not.
func checkNAT(t *testing.T, client, server *netlab.Host, network, clientIP, serverIP, public string, symmetric bool) {
	t.Helper()
	c, err := client.ListenUDP(network, net.JoinHostPort(clientIP, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var ports []int
	for i := range 3 {
		srv, err := server.ListenUDP(network, net.JoinHostPort(serverIP, strconv.Itoa(3478+i)))
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		dst := srv.LocalAddr().(*net.UDPAddr)
		if _, err := c.WriteToUDP([]byte("ping"), dst); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		_ = srv.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, from, err := srv.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("%s: server %s got nothing from the client: %v", network, dst, err)
		}
		if from.Addr().Unmap() != netip.MustParseAddr(public) {
			t.Errorf("%s: server saw the client as %s; want the router's public %s", network, from, public)
		}
		ports = append(ports, int(from.Port()))
		if _, err := srv.WriteToUDPAddrPort([]byte("pong"), from); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil || string(buf[:n]) != "pong" {
			t.Fatalf("%s: the reply from %s did not come back through the router: %v", network, dst, err)
		}

		if i == 0 {
			// Unsolicited: another server port towards the same public mapping.
			other, err := server.ListenUDP(network, net.JoinHostPort(serverIP, "4000"))
			if err != nil {
				t.Fatal(err)
			}
			defer other.Close()
			if _, err := other.WriteToUDPAddrPort([]byte("unsolicited"), from); err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond)) // a bounded wait for a packet that must not come
			if n, src, err := c.ReadFromUDPAddrPort(buf); err == nil {
				t.Errorf("%s: the client received %q from %s, which it never contacted", network, buf[:n], src)
			}
		}
	}
	allSame := ports[0] == ports[1] && ports[1] == ports[2]
	switch {
	case !symmetric && !allSame:
		t.Errorf("%s: endpoint-independent router used public ports %v for one client socket; want one port", network, ports)
	case symmetric && allSame:
		t.Errorf("%s: symmetric router (masquerade random) used port %d for three destinations", network, ports[0])
	}
}

var counterPackets = regexp.MustCompile(`counter packets (\d+) .*lab-unsolicited`)

func droppedUnsolicited(t *testing.T, rt *netlab.Host) uint64 {
	t.Helper()
	var total uint64
	for _, m := range counterPackets.FindAllStringSubmatch(labExec(t, rt, "nft", "list", "table", "inet", "lab_router"), -1) {
		n, _ := strconv.ParseUint(m[1], 10, 64)
		total += n
	}
	return total
}
