package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/snowgate/snowgate/internal/devstack"
	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/telemetry/teltest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		if buildDir != "" {
			_ = os.RemoveAll(buildDir)
		}
		os.Exit(code)
	}))
}

// noEnv is an environment without any of the command's variables.
func noEnv(string) (string, bool) { return "", false }

// proc is run running on a goroutine.
type proc struct {
	stdout, logs *teltest.Buffer
	stacks       chan *devstack.Stack
	stop         context.CancelFunc
	done         chan struct{}
	err          error
}

// wait waits up to timeout for run to return and returns its error (ok false on timeout).
func (p *proc) wait(timeout time.Duration) (err error, ok bool) {
	select {
	case <-p.done:
		return p.err, true
	case <-time.After(timeout):
		return nil, false
	}
}

// runCommand starts run(args) with no environment; the stack is sent on p.stacks once ready, and
// p.stop cancels run's context (Ctrl-C). The test's end stops it and waits for it.
func runCommand(t *testing.T, args ...string) *proc {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	p := &proc{stdout: &teltest.Buffer{}, logs: &teltest.Buffer{}, stacks: make(chan *devstack.Stack, 1), stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.err = run(ctx, args, noEnv, p.stdout, p.logs, func(s *devstack.Stack) { p.stacks <- s })
	}()
	t.Cleanup(func() {
		cancel()
		if _, ok := p.wait(30 * time.Second); !ok {
			t.Error("run did not return after its context ended")
		}
	})
	return p
}

// runCheck runs run(args) (a --check) to its end and returns its stdout.
func runCheck(t *testing.T, args ...string) string {
	t.Helper()
	p := runCommand(t, args...)
	err, ok := p.wait(90 * time.Second)
	if !ok {
		t.Fatalf("%q did not finish\n%s\n%s", args, p.stdout, p.logs)
	}
	if err != nil {
		t.Fatalf("%q: %v\n%s\n%s", args, err, p.stdout, p.logs)
	}
	return p.stdout.String()
}

// --check: the demo page through a direct client and a relay-only one, the paths verified, exit 0.
func TestCheck(t *testing.T) {
	out := runCheck(t, "--check")
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`ok   client-1 \(direct\): demo page by name in [0-9.]+ ms .* path direct, host`),
		regexp.MustCompile(`ok   client-2 \(relay-only\): demo page by name in [0-9.]+ ms .* path relayed via relay-[12]`),
		regexp.MustCompile(`(?m)^check passed$`),
	} {
		if !want.MatchString(out) {
			t.Errorf("stdout does not match %s:\n%s", want, out)
		}
	}
	t.Logf("--check output:\n%s", out)
}

// --check --relayed --clients 2: every path relayed, each client with its own SOCKS5 proxy.
func TestCheckRelayedClients(t *testing.T) {
	out := runCheck(t, "--check", "--relayed", "--clients", "3")
	socks := map[string]bool{}
	for _, m := range regexp.MustCompile(`client-\d \(userspace\)\s+socks5://(\S+)`).FindAllStringSubmatch(out, -1) {
		socks[m[1]] = true
	}
	if len(socks) != 3 {
		t.Errorf("want 3 clients with distinct SOCKS5 addresses, got %v:\n%s", socks, out)
	}
	if n := len(regexp.MustCompile(`ok   client-\d \(relay-only\): .* path relayed via relay-[12]`).FindAllString(out, -1)); n != 3 {
		t.Errorf("want 3 relayed clients checked, got %d:\n%s", n, out)
	}
	if strings.Contains(out, "(direct)") || !strings.Contains(out, "check passed") {
		t.Errorf("--relayed check:\n%s", out)
	}
}

// curlLine finds the printed curl command for the demo page by name: its SOCKS5 address.
var curlLine = regexp.MustCompile(`(?m)^  curl --socks5-hostname (\S+) http://demo\.snowgate\.test/$`)

// statusLine finds the printed client status command: its socket.
var statusLine = regexp.MustCompile(`(?m)^  go run \./cmd/snowgate-client status --socket (\S+)$`)

// TestDevStack is `make run` in process (on free ports): the stack comes up, the table names every
// component, /readyz says ready, the portal lists both relays, the printed curl command returns the demo
// page, the printed status socket answers, and cancelling (Ctrl-C) stops it cleanly.
func TestDevStack(t *testing.T) {
	p := runCommand(t,
		"--listen", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--socks-addr", "127.0.0.1:0")
	var st *devstack.Stack
	select {
	case st = <-p.stacks:
	case <-p.done:
		t.Fatalf("dev stack exited early: %v\n%s", p.err, p.logs)
	case <-time.After(60 * time.Second):
		t.Fatalf("dev stack not ready: %s", p.logs)
	}
	out := p.stdout.String()
	for _, want := range []string{"portal ", "portal admin API", "health, metrics", "relay-1 ", "relay-2 ", "gateway-1 (userspace)",
		"client-1 (userspace)", "demo site", "Ctrl-C stops everything."} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	if got := len(st.Relays); got != 2 {
		t.Fatalf("relays = %d, want 2", got)
	}
	resp, err := http.Get("http://" + st.Metrics.String() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz = %d, want 200", resp.StatusCode)
	}
	if ps := st.Portal.State(); len(ps.Relays) != 2 {
		t.Fatalf("portal lists %d relays, want 2", len(ps.Relays))
	}
	clientInitListsRelays(t, st.Portal.URL(), 2)

	m := curlLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no curl command printed:\n%s", out)
	}
	if body := fetchDemo(t, m[1]); !strings.Contains(body, devstack.DemoPage) {
		t.Fatalf("the printed curl command returned %q", body)
	}
	sm := statusLine.FindStringSubmatch(out)
	if sm == nil {
		t.Fatalf("no status command printed:\n%s", out)
	}
	c := &devstack.Client{Name: "client-1", StatusSocket: sm[1]}
	s, err := c.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Connections) != 1 || s.Connections[0].State != "established" || !s.Connections[0].Direct {
		t.Fatalf("status after the request: %+v", s.Connections)
	}

	p.stop()
	if err, ok := p.wait(30 * time.Second); !ok {
		t.Fatal("the stack did not stop")
	} else if err != nil {
		t.Fatalf("stopping: %v", err)
	}
	if _, err := os.Stat(filepath.Dir(sm[1])); !os.IsNotExist(err) {
		t.Errorf("state directory %s left behind (%v)", filepath.Dir(sm[1]), err)
	}
}

// clientInitListsRelays joins the portal as a client with a development token (the stack's client-2 is
// not running) and checks that its init lists n distinct relays.
func clientInitListsRelays(t *testing.T, portalURL string, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	c := phoenix.NewClient(phoenix.ClientConfig{
		URL:   portalURL + "/client/websocket?name=probe&external_id=probe-2",
		Token: "dev-client-token-2",
	})
	defer c.Close()
	c.Join("client", nil)
	if err := c.Connect(ctx, "kFBGnQ0hBjsqYlaBs3rlFwdNwc/tA3rY35WmGJD4d3A="); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case ev := <-c.Events():
			if ev.Kind == phoenix.EventFatal {
				t.Fatalf("client: %v", ev.Err)
			}
			if ev.Kind != phoenix.EventMessage || ev.Event != "init" {
				continue
			}
			var init portalapi.ClientInit
			if err := json.Unmarshal(ev.Payload, &init); err != nil {
				t.Fatal(err)
			}
			ids := map[string]bool{}
			for _, r := range init.Relays {
				ids[r.ID] = true
			}
			if len(ids) != n {
				t.Fatalf("init lists %d distinct relays, want %d: %s", len(ids), n, ev.Payload)
			}
			return
		case <-ctx.Done():
			t.Fatal("no init")
		}
	}
}

// An address given explicitly that is busy fails the start with a message naming it (no fallback).
func TestExplicitBusyAddressFails(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, flag := range []string{"--listen", "--socks-addr"} {
		var stdout, logs teltest.Buffer
		err := run(t.Context(), []string{"--check", flag, busy.Addr().String()}, noEnv, &stdout, &logs, nil)
		if err == nil || !strings.Contains(err.Error(), "address already in use") {
			t.Errorf("%s on a busy address: %v, want it to fail with 'address already in use'", flag, err)
		}
		if strings.Contains(stdout.String(), "note:") {
			t.Errorf("%s: fell back although given explicitly:\n%s", flag, stdout.String())
		}
	}
}

// --config: a portal configuration file; one naming too few clients for the stack is refused.
func TestConfigFile(t *testing.T) {
	if out := runCheck(t, "--check", "--config", "../../examples/portal.yaml"); !strings.Contains(out, "check passed") {
		t.Fatalf("--check --config examples/portal.yaml:\n%s", out)
	}

	cfg, err := os.ReadFile("../../examples/portal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// Drop client-2: the check needs two clients.
	small := regexp.MustCompile(`(?s)      - id: c11e0000-0000-4000-8000-000000000002\n.*?\n    gateways:`).ReplaceAllString(string(cfg), "    gateways:")
	if small == string(cfg) {
		t.Fatal("could not drop client-2 from examples/portal.yaml")
	}
	path := filepath.Join(t.TempDir(), "one-client.yaml")
	if err := os.WriteFile(path, []byte(small), 0o600); err != nil {
		t.Fatal(err)
	}
	var out teltest.Buffer
	err = run(t.Context(), []string{"--check", "--config", path}, noEnv, &out, &out, nil)
	if err == nil || !strings.Contains(err.Error(), "2 clients wanted") {
		t.Fatalf("--check with a one-client config: %v, want a clear refusal", err)
	}
}

// -h / --help print the usage on stdout and exit 0; a bad flag exits 2 with one line on stderr naming it.
func TestCommandLineExitCodes(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		env        map[string]string
		code       int
		stdout     string
		stderrLine string
	}{
		{[]string{"-h"}, nil, 0, "-relays", ""},
		{[]string{"--help"}, nil, 0, "Usage: snowgate-devstack", ""},
		{[]string{"--help"}, nil, 0, "-check", ""},
		{[]string{"--bogus"}, nil, 2, "", "-bogus"},
		{[]string{"--relays", "many"}, nil, 2, "", "-relays"},
		{[]string{"--clients", "x"}, nil, 2, "", "-clients"},
		{[]string{"extra"}, nil, 2, "", "unexpected argument"},
		{nil, map[string]string{"RELAYED": "maybe"}, 2, "", "RELAYED"},
		{[]string{"--log-level", "loud"}, nil, 2, "", "loud"},
		{[]string{"--relays", "99"}, nil, 1, "", "want 0..16"},
		{[]string{"--clients", "0"}, nil, 1, "", "--clients 0"},
		{[]string{"--relayed", "--relays", "0"}, nil, 1, "", "needs relays"},
		{[]string{"--config", "/nonexistent/portal.yaml"}, nil, 1, "", "portal.yaml"},
	} {
		var stdout, stderr strings.Builder
		lookup := func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok }
		code := exitCode(run(t.Context(), tc.args, lookup, io.Discard, io.Discard, nil), &stdout, &stderr)
		if code != tc.code {
			t.Errorf("%q %v: exit %d, want %d (stderr %q)", tc.args, tc.env, code, tc.code, stderr.String())
		}
		if tc.stdout == "" && stdout.Len() > 0 || !strings.Contains(stdout.String(), tc.stdout) {
			t.Errorf("%q: stdout %q, want it to contain %q", tc.args, stdout.String(), tc.stdout)
		}
		if tc.stderrLine == "" && stderr.Len() > 0 ||
			tc.stderrLine != "" && (strings.Count(stderr.String(), "\n") != 1 || !strings.Contains(stderr.String(), tc.stderrLine)) {
			t.Errorf("%q: stderr %q, want one line naming %s", tc.args, stderr.String(), tc.stderrLine)
		}
	}
}
