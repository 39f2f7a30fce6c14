package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snowgate/snowgate/client"
	"github.com/snowgate/snowgate/internal/netlab"
)

// clientStatus reads the client's status document.
func (l *lab) clientStatus(p *proc) (client.Status, error) {
	var st client.Status
	out, err := l.statusJSON(p)
	if err != nil {
		return st, fmt.Errorf("status: %v: %s", err, out)
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, fmt.Errorf("status: %v: %s", err, out)
	}
	return st, nil
}

// waitJoined waits until the client's portal session is joined.
func (l *lab) waitClientJoined(p *proc) {
	l.t.Helper()
	err := eventually(15*time.Second, func() error {
		st, err := l.clientStatus(p)
		if err != nil {
			return err
		}
		if st.Portal != "joined" || len(st.DNS.Sentinels) == 0 {
			return fmt.Errorf("portal %s, %d sentinels", st.Portal, len(st.DNS.Sentinels))
		}
		return nil
	})
	if err != nil {
		l.t.Fatalf("client did not join the portal: %v", err)
	}
}

// must runs a command in the client's namespace until it succeeds (the first packet of a flow creates it).
func (l *lab) must(timeout time.Duration, name string, args ...string) string {
	l.t.Helper()
	var out string
	err := eventually(timeout, func() error {
		var err error
		out, err = l.run(l.Client.Namespace, 10*time.Second, name, args...)
		if err != nil {
			return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
		}
		return nil
	})
	if err != nil {
		l.t.Fatal(err)
	}
	return out
}

func TestKernelClientReachesResources(t *testing.T) {
	l := newLab(t, netlab.StandardOptions{})
	l.startGateway(1)
	c := l.startClient()
	l.waitClientJoined(c)

	// CIDR resource by address: ping, then HTTP.
	l.must(15*time.Second, "ping", "-c", "1", "-W", "2", resourceIP.String())
	if out := l.must(10*time.Second, "curl", "-fsS", "--max-time", "5", "http://"+resourceIP.String()+"/"); !strings.Contains(out, "resource page") {
		t.Fatalf("curl by address: %q", out)
	}
	// DNS resource: dig through the system resolver (resolv.conf points at the client's stub).
	out := l.must(10*time.Second, "dig", "+short", "+time=2", "+tries=2", webName, "A")
	ips := strings.Fields(out)
	if len(ips) == 0 {
		t.Fatalf("dig %s: no address", webName)
	}
	for _, s := range ips {
		a, err := netip.ParseAddr(s)
		if err != nil || !netip.MustParsePrefix("100.96.0.0/11").Contains(a) {
			t.Fatalf("dig %s: %q is not a proxy IP", webName, s)
		}
	}
	if out := l.must(15*time.Second, "curl", "-fsS", "--max-time", "5", "http://"+webName+"/"); !strings.Contains(out, "resource page for "+webName) {
		t.Fatalf("curl by name: %q", out)
	}
	st, err := l.clientStatus(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Connections) != 1 || st.Connections[0].State != "established" || !st.Connections[0].Direct {
		t.Fatalf("status: connections %+v, want one established direct", st.Connections)
	}

	// SIGTERM: nothing the client changed is left behind.
	c.signal(syscall.SIGTERM)
	if code := c.wait(10 * time.Second); code != 0 {
		t.Fatalf("client exit status %d after SIGTERM", code)
	}
	l.checkClientCleanedUp()
}

func TestKernelClientCleansUpAfterSIGKILL(t *testing.T) {
	l := newLab(t, netlab.StandardOptions{})
	l.startGateway(1)
	c := l.startClient()
	l.waitClientJoined(c)
	l.must(15*time.Second, "ping", "-c", "1", "-W", "2", resourceIP.String())
	c.signal(syscall.SIGKILL)
	c.wait(10 * time.Second)
	// The kill left the TUN's rules and the DNS change; the next start cleans up first, and works.
	if out, _ := l.run(l.Client.Namespace, 5*time.Second, "cat", "/etc/resolv.conf"); !strings.Contains(out, "100.100.111.") {
		t.Logf("resolv.conf after SIGKILL: %q", out)
	}
	c2 := l.startClient()
	l.waitClientJoined(c2)
	l.must(15*time.Second, "ping", "-c", "1", "-W", "2", resourceIP.String())
	c2.signal(syscall.SIGTERM)
	if code := c2.wait(10 * time.Second); code != 0 {
		t.Fatalf("client exit status %d", code)
	}
	l.checkClientCleanedUp()
}

// checkClientCleanedUp checks that no TUN, rule, route or resolv.conf change of the client is left.
func (l *lab) checkClientCleanedUp() {
	l.t.Helper()
	if out, _ := l.run(l.Client.Namespace, 5*time.Second, "ip", "link", "show", "tun-snowgate"); !strings.Contains(out, "does not exist") {
		l.t.Errorf("TUN left after exit: %s", out)
	}
	for _, fam := range []string{"-4", "-6"} {
		out, _ := l.run(l.Client.Namespace, 5*time.Second, "ip", fam, "rule", "show")
		if strings.Contains(out, "fwmark") || strings.Contains(out, "suppress_prefixlength") {
			l.t.Errorf("policy rules left (%s):\n%s", fam, out)
		}
	}
	want, _ := os.ReadFile(filepath.Join("/etc/netns", l.Client.Namespace.Name(), "resolv.conf"))
	if !strings.Contains(string(want), "nameserver 198.18.0.100") || strings.Contains(string(want), "100.100.111.") {
		l.t.Errorf("resolv.conf not restored: %q", want)
	}
}
