package server

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/snowgate/snowgate/client/dns"
)

// listenUDPTCP binds UDP and TCP on the same free loopback port.
func listenUDPTCP(t *testing.T) (net.PacketConn, net.Listener, int) {
	t.Helper()
	for i := 0; i < 20; i++ {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			return pc, ln, port
		}
		_ = pc.Close()
	}
	t.Fatal("no free port for UDP and TCP")
	return nil, nil, 0
}

// startDnsmasq runs Debian's dnsmasq on a free loopback port serving a TXT record set of ~1.3 kB for big.test
// and A 192.0.2.7 for anything under fwd.test. It is killed by pid at cleanup.
func startDnsmasq(t *testing.T) int {
	t.Helper()
	bin, err := exec.LookPath("dnsmasq")
	if err != nil {
		t.Skip("dnsmasq not installed (apt-get install dnsmasq-base); skipping the interop test")
	}
	dir := t.TempDir()
	for attempt := 0; attempt < 5; attempt++ {
		pc, ln, port := listenUDPTCP(t)
		_ = pc.Close()
		_ = ln.Close()
		s := func(c byte) string { return strings.Repeat(string(c), 250) }
		cmd := exec.Command(bin, "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
			"--port="+strconv.Itoa(port), "--listen-address=127.0.0.1", "--bind-interfaces",
			"--pid-file="+filepath.Join(dir, "dnsmasq.pid"), "--edns-packet-max=4096",
			"--txt-record=big.test,"+s('a')+","+s('b'),
			"--txt-record=big.test,"+s('c')+","+s('d'),
			"--txt-record=big.test,"+s('e'),
			"--address=/fwd.test/192.0.2.7")
		out := &strings.Builder{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting dnsmasq: %v", err)
		}
		pid := cmd.Process.Pid
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		// Wait until it answers over TCP.
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) {
			if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond); err == nil {
				_ = c.Close()
				t.Cleanup(func() {
					_ = cmd.Process.Kill() // by pid
					<-exited
				})
				t.Logf("dnsmasq pid %d on port %d", pid, port)
				return port
			}
			select {
			case err := <-exited:
				t.Logf("dnsmasq exited (%v): %s", err, out)
				deadline = time.Time{}
			case <-time.After(50 * time.Millisecond):
			}
		}
		_ = cmd.Process.Kill()
	}
	t.Fatal("dnsmasq did not start")
	return 0
}

func dig(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "dig", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("dig %v: %v\n%s", args, err, out)
	}
	return string(out)
}

var (
	flagsRe = regexp.MustCompile(`;; flags: ([a-z ]+);`)
	sizeRe  = regexp.MustCompile(`MSG SIZE\s+rcvd: (\d+)`)
	countRe = regexp.MustCompile(`ANSWER: (\d+)`)
)

func digFacts(t *testing.T, out string) (flags string, size, answers int) {
	t.Helper()
	f, s, a := flagsRe.FindStringSubmatch(out), sizeRe.FindStringSubmatch(out), countRe.FindStringSubmatch(out)
	if f == nil || s == nil || a == nil {
		t.Fatalf("cannot parse dig output:\n%s", out)
	}
	size, _ = strconv.Atoi(s[1])
	answers, _ = strconv.Atoi(a[1])
	return " " + f[1] + " ", size, answers
}

// TestDnsmasqInterop: dnsmasq (a DNS server nobody here wrote) is the upstream, dig the client. Over UDP the
// stub truncates dnsmasq's 1.3 kB answer (TC, question only); over TCP the full answer comes through.
func TestDnsmasqInterop(t *testing.T) {
	if _, err := exec.LookPath("dig"); err != nil {
		t.Skip("dig not installed (apt-get install bind9-dnsutils); skipping the interop test")
	}
	port := startDnsmasq(t)
	up := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))

	// dnsmasq itself serves the big answer over UDP (EDNS 4096) and TCP.
	direct := dig(t, "@127.0.0.1", "-p", strconv.Itoa(port), "+ignore", "+notcp", "+bufsize=4096", "big.test", "TXT")
	flags, size, n := digFacts(t, direct)
	if size <= dns.MaxUDPPayload || strings.Contains(flags, " tc ") || n != 3 {
		t.Fatalf("dnsmasq direct: flags %q size %d answers %d; want a full answer > 1212 bytes", flags, size, n)
	}

	r, err := dns.New(dns.Config{UpstreamDNS: []netip.AddrPort{up}, UpstreamTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	_ = r.SetResources([]dns.Resource{{ID: "res", Address: "**.corp.test"}}, nil)
	srv, err := New(Config{Resolver: r})
	if err != nil {
		t.Fatal(err)
	}
	pc, ln, stubPort := listenUDPTCP(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ctx, r.Sentinels()[0].Addr, []net.PacketConn{pc}, ln) }()
	t.Cleanup(func() { cancel(); <-done; _ = srv.Close() })
	sp := strconv.Itoa(stubPort)

	udp := dig(t, "@127.0.0.1", "-p", sp, "+ignore", "+notcp", "+bufsize=4096", "+tries=1", "big.test", "TXT")
	flags, size, n = digFacts(t, udp)
	if !strings.Contains(flags, " tc ") || n != 0 || size > dns.MaxUDPPayload || !strings.Contains(udp, "QUERY: 1,") {
		t.Errorf("stub over UDP: flags %q size %d answers %d; want TC, no answers, ≤ 1212 bytes\n%s", flags, size, n, udp)
	}
	tcp := dig(t, "@127.0.0.1", "-p", sp, "+tcp", "big.test", "TXT")
	flags, size, n = digFacts(t, tcp)
	if strings.Contains(flags, " tc ") || n != 3 || size <= dns.MaxUDPPayload {
		t.Errorf("stub over TCP: flags %q size %d answers %d; want the full answer\n%s", flags, size, n, tcp)
	}
	// Without TC dig falls back to TCP by itself and gets everything.
	auto := dig(t, "@127.0.0.1", "-p", sp, "+bufsize=4096", "big.test", "TXT")
	if _, _, n := digFacts(t, auto); n != 3 {
		t.Errorf("dig with TCP fallback: %d answers\n%s", n, auto)
	}
	// Forwarded A and a local resource answer.
	if out := dig(t, "@127.0.0.1", "-p", sp, "+short", "a.fwd.test"); strings.TrimSpace(out) != "192.0.2.7" {
		t.Errorf("forwarded A: %q", out)
	}
	if out := dig(t, "@127.0.0.1", "-p", sp, "+short", "app.corp.test"); len(strings.Fields(out)) != 4 || !strings.HasPrefix(out, "100.") {
		t.Errorf("resource A: %q", out)
	}
}
