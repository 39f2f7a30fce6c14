package e2e

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	clcore "github.com/snowgate/snowgate/client/core"
	"github.com/snowgate/snowgate/internal/netlab"
)

// TestCIDRResourceMostSpecificWins: a CIDR resource is reached by address, and of two overlapping CIDR
// resources on different sites the most specific prefix wins: 203.0.113.0/24 goes through site A's
// gateway-1, 203.0.113.101/32 (inside it) through site B's gateway-3. The resource host's whoami page shows
// the source address it saw, which is the carrying gateway's address on the resources network.
func TestCIDRResourceMostSpecificWins(t *testing.T) {
	t.Parallel()
	timed(t)
	l := newLab(t, netlab.StandardOptions{})
	l.addResourceAddrs()
	l.startGateway(1)
	l.startGateway(3)
	c := l.startClient()
	l.waitClientJoined(c)

	l.must(20*time.Second, "ping", "-c", "1", "-W", "2", resourceIP.String())
	if out := l.must(10*time.Second, "curl", "-fsS", "--max-time", "5", "http://"+resourceIP.String()+"/"); !strings.Contains(out, "resource page") {
		t.Fatalf("curl by address: %q", out)
	}
	gw1Addr := l.gatewayHost(1).Iface(l.Resources).Addr4
	gw3Addr := l.gatewayHost(3).Iface(l.Resources).Addr4
	if got := l.whoami(resourceIP); got != gw1Addr {
		t.Errorf("%s (the /24) reached from %s, want gateway-1's %s", resourceIP, got, gw1Addr)
	}
	if got := l.whoami(siteBAddr); got != gw3Addr {
		t.Errorf("%s (the /32) reached from %s, want gateway-3's %s", siteBAddr, got, gw3Addr)
	}
	for id, want := range map[string]string{resNetwork: gateway1ID, resSiteB: gateway3ID} {
		if gw, err := l.resourceGateway(c, id); err != nil || gw != want {
			t.Errorf("status: resource %s through %q (%v), want %s", id, gw, err, want)
		}
	}
}

// TestFilters: a resource's filters decide per protocol and port. 2001:db8:3::102 allows TCP port 80 and
// ICMP, 2001:db8:3::103 only TCP port 80; the resource host serves HTTP on 80 and on 8081 at both. A denied
// TCP connection is refused at once with ICMPv6 "administratively prohibited" (EACCES for curl), not left
// to time out; a denied ping gets the same ICMP answer.
func TestFilters(t *testing.T) {
	t.Parallel()
	timed(t)
	l := newLab(t, netlab.StandardOptions{})
	l.addResourceAddrs()
	l.startGateway(1)
	c := l.startClient()
	l.waitClientJoined(c)

	url := func(a netip.Addr, port uint16) string { return "http://" + netip.AddrPortFrom(a, port).String() + "/" }
	for _, a := range []netip.Addr{webPingAddr, webOnlyAddr} {
		if out := l.must(20*time.Second, "curl", "-fsS", "--max-time", "5", url(a, 80)); !strings.Contains(out, "resource page") {
			t.Fatalf("curl %s: %q", url(a, 80), out)
		}
	}
	// ICMP: allowed on ::102, denied on ::103.
	l.must(10*time.Second, "ping", "-c", "1", "-W", "2", webPingAddr.String())
	start := time.Now()
	out, err := l.run(l.Client.Namespace, 10*time.Second, "ping", "-c", "1", "-W", "5", webOnlyAddr.String())
	if err == nil || !strings.Contains(out, "Administratively prohibited") {
		t.Errorf("ping %s: %v: %q; want an administratively prohibited answer", webOnlyAddr, err, out)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("denied ping took %s to fail", d)
	}
	// TCP port 8081: denied on both (the server listens there: a filter, not a closed port, refuses it).
	before, err := l.clientStatus(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []netip.Addr{webPingAddr, webOnlyAddr} {
		start := time.Now()
		out, err := l.run(l.Client.Namespace, 15*time.Second, "curl", "-sS", "--max-time", "10", url(a, whoamiPort))
		d := time.Since(start)
		if err == nil {
			t.Errorf("curl %s passed the filter: %q", url(a, whoamiPort), out)
			continue
		}
		// curl: "Failed to connect to … port 8081 after 1 ms: Couldn't connect to server" (exit 7) for the
		// EACCES that ICMPv6 administratively prohibited is; a timeout would be exit 28.
		if !strings.Contains(out, "Couldn't connect") || strings.Contains(out, "timed out") {
			t.Errorf("curl %s: %v: %q; want a refused connection", url(a, whoamiPort), err, out)
		}
		if d > 2*time.Second {
			t.Errorf("curl %s took %s to fail; the ICMP answer should end it at once", url(a, whoamiPort), d)
		}
		t.Logf("curl %s refused after %s: %s", url(a, whoamiPort), d.Round(time.Millisecond), strings.TrimSpace(out))
	}
	// The error behind curl's message: a TCP connect answered with ICMPv6 administratively prohibited fails
	// with EACCES (a closed port's RST would be ECONNREFUSED, a silent drop a timeout).
	for _, a := range []netip.Addr{webPingAddr, webOnlyAddr} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, err := l.Client.Namespace.DialTCP(ctx, "tcp6", netip.AddrPortFrom(a, whoamiPort).String())
		cancel()
		if err == nil {
			_ = conn.Close()
			t.Errorf("TCP connect to %s port %d passed the filter", a, whoamiPort)
		} else if !errors.Is(err, syscall.EACCES) {
			t.Errorf("TCP connect to %s port %d: %v, want EACCES (ICMPv6 administratively prohibited)", a, whoamiPort, err)
		}
	}
	after, err := l.clientStatus(c)
	if err != nil {
		t.Fatal(err)
	}
	// One per denied connection attempt at least (two curls, two dials).
	if got := after.Counters.ICMP["prohibited"] - before.Counters.ICMP["prohibited"]; got < 4 {
		t.Errorf("client sent %d ICMP prohibited answers for the four denied connections", got)
	}
}

// TestPolicyRevokedCutsAccess: deleting the policy of a resource through the portal's admin API cuts a
// running ping to it within a second, on the client (the resource is gone) and on the gateway (the
// authorisation is gone).
func TestPolicyRevokedCutsAccess(t *testing.T) {
	t.Parallel()
	timed(t)
	l := newLab(t, netlab.StandardOptions{})
	gw := l.startGateway(1)
	c := l.startClient()
	l.waitClientJoined(c)
	l.must(20*time.Second, "ping", "-c", "1", "-W", "2", resourceIP.String())

	p := l.startPing(resourceIP, 50*time.Millisecond, 60*time.Second)
	p.waitReplies(t, time.Now(), 10, 10*time.Second)
	revoked := time.Now()
	if code, err := l.admin(http.MethodDelete, "/v1/policies/"+policyNetwork); err != nil || code != http.StatusNoContent {
		t.Fatalf("DELETE policy: %d, %v", code, err)
	}
	// Wait for the gateway to have dropped the authorisation (bounded), then a little more for late replies.
	err := eventually(5*time.Second, func() error {
		st, err := l.gatewayStatus(gw)
		if err != nil {
			return err
		}
		for _, cl := range st.Gateway.Clients {
			for _, r := range cl.Resources {
				if r.ID == resNetwork {
					return errors.New("gateway still authorises the client for the resources network")
				}
			}
		}
		return nil
	})
	gwCut := time.Since(revoked)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // bounded wait: replies after the revocation would show up here
	p.stop()
	replies := p.replies()
	last := replies[len(replies)-1]
	cut := last.Sub(revoked)
	t.Logf("last reply %s after the DELETE; gateway status without the authorisation after %s", cut.Round(time.Millisecond), gwCut.Round(time.Millisecond))
	if cut > time.Second {
		t.Errorf("replies kept coming %s after the policy was deleted:\n%s", cut, p.output())
	}
	if gwCut > 2*time.Second {
		t.Errorf("the gateway kept the authorisation for %s", gwCut)
	}
	// New attempts fail too.
	if out, err := l.run(l.Client.Namespace, 10*time.Second, "curl", "-sS", "--max-time", "3", "http://"+resourceIP.String()+"/"); err == nil {
		t.Errorf("curl after revocation: %q", out)
	}
	st, err := l.clientStatus(c)
	if err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(st.Resources, func(r clcore.ResourceStatus) bool { return r.ID == resNetwork }) {
		t.Errorf("the client still lists the revoked resource")
	}
}

// TestBadTokenExits: a client or a gateway whose token the portal refuses exits with status 1 within 5 s,
// with a message saying the token was refused (and not the token itself).
func TestBadTokenExits(t *testing.T) {
	t.Parallel()
	timed(t)
	l := newLab(t, netlab.StandardOptions{})
	const bad = "e2e-not-a-token-4711"
	// The daemons report the refusal as an ERROR (a human must act), after phoenix's WARN that the client
	// stopped.
	l.expect(`ERROR .*the portal refused the client's token`, `ERROR .*the portal refused the gateway's token`,
		`WARN .*phoenix client stopped`)
	start := time.Now()
	c := l.startClientToken(bad)
	gw := l.start(l.Gateway.Namespace, "gateway-1", []string{"SNOWGATE_API_URL=ws://198.18.0.100:8081", "SNOWGATE_TOKEN=" + bad,
		"SNOWGATE_NAME=gateway-1", "LOG_LEVEL=info"}, "snowgate-gateway", "--tun-name", "tun-sg-gw1", "--status-socket", l.socket("gateway-1"))
	for _, p := range []*proc{c, gw} {
		code := p.wait(5*time.Second - time.Since(start))
		d := time.Since(start)
		if code != 1 {
			t.Errorf("%s: exit status %d after %s, want 1 within 5 s", p.name, code, d)
			continue
		}
		log := p.log.String()
		if !strings.Contains(log, "refused the token") {
			t.Errorf("%s: no message saying the token was refused:\n%s", p.name, log)
		}
		if strings.Contains(log, bad) {
			t.Errorf("%s: the token appears in the output", p.name)
		}
		t.Logf("%s exited 1 after %s", p.name, d.Round(time.Millisecond))
	}
}

// TestLegacyGatewayProtocolClient: a client configured with legacy_gateway_protocol makes the portal speak
// the old request_connection / allow_access / connection_ready exchange with the gateway daemon; the
// client reaches a CIDR and a DNS resource through it.
func TestLegacyGatewayProtocolClient(t *testing.T) {
	t.Parallel()
	timed(t)
	l := newLab(t, netlab.StandardOptions{})
	gw := l.startGateway(1)
	c := l.startClientToken(legacyToken)
	l.waitClientJoined(c)
	l.must(20*time.Second, "ping", "-c", "1", "-W", "2", resourceIP.String())
	if out := l.must(20*time.Second, "curl", "-fsS", "--max-time", "5", "http://"+webName+"/"); !strings.Contains(out, "resource page for "+webName) {
		t.Fatalf("curl by name: %q", out)
	}
	st, err := l.gatewayStatus(gw)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Gateway.Clients) != 1 || st.Gateway.Clients[0].ID != legacyID || !st.Gateway.Clients[0].Legacy {
		t.Fatalf("gateway clients %+v, want the legacy client on the old protocol", st.Gateway.Clients)
	}
	var ids []string
	for _, r := range st.Gateway.Clients[0].Resources {
		ids = append(ids, r.ID)
	}
	if !slices.Contains(ids, resNetwork) || !slices.Contains(ids, resCorpWeb) {
		t.Fatalf("gateway authorised %v, want both resources", ids)
	}
}
