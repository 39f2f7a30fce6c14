package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// freeUDPPort returns a UDP port that was free a moment ago on addr.
func freeUDPPort(t *testing.T, network, addr string) int {
	t.Helper()
	c, err := net.ListenPacket(network, addr+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// buildRelay compiles this command into a temp dir.
func buildRelay(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go toolchain not in PATH; cannot build snowgate-relay for the interop test")
	}
	bin := filepath.Join(t.TempDir(), "snowgate-relay")
	out, err := exec.Command(goBin, "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startProcess starts cmd and makes sure it is killed (by pid) at cleanup.
func startProcess(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
}

var uclientTotals = regexp.MustCompile(`tot_send_msgs=(\d+), tot_recv_msgs=(\d+)`)

// TestInteropTurnutils runs coturn's turnutils_uclient against snowgate-relay
// in TURN REST mode, with turnutils_peer as the peer, on loopback.
func TestInteropTurnutils(t *testing.T) {
	uclient, err1 := exec.LookPath("turnutils_uclient")
	peerBin, err2 := exec.LookPath("turnutils_peer")
	if err1 != nil || err2 != nil {
		t.Skip("turnutils_uclient/turnutils_peer not installed (Debian package coturn); skipping the interop test")
	}
	bin := buildRelay(t)
	// The relay's own addresses only ever get datagrams on relay ports, so
	// the peer must not sit on one of them: the IPv4 peer is 127.0.0.2, and
	// the IPv6 relay advertises a documentation address and binds ::, so
	// that ::1 is an ordinary (allowed) loopback peer.
	for _, tc := range []struct {
		name     string
		peerAddr string
		extra    []string // uclient flags
	}{
		{"ipv4", "127.0.0.2", nil},
		{"ipv6 relay", "::1", []string{"-x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			network := "udp4"
			if strings.Contains(tc.peerAddr, ":") {
				network = "udp6"
			}
			peerPort := freeUDPPort(t, network, bracket(tc.peerAddr))
			relayPort := freeUDPPort(t, "udp4", "127.0.0.1")
			startProcess(t, exec.Command(peerBin, "-L", tc.peerAddr, "-p", strconv.Itoa(peerPort)))

			relay := exec.Command(bin,
				"--listen-port", strconv.Itoa(relayPort),
				"--public-ip4", "127.0.0.1", "--listen-addr4", "127.0.0.1",
				"--public-ip6", "2001:db8::1",
				"--allow-peer", "127.0.0.2/32", "--allow-peer", "::1/128",
				"--health-check-addr", "", "--drain-timeout", "0s",
				"--max-allocations-per-user", "100",
				// Relay ports above the kernel's ephemeral range, so the
				// ephemeral listen port cannot fall inside.
				"--lowest-port", "61000", "--highest-port", "65535")
			relay.Env = append(os.Environ(), "TURN_REST_SECRET=north", "SNOWGATE_API_URL=", "LOG_LEVEL=info")
			stderr, err := relay.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			startProcess(t, relay)
			var logs bytes.Buffer
			listening := make(chan struct{})
			logDone := make(chan struct{})
			go func() {
				defer close(logDone)
				sc := bufio.NewScanner(stderr)
				signalled := false
				for sc.Scan() {
					logs.WriteString(sc.Text() + "\n")
					if !signalled && strings.Contains(sc.Text(), "relay listening") {
						close(listening)
						signalled = true
					}
				}
				_, _ = io.Copy(io.Discard, stderr)
			}()
			select {
			case <-listening:
			case <-time.After(10 * time.Second):
				_ = relay.Process.Kill()
				<-logDone
				t.Fatalf("relay did not start:\n%s", logs.String())
			}

			const clients, msgs = 4, 30
			ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
			defer cancel()
			args := append([]string{"-W", "north", "-u", "interop", "-e", tc.peerAddr, "-r", strconv.Itoa(peerPort),
				"-p", strconv.Itoa(relayPort), "-n", strconv.Itoa(msgs), "-m", strconv.Itoa(clients), "-l", "120", "-z", "5", "-c"},
				tc.extra...)
			args = append(args, "127.0.0.1")
			start := time.Now()
			out, err := exec.CommandContext(ctx, uclient, args...).CombinedOutput()
			t.Logf("turnutils_uclient ran %v", time.Since(start).Round(time.Millisecond))
			if err != nil {
				t.Fatalf("turnutils_uclient: %v\n%s", err, out)
			}
			m := uclientTotals.FindAllStringSubmatch(string(out), -1)
			if len(m) == 0 {
				t.Fatalf("no totals in turnutils_uclient output:\n%s", out)
			}
			sent, _ := strconv.Atoi(m[len(m)-1][1])
			recv, _ := strconv.Atoi(m[len(m)-1][2])
			t.Logf("turnutils_uclient: sent %d, received %d", sent, recv)
			if sent != clients*msgs || recv != sent {
				t.Fatalf("sent %d received %d, want %d both\n%s", sent, recv, clients*msgs, out)
			}

			// SIGTERM: drain (0 s here) and exit 0.
			if err := relay.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			<-logDone
			if err := relay.Wait(); err != nil {
				t.Fatalf("relay exit: %v\n%s", err, logs.String())
			}
			if !strings.Contains(logs.String(), "relay stopped") {
				t.Fatalf("no clean stop in logs:\n%s", logs.String())
			}
		})
	}
}

func bracket(a string) string {
	if strings.Contains(a, ":") {
		return fmt.Sprintf("[%s]", a)
	}
	return a
}
