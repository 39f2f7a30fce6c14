//go:build linux

package hostfwd

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/snowgate/snowgate/internal/ippacket"
	"github.com/snowgate/snowgate/internal/netlab"
	"github.com/snowgate/snowgate/internal/tundev"
)

// logBuffer collects a text log for assertions; it is safe for concurrent use.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

func do(t *testing.T, ns *netlab.Namespace, f func() error) {
	t.Helper()
	if err := ns.Do(f); err != nil {
		t.Fatal(err)
	}
}

func run(t *testing.T, ns *netlab.Namespace, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := ns.Exec(ctx, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// sysctls reads the two forwarding sysctls of ns.
func sysctls(t *testing.T, ns *netlab.Namespace) string {
	t.Helper()
	var out []string
	do(t, ns, func() error {
		for _, k := range sysctlKeys {
			b, err := os.ReadFile(filepath.Join("/proc/sys", k))
			if err != nil {
				return err
			}
			out = append(out, k+"="+strings.TrimSpace(string(b)))
		}
		return nil
	})
	return strings.Join(out, " ")
}

func hasTable(t *testing.T, ns *netlab.Namespace) bool {
	t.Helper()
	return strings.Contains(run(t, ns, "nft", "list", "tables"), "table inet "+DefaultTableName+"\n")
}

// gatewayLab is a gateway with a TUN and one LAN (203.0.113.0/24, 2001:db8:5::/64) holding a
// resource host that has no route to the tunnel ranges.
type gatewayLab struct {
	gw, res *netlab.Host
	dev     *tundev.Device
}

func newGatewayLab(t *testing.T) *gatewayLab {
	t.Helper()
	lab := netlab.New(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("hostfwd: nft (nftables) not found in PATH; skipping")
	}
	lan := lab.Switch("res", "203.0.113.0/24", "2001:db8:5::/64")
	g := &gatewayLab{
		gw:  lab.Host("gw", lan, "203.0.113.10", "2001:db8:5::10"),
		res: lab.Host("res1", lan, "203.0.113.100", "2001:db8:5::100"),
	}
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolv, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	do(t, g.gw.Namespace, func() (err error) {
		g.dev, err = tundev.Create(tundev.Config{
			IPv4: netip.MustParseAddr("100.64.0.1"), IPv6: netip.MustParseAddr("fd00:2021:1111::1"),
			DNS:    tundev.DNSConfig{ResolvConfPath: resolv},
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		return err
	})
	t.Cleanup(func() { g.dev.Close() })
	if err := g.dev.SetRoutes([]netip.Prefix{TunnelIPv4, TunnelIPv6}); err != nil {
		t.Fatal(err)
	}
	return g
}

// startReader reads packets from the TUN until it is closed.
func startReader(t *testing.T, dev tun.Device) <-chan []byte {
	const offset = 16
	pkts := make(chan []byte, 256)
	done := make(chan struct{})
	go func() {
		defer close(done)
		bufs := make([][]byte, dev.BatchSize())
		for i := range bufs {
			bufs[i] = make([]byte, offset+65535)
		}
		sizes := make([]int, len(bufs))
		for {
			n, err := dev.Read(bufs, sizes, offset)
			if err != nil {
				return
			}
			for i := range n {
				select {
				case pkts <- append([]byte(nil), bufs[i][offset:offset+sizes[i]]...):
				default:
				}
			}
		}
	}()
	t.Cleanup(func() { <-done })
	return pkts
}

func writeTUN(t *testing.T, dev tun.Device, pkt []byte) {
	t.Helper()
	buf := make([]byte, 16+len(pkt))
	copy(buf[16:], pkt)
	if _, err := dev.Write([][]byte{buf}, 16); err != nil {
		t.Fatal(err)
	}
}

// whoamiServer answers each datagram with the source address it came from.
func whoamiServer(t *testing.T, conn *net.UDPConn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			_, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = conn.WriteToUDPAddrPort([]byte(from.Addr().Unmap().String()), from)
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-done
	})
}

var dropCounter = regexp.MustCompile(`oifname "` + DefaultTunName + `" counter packets (\d+) bytes \d+ drop`)

func TestForwardingMasqueradesAndCloses(t *testing.T) {
	g := newGatewayLab(t)
	before := sysctls(t, g.gw.Namespace)
	if before != "net/ipv4/ip_forward=0 net/ipv6/conf/all/forwarding=0" {
		t.Fatalf("fresh namespace sysctls: %s", before)
	}
	var logs logBuffer
	var fwd *Forwarding
	do(t, g.gw.Namespace, func() (err error) {
		fwd, err = Enable(Config{TunName: g.dev.Name(), Logger: logs.logger()})
		return err
	})
	t.Cleanup(func() { fwd.Close() })
	if got := sysctls(t, g.gw.Namespace); got != "net/ipv4/ip_forward=1 net/ipv6/conf/all/forwarding=1" {
		t.Errorf("sysctls after Enable: %s", got)
	}
	ruleset := run(t, g.gw.Namespace, "nft", "list", "table", "inet", DefaultTableName)
	for _, want := range []string{
		`type filter hook forward priority filter; policy accept;`,
		`iifname "tun-snowgate" accept comment "snowgate prior sysctls: net/ipv4/ip_forward=0 net/ipv6/conf/all/forwarding=0"`,
		`oifname "tun-snowgate" ct state established,related accept`,
		`type nat hook postrouting priority srcnat; policy accept;`,
		`ip saddr 100.64.0.0/11 oifname != "tun-snowgate" masquerade`,
		`ip6 saddr fd00:2021:1111::/107 oifname != "tun-snowgate" masquerade`,
	} {
		if !strings.Contains(ruleset, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, ruleset)
		}
	}
	if !dropCounter.MatchString(ruleset) {
		t.Errorf("ruleset lacks the counted drop rule:\n%s", ruleset)
	}

	pkts := startReader(t, g.dev.TUN())
	t.Cleanup(func() { g.dev.Close() }) // stops the reader
	for _, tc := range []struct {
		network     string
		client, res netip.Addr
		gwLAN       netip.Addr
	}{
		{"udp4", netip.MustParseAddr("100.64.0.2"), g.res.Addr4(), g.gw.Addr4()},
		{"udp6", netip.MustParseAddr("fd00:2021:1111::2"), g.res.Addr6(), g.gw.Addr6()},
	} {
		t.Run(tc.network, func(t *testing.T) {
			srv, err := g.res.ListenUDP(tc.network, netip.AddrPortFrom(tc.res, 7).String())
			if err != nil {
				t.Fatal(err)
			}
			whoamiServer(t, srv)
			from := netip.AddrPortFrom(tc.client, 5555)
			buf := make([]byte, 1500)
			n, err := ippacket.BuildUDP(buf, from, netip.AddrPortFrom(tc.res, 7), []byte("who am i"))
			if err != nil {
				t.Fatal(err)
			}
			writeTUN(t, g.dev.TUN(), buf[:n])
			deadline := time.After(10 * time.Second)
			for {
				select {
				case p := <-pkts:
					pkt, err := ippacket.Parse(p)
					if err != nil || pkt.Dst() != tc.client {
						continue
					}
					sp, dp, err := pkt.Ports()
					payload, perr := pkt.UDPPayload()
					if err != nil || perr != nil || pkt.Src() != tc.res || sp != 7 || dp != 5555 {
						t.Fatalf("unexpected reply %s:%d -> %s:%d (%v %v)", pkt.Src(), sp, pkt.Dst(), dp, err, perr)
					}
					if string(payload) != tc.gwLAN.String() {
						t.Fatalf("resource saw the client as %s, want the gateway's LAN address %s (masqueraded)", payload, tc.gwLAN)
					}
					return
				case <-deadline:
					t.Fatal("no reply came out of the TUN")
				}
			}
		})
	}

	// Nothing outside may open a flow into the tunnel: the resource, given a route, tries.
	run(t, g.res.Namespace, "ip", "route", "add", "100.64.0.0/11", "via", g.gw.Addr4().String())
	probe, err := g.res.DialUDP("udp4", "100.64.0.2:9")
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := probe.Write([]byte("unsolicited")); err != nil {
			t.Fatal(err)
		}
		m := dropCounter.FindStringSubmatch(run(t, g.gw.Namespace, "nft", "list", "chain", "inet", DefaultTableName, "forward"))
		if m != nil && m[1] != "0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("unsolicited packet towards the tunnel was not counted by the drop rule")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for drained := false; !drained; {
		select {
		case p := <-pkts:
			if pkt, err := ippacket.Parse(p); err == nil {
				if _, dp, err := pkt.Ports(); err == nil && dp == 9 {
					t.Error("an unsolicited packet reached the TUN")
				}
			}
		default:
			drained = true
		}
	}

	if err := fwd.Close(); err != nil {
		t.Fatal(err)
	}
	if hasTable(t, g.gw.Namespace) {
		t.Error("table left after Close")
	}
	if got := sysctls(t, g.gw.Namespace); got != before {
		t.Errorf("sysctls after Close: %s, want %s", got, before)
	}
	if err := fwd.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if !strings.Contains(logs.String(), `level=INFO msg="forwarding disabled; sysctls restored"`) {
		t.Errorf("log:\n%s", logs.String())
	}
}

// TestCloseKeepsForwardingThatWasOn: a host that already forwarded keeps forwarding after Close.
func TestCloseKeepsForwardingThatWasOn(t *testing.T) {
	g := newGatewayLab(t)
	run(t, g.gw.Namespace, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	var fwd *Forwarding
	do(t, g.gw.Namespace, func() (err error) {
		fwd, err = Enable(Config{TunName: g.dev.Name(), OutboundInterfaces: []string{"nleth0"}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		return err
	})
	ruleset := run(t, g.gw.Namespace, "nft", "list", "table", "inet", DefaultTableName)
	if !strings.Contains(ruleset, `ip saddr 100.64.0.0/11 oifname "nleth0" masquerade`) || strings.Contains(ruleset, "!=") {
		t.Errorf("outbound interface not used:\n%s", ruleset)
	}
	if err := fwd.Close(); err != nil {
		t.Fatal(err)
	}
	if got := sysctls(t, g.gw.Namespace); got != "net/ipv4/ip_forward=1 net/ipv6/conf/all/forwarding=0" {
		t.Errorf("sysctls after Close: %s", got)
	}
}

const crashChildEnv = "SNOWGATE_HOSTFWD_CRASH_CHILD"

// TestCrashChild is the gateway stand-in TestCrashRecovery kills.
func TestCrashChild(t *testing.T) {
	if os.Getenv(crashChildEnv) == "" {
		t.Skip("helper process of TestCrashRecovery; runs only when re-executed by it")
	}
	if _, err := Enable(Config{}); err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	fmt.Println("READY")
	_, _ = io.Copy(io.Discard, os.Stdin)
	os.Exit(3) // the parent went away: leave everything behind, as a crash would
}

// TestCrashRecovery kills (SIGKILL) a process that enabled forwarding, then checks that Cleanup
// restores the sysctls from the record in the table and removes the table.
func TestCrashRecovery(t *testing.T) {
	lab := netlab.New(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("hostfwd: nft (nftables) not found in PATH; skipping")
	}
	h := lab.Host("gw", lab.Internet())
	before := sysctls(t, h.Namespace)

	cmd := exec.Command("ip", "netns", "exec", h.Name(), os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashChildEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if l := sc.Text(); l == "READY" || strings.HasPrefix(l, "ERROR") {
				ready <- l
			}
		}
		close(ready)
	}()
	select {
	case l, ok := <-ready:
		if !ok || l != "READY" {
			t.Fatalf("child: %q; stderr:\n%s", l, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("child not READY; stderr:\n%s", stderr.String())
	}
	if !hasTable(t, h.Namespace) || sysctls(t, h.Namespace) != "net/ipv4/ip_forward=1 net/ipv6/conf/all/forwarding=1" {
		t.Fatalf("child did not enable forwarding: %s", sysctls(t, h.Namespace))
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if !hasTable(t, h.Namespace) {
		t.Fatal("table gone after SIGKILL; nothing to recover")
	}

	var logs logBuffer
	do(t, h.Namespace, func() error { return Cleanup(Config{Logger: logs.logger()}) })
	if hasTable(t, h.Namespace) {
		t.Error("table left after Cleanup")
	}
	if got := sysctls(t, h.Namespace); got != before {
		t.Errorf("sysctls after Cleanup: %s, want %s", got, before)
	}
	log := logs.String()
	if n := strings.Count(log, `level=INFO msg="restored a forwarding sysctl left by a previous run"`); n != 2 {
		t.Errorf("%d INFO logs of restored sysctls, want 2:\n%s", n, log)
	}
	if !strings.Contains(log, `level=INFO msg="removed a leftover nftables table"`) {
		t.Errorf("no INFO log of the table removal:\n%s", log)
	}
	// A second Cleanup finds nothing and logs nothing.
	var quiet logBuffer
	do(t, h.Namespace, func() error { return Cleanup(Config{Logger: quiet.logger()}) })
	if quiet.String() != "" {
		t.Errorf("Cleanup of a clean namespace logged:\n%s", quiet.String())
	}
}

// Docker without privileges mounts /proc/sys read-only; with the forwarding sysctls already 1 (compose's
// sysctls option) the gateway needs to write nothing and must start; with 0 it must say what to set.
func TestReadOnlySysctlAlreadyOn(t *testing.T) {
	dir := t.TempDir()
	roOpen := func(value string) func(string, int, os.FileMode) (*os.File, error) {
		return func(_ string, flag int, _ os.FileMode) (*os.File, error) {
			if flag&(os.O_RDWR|os.O_WRONLY) != 0 {
				return nil, &os.PathError{Op: "open", Path: "/proc/sys/x", Err: syscall.EROFS}
			}
			p := filepath.Join(dir, "v")
			if err := os.WriteFile(p, []byte(value+"\n"), 0o644); err != nil {
				return nil, err
			}
			return os.Open(p)
		}
	}
	s, err := openSysctlWith("net/ipv4/ip_forward", roOpen("1"))
	if err != nil {
		t.Fatalf("read-only sysctl already 1: %v", err)
	}
	defer s.f.Close()
	if err := s.write("1"); err != nil {
		t.Fatalf("writing the value it holds: %v", err)
	}
	if err := s.write("0"); err == nil {
		t.Fatal("writing another value to a read-only sysctl succeeded")
	}
	if _, err := openSysctlWith("net/ipv4/ip_forward", roOpen("0")); err == nil || !strings.Contains(err.Error(), "set it to 1") {
		t.Fatalf("read-only sysctl at 0: error %v, want one saying to set it to 1", err)
	}
}
