package main

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/snowgate/snowgate/internal/devstack"
	"github.com/snowgate/snowgate/internal/telemetry/teltest"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// testBinary builds snowgate-devstack (once per test binary) and returns its path.
func testBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "snowgate-devstack-test"); buildErr != nil {
			return
		}
		goBin, err := exec.LookPath("go")
		if err != nil {
			buildErr = err
			return
		}
		out, err := exec.Command(goBin, "build", "-o", filepath.Join(buildDir, "snowgate-devstack"), ".").CombinedOutput()
		if err != nil {
			buildErr = errors.New("go build: " + err.Error() + "\n" + string(out))
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(buildDir, "snowgate-devstack")
}

// fetchDemo runs the printed command `curl --socks5-hostname <socks> http://demo.snowgate.test/` (real curl
// when installed, else the same request through Go's SOCKS5 client with names resolved by the proxy) and
// returns the page.
func fetchDemo(t *testing.T, socks string) string {
	t.Helper()
	u := "http://" + devstack.DemoName + "/"
	if curl, err := exec.LookPath("curl"); err == nil {
		out, err := exec.Command(curl, "-sS", "--max-time", "20", "--socks5-hostname", socks, u).CombinedOutput()
		if err != nil {
			t.Fatalf("curl --socks5-hostname %s %s: %v\n%s", socks, u, err, out)
		}
		return string(out)
	}
	hc := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "socks5h", Host: socks})}, Timeout: 20 * time.Second}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(u)
	if err != nil {
		t.Fatalf("GET %s through SOCKS5 %s: %v", u, socks, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestMakeRun runs what `make run` runs, as a program with no flags and none of its variables set: it
// becomes ready, the printed curl command returns the demo page, and SIGINT stops it with exit 0. Port
// 1080 is held busy (by this test, or whoever has it), so the SOCKS5 proxy must move to a free port and
// say so, and the printed command must name that port.
func TestMakeRun(t *testing.T) {
	bin := testBinary(t)
	if hold, err := net.Listen("tcp", "127.0.0.1:1080"); err == nil {
		defer hold.Close()
	}
	cmd := exec.Command(bin)
	for _, kv := range os.Environ() {
		switch strings.SplitN(kv, "=", 2)[0] {
		case "LISTEN_ADDR", "ADMIN_ADDR", "METRICS_ADDR", "SOCKS_ADDR", "RELAYS", "CLIENTS", "RELAYED", "SNOWGATE_PORTAL_CONFIG", "LOG_LEVEL", "LOG_FORMAT":
		default:
			cmd.Env = append(cmd.Env, kv)
		}
	}
	var stdout, stderr teltest.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	begin := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-done
		}
	}()

	// Bounded polling of the child's output (an external process: no event to wait on).
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(stdout.String(), "Ctrl-C stops everything.") {
		select {
		case err := <-done:
			t.Fatalf("snowgate-devstack exited before it was ready: %v\n%s\n%s", err, stdout.String(), stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready after 60 s:\n%s\n%s", stdout.String(), stderr.String())
		}
	}
	t.Logf("ready %.2f s after the process started", time.Since(begin).Seconds())
	out := stdout.String()
	if !regexp.MustCompile(`(?m)^note: 127\.0\.0\.1:1080 is busy; client-1 SOCKS5 listens on 127\.0\.0\.1:\d+ instead$`).MatchString(out) {
		t.Errorf("no note that the SOCKS5 proxy moved off the busy port 1080:\n%s", out)
	}
	m := curlLine.FindStringSubmatch(out)
	if m == nil || m[1] == "127.0.0.1:1080" {
		t.Fatalf("printed curl command missing or naming the busy port:\n%s", out)
	}
	if body := fetchDemo(t, m[1]); !strings.Contains(body, devstack.DemoPage) {
		t.Fatalf("the printed curl command returned %q", body)
	}
	t.Logf("first page %.2f s after the process started", time.Since(begin).Seconds())

	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("after SIGINT: %v (want exit 0)\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no exit 30 s after SIGINT:\n%s", stderr.String())
	}
	if sm := statusLine.FindStringSubmatch(out); sm == nil {
		t.Errorf("no status command printed:\n%s", out)
	} else if _, err := os.Stat(filepath.Dir(sm[1])); !os.IsNotExist(err) {
		t.Errorf("state directory %s left behind (%v)", filepath.Dir(sm[1]), err)
	}
}
