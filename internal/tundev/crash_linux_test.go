//go:build linux

package tundev

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snowgate/snowgate/internal/netlab"
)

// crashChildEnv carries the resolv.conf path to the re-executed test binary.
const crashChildEnv = "SNOWGATE_TUNDEV_CRASH_CHILD"

// TestCrashChild is the daemon stand-in TestCrashRecovery kills: it sets everything up, says
// READY and waits to be killed (or exits without cleaning up when its stdin closes).
func TestCrashChild(t *testing.T) {
	resolv := os.Getenv(crashChildEnv)
	if resolv == "" {
		t.Skip("helper process of TestCrashRecovery; runs only when re-executed by it")
	}
	cfg := Config{IPv4: tunV4, IPv6: tunV6, DNS: DNSConfig{Mode: DNSModeEtcResolvConf, ResolvConfPath: resolv}}
	dev, err := Create(cfg)
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	if err := dev.SetRoutes([]netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}); err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	if err := dev.DNS().Apply([]netip.Addr{netip.MustParseAddr("100.100.111.1")}, "corp.example"); err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	fmt.Println("READY")
	_, _ = io.Copy(io.Discard, os.Stdin)
	os.Exit(3) // the parent went away: leave everything behind, as a crash would
}

// TestCrashRecovery kills (SIGKILL) a process that created the TUN, routes, rules and rewrote
// resolv.conf, then checks that Cleanup, or Create itself, removes the leftovers and restores
// resolv.conf, logging what it did.
func TestCrashRecovery(t *testing.T) {
	for _, recovery := range []string{"Cleanup", "Create"} {
		t.Run(recovery, func(t *testing.T) {
			lab := netlab.New(t)
			h := lab.Host("c", lab.Internet())
			cfg := testConfig(t, DNSModeEtcResolvConf)
			cfg.DNS = cfg.DNS.withDefaults()

			child := startCrashChild(t, h.Namespace, cfg.DNS.ResolvConfPath)
			st := readState(t, h.Namespace, cfg)
			if st.link == nil || len(st.rules) != 6 || len(st.routes) != 3 {
				t.Fatalf("child's state: link %v, %d rules, %d routes; want link, 6, 3", st.link != nil, len(st.rules), len(st.routes))
			}
			if !strings.HasPrefix(readFile(t, cfg.DNS.ResolvConfPath), resolvHeader) {
				t.Fatal("child did not rewrite resolv.conf")
			}

			if err := child.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			_ = child.Wait()

			// The kernel destroyed the TUN (and the routes through it) with the process; the rules
			// and the DNS change are left.
			deadline := time.Now().Add(10 * time.Second)
			for st = readState(t, h.Namespace, cfg); st.link != nil || len(st.routes) != 0; st = readState(t, h.Namespace, cfg) {
				if time.Now().After(deadline) {
					t.Fatalf("after SIGKILL: link %v, %d routes; want the kernel to remove both", st.link != nil, len(st.routes))
				}
				time.Sleep(20 * time.Millisecond)
			}
			if len(st.rules) != 6 {
				t.Fatalf("after SIGKILL: %d rules left, want 6", len(st.rules))
			}
			if !exists(cfg.DNS.BackupPath) {
				t.Fatal("after SIGKILL: no resolv.conf backup left")
			}

			var logs logBuffer
			cfg.Logger = logs.logger()
			switch recovery {
			case "Cleanup":
				do(t, h.Namespace, func() error { return Cleanup(cfg) })
				assertClean(t, h.Namespace, cfg)
			case "Create":
				var dev *Device
				do(t, h.Namespace, func() (err error) {
					dev, err = Create(cfg)
					return err
				})
				if st := readState(t, h.Namespace, cfg); len(st.rules) != 6 {
					t.Errorf("after recovery by Create: %d rules, want 6 (no duplicates)", len(st.rules))
				}
				if err := dev.Close(); err != nil {
					t.Fatal(err)
				}
				assertClean(t, h.Namespace, cfg)
			}
			if got := readFile(t, cfg.DNS.ResolvConfPath); got != originalResolv {
				t.Errorf("resolv.conf not restored:\n%s", got)
			}
			if exists(cfg.DNS.BackupPath) {
				t.Error("backup left after recovery")
			}
			log := logs.String()
			if n := strings.Count(log, `level=INFO msg="removed a leftover policy rule"`); n != 6 {
				t.Errorf("%d INFO logs of removed rules, want 6:\n%s", n, log)
			}
			if !strings.Contains(log, `level=INFO msg="restored the original resolv.conf"`) {
				t.Errorf("no INFO log of the resolv.conf restore:\n%s", log)
			}
		})
	}
}

// startCrashChild re-executes the test binary as TestCrashChild inside ns and waits for READY.
func startCrashChild(t *testing.T, ns *netlab.Namespace, resolv string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns.Name(), os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+resolv)
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
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				_ = cmd.Wait()
				t.Fatalf("child exited before READY; stderr:\n%s", stderr.String())
			}
			if l == "READY" {
				go func() { // keep draining so the child never blocks on stdout
					for range lines {
					}
				}()
				return cmd
			}
			if strings.HasPrefix(l, "ERROR") {
				t.Fatalf("child: %s", l)
			}
		case <-deadline:
			t.Fatalf("child not READY after 30 s; stderr:\n%s", stderr.String())
		}
	}
}
