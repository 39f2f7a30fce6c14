package node

import (
	"net"
	"testing"
	"time"

	"github.com/pion/ice/v4"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestDirectConnection(t *testing.T) {
	relay := startRelay(t)
	a := newTestNode(t, "100.64.0.1", nil)
	b := newTestNode(t, "100.64.0.2", nil)
	giveRelays(t, a, b, relay)

	connect(t, a, b, "c1", credsA, credsB)
	rtt := roundTrip(t, a, b, 5*time.Second)
	t.Logf("first packet round trip (ICE + handshake + ping): %v", rtt)
	if rtt > 2*time.Second {
		t.Fatalf("first round trip took %v, want < 2s (no wait for wireguard-go's 5 s retransmit)", rtt)
	}
	ev, ok := a.waitEvent(5*time.Second, established("c1"))
	if !ok {
		t.Fatal("no established event on a")
	}
	if !isDirect(ev.Path) {
		t.Fatalf("path = %v, want a direct path", ev.Path)
	}
	t.Logf("established: path=%s local=%s remote=%s handshake=%v", ev.Path, ev.LocalAddr, ev.RemoteAddr, ev.HandshakeTime)
	if _, ok := b.waitEvent(5*time.Second, established("c1")); !ok {
		t.Fatal("no established event on b")
	}
	// Traffic both ways, again.
	for i := 0; i < 3; i++ {
		roundTrip(t, a, b, 2*time.Second)
		roundTrip(t, b, a, 2*time.Second)
	}
	sa := statsOf(t, a.n, "c1")
	t.Logf("a stats: %s", describe(sa))
	if !sa.Established || !isDirect(sa.Path) || sa.RxBytes == 0 || sa.TxBytes == 0 || sa.LastHandshake.IsZero() {
		t.Fatalf("unexpected stats: %s", describe(sa))
	}
}

func TestRelayedConnection(t *testing.T) {
	relay := startRelay(t)
	relayOnly := func(c *Config) { c.TestOnlyCandidateTypes = []ice.CandidateType{ice.CandidateTypeRelay} }
	a := newTestNode(t, "100.64.0.1", relayOnly)
	b := newTestNode(t, "100.64.0.2", relayOnly)
	giveRelays(t, a, b, relay)

	connect(t, a, b, "c1", credsA, credsB)
	rtt := roundTrip(t, a, b, 5*time.Second)
	t.Logf("first packet round trip through the relay: %v", rtt)
	ev, ok := a.waitEvent(5*time.Second, established("c1"))
	if !ok {
		t.Fatal("no established event on a")
	}
	if ev.Path != PathRelay {
		t.Fatalf("path = %v, want relay", ev.Path)
	}
	for i := 0; i < 3; i++ {
		roundTrip(t, a, b, 2*time.Second)
		roundTrip(t, b, a, 2*time.Second)
	}
	sa := statsOf(t, a.n, "c1")
	t.Logf("a stats: %s", describe(sa))
	if sa.Path != PathRelay || sa.RelayID != "r1" {
		t.Fatalf("unexpected stats: %s", describe(sa))
	}
}

// isDirect: host, or srflx/prflx (on loopback the first check often creates a
// peer-reflexive candidate before the host candidate is signalled).
func isDirect(p Path) bool { return p == PathHost || p == PathServerReflexive }

func TestParseRemoteCandidate(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host", true},
		{"1 1 udp 2130706431 192.0.2.1 5000 typ host ufrag abcd generation 0", true},
		{"1 1 udp 1 198.51.100.1 6000 typ relay raddr 0.0.0.0 rport 0", true},
		{"", false},
		{"garbage", false},
		{"1 1 udp 1 not-an-ip 5000 typ host", false},
		{"1 1 udp 1 192.0.2.1 99999 typ host", false},
	} {
		_, err := parseRemoteCandidate(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("parseRemoteCandidate(%q) err = %v, want ok=%v", tc.in, err, tc.ok)
		}
	}
}

func FuzzParseRemoteCandidate(f *testing.F) {
	f.Add("candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host")
	f.Add("1 1 udp 1 198.51.100.1 6000 typ relay raddr 0.0.0.0 rport 0")
	f.Add("1 1 tcp 1 192.0.2.1 9 typ host tcptype active")
	f.Add("candidate:842163049 1 udp 1677729535 198.18.1.7 61234 typ srflx raddr 192.0.2.10 rport 51820 generation 0")
	f.Add("3 1 UDP 16777215 198.18.0.10 49152 typ relay raddr 198.18.1.7 rport 61234")
	f.Add("4 1 udp 2130706431 2001:db8::1 5000 typ host")
	// A candidate that parses is a UDP candidate with a usable address; it re-marshals to text that parses to
	// the same candidate, and the node's own form (parseCandidate) agrees with it.
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parseRemoteCandidate(s)
		if err != nil {
			if c != nil {
				t.Fatalf("candidate %v with error %v", c, err)
			}
			return
		}
		addr, ok := candidateAddr(c)
		if !ok || !c.NetworkType().IsUDP() || addr.Port() == 0 {
			t.Fatalf("accepted %q: %s %v", s, c.NetworkType(), addr)
		}
		again, err := parseRemoteCandidate(c.Marshal())
		if err != nil {
			t.Fatalf("re-marshalled %q (from %q) does not parse: %v", c.Marshal(), s, err)
		}
		if a2, _ := candidateAddr(again); a2 != addr || again.Type() != c.Type() || again.Priority() != c.Priority() ||
			again.Component() != c.Component() || again.Foundation() != c.Foundation() {
			t.Fatalf("round trip %q -> %q changed the candidate", s, again.Marshal())
		}
		if own, err := parseCandidate(s); err == nil && own.Addr != addr {
			t.Fatalf("parseCandidate(%q) address %v, parseRemoteCandidate %v", s, own.Addr, addr)
		}
	})
}

func TestDualStackDirectConnection(t *testing.T) {
	if l, err := net.ListenPacket("udp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	} else {
		_ = l.Close()
	}
	relay := startRelay(t)
	dual := func(c *Config) { c.DisableIPv6 = false }
	a := newTestNode(t, "100.64.0.1", dual)
	b := newTestNode(t, "100.64.0.2", dual)
	if set := a.n.io.Load(); set.v6 == nil || set.v6.port != set.v4.port {
		t.Fatalf("want v4 and v6 sockets on one port")
	}
	giveRelays(t, a, b, relay)
	connect(t, a, b, "c1", credsA, credsB)
	roundTrip(t, a, b, 5*time.Second)
	roundTrip(t, b, a, 2*time.Second)
	t.Logf("dual stack: %s", describe(statsOf(t, a.n, "c1")))

	t.Run("relayed over an IPv6 allocation", func(t *testing.T) {
		r6 := startRelayOn(t, "::1")
		relayOnly := func(c *Config) {
			c.DisableIPv6 = false
			c.TestOnlyCandidateTypes = []ice.CandidateType{ice.CandidateTypeRelay}
		}
		a := newTestNode(t, "100.64.0.1", relayOnly)
		b := newTestNode(t, "100.64.0.2", relayOnly)
		a.n.UpdateRelays(nil, []Relay{r6.relay("r6", a.n)})
		b.n.UpdateRelays(nil, []Relay{r6.relay("r6", b.n)})
		ev, ok := a.waitEvent(10*time.Second, func(e Event) bool { return e.Kind == EventRelayReady })
		if !ok || !ev.RelayedAddr.Addr().Is6() {
			t.Fatalf("no IPv6 allocation: %+v", ev)
		}
		b.waitRelayReady(t)
		connect(t, a, b, "c1", credsA, credsB)
		roundTrip(t, a, b, 5*time.Second)
		roundTrip(t, b, a, 2*time.Second)
		s := statsOf(t, a.n, "c1")
		if s.Path != PathRelay || !s.RemoteAddr.Addr().Is6() {
			t.Fatalf("want a relayed IPv6 path: %s", describe(s))
		}
	})
}
