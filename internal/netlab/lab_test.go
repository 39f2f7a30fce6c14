package netlab_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/snowgate/snowgate/internal/netlab"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// reflector is a tiny STUN-like UDP server: it answers every datagram with the source address it
// observed, as text. It stops when the test ends.
func reflector(t *testing.T, h *netlab.Host, network, addr string) {
	t.Helper()
	conn, err := h.ListenUDP(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 1500)
		for {
			_, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = conn.WriteToUDPAddrPort([]byte(from.String()), from)
		}
	}()
	t.Cleanup(func() { conn.Close(); wg.Wait() })
}

// observe sends a probe from conn to dst and returns the source address dst's reflector saw.
func observe(t *testing.T, conn *net.UDPConn, dst netip.AddrPort) netip.AddrPort {
	t.Helper()
	buf := make([]byte, 1500)
	for attempt := 0; attempt < 5; attempt++ {
		if _, err := conn.WriteToUDPAddrPort([]byte("probe"), dst); err != nil {
			t.Fatalf("send to %s: %v", dst, err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(400 * time.Millisecond))
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Logf("no answer from %s within 400ms (attempt %d): %v", dst, attempt+1, err)
				break // timeout: resend
			}
			if from.Addr().Unmap() != dst.Addr() || from.Port() != dst.Port() {
				continue
			}
			seen, err := netip.ParseAddrPort(string(buf[:n]))
			if err != nil {
				t.Fatalf("reflector %s sent %q: %v", dst, buf[:n], err)
			}
			return netip.AddrPortFrom(seen.Addr().Unmap(), seen.Port())
		}
	}
	t.Fatalf("no answer from reflector %s", dst)
	return netip.AddrPort{}
}

// natLab is the self-test topology: the internet with two reflector hosts, an
// endpoint-independent router r1 with host c1 and a symmetric router r2 with host c2.
type natLab struct {
	lab            *netlab.Lab
	inet           *netlab.Network
	relay1, relay2 *netlab.Host
	r1, r2         *netlab.Router
	c1, c2         *netlab.Host
}

func newNATLab(t *testing.T) *natLab {
	lab := netlab.New(t)
	n := &natLab{lab: lab}
	n.inet = lab.Internet("198.18.0.0/15", "2001:db8:ffff::/64")
	n.relay1 = lab.Host("relay1", n.inet, "198.18.0.101", "2001:db8:ffff::101")
	n.relay2 = lab.Host("relay2", n.inet, "198.18.0.102", "2001:db8:ffff::102")
	lan1 := lab.NATRouter("r1", n.inet, netlab.NATEndpointIndependent, "192.0.2.0/24", "2001:db8:1::/64")
	lan2 := lab.NATRouter("r2", n.inet, netlab.NATSymmetric, "198.51.100.0/24", "2001:db8:2::/64")
	n.r1, n.r2 = lan1.Router(), lan2.Router()
	n.c1 = lab.Host("c1", lan1)
	n.c2 = lab.Host("c2", lan2)
	for _, h := range []*netlab.Host{n.relay1, n.relay2} {
		reflector(t, h, "udp4", "0.0.0.0:3478")
		reflector(t, h, "udp4", "0.0.0.0:3479")
		reflector(t, h, "udp6", "[::]:3478")
	}
	return n
}

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

func TestNAT(t *testing.T) {
	hostForward := func() string {
		b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	forwardBefore := hostForward()
	start := time.Now()
	n := newNATLab(t)
	t.Logf("topology built in %v", time.Since(start))
	if got := hostForward(); got != forwardBefore {
		t.Errorf("host ip_forward changed from %s to %s while building routers", forwardBefore, got)
	}

	if got := n.r1.PublicAddr4(); got != netip.MustParseAddr("198.18.0.1") {
		t.Errorf("r1 public address = %s, want 198.18.0.1 (lowest free)", got)
	}
	if got := n.c1.Addr4(); !n.r1.LAN().Prefix4().Contains(got) {
		t.Errorf("c1 address %s not in r1's LAN %s", got, n.r1.LAN().Prefix4())
	}

	t.Run("reach relay by UDP through both routers", func(t *testing.T) {
		for _, c := range []struct {
			host *netlab.Host
			r    *netlab.Router
		}{{n.c1, n.r1}, {n.c2, n.r2}} {
			conn, err := c.host.ListenUDP("udp4", "0.0.0.0:0")
			if err != nil {
				t.Fatal(err)
			}
			seen := observe(t, conn, ap(n.relay1.Addr4(), 3478))
			conn.Close()
			if seen.Addr() != c.r.PublicAddr4() {
				t.Errorf("%s seen as %s, want the router's public address %s", c.host.Node(), seen, c.r.PublicAddr4())
			}
		}
	})

	t.Run("endpoint-independent mapping", func(t *testing.T) {
		conn, err := n.c1.ListenUDP("udp4", "0.0.0.0:0")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		a := observe(t, conn, ap(n.relay1.Addr4(), 3478))
		b := observe(t, conn, ap(n.relay2.Addr4(), 3478))
		c := observe(t, conn, ap(n.relay1.Addr4(), 3479))
		if a != b || a != c {
			t.Errorf("EIM NAT mapped one socket differently per destination: %s, %s, %s", a, b, c)
		}
		if a.Addr() != n.r1.PublicAddr4() {
			t.Errorf("mapped address %s, want %s", a, n.r1.PublicAddr4())
		}
	})

	t.Run("symmetric mapping", func(t *testing.T) {
		conn, err := n.c2.ListenUDP("udp4", "0.0.0.0:0")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ports := map[uint16]bool{}
		var seen []netip.AddrPort
		for _, dst := range []netip.AddrPort{
			ap(n.relay1.Addr4(), 3478), ap(n.relay2.Addr4(), 3478),
			ap(n.relay1.Addr4(), 3479), ap(n.relay2.Addr4(), 3479),
		} {
			s := observe(t, conn, dst)
			if s.Addr() != n.r2.PublicAddr4() {
				t.Errorf("mapped address %s, want %s", s, n.r2.PublicAddr4())
			}
			ports[s.Port()] = true
			seen = append(seen, s)
		}
		// Random ports may collide by chance (~1/28000 per pair); four destinations with a single
		// port between them cannot happen by chance.
		if len(ports) < 2 {
			t.Errorf("symmetric NAT used one public port for four destinations: %v", seen)
		}
		t.Logf("symmetric mappings: %v", seen)
	})

	t.Run("unsolicited inbound is dropped", func(t *testing.T) {
		ctx := t.Context()
		inside, err := n.c1.ListenUDP("udp4", "0.0.0.0:0")
		if err != nil {
			t.Fatal(err)
		}
		defer inside.Close()
		port := uint16(inside.LocalAddr().(*net.UDPAddr).Port)
		outside, err := n.relay2.ListenUDP("udp4", "0.0.0.0:0")
		if err != nil {
			t.Fatal(err)
		}
		defer outside.Close()
		before, err := n.r1.DroppedUnsolicited(ctx)
		if err != nil {
			t.Fatal(err)
		}

		// (a) Nothing mapped yet: the router's public address at the host's port.
		pub := ap(n.r1.PublicAddr4(), port)
		if _, err := outside.WriteToUDPAddrPort([]byte("unsolicited"), pub); err != nil {
			t.Fatal(err)
		}
		// (b) The host opens a mapping to relay1: a different remote sending to the mapped port
		// is still filtered (address- and port-dependent filtering).
		mapped := observe(t, inside, ap(n.relay1.Addr4(), 3478))
		if _, err := outside.WriteToUDPAddrPort([]byte("unsolicited"), mapped); err != nil {
			t.Fatal(err)
		}
		_ = inside.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		buf := make([]byte, 1500)
		if n, from, err := inside.ReadFromUDPAddrPort(buf); err == nil {
			t.Fatalf("unsolicited datagram %q from %s crossed the NAT", buf[:n], from)
		}
		after, err := n.r1.DroppedUnsolicited(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if after-before < 2 {
			t.Errorf("drop counter went from %d to %d, want +2", before, after)
		}

		// (c) A port forward lets the same traffic through.
		if err := n.r1.ForwardPort("udp", 40000, n.c1, port); err != nil {
			t.Fatal(err)
		}
		if _, err := outside.WriteToUDPAddrPort([]byte("forwarded"), ap(n.r1.PublicAddr4(), 40000)); err != nil {
			t.Fatal(err)
		}
		_ = inside.SetReadDeadline(time.Now().Add(2 * time.Second))
		got, from, err := inside.ReadFromUDPAddrPort(buf)
		if err != nil || string(buf[:got]) != "forwarded" {
			t.Fatalf("port forward: got %q from %s, err %v", buf[:got], from, err)
		}
		if from.Addr().Unmap() != n.relay2.Addr4() {
			t.Errorf("forwarded datagram from %s, want the sender's own address %s", from, n.relay2.Addr4())
		}
	})

	t.Run("port range forward", func(t *testing.T) {
		if err := n.r2.ForwardPorts("udp", 50000, 50010, n.c2); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			network, listen string
			pub             netip.Addr
		}{{"udp4", "0.0.0.0:50005", n.r2.PublicAddr4()}, {"udp6", "[::]:50005", n.r2.PublicAddr6()}} {
			inside, err := n.c2.ListenUDP(c.network, c.listen)
			if err != nil {
				t.Fatal(err)
			}
			defer inside.Close()
			outside, err := n.relay1.ListenUDP(c.network, c.listen)
			if err != nil {
				t.Fatal(err)
			}
			defer outside.Close()
			if _, err := outside.WriteToUDPAddrPort([]byte("ranged"), ap(c.pub, 50005)); err != nil {
				t.Fatal(err)
			}
			_ = inside.SetReadDeadline(time.Now().Add(2 * time.Second))
			buf := make([]byte, 64)
			got, from, err := inside.ReadFromUDPAddrPort(buf)
			if err != nil || string(buf[:got]) != "ranged" {
				t.Fatalf("%s: forwarded range: got %q from %s, err %v", c.network, buf[:got], from, err)
			}
		}
	})

	t.Run("link down and up", func(t *testing.T) {
		conn, err := n.c1.ListenUDP("udp4", "0.0.0.0:0")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if err := n.c1.Link().SetUp(false); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.WriteToUDPAddrPort([]byte("x"), ap(n.relay1.Addr4(), 3478)); err == nil {
			_ = conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			if _, _, err := conn.ReadFromUDPAddrPort(make([]byte, 64)); err == nil {
				t.Fatal("got an answer with the link down")
			}
		}
		if err := n.c1.Link().SetUp(true); err != nil {
			t.Fatal(err)
		}
		if seen := observe(t, conn, ap(n.relay1.Addr4(), 3478)); seen.Addr() != n.r1.PublicAddr4() {
			t.Errorf("after link up seen as %s", seen)
		}
	})

	t.Run("mapping expiry", func(t *testing.T) {
		if err := n.r1.SetUDPTimeout(time.Second); err != nil {
			t.Fatal(err)
		}
		out, err := n.r1.Exec(t.Context(), "cat", "/proc/sys/net/netfilter/nf_conntrack_udp_timeout")
		if err != nil || strings.TrimSpace(string(out)) != "1" {
			t.Fatalf("router udp timeout = %q, %v; want 1", out, err)
		}
		host, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_udp_timeout")
		if err == nil && strings.TrimSpace(string(host)) == "1" {
			t.Errorf("the host's conntrack UDP timeout changed too")
		}
		inside, err := n.c1.ListenUDP("udp4", "0.0.0.0:0")
		if err != nil {
			t.Fatal(err)
		}
		defer inside.Close()
		outside, err := n.relay1.ListenUDP("udp4", "0.0.0.0:0")
		if err != nil {
			t.Fatal(err)
		}
		defer outside.Close()
		dst := ap(n.relay1.Addr4(), uint16(outside.LocalAddr().(*net.UDPAddr).Port))
		if _, err := inside.WriteToUDPAddrPort([]byte("open"), dst); err != nil {
			t.Fatal(err)
		}
		_ = outside.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 64)
		_, mapped, err := outside.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatal(err)
		}
		recv := func(wait time.Duration) bool {
			_ = inside.SetReadDeadline(time.Now().Add(wait))
			_, _, err := inside.ReadFromUDPAddrPort(buf)
			return err == nil
		}
		if _, err := outside.WriteToUDPAddrPort([]byte("reply"), mapped); err != nil || !recv(2*time.Second) {
			t.Fatalf("reply through a fresh mapping did not arrive (send err %v)", err)
		}
		time.Sleep(1500 * time.Millisecond)
		if _, err := outside.WriteToUDPAddrPort([]byte("late"), mapped); err != nil {
			t.Fatal(err)
		}
		if recv(300 * time.Millisecond) {
			t.Error("a datagram crossed the NAT after the mapping's timeout")
		}
	})

	t.Run("IPv6 through NAT66", func(t *testing.T) {
		for _, c := range []struct {
			host *netlab.Host
			r    *netlab.Router
		}{{n.c1, n.r1}, {n.c2, n.r2}} {
			conn, err := c.host.ListenUDP("udp6", "[::]:0")
			if err != nil {
				t.Fatal(err)
			}
			seen := observe(t, conn, ap(n.relay1.Addr6(), 3478))
			conn.Close()
			if seen.Addr() != c.r.PublicAddr6() {
				t.Errorf("%s seen over IPv6 as %s, want the router's public address %s", c.host.Node(), seen, c.r.PublicAddr6())
			}
		}
	})

	t.Run("TCP through NAT", func(t *testing.T) {
		ln, err := n.relay1.ListenTCP("tcp", "[2001:db8:ffff::101]:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		accepted := make(chan string, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				accepted <- err.Error()
				return
			}
			defer c.Close()
			accepted <- c.RemoteAddr().String()
		}()
		c, err := n.c2.DialTCP(t.Context(), "tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		remote := <-accepted
		if ap, err := netip.ParseAddrPort(remote); err != nil || ap.Addr() != n.r2.PublicAddr6() {
			t.Errorf("relay saw TCP peer %s, want %s", remote, n.r2.PublicAddr6())
		}
	})

	t.Run("commands in namespaces", func(t *testing.T) {
		out, err := n.c1.Exec(t.Context(), "ip", "-o", "addr", "show", "dev", "nleth0")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(out), n.c1.Addr4().String()) {
			t.Errorf("ip addr in c1 = %s, want %s", out, n.c1.Addr4())
		}
		for _, ns := range []*netlab.Namespace{n.c1.Namespace, n.r1.Namespace} {
			out, err = ns.Exec(t.Context(), "cat", "/proc/sys/net/ipv4/ip_forward")
			if err != nil {
				t.Fatal(err)
			}
			want := "0"
			if ns == n.r1.Namespace {
				want = "1"
			}
			if got := strings.TrimSpace(string(out)); got != want {
				t.Errorf("%s: ip_forward = %s, want %s", ns.Node(), got, want)
			}
		}
		cmd := n.relay1.Run(t, t.Context(), "sleep", "60")
		pid := cmd.Process.Pid
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err != nil {
			t.Fatalf("started process %d not running: %v", pid, err)
		}
	})
}

// netnsID returns the identity of the calling thread's network namespace.
func netnsID(t *testing.T) string {
	t.Helper()
	id, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestDo(t *testing.T) {
	lab := netlab.New(t)
	inet := lab.Internet()
	a := lab.Host("a", inet)
	b := lab.Host("b", inet)

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	home := netnsID(t)

	var inside string
	var names []string
	err := a.Do(func() error {
		id, err := os.Readlink("/proc/thread-self/ns/net")
		inside = id
		ifs, _ := net.Interfaces()
		for _, i := range ifs {
			names = append(names, i.Name)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if inside == home {
		t.Fatalf("Do ran f in the caller's namespace %s", home)
	}
	if strings.Join(names, ",") != "lo,nleth0" {
		t.Errorf("interfaces inside a = %v, want [lo nleth0]", names)
	}
	if got := netnsID(t); got != home {
		t.Fatalf("caller's namespace changed from %s to %s", home, got)
	}

	sentinel := errors.New("boom")
	if err := a.Do(func() error { return sentinel }); !errors.Is(err, sentinel) {
		t.Errorf("Do error = %v, want %v", err, sentinel)
	}
	func() {
		defer func() {
			r := recover()
			if err, ok := r.(error); !ok || !errors.Is(err, netlab.ErrDoPanicked) {
				t.Errorf("recovered %v, want ErrDoPanicked", r)
			}
		}()
		_ = a.Do(func() error { panic("inside") })
	}()

	// A socket made inside Do keeps its namespace while used from other goroutines.
	srv, err := b.ListenUDP("udp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli, err := a.ListenUDP("udp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	dst := ap(b.Addr4(), uint16(srv.LocalAddr().(*net.UDPAddr).Port))
	done := make(chan error, 1)
	go func() {
		_, err := cli.WriteToUDPAddrPort([]byte("hello"), dst)
		done <- err
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	_ = srv.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 64)
	n, from, err := srv.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "hello" || from.Addr().Unmap() != a.Addr4() {
		t.Fatalf("got %q from %s (err %v), want hello from %s", buf[:n], from, err, a.Addr4())
	}
	// The test process itself has no route to the lab: the same send from the host namespace fails
	// or goes nowhere, proving the socket above really lived in a.
	if _, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IP(a.Addr4().AsSlice())}); err == nil {
		t.Errorf("lab address %s is bindable in the host namespace", a.Addr4())
	}
}

// fakeTB records cleanups instead of running them and turns Fatal into runtime.Goexit, so a test
// can fail a lab's "test" on purpose and then check what its cleanup leaves behind.
type fakeTB struct {
	testing.TB
	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

func (f *fakeTB) Cleanup(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cleanups = append(f.cleanups, fn)
}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.failed = true
	f.mu.Unlock()
	f.TB.Logf("fake test failed: "+format, args...)
	runtime.Goexit()
}

func (f *fakeTB) Errorf(format string, args ...any) {
	f.mu.Lock()
	f.failed = true
	f.mu.Unlock()
	f.TB.Logf("fake test error: "+format, args...)
}

func (f *fakeTB) Failed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failed
}

func (f *fakeTB) runCleanups() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}

// leftovers lists namespaces whose name starts with prefix and host-namespace interfaces whose name
// starts with "nl".
func leftovers(t *testing.T, prefix string) []string {
	t.Helper()
	var found []string
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], prefix) {
			found = append(found, "netns "+f[0])
		}
	}
	out, err = exec.Command("ip", "-o", "link", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("ip link: %v: %s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && strings.HasPrefix(f[1], netlab.Prefix) {
			found = append(found, "link "+f[1])
		}
	}
	return found
}

func TestCleanup(t *testing.T) {
	if reason := netlab.SkipReason(); reason != "" {
		t.Skip(reason) // the fake test below must not skip in its own goroutine
	}
	t.Run("Close removes everything", func(t *testing.T) {
		lab := netlab.New(t)
		inet := lab.Internet()
		lan := lab.NATRouter("r", inet, netlab.NATSymmetric)
		h := lab.Host("h", lan)
		h.Run(t, t.Context(), "sleep", "60")
		if len(lab.NamespaceNames()) != 3 || len(leftovers(t, lab.ID())) != 3 {
			t.Fatalf("lab has namespaces %v, system shows %v", lab.NamespaceNames(), leftovers(t, lab.ID()))
		}
		if err := lab.Close(); err != nil {
			t.Fatal(err)
		}
		if left := leftovers(t, lab.ID()); len(left) > 0 {
			t.Errorf("left behind after Close: %v", left)
		}
		if err := lab.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})

	t.Run("after Fatal mid-test", func(t *testing.T) {
		fake := &fakeTB{TB: t}
		var id string
		var pid int
		done := make(chan struct{})
		go func() {
			defer close(done)
			lab := netlab.New(fake)
			id = lab.ID()
			inet := lab.Internet()
			lan := lab.NATRouter("r", inet, netlab.NATEndpointIndependent)
			h := lab.Host("h", lan)
			pid = h.Run(fake, context.Background(), "sleep", "60").Process.Pid
			fake.Fatalf("failing on purpose with the lab half used")
			t.Error("Fatalf returned")
		}()
		<-done
		if !fake.Failed() || id == "" {
			t.Fatal("fake test did not fail as planned")
		}
		if len(leftovers(t, id)) == 0 {
			t.Fatal("nothing was created before the failure")
		}
		fake.runCleanups()
		if left := leftovers(t, id); len(left) > 0 {
			t.Errorf("left behind after a failed test's cleanup: %v", left)
		}
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
			if st, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); !bytes.Contains(st, []byte(") Z")) {
				t.Errorf("process %d still running after cleanup", pid)
			}
		}
	})
}

func TestStandardTopology(t *testing.T) {
	s := netlab.StandardTopology(t, netlab.StandardOptions{ClientNAT: netlab.NATSymmetric})
	reflector(t, s.Relay1, "udp", "0.0.0.0:3478")
	reflector(t, s.Relay2, "udp6", "[::]:3478")
	reflector(t, s.Resource, "udp", "0.0.0.0:7")

	for _, c := range []struct {
		from *netlab.Host
		to   netip.AddrPort
		want netip.Addr
	}{
		{s.Client, ap(s.Relay1.Addr4(), 3478), s.RC.PublicAddr4()},
		{s.Gateway, ap(s.Relay1.Addr4(), 3478), s.RG.PublicAddr4()},
		{s.Client, ap(s.Relay2.Addr6(), 3478), s.RC.PublicAddr6()},
		{s.Gateway, ap(s.Resource.Addr4(), 7), s.Gateway.Iface(s.Resources).Addr4},
	} {
		conn, err := c.from.ListenUDP("udp", "[::]:0")
		if err != nil {
			t.Fatal(err)
		}
		st := time.Now()
		got := observe(t, conn, c.to)
		t.Logf("%s → %s: %v", c.from.Node(), c.to, time.Since(st))
		if got.Addr() != c.want {
			t.Errorf("%s → %s seen as %s, want %s", c.from.Node(), c.to, got, c.want)
		}
		conn.Close()
	}
	if s.Resource.Addr4() != netip.MustParseAddr("203.0.113.100") || s.RC.PublicAddr4() != netip.MustParseAddr("198.18.0.1") {
		t.Errorf("addresses differ from the documented plan: resource %s, rc %s", s.Resource.Addr4(), s.RC.PublicAddr4())
	}
}

func TestImpairment(t *testing.T) {
	lab := netlab.New(t)
	inet := lab.Internet()
	a := lab.Host("a", inet)
	b := lab.Host("b", inet)
	if !lab.NetemAvailable() {
		err := a.Link().SetImpairment(netlab.Impairment{Delay: time.Millisecond})
		if !errors.Is(err, netlab.ErrNetemUnavailable) {
			t.Fatalf("SetImpairment without netem = %v, want ErrNetemUnavailable", err)
		}
		t.Skipf("netlab: sch_netem is not available in this kernel; skipping the latency test (%v)", err)
	}
	reflector(t, b, "udp", "0.0.0.0:3478")
	if err := a.Link().SetImpairment(netlab.Impairment{Delay: 25 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	conn, err := a.ListenUDP("udp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	observe(t, conn, ap(b.Addr4(), 3478))
	if rtt := time.Since(start); rtt < 50*time.Millisecond {
		t.Errorf("RTT %v over a link with 25 ms each way, want ≥ 50 ms", rtt)
	}
}

func TestParallelLabs(t *testing.T) {
	// Identical topologies with identical node names and addresses, built at the same time, must
	// not collide.
	for i := 0; i < 3; i++ {
		t.Run("lab", func(t *testing.T) {
			t.Parallel()
			lab := netlab.New(t)
			inet := lab.Internet()
			relay := lab.Host("relay1", inet, "198.18.0.101")
			lan := lab.NATRouter("r1", inet, netlab.NATEndpointIndependent)
			client := lab.Host("client", lan)
			reflector(t, relay, "udp4", "0.0.0.0:3478")
			conn, err := client.ListenUDP("udp4", "0.0.0.0:0")
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if seen := observe(t, conn, ap(relay.Addr4(), 3478)); seen.Addr() != lan.Router().PublicAddr4() {
				t.Errorf("seen as %s, want %s", seen, lan.Router().PublicAddr4())
			}
		})
	}
}

func TestDoubleNAT(t *testing.T) {
	lab := netlab.New(t)
	inet := lab.Internet()
	relay := lab.Host("relay1", inet)
	outer := lab.NATRouter("isp", inet, netlab.NATSymmetric, "198.51.100.0/24", "2001:db8:51::/64")
	inner := lab.NATRouter("home", outer, netlab.NATEndpointIndependent, "192.0.2.0/24", "2001:db8:1::/64")
	client := lab.Host("client", inner)
	reflector(t, relay, "udp", "[::]:3478")
	for _, dst := range []netip.AddrPort{ap(relay.Addr4(), 3478), ap(relay.Addr6(), 3478)} {
		conn, err := client.ListenUDP("udp", "[::]:0")
		if err != nil {
			t.Fatal(err)
		}
		want := outer.Router().PublicAddr4()
		if dst.Addr().Is6() {
			want = outer.Router().PublicAddr6()
		}
		if seen := observe(t, conn, dst); seen.Addr() != want {
			t.Errorf("client behind two NATs seen as %s, want the outer router's %s", seen, want)
		}
		conn.Close()
	}
	if got := inner.Router().PublicAddr4(); !outer.Prefix4().Contains(got) {
		t.Errorf("inner router's WAN %s not on the outer LAN %s", got, outer.Prefix4())
	}
}
