package e2e

// Path scenarios of issue 17: a 10 MiB download with a sha256 check over each kind of path the system must
// find — direct, relayed, lossy, through a double symmetric NAT, and IPv4 only — with status --json saying
// which path carried it.

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/snowgate/snowgate/internal/netlab"
)

// TestDownloadDirect: both NATs endpoint-independent, so ICE finds a direct (server-reflexive) path; the
// download goes over it, and it is still the path afterwards.
func TestDownloadDirect(t *testing.T) {
	t.Parallel()
	timed(t)
	l := newLab(t, netlab.StandardOptions{})
	_, c := l.startSite()
	l.downloadBig(bigURL, 60*time.Second)
	conn := l.connection(c, 5*time.Second, isDirect)
	t.Logf("client path: %s %s → %s, rtt %.2f ms", conn.Path, conn.Local, conn.Remote, conn.RTTMillis)
}

// TestDownloadRelayed: both NATs symmetric and UDP between the two sites dropped by the client's router, so
// only a relay can carry the tunnel: status shows a relayed path and names the relay carrying it, and the
// download works over it.
func TestDownloadRelayed(t *testing.T) {
	t.Parallel()
	timed(t)
	l := newLab(t, netlab.StandardOptions{ClientNAT: netlab.NATSymmetric, GatewayNAT: netlab.NATSymmetric})
	l.blockUDPBetweenSites()
	_, c := l.startSite()
	l.downloadBig(bigURL, 60*time.Second)
	conn := l.connection(c, 5*time.Second, isRelayed)
	t.Logf("client path: through %s (%s → %s), rtt %.2f ms", l.carrier(conn), conn.Local, conn.Remote, conn.RTTMillis)
	l.connection(l.procNamed("gateway-1"), 5*time.Second, isRelayed)
	if n := l.nftCounter(l.RC.Namespace, "e2eblock"); n == 0 {
		t.Logf("no UDP datagram between the sites was dropped (ICE did not even try the direct pairs)")
	} else {
		t.Logf("UDP datagrams between the sites dropped: %d", n)
	}
}

// TestDownloadPacketLoss: the client's router drops 20% of what it forwards into the client's LAN (portal,
// relay and tunnel traffic alike) from before the client starts: the connection still comes up and the
// download completes intact. (nftables drops the packets: this kernel has no netem; see packetLoss.)
func TestDownloadPacketLoss(t *testing.T) {
	t.Parallel()
	timed(t)
	l := newLab(t, netlab.StandardOptions{})
	l.packetLoss(l.RC, l.ClientLAN, 20)
	_, c := l.startSite()
	l.downloadBig(bigURL, 120*time.Second)
	dropped := l.nftCounter(l.RC.Namespace, "e2eloss")
	if dropped == 0 {
		t.Fatal("the client's router dropped nothing: the loss rule did not apply")
	}
	t.Logf("packets the client's router dropped: %d", dropped)
	conn := l.connection(c, 5*time.Second, nil)
	t.Logf("client path: %s %s → %s", conn.Path, conn.Local, conn.Remote)
}

// TestDownloadDoubleSymmetricNAT: the client behind two chained symmetric NATs, the gateway behind a
// symmetric one: no direct path exists, the connection is relayed and the download works.
func TestDownloadDoubleSymmetricNAT(t *testing.T) {
	t.Parallel()
	timed(t)
	l := newLabOn(t, doubleNATTopology(t), portalConfig)
	_, c := l.startSite()
	l.downloadBig(bigURL, 60*time.Second)
	conn := l.connection(c, 5*time.Second, isRelayed)
	t.Logf("client path: through %s (%s → %s)", l.carrier(conn), conn.Local, conn.Remote)
}

// TestDownloadIPv4Only: an IPv4-only world (no IPv6 on any host, relays without IPv6 addresses) and a DNS
// resource name with only an A record: the download by name goes through the gateway's DNS-resource NAT.
func TestDownloadIPv4Only(t *testing.T) {
	t.Parallel()
	timed(t)
	l := newLab(t, netlab.StandardOptions{NoIPv6: true})
	_, c := l.startSite()
	const name = "v4only.corp.test"
	var out string
	if err := eventually(10*time.Second, func() error {
		var err error
		out, err = l.run(l.Client.Namespace, 10*time.Second, "dig", "+short", "+time=2", "+tries=2", name, "A")
		if err != nil || len(strings.Fields(out)) == 0 {
			return fmt.Errorf("dig %s A: no proxy address: %v %q", name, err, out)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s A: %s", name, strings.Join(strings.Fields(out), " "))
	l.downloadBig("http://"+name+"/big", 60*time.Second)
	conn := l.connection(c, 5*time.Second, isDirect)
	t.Logf("client path: %s %s → %s", conn.Path, conn.Local, conn.Remote)
}
