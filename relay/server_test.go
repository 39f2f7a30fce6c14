package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v4"
	"github.com/pion/turn/v5"
	"github.com/snowgate/snowgate/internal/telemetry"
)

// TestRelayDataBothWays drives pion/turn's client: allocate, permission,
// channel bind (the client binds a channel on first send), data both ways,
// for both address families.
func TestRelayDataBothWays(t *testing.T) {
	for _, tc := range []struct {
		name   string
		v6     bool
		server func(*Server) netip.AddrPort
		slow   bool
	}{
		{"ipv4", false, (*Server).Addr, false},
		{"ipv6", true, (*Server).Addr6, false},
		{"ipv4 without fast path", false, (*Server).Addr, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := loopbackConfig()
			cfg.DisableFastPath = tc.slow
			cfg.AllowPeers = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
			// The relay's own addresses take datagrams on relay ports only, so
			// the peer is 127.0.0.2, or ::1 with the relay advertising a
			// documentation address and binding :: (the test maps it back).
			cfg.PublicIP6, cfg.ListenAddr6 = netip.MustParseAddr("2001:db8::1"), netip.IPv6Unspecified()
			s := startRelay(t, cfg)
			network, local, peerLocal := "udp4", "127.0.0.1:0", "127.0.0.2:0"
			family := turn.RequestedAddressFamilyIPv4
			if tc.v6 {
				network, local, peerLocal, family = "udp6", "[::1]:0", "[::1]:0", turn.RequestedAddressFamilyIPv6
			}
			peer, err := net.ListenPacket(network, peerLocal)
			if err != nil {
				t.Fatal(err)
			}
			defer peer.Close()
			clientConn, err := net.ListenPacket(network, local)
			if err != nil {
				t.Fatal(err)
			}
			defer clientConn.Close()
			user, pass := firezoneCreds(s, "salt-"+tc.name, time.Hour)
			srvAP := tc.server(s)
			if tc.v6 {
				srvAP = netip.AddrPortFrom(lo6, srvAP.Port())
			}
			srvAddr := srvAP.String()
			client, err := turn.NewClient(&turn.ClientConfig{
				STUNServerAddr: srvAddr, TURNServerAddr: srvAddr, Conn: clientConn,
				Username: user, Password: pass, Realm: DefaultRealm,
				RequestedAddressFamily: family,
				LoggerFactory:          telemetry.PionLoggerFactory(testLogger()),
			})
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			if err := client.Listen(); err != nil {
				t.Fatal(err)
			}
			relayed, err := client.Allocate()
			if err != nil {
				t.Fatalf("Allocate: %v", err)
			}
			defer relayed.Close()
			ra := relayed.LocalAddr().(*net.UDPAddr)
			if (ra.IP.To4() == nil) != tc.v6 {
				t.Fatalf("relayed address %v has the wrong family", ra)
			}
			if tc.v6 {
				if !ra.IP.Equal(cfg.PublicIP6.AsSlice()) {
					t.Fatalf("relayed address %v, want the public %v", ra, cfg.PublicIP6)
				}
				ra = &net.UDPAddr{IP: net.IPv6loopback, Port: ra.Port}
			}
			if got := s.Allocations(); got != 1 {
				t.Fatalf("allocations = %d, want 1", got)
			}
			// Client → peer. The first writes go as Send indications while
			// the client binds a channel; keep sending until the channel is up.
			for i := 0; ; i++ {
				msg := []byte(fmt.Sprintf("to-peer-%d", i))
				if _, err := relayed.WriteTo(msg, peer.LocalAddr()); err != nil {
					t.Fatalf("relayed write: %v", err)
				}
				got, from, err := readFrom(peer, 3*time.Second)
				if err != nil {
					t.Fatalf("peer read: %v", err)
				}
				if string(got) != string(msg) {
					t.Fatalf("peer got %q want %q", got, msg)
				}
				if from.(*net.UDPAddr).Port != ra.Port {
					t.Fatalf("peer saw source %v, want relayed port %d", from, ra.Port)
				}
				if s.stats.channels.Load() == 1 {
					break
				}
				if i > 100 {
					t.Fatal("channel never bound")
				}
				time.Sleep(20 * time.Millisecond)
			}
			if s.stats.permissions.Load() < 1 {
				t.Fatalf("permissions = %d", s.stats.permissions.Load())
			}
			if !tc.slow && fastChannels(s) != 1 {
				t.Fatalf("fast path mirrors %d channels, want 1", fastChannels(s))
			}
			// Peer → client (now over the channel), then both ways again. The relay counts after its send
			// returns, so the last datagram of the loop above may not be counted yet: start from settled
			// counters.
			before := settledTraffic(s)
			for i := 0; i < 5; i++ {
				msg := []byte(fmt.Sprintf("to-client-%d", i))
				if _, err := peer.WriteTo(msg, ra); err != nil {
					t.Fatal(err)
				}
				if err := expectData(relayed, msg); err != nil {
					t.Fatalf("client read: %v", err)
				}
				msg = []byte(fmt.Sprintf("to-peer-again-%d", i))
				if _, err := relayed.WriteTo(msg, peer.LocalAddr()); err != nil {
					t.Fatal(err)
				}
				if err := expectData(peer, msg); err != nil {
					t.Fatalf("peer read: %v", err)
				}
			}
			// The relay counts after its send returns, so the last datagram
			// may arrive before its count: wait for the counters.
			waitFor(t, 5*time.Second, "traffic counters", func() bool {
				tr := s.stats.traffic()
				return tr.toPeerPackets-before.toPeerPackets == 5 && tr.toClientPackets-before.toClientPackets == 5 &&
					tr.toClientBytes-before.toClientBytes == uint64(5*len("to-client-0")) &&
					tr.toPeerBytes-before.toPeerBytes == uint64(5*len("to-peer-again-0"))
			})
			// Closing the allocation empties the fast path's tables.
			relayed.Close()
			waitFor(t, 3*time.Second, "allocation end", func() bool { return s.Allocations() == 0 })
			if !tc.slow && (fastChannels(s) != 0 || fastRelays(s) != 0) {
				t.Fatalf("fast path keeps %d channels, %d relays", fastChannels(s), fastRelays(s))
			}
		})
	}
}

func fastChannels(s *Server) int {
	s.fast.mu.RLock()
	defer s.fast.mu.RUnlock()
	return len(s.fast.channels)
}

func fastRelays(s *Server) int {
	s.fast.mu.RLock()
	defer s.fast.mu.RUnlock()
	return len(s.fast.relays)
}

func TestBindingWithoutAuth(t *testing.T) {
	s := startRelay(t, loopbackConfig())
	r := newRawClient(t, s.Addr(), "", "")
	msg := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
	resp, err := r.roundTrip(msg)
	if err != nil {
		t.Fatal(err)
	}
	var xor stun.XORMappedAddress
	if resp.Type != stun.BindingSuccess || xor.GetFrom(resp) != nil {
		t.Fatalf("binding response %v", resp)
	}
	if xor.Port != r.conn.LocalAddr().(*net.UDPAddr).Port {
		t.Fatalf("mapped port %d", xor.Port)
	}
}

func TestCredentialsRefused(t *testing.T) {
	s := startRelay(t, loopbackConfig())
	user, _ := firezoneCreds(s, "salt", time.Hour)
	expired, expiredPass := firezoneCreds(s, "salt", -time.Minute)
	for _, tc := range []struct {
		name, user, pass, reason string
	}{
		{"wrong password", user, "not-the-password", reasonIntegrity},
		{"expired username", expired, expiredPass, reasonExpired},
		{"malformed username", "alice", "x", reasonMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := s.stats.authFailures[reasonIndex(tc.reason)].Load()
			r := newRawClient(t, s.Addr(), tc.user, tc.pass)
			resp := r.request(stun.MethodAllocate, requestedTransportUDP())
			if c := errorCode(resp); c != stun.CodeUnauthorized {
				t.Fatalf("error code %d, want 401", c)
			}
			if got := s.stats.authFailures[reasonIndex(tc.reason)].Load(); got != before+1 {
				t.Fatalf("auth failures %q = %d, want %d", tc.reason, got, before+1)
			}
			if s.Allocations() != 0 {
				t.Fatal("allocation created")
			}
		})
	}
}

func reasonIndex(r string) int {
	for i, x := range authReasons {
		if x == r {
			return i
		}
	}
	panic(r)
}

func TestPeerPolicyRefusals(t *testing.T) {
	s := startRelay(t, loopbackConfig()) // default policy: loopback refused (127.0.0.1 is the relay's own: see TestSameRelay)
	user, pass := firezoneCreds(s, "salt", time.Hour)
	r := newRawClient(t, s.Addr(), user, pass)
	if _, err := r.allocate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		attrs []stun.Setter
		m     stun.Method
		peer  string
	}{
		{"permission loopback", nil, stun.MethodCreatePermission, "127.0.0.2:9"},
		{"permission metadata", nil, stun.MethodCreatePermission, "169.254.169.254:80"},
		{"permission rfc1918", nil, stun.MethodCreatePermission, "10.0.0.1:9"},
		{"channel loopback", []stun.Setter{channelAttr(0x4001)}, stun.MethodChannelBind, "127.0.0.2:9"},
		{"channel cgnat", []stun.Setter{channelAttr(0x4002)}, stun.MethodChannelBind, "100.64.0.1:9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := s.stats.refusedPeers.Load()
			attrs := append([]stun.Setter{peerAttr(netip.MustParseAddrPort(tc.peer))}, tc.attrs...)
			resp := r.request(tc.m, attrs...)
			if c := errorCode(resp); c != stun.CodeForbidden {
				t.Fatalf("error code %d, want 403", c)
			}
			if err := stun.NewLongTermIntegrity(user, DefaultRealm, pass).Check(resp); err != nil {
				t.Fatalf("403 without valid integrity: %v", err)
			}
			if got := s.stats.refusedPeers.Load(); got != before+1 {
				t.Fatalf("refused peers = %d, want %d", got, before+1)
			}
		})
	}
	if s.stats.permissions.Load() != 0 || s.stats.channels.Load() != 0 {
		t.Fatal("refused peer got a permission or channel")
	}
	// A public peer is fine.
	resp := r.request(stun.MethodCreatePermission, peerAttr(netip.MustParseAddrPort("198.51.100.1:9")))
	if resp.Type.Class != stun.ClassSuccessResponse {
		t.Fatalf("public peer refused: %d", errorCode(resp))
	}
	// A ChannelBind to a refused peer with a wrong password is not answered
	// 403 by the interceptor: pion challenges it (401).
	bad := newRawClient(t, s.Addr(), user, "wrong")
	resp = bad.request(stun.MethodChannelBind, peerAttr(netip.MustParseAddrPort("127.0.0.2:9")), channelAttr(0x4003))
	if c := errorCode(resp); c != stun.CodeUnauthorized {
		t.Fatalf("bad-integrity ChannelBind: code %d, want 401", c)
	}
}

func TestAllocationExpiryFreesPort(t *testing.T) {
	cfg := loopbackConfig()
	cfg.AllocationLifetime = time.Second
	s := startRelay(t, cfg)
	user, pass := firezoneCreds(s, "salt", time.Hour)
	r := newRawClient(t, s.Addr(), user, pass)
	relayed, err := r.allocate()
	if err != nil {
		t.Fatal(err)
	}
	if portFree(relayed) {
		t.Fatal("relayed port is free while allocated")
	}
	waitFor(t, 5*time.Second, "allocation expiry", func() bool { return s.Allocations() == 0 })
	waitFor(t, 2*time.Second, "port release", func() bool { return portFree(relayed) })
	if s.stats.allocations4.Load() != 0 {
		t.Fatalf("allocation gauge %d", s.stats.allocations4.Load())
	}
}

func TestRefreshZeroDeletes(t *testing.T) {
	s := startRelay(t, loopbackConfig())
	for _, v6 := range []bool{false, true} {
		user, pass := firezoneCreds(s, "salt", time.Hour)
		srv := s.Addr()
		if v6 {
			srv = s.Addr6()
		}
		r := newRawClient(t, srv, user, pass)
		relayed, err := r.allocate(familyAttr(v6))
		if err != nil {
			t.Fatal(err)
		}
		if relayed.Addr().Is6() != v6 {
			t.Fatalf("relayed %v, want v6=%v", relayed, v6)
		}
		resp := r.request(stun.MethodRefresh, lifetimeAttr(0))
		if resp.Type.Class != stun.ClassSuccessResponse {
			t.Fatalf("refresh(0): code %d", errorCode(resp))
		}
		waitFor(t, 2*time.Second, "allocation deletion", func() bool { return s.Allocations() == 0 })
		waitFor(t, 2*time.Second, "port release", func() bool { return portFree(relayed) })
	}
}

func TestCrossFamilyAllocation(t *testing.T) {
	s := startRelay(t, loopbackConfig())
	user, pass := firezoneCreds(s, "salt", time.Hour)
	r := newRawClient(t, s.Addr(), user, pass) // IPv4 client asks for an IPv6 relay
	relayed, err := r.allocate(familyAttr(true))
	if err != nil {
		t.Fatal(err)
	}
	if !relayed.Addr().Is6() {
		t.Fatalf("relayed %v, want IPv6", relayed)
	}
	if s.stats.allocations6.Load() != 1 {
		t.Fatalf("v6 gauge %d", s.stats.allocations6.Load())
	}
}

func TestFamilyNotServed(t *testing.T) {
	cfg := loopbackConfig()
	cfg.PublicIP6, cfg.ListenAddr6 = netip.Addr{}, netip.Addr{}
	s := startRelay(t, cfg)
	user, pass := firezoneCreds(s, "salt", time.Hour)
	r := newRawClient(t, s.Addr(), user, pass)
	resp := r.request(stun.MethodAllocate, requestedTransportUDP(), familyAttr(true))
	if c := errorCode(resp); c != stun.CodeAddrFamilyNotSupported {
		t.Fatalf("IPv6 allocation on an IPv4-only relay: code %d, want 440", c)
	}
	if err := stun.NewLongTermIntegrity(user, DefaultRealm, pass).Check(resp); err != nil {
		t.Fatalf("440 without valid integrity: %v", err)
	}
	if _, err := r.allocate(familyAttr(false)); err != nil {
		t.Fatalf("IPv4 allocation: %v", err)
	}
	if s.Addr6().IsValid() {
		t.Fatal("IPv6 listener on an IPv4-only relay")
	}
}

func TestQuota(t *testing.T) {
	cfg := loopbackConfig()
	cfg.MaxAllocationsPerUser = 1
	cfg.MaxAllocations = 2
	s := startRelay(t, cfg)
	userA, passA := firezoneCreds(s, "a", time.Hour)
	userB, passB := firezoneCreds(s, "b", time.Hour)
	userC, passC := firezoneCreds(s, "c", time.Hour)
	if _, err := newRawClient(t, s.Addr(), userA, passA).allocate(); err != nil {
		t.Fatal(err)
	}
	resp := newRawClient(t, s.Addr(), userA, passA).request(stun.MethodAllocate, requestedTransportUDP())
	if c := errorCode(resp); c != stun.CodeAllocQuotaReached {
		t.Fatalf("second allocation of one user: code %d, want 486", c)
	}
	if _, err := newRawClient(t, s.Addr(), userB, passB).allocate(); err != nil {
		t.Fatal(err)
	}
	resp = newRawClient(t, s.Addr(), userC, passC).request(stun.MethodAllocate, requestedTransportUDP())
	if c := errorCode(resp); c != stun.CodeAllocQuotaReached {
		t.Fatalf("allocation over the total: code %d, want 486", c)
	}
	if got := s.stats.quotaRefusals.Load(); got != 2 {
		t.Fatalf("quota refusals = %d", got)
	}
}

func TestDrain(t *testing.T) {
	cfg := loopbackConfig()
	cfg.DrainTimeout = 10 * time.Second
	s := startRelay(t, cfg)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	user, pass := firezoneCreds(s, "salt", time.Hour)
	r := newRawClient(t, s.Addr(), user, pass)
	if _, err := r.allocate(); err != nil {
		t.Fatal(err)
	}
	if !s.Ready() {
		t.Fatal("not ready without a portal")
	}
	cancel()
	waitFor(t, 2*time.Second, "draining", func() bool { return !s.Ready() })
	other, otherPass := firezoneCreds(s, "other", time.Hour)
	resp := newRawClient(t, s.Addr(), other, otherPass).request(stun.MethodAllocate, requestedTransportUDP())
	if c := errorCode(resp); c != stun.CodeAllocQuotaReached {
		t.Fatalf("allocation while draining: code %d, want 486", c)
	}
	// The existing allocation lives on.
	resp = r.request(stun.MethodRefresh, lifetimeAttr(time.Minute))
	if resp.Type.Class != stun.ClassSuccessResponse {
		t.Fatalf("refresh while draining: code %d", errorCode(resp))
	}
	select {
	case err := <-done:
		t.Fatalf("Run returned while an allocation lives: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	// Once it is gone, Run returns cleanly.
	r.request(stun.MethodRefresh, lifetimeAttr(0))
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Run did not return after the last allocation ended")
	}
}

// TestMalformedInput sends junk; the server must survive and keep answering.
func TestMalformedInput(t *testing.T) {
	s := startRelay(t, loopbackConfig())
	r := newRawClient(t, s.Addr(), "", "")
	valid := stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodChannelBind, stun.ClassRequest))
	junk := [][]byte{
		{},
		{0x00},
		{0x00, 0x09},
		valid.Raw[:19],
		append(append([]byte(nil), valid.Raw...), 0xff, 0xff),
		{0x40, 0x00, 0xff, 0xff, 1, 2},
		{0x40, 0x00, 0x00, 0x02, 1, 2},
		{0x7f, 0xff, 0x00, 0x00},
		make([]byte, 1700),
		stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassIndication)).Raw,
		stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodData, stun.ClassRequest)).Raw,
		stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodSend, stun.ClassIndication)).Raw,
	}
	for _, b := range junk {
		if _, err := r.conn.WriteToUDP(b, r.server); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := r.roundTrip(stun.MustBuild(stun.TransactionID, stun.BindingRequest))
	if err != nil || resp.Type != stun.BindingSuccess {
		t.Fatalf("server stopped answering after junk: %v %v", resp, err)
	}
	// An unauthenticated ChannelBind gets the RFC's 401 challenge.
	resp, err = r.roundTrip(valid)
	if err != nil || errorCode(resp) != stun.CodeUnauthorized {
		t.Fatalf("unauthenticated ChannelBind: %v %v", resp, err)
	}
}

// TestConfigValidate: defaults and the errors. An unset listen address stays
// unset (Start chooses; see TestRelayBindsLocalPublicAddress).
func TestConfigValidate(t *testing.T) {
	base := func() Config { return Config{PublicIP4: netip.MustParseAddr("198.18.0.1")} }
	c := base()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.ListenPort != 3478 || c.LowestPort != 49152 || c.HighestPort != 65535 || c.AllocationLifetime != 600*time.Second ||
		c.ChannelLifetime != 600*time.Second || c.Realm != "firezone" || c.Sockets < 1 || c.ListenAddr4.IsValid() {
		t.Fatalf("defaults: %+v", c)
	}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
	}{
		{"no public address", func(c *Config) { c.PublicIP4 = netip.Addr{} }},
		{"v6 as v4", func(c *Config) { c.PublicIP4 = netip.MustParseAddr("2001:db8::1") }},
		{"v4 as v6", func(c *Config) { c.PublicIP6 = netip.MustParseAddr("198.18.0.1") }},
		{"port range inverted", func(c *Config) { c.LowestPort, c.HighestPort = 60000, 50000 }},
		{"listen port in range", func(c *Config) { c.ListenPort = 50000 }},
		{"listen port too big", func(c *Config) { c.ListenPort = 70000 }},
		{"lifetime too long", func(c *Config) { c.AllocationLifetime = 2 * time.Hour }},
		{"rest without secret", func(c *Config) { c.Auth = AuthTURNREST }},
		{"secret without rest", func(c *Config) { c.RESTSecret = "x" }},
		{"portal without token", func(c *Config) { c.Portal = &PortalConfig{APIURL: "ws://x"} }},
		{"portal bad scheme", func(c *Config) { c.Portal = &PortalConfig{APIURL: "ftp://x", Token: "t"} }},
		{"too many sockets", func(c *Config) { c.Sockets = 1000 }},
		{"invalid prefix", func(c *Config) { c.AllowPeers = []netip.Prefix{{}} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.mod(&c)
			if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("Validate = %v, want ErrInvalidConfig", err)
			}
		})
	}
}

// TestChannelExpiry drives a channel by hand: data flows over it (fast path),
// and after it expires the fast path forgets it and pion takes over (a Data
// indication for the peer's datagram, nothing for stale ChannelData).
func TestChannelExpiry(t *testing.T) {
	cfg := loopbackConfig()
	cfg.AllowPeers = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	cfg.ChannelLifetime = time.Second
	s := startRelay(t, cfg)
	user, pass := firezoneCreds(s, "salt", time.Hour)
	r := newRawClient(t, s.Addr(), user, pass)
	relayed, err := r.allocate()
	if err != nil {
		t.Fatal(err)
	}
	// 127.0.0.2: the relay's own 127.0.0.1 takes datagrams on relay ports only.
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	peerAP := peer.LocalAddr().(*net.UDPAddr).AddrPort()
	resp := r.request(stun.MethodChannelBind, peerAttr(peerAP), channelAttr(0x4000))
	if resp.Type.Class != stun.ClassSuccessResponse {
		t.Fatalf("ChannelBind: %d", errorCode(resp))
	}
	chData := func(payload string) []byte {
		b := []byte{0x40, 0x00, 0, byte(len(payload))}
		return append(b, payload...)
	}
	if _, err := r.conn.WriteToUDP(chData("hello"), r.server); err != nil {
		t.Fatal(err)
	}
	if err := expectData(peer, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := peer.WriteToUDPAddrPort([]byte("back"), relayed); err != nil {
		t.Fatal(err)
	}
	got, _, err := readFrom(r.conn, 3*time.Second)
	if err != nil || len(got) < 8 || got[0] != 0x40 || string(got[4:8]) != "back" || got[3] != 4 {
		t.Fatalf("ChannelData to client: %x %v", got, err)
	}
	waitFor(t, 5*time.Second, "channel expiry", func() bool { return s.stats.channels.Load() == 0 })
	if fastChannels(s) != 0 {
		t.Fatal("fast path kept an expired channel")
	}
	// Peer → client now arrives as a Data indication (the permission lives on).
	if _, err := peer.WriteToUDPAddrPort([]byte("late"), relayed); err != nil {
		t.Fatal(err)
	}
	got, _, err = readFrom(r.conn, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	m := &stun.Message{Raw: got}
	if err := m.Decode(); err != nil || m.Type != stun.NewType(stun.MethodData, stun.ClassIndication) {
		t.Fatalf("want a Data indication, got %x (%v)", got, err)
	}
	// Stale ChannelData is dropped.
	if _, err := r.conn.WriteToUDP(chData("stale"), r.server); err != nil {
		t.Fatal(err)
	}
	if b, _, err := readFrom(peer, 300*time.Millisecond); err == nil {
		t.Fatalf("stale ChannelData relayed: %q", b)
	}
}

// TestPortRangeExhaustion: a two-port range holds two allocations; the third
// gets 508 until one ends and frees its port.
func TestPortRangeExhaustion(t *testing.T) {
	cfg := loopbackConfig()
	cfg.LowestPort = 62000 + int(time.Now().UnixNano()%3000)
	cfg.HighestPort = cfg.LowestPort + 1
	s := startRelay(t, cfg)
	var clients []*rawClient
	for i := 0; i < 2; i++ {
		user, pass := firezoneCreds(s, fmt.Sprintf("u%d", i), time.Hour)
		c := newRawClient(t, s.Addr(), user, pass)
		relayed, err := c.allocate()
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		if p := int(relayed.Port()); p < cfg.LowestPort || p > cfg.HighestPort {
			t.Fatalf("relayed port %d outside %d-%d", p, cfg.LowestPort, cfg.HighestPort)
		}
		clients = append(clients, c)
	}
	user, pass := firezoneCreds(s, "u2", time.Hour)
	third := newRawClient(t, s.Addr(), user, pass)
	resp := third.request(stun.MethodAllocate, requestedTransportUDP())
	if c := errorCode(resp); c != stun.CodeInsufficientCapacity {
		t.Fatalf("third allocation: code %d, want 508", c)
	}
	clients[0].request(stun.MethodRefresh, lifetimeAttr(0))
	waitFor(t, 2*time.Second, "allocation end", func() bool { return s.Allocations() == 1 })
	if _, err := third.allocate(); err != nil {
		t.Fatalf("allocation after a port was freed: %v", err)
	}
}

// settledTraffic returns the traffic counters once two reads 50 ms apart agree (a datagram can reach its
// receiver before the relay's send returns and counts it).
func settledTraffic(s *Server) trafficTotals {
	prev := s.stats.traffic()
	for range 100 {
		time.Sleep(50 * time.Millisecond)
		cur := s.stats.traffic()
		if cur == prev {
			return cur
		}
		prev = cur
	}
	return prev
}
