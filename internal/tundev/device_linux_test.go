//go:build linux

package tundev

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/netlab"
)

func TestCreateConfiguresDevice(t *testing.T) {
	lab := netlab.New(t)
	h := lab.Host("c", lab.Internet())
	cfg := testConfig(t, DNSModeDisabled)
	dev := create(t, h.Namespace, cfg)

	st := readState(t, h.Namespace, cfg)
	if st.link == nil {
		t.Fatal("TUN link missing after Create")
	}
	a := st.link.Attrs()
	if a.Name != DefaultName || a.MTU != DefaultMTU || a.Flags&net.FlagUp == 0 || a.RawFlags&unix.IFF_RUNNING == 0 {
		t.Errorf("link %s: mtu %d flags %v raw %#x; want %s, mtu %d, up and running", a.Name, a.MTU, a.Flags, a.RawFlags, DefaultName, DefaultMTU)
	}
	tt, ok := st.link.(*netlink.Tuntap)
	if !ok {
		t.Fatalf("link type %s, want tuntap", st.link.Type())
	}
	if tt.Mode != netlink.TUNTAP_MODE_TUN || tt.Flags&netlink.TUNTAP_VNET_HDR == 0 || tt.Flags&netlink.TUNTAP_NO_PI == 0 || !tt.NonPersist {
		t.Errorf("tuntap mode %v flags %#x non-persist %v; want tun, vnet_hdr|no_pi, non-persistent", tt.Mode, tt.Flags, tt.NonPersist)
	}
	if got := dev.TUN().BatchSize(); got != conn.IdealBatchSize {
		t.Errorf("BatchSize %d, want %d (IFF_VNET_HDR offloads on)", got, conn.IdealBatchSize)
	}
	if dev.Index() != a.Index || dev.Name() != DefaultName || !dev.HasIPv6() {
		t.Errorf("device reports index %d name %q ipv6 %v", dev.Index(), dev.Name(), dev.HasIPv6())
	}

	// Exactly the two tunnel addresses, no IPv6 link-local.
	var addrs []string
	do(t, h.Namespace, func() error {
		list, err := netlink.AddrList(st.link, netlink.FAMILY_ALL)
		for _, ad := range list {
			addrs = append(addrs, ad.IPNet.String())
		}
		return err
	})
	slices.Sort(addrs)
	if want := []string{"100.64.0.1/32", "fd00:2021:1111::1/128"}; !slices.Equal(addrs, want) {
		t.Errorf("addresses %v, want %v", addrs, want)
	}

	// Six policy rules, as `ip rule` shows them.
	if len(st.rules) != 6 {
		t.Errorf("%d rules at our priorities, want 6", len(st.rules))
	}
	for _, fam := range []string{"-4", "-6"} {
		out := ipOut(t, h.Namespace, fam, "rule", "show")
		for _, want := range []string{
			fmt.Sprintf("%d:\tnot from all fwmark %#x lookup %d\n", DefaultRulePriority, DefaultFwmark, DefaultTable),
			fmt.Sprintf("%d:\tfrom all lookup main suppress_prefixlength 0\n", DefaultRulePriority+1),
			fmt.Sprintf("%d:\tnot from all fwmark %#x lookup %d\n", DefaultRulePriority+2, DefaultFwmark, DefaultTable+1),
		} {
			if !strings.Contains(out, want) {
				t.Errorf("ip %s rule: missing %q in\n%s", fam, want, out)
			}
		}
	}
}

func TestSetRoutesDiffs(t *testing.T) {
	lab := netlab.New(t)
	h := lab.Host("c", lab.Internet())
	cfg := testConfig(t, DNSModeDisabled)
	dev := create(t, h.Namespace, cfg)

	set := func(ps ...string) {
		t.Helper()
		var prefixes []netip.Prefix
		for _, p := range ps {
			prefixes = append(prefixes, netip.MustParsePrefix(p))
		}
		if err := dev.SetRoutes(prefixes); err != nil {
			t.Fatalf("SetRoutes(%v): %v", ps, err)
		}
	}
	expect := func(want ...string) {
		t.Helper()
		got, err := dev.Routes()
		if err != nil {
			t.Fatal(err)
		}
		var gs []string
		for _, p := range got {
			gs = append(gs, p.String())
		}
		slices.Sort(gs)
		slices.Sort(want)
		if !slices.Equal(gs, want) {
			t.Fatalf("routes %v, want %v", gs, want)
		}
		st := readState(t, h.Namespace, cfg)
		if len(st.routes) != len(want) {
			t.Fatalf("tables %d and %d hold %d routes, want %d", DefaultTable, DefaultTable+1, len(st.routes), len(want))
		}
	}
	mon := startRouteMonitor(t, h.Namespace, DefaultTable, DefaultTable+1)

	set("203.0.113.0/24", "2001:db8:77::/48", "0.0.0.0/0", "203.0.113.9/24") // masked, de-duplicated
	expect("0.0.0.0/0", "2001:db8:77::/48", "203.0.113.0/24")
	mon.expectChanges(t, "+0.0.0.0/0", "+2001:db8:77::/48", "+203.0.113.0/24")

	set("203.0.113.0/24", "2001:db8:77::/48", "0.0.0.0/0") // idempotent: the kernel sees nothing
	expect("0.0.0.0/0", "2001:db8:77::/48", "203.0.113.0/24")
	mon.expectChanges(t)

	set("203.0.113.0/24", "198.51.100.0/24", "::/0") // only the difference is applied
	expect("198.51.100.0/24", "203.0.113.0/24", "::/0")
	mon.expectChanges(t, "-0.0.0.0/0", "-2001:db8:77::/48", "+198.51.100.0/24", "+::/0")

	// The kernel's table is the reference: a route deleted behind our back comes back.
	ipOut(t, h.Namespace, "route", "del", "198.51.100.0/24", "table", fmt.Sprint(DefaultTable))
	set("203.0.113.0/24", "198.51.100.0/24", "::/0")
	expect("198.51.100.0/24", "203.0.113.0/24", "::/0")

	mon.expectChanges(t, "-198.51.100.0/24", "+198.51.100.0/24")

	set()
	expect()
	mon.expectChanges(t, "-198.51.100.0/24", "-203.0.113.0/24", "-::/0")
	if err := dev.SetRoutes([]netip.Prefix{{}}); err == nil {
		t.Error("SetRoutes accepted an invalid prefix")
	}
}

// TestRoutingPolicy checks which way the kernel routes with the rules in place: resources beat
// local networks, local networks beat the Internet resource, marked packets bypass everything.
func TestRoutingPolicy(t *testing.T) {
	lab := netlab.New(t)
	inet := lab.Internet()
	h := lab.Host("c", inet)
	// A default route in main, as a real host has (the lab internet has none).
	ipOut(t, h.Namespace, "route", "add", "default", "via", "198.18.0.254", "dev", "nleth0")
	ipOut(t, h.Namespace, "-6", "route", "add", "default", "via", "2001:db8:ffff::fe", "dev", "nleth0")
	cfg := testConfig(t, DNSModeDisabled)
	dev := create(t, h.Namespace, cfg)

	routeDev := func(dst string, marked bool) string {
		t.Helper()
		args := []string{"route", "get", dst}
		if marked {
			args = append(args, "mark", fmt.Sprint(DefaultFwmark))
		}
		out := ipOut(t, h.Namespace, args...)
		f := strings.Fields(out)
		for i := range f[:len(f)-1] {
			if f[i] == "dev" {
				return f[i+1]
			}
		}
		t.Fatalf("ip route get %s: no dev in %q", dst, out)
		return ""
	}
	check := func(dst string, marked bool, want string) {
		t.Helper()
		if got := routeDev(dst, marked); got != want {
			t.Errorf("route to %s (marked %v) goes via %s, want %s", dst, marked, got, want)
		}
	}

	if err := dev.SetRoutes([]netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}); err != nil {
		t.Fatal(err)
	}
	check("192.0.2.1", false, DefaultName)      // off-link: the Internet resource
	check("2001:db8:1::1", false, DefaultName)  // same for IPv6
	check("198.18.0.50", false, "nleth0")       // the local network wins over the tunnel's default
	check("2001:db8:ffff::50", false, "nleth0") //
	check("192.0.2.1", true, "nleth0")          // marked: main's default route
	check("2001:db8:1::1", true, "nleth0")      //
	check("198.18.0.50", true, "nleth0")        //

	if err := dev.SetRoutes([]netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("198.18.0.0/16"), netip.MustParsePrefix("2001:db8:ffff::/64")}); err != nil {
		t.Fatal(err)
	}
	check("198.18.0.50", false, DefaultName)       // a resource wins over the local network
	check("2001:db8:ffff::50", false, DefaultName) //
	check("198.18.0.50", true, "nleth0")           // marked traffic never enters the tunnel
	check("2001:db8:ffff::50", true, "nleth0")     //

	// Exclusions (the portal's and relays' addresses under the Internet resource) leave the tunnel's
	// default route for everyone, but a resource route still wins over them.
	all := []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0"), netip.MustParsePrefix("192.0.2.64/26")}
	ex := []netip.Prefix{netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("2001:db8:1::7/128"), netip.MustParsePrefix("192.0.2.70/32")}
	if err := dev.SetRoutesExcluding(all, ex); err != nil {
		t.Fatal(err)
	}
	check("192.0.2.7", false, "nleth0")
	check("2001:db8:1::7", false, "nleth0")
	check("192.0.2.8", false, DefaultName)
	check("2001:db8:1::8", false, DefaultName)
	check("192.0.2.70", false, DefaultName) // inside a resource
	if got, _ := dev.Routes(); len(got) != 3 {
		t.Errorf("Routes %v: exclusions must not be listed", got)
	}
	if err := dev.SetRoutesExcluding(all, ex); err != nil { // idempotent
		t.Fatal(err)
	}
	if err := dev.SetRoutes(all); err != nil { // exclusions dropped
		t.Fatal(err)
	}
	check("192.0.2.7", false, DefaultName)
}

func TestCloseLeavesNothing(t *testing.T) {
	lab := netlab.New(t)
	h := lab.Host("c", lab.Internet())
	cfg := testConfig(t, DNSModeEtcResolvConf)
	var dev *Device
	do(t, h.Namespace, func() (err error) {
		dev, err = Create(cfg)
		return err
	})
	if err := dev.SetRoutes([]netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0"), netip.MustParsePrefix("203.0.113.0/24")}); err != nil {
		t.Fatal(err)
	}
	if err := dev.DNS().Apply([]netip.Addr{netip.MustParseAddr("100.100.111.1")}, "corp.example"); err != nil {
		t.Fatal(err)
	}
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}
	assertClean(t, h.Namespace, cfg)
	if got := readFile(t, cfg.DNS.ResolvConfPath); got != originalResolv {
		t.Errorf("resolv.conf after Close:\n%s\nwant the original", got)
	}
	if err := dev.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := dev.SetRoutes(nil); !errors.Is(err, ErrClosed) {
		t.Errorf("SetRoutes after Close: %v, want ErrClosed", err)
	}
}

func TestCreateRefusesBusyDevice(t *testing.T) {
	lab := netlab.New(t)
	h := lab.Host("c", lab.Internet())
	cfg := testConfig(t, DNSModeDisabled)
	_ = create(t, h.Namespace, cfg)
	var err error
	_ = h.Do(func() error {
		var second *Device
		second, err = Create(cfg)
		if err == nil {
			second.Close()
		}
		return nil
	})
	if !errors.Is(err, ErrDeviceBusy) {
		t.Fatalf("second Create: %v, want ErrDeviceBusy", err)
	}
	if st := readState(t, h.Namespace, cfg); st.link == nil || len(st.rules) != 6 {
		t.Errorf("the failed second Create touched the first device's state: link %v, %d rules", st.link != nil, len(st.rules))
	}
	// An interface with our name that is not a TUN is never touched.
	other := cfg
	other.Name = "nleth0"
	_ = h.Do(func() error {
		err = Cleanup(other)
		return nil
	})
	if !errors.Is(err, ErrNameInUse) {
		t.Errorf("Cleanup with a veth's name: %v, want ErrNameInUse", err)
	}
}

func TestCleanupRemovesPersistentTUN(t *testing.T) {
	lab := netlab.New(t)
	h := lab.Host("c", lab.Internet())
	cfg := testConfig(t, DNSModeDisabled)
	ipOut(t, h.Namespace, "tuntap", "add", "dev", DefaultName, "mode", "tun")
	var logs logBuffer
	cfg.Logger = logs.logger()
	do(t, h.Namespace, func() error { return Cleanup(cfg) })
	assertClean(t, h.Namespace, cfg)
	if !strings.Contains(logs.String(), "level=INFO msg=\"removed a leftover persistent TUN device\"") {
		t.Errorf("no INFO log of the removal:\n%s", logs.String())
	}
}

// TestPacketsThroughTUN pings the host through the TUN and exchanges UDP with a socket, both
// families: packets written to the TUN reach the host's stack, its answers come out of the TUN.
func TestPacketsThroughTUN(t *testing.T) {
	lab := netlab.New(t)
	h := lab.Host("c", lab.Internet())
	cfg := testConfig(t, DNSModeDisabled)
	dev := create(t, h.Namespace, cfg)
	if err := dev.SetRoutes([]netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("2001:db8:77::/48")}); err != nil {
		t.Fatal(err)
	}
	r := startReader(t, dev.TUN())
	t.Cleanup(func() { dev.Close() }) // stops the reader before its own cleanup checks it

	for _, tc := range []struct{ remote, local netip.Addr }{
		{netip.MustParseAddr("203.0.113.7"), tunV4},
		{netip.MustParseAddr("2001:db8:77::7"), tunV6},
	} {
		t.Run("ping "+tc.remote.String(), func(t *testing.T) {
			payload := []byte("snowgate ping")
			writeTUN(t, dev.TUN(), icmpEcho(tc.remote, tc.local, false, 0x5347, 1, payload))
			want := icmpEcho(tc.local, tc.remote, true, 0x5347, 1, payload)
			r.await(t, "echo reply", func(p []byte) bool {
				pkt, err := ippacket.Parse(p)
				if err != nil || pkt.Dst() != tc.remote || pkt.Src() != tc.local {
					return false
				}
				hl := 20
				if tc.remote.Is6() {
					hl = 40
				}
				// Same ICMP message as our reference reply (type, id, seq, payload, checksum).
				return bytes.Equal(p[hl:], want[hl:])
			})
		})
		t.Run("udp "+tc.remote.String(), func(t *testing.T) {
			network := "udp4"
			if tc.local.Is6() {
				network = "udp6"
			}
			sock, err := h.ListenUDP(network, netip.AddrPortFrom(tc.local, 4000).String())
			if err != nil {
				t.Fatal(err)
			}
			defer sock.Close()
			from := netip.AddrPortFrom(tc.remote, 5000)
			buf := make([]byte, 1500)
			n, err := ippacket.BuildUDP(buf, from, netip.AddrPortFrom(tc.local, 4000), []byte("into the tun"))
			if err != nil {
				t.Fatal(err)
			}
			writeTUN(t, dev.TUN(), buf[:n])
			got := make([]byte, 100)
			_ = sock.SetReadDeadline(time.Now().Add(10 * time.Second))
			m, src, err := sock.ReadFromUDPAddrPort(got)
			if err != nil {
				t.Fatalf("socket did not receive the packet written to the TUN: %v", err)
			}
			if string(got[:m]) != "into the tun" || src != from {
				t.Fatalf("socket got %q from %s, want %q from %s", got[:m], src, "into the tun", from)
			}
			if _, err := sock.WriteToUDPAddrPort([]byte("out of the tun"), from); err != nil {
				t.Fatal(err)
			}
			r.await(t, "UDP reply", func(p []byte) bool {
				pkt, err := ippacket.Parse(p)
				if err != nil || pkt.Dst() != tc.remote || pkt.Src() != tc.local {
					return false
				}
				sp, dp, err := pkt.Ports()
				payload, perr := pkt.UDPPayload()
				return err == nil && perr == nil && sp == 4000 && dp == 5000 && string(payload) == "out of the tun"
			})
		})
	}
}

// TestRoutesBeforeAddresses: a daemon creates its TUN before the portal names the tunnel addresses and may
// set routes before them; the routes appear once the addresses do.
func TestRoutesBeforeAddresses(t *testing.T) {
	lab := netlab.New(t)
	h := lab.Host("c", lab.Internet())
	cfg := testConfig(t, DNSModeDisabled)
	cfg.IPv4, cfg.IPv6 = netip.Addr{}, netip.Addr{}
	dev := create(t, h.Namespace, cfg)
	routes := []netip.Prefix{netip.MustParsePrefix("100.64.0.0/11"), netip.MustParsePrefix("fd00:2021:1111::/107")}
	if err := dev.SetRoutes(routes); err != nil {
		t.Fatal(err)
	}
	if got, _ := dev.Routes(); len(got) != 0 {
		t.Fatalf("routes without addresses: %v", got)
	}
	if err := dev.SetAddresses(tunV4, tunV6); err != nil {
		t.Fatal(err)
	}
	if got, _ := dev.Routes(); !slices.Equal(got, routes) {
		t.Fatalf("routes after the addresses came: %v, want %v", got, routes)
	}
}
