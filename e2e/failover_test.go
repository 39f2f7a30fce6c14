package e2e

import (
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snowgate/snowgate/internal/netlab"
)

// TestPortalDownAndBack: with the portal killed, established connections keep carrying traffic and the
// stub keeps answering names it knows (and new names under a wildcard it knows, which need no portal); once
// the portal is back, the client's and the gateway's sessions rejoin and a new flow (which needs the
// portal) works.
func TestPortalDownAndBack(t *testing.T) {
	t.Parallel()
	timed(t)
	l := newLab(t, netlab.StandardOptions{})
	l.addResourceAddrs()
	// The outage is real, so every daemon with a portal session says so once (phoenix: one WARN per outage).
	l.expect(`WARN .*phoenix dial failed`, `WARN .*portal connection lost; relaying continues`)
	gw := l.startGateway(1)
	c := l.startClient()
	l.waitClientJoined(c)
	l.waitGatewayJoined(gw, 15*time.Second)
	l.must(20*time.Second, "ping", "-c", "1", "-W", "2", resourceIP.String())
	if out := l.must(20*time.Second, "curl", "-fsS", "--max-time", "5", "http://"+webName+"/"); !strings.Contains(out, "resource page for "+webName) {
		t.Fatalf("curl by name: %q", out)
	}
	known := addrsOf(l.mustDig(webName, "A").rrs)

	portal := l.procs[slices.IndexFunc(l.procs, func(p *proc) bool { return p.name == "portal" })]
	portal.signal(syscall.SIGKILL)
	portal.wait(5 * time.Second)
	err := eventually(15*time.Second, func() error {
		st, err := l.clientStatus(c)
		if err != nil {
			return err
		}
		gst, err := l.gatewayStatus(gw)
		if err != nil {
			return err
		}
		if st.Portal == "joined" || gst.Portal == "joined" {
			return fmt.Errorf("client %s, gateway %s", st.Portal, gst.Portal)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the daemons did not notice the portal's death: %v", err)
	}

	// During the outage.
	if out, err := l.run(l.Client.Namespace, 10*time.Second, "ping", "-c", "3", "-i", "0.2", "-W", "2", resourceIP.String()); err != nil {
		t.Errorf("ping during the outage: %v: %s", err, out)
	}
	if got := addrsOf(l.mustDig(webName, "A").rrs); !slices.Equal(got, known) {
		t.Errorf("dig %s during the outage: %v, want %v", webName, got, known)
	}
	if out, err := l.run(l.Client.Namespace, 10*time.Second, "curl", "-fsS", "--max-time", "5", "http://"+webName+"/"); err != nil || !strings.Contains(out, "resource page for "+webName) {
		t.Errorf("curl http://%s/ during the outage: %v: %q", webName, err, out)
	}
	if out, err := l.run(l.Client.Namespace, 15*time.Second, "curl", "-fsS", "--max-time", "10", "http://files.corp.test/"); err != nil || !strings.Contains(out, "resource page for files.corp.test") {
		t.Errorf("curl http://files.corp.test/ (a new name under the wildcard) during the outage: %v: %q", err, out)
	}

	// The portal comes back: both sessions rejoin, and a new flow works.
	back := time.Now()
	l.startPortal()
	l.waitClientJoined(c)
	l.waitGatewayJoined(gw, 40*time.Second)
	t.Logf("client and gateway rejoined %s after the portal's restart", time.Since(back).Round(time.Millisecond))
	if gw, err := l.resourceGateway(c, resWebPing); err == nil {
		t.Fatalf("resource %s already has a flow through %s", resWebPing, gw)
	}
	l.must(20*time.Second, "ping", "-c", "1", "-W", "2", webPingAddr.String())
	if gw, err := l.resourceGateway(c, resWebPing); err != nil || gw != gateway1ID {
		t.Errorf("new flow: %q, %v", gw, err)
	}
}

// TestGatewaySIGTERMFailover: with both gateways of the site running, SIGTERM to the one carrying the
// client's traffic makes it say Goodbye over the control protocol; the client re-requests the flow at once
// and the portal gives it the site's other gateway. Traffic (a ping every 50 ms) must flow again through
// the other gateway within 2 s (issue 11's acceptance line), far below an ICE timeout.
func TestGatewaySIGTERMFailover(t *testing.T) {
	t.Parallel()
	timed(t)
	l := newLab(t, netlab.StandardOptions{})
	gws := map[string]*proc{gateway1ID: l.startGateway(1), gateway2ID: l.startGateway(2)}
	c := l.startClient()
	l.waitClientJoined(c)
	for _, p := range gws {
		l.waitGatewayJoined(p, 15*time.Second)
	}
	l.must(20*time.Second, "ping", "-c", "1", "-W", "2", resourceIP.String())
	first, err := l.resourceGateway(c, resNetwork)
	if err != nil || gws[first] == nil {
		t.Fatalf("carrying gateway: %q, %v", first, err)
	}
	other := gateway1ID
	if first == gateway1ID {
		other = gateway2ID
	}

	p := l.startPing(resourceIP, 50*time.Millisecond, 60*time.Second)
	p.waitReplies(t, time.Now(), 10, 10*time.Second)
	term := time.Now()
	gws[first].signal(syscall.SIGTERM)
	if code := gws[first].wait(10 * time.Second); code != 0 {
		t.Errorf("%s exit status %d after SIGTERM", gws[first].name, code)
	}
	exited := time.Since(term)
	err = eventually(10*time.Second, func() error {
		gw, err := l.resourceGateway(c, resNetwork)
		if err != nil {
			return err
		}
		if gw != other {
			return fmt.Errorf("through %s", gw)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("no flow through the other gateway: %v", err)
	}
	switched := time.Now()
	p.waitReplies(t, switched, 5, 5*time.Second)
	p.stop()
	// The outage is the longest silence between replies since the SIGTERM (the last reply before it counts
	// as its start).
	replies := p.replies()
	i := slices.IndexFunc(replies, func(r time.Time) bool { return r.After(term) })
	prev, gap := term, time.Duration(0)
	if i > 0 {
		prev = replies[i-1]
	}
	for _, r := range replies[max(i, 0):] {
		gap = max(gap, r.Sub(prev))
		prev = r
	}
	t.Logf("gateway exited %s after SIGTERM; longest silence %s", exited.Round(time.Millisecond), gap.Round(time.Millisecond))
	if gap >= 2*time.Second {
		t.Errorf("traffic stopped for %s around the failover, want < 2 s:\n%s", gap, p.output())
	}
	st, err := l.clientStatus(c)
	if err != nil {
		t.Fatal(err)
	}
	// The client dropped the gateway because it said Goodbye, not because the connection failed.
	if st.Counters.Flows["goodbye"] == 0 || st.Counters.Flows["connection_failed"] != 0 {
		t.Errorf("flow counters %v, failed gateways %+v: want the flow ended by Goodbye", st.Counters.Flows, st.FailedGateways)
	}
}
