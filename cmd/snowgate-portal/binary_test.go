package main

import (
	"context"
	"errors"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/telemetry/teltest"
	"github.com/snowgate/snowgate/portalmock"
)

// testPanicEvent makes a binary built with -tags snowgate_testhooks panic while handling the frame
// (portalmock/testhooks_on.go).
const testPanicEvent = "snowgate_test_panic"

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// testBinary builds snowgate-portal with the test hooks (once per test binary) and returns its path.
func testBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "snowgate-portal-test")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "snowgate-portal")
		goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
		out, err := exec.Command(goBin, "build", "-tags", "snowgate_testhooks", "-o", buildPath, ".").CombinedOutput()
		if err != nil {
			buildErr = errors.New("go build: " + err.Error() + "\n" + string(out))
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildPath != "" {
		_ = os.RemoveAll(filepath.Dir(buildPath))
	}
	os.Exit(code)
}

// portalProc is the portal binary running as a child process.
type portalProc struct {
	cmd    *exec.Cmd
	stderr *teltest.Buffer
	done   chan error
	url    string
}

var listeningRE = regexp.MustCompile(`portal listening addr=(\S+)`)

func startBinary(t *testing.T, args ...string) *portalProc {
	t.Helper()
	p := &portalProc{cmd: exec.Command(testBinary(t), args...), stderr: &teltest.Buffer{}, done: make(chan error, 1)}
	p.cmd.Stderr = p.stderr
	p.cmd.Env = append(os.Environ(), "SNOWGATE_PORTAL_CONFIG=", "METRICS_ADDR=")
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if m := listeningRE.FindStringSubmatch(p.stderr.String()); m != nil {
			p.url = "ws://" + m[1]
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("portal did not start:\n%s", p.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sigterm stops the process and returns its exit error (nil: exit 0); the process must exit within 10 s.
func (p *portalProc) sigterm(t *testing.T) error {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("portal ignores SIGTERM:\n%s", p.stderr.String())
		return nil
	}
}

// Issue 16: a panic while the portal handles one connection's frame closes that connection with an ERROR
// log; the portal keeps serving the others and new ones, and SIGTERM still stops it (exit 0).
func TestBinaryPanicInOneConnection(t *testing.T) {
	p := startBinary(t, "--listen", "127.0.0.1:0", "--admin-addr", "")

	c1 := wsDialURL(t, p.url, "/client/websocket", portalmock.DefaultClientToken1, url.Values{"public_key": {newKey(t)}})
	c1.join(portalapi.TopicClient, nil)
	c1.expect(portalapi.EventInit)
	c2 := wsDialURL(t, p.url, "/client/websocket", portalmock.DefaultClientToken2, url.Values{"public_key": {newKey(t)}})
	c2.join(portalapi.TopicClient, nil)
	c2.expect(portalapi.EventInit)

	c2.send(portalapi.TopicClient, testPanicEvent, struct{}{})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, data, err := c2.ws.Read(ctx); err == nil {
		t.Fatalf("the panicking connection got %q, want it closed", data)
	} else if errors.Is(err, context.DeadlineExceeded) {
		t.Fatal("the panicking connection was not closed")
	}

	// The other connection, a new one and a relay still work.
	ref := c1.send(phoenix.TopicPhoenix, phoenix.EventHeartbeat, struct{}{})
	if m := c1.next(); m.Event != phoenix.EventReply || m.Ref != ref {
		t.Fatalf("heartbeat: got %s %s", m.Event, m.Payload)
	}
	relay := wsDialURL(t, p.url, "/relay/websocket", portalmock.DefaultRelayToken, url.Values{"ipv4": {"198.18.0.1"}})
	relay.join(portalapi.TopicRelay, portalapi.RelayJoin{StampSecret: "secret"})
	relay.expect(portalapi.EventInit)
	c1.expect(portalapi.EventRelaysPresence)
	g := wsDialURL(t, p.url, "/gateway/websocket", portalmock.DefaultGatewayToken1, url.Values{"public_key": {newKey(t)}})
	g.join(portalapi.TopicGateway, nil)
	var ginit portalapi.GatewayInit
	g.expectInto(portalapi.EventInit, &ginit)
	if len(ginit.Relays) == 0 {
		t.Errorf("gateway init without the relay: %+v", ginit)
	}

	if err := p.sigterm(t); err != nil {
		t.Errorf("exit after SIGTERM: %v\n%s", err, p.stderr.String())
	}
	logs := p.stderr.String()
	if !strings.Contains(logs, "ERROR") || !strings.Contains(logs, "panicked") || !strings.Contains(logs, "test hook panic") {
		t.Errorf("no ERROR log for the panic:\n%s", logs)
	}
}

// A relay that stops cleanly (leave, close) and comes back, run against the binary: further joins are
// answered and SIGTERM stops the portal.
func TestBinaryRelayLeaveAndRestart(t *testing.T) {
	p := startBinary(t, "--listen", "127.0.0.1:0", "--admin-addr", "")
	c := wsDialURL(t, p.url, "/client/websocket", portalmock.DefaultClientToken1, url.Values{"public_key": {newKey(t)}})
	c.join(portalapi.TopicClient, nil)
	c.expect(portalapi.EventInit)
	for range 2 {
		relay := wsDialURL(t, p.url, "/relay/websocket", portalmock.DefaultRelayToken, url.Values{"ipv4": {"198.18.0.1"}})
		relay.join(portalapi.TopicRelay, portalapi.RelayJoin{StampSecret: "secret"})
		relay.expect(portalapi.EventInit)
		var rp portalapi.RelaysPresence
		c.expectInto(portalapi.EventRelaysPresence, &rp)
		if len(rp.Connected) != 1 {
			t.Fatalf("presence after the relay joined: %+v", rp)
		}
		relay.send(portalapi.TopicRelay, phoenix.EventLeave, struct{}{})
		c.expectInto(portalapi.EventRelaysPresence, &rp)
		if len(rp.Connected) != 0 || len(rp.DisconnectedIDs) != 1 {
			t.Fatalf("presence after the relay left: %+v", rp)
		}
		_ = relay.ws.CloseNow()
		c2 := wsDialURL(t, p.url, "/client/websocket", portalmock.DefaultClientToken2, url.Values{"public_key": {newKey(t)}})
		c2.join(portalapi.TopicClient, nil)
		var init portalapi.ClientInit
		c2.expectInto(portalapi.EventInit, &init)
		if len(init.Relays) != 0 {
			t.Fatalf("init lists the relay that left: %+v", init.Relays)
		}
	}
	if err := p.sigterm(t); err != nil {
		t.Errorf("exit after SIGTERM: %v\n%s", err, p.stderr.String())
	}
}

// The built binary (with the test hooks; flag handling is the same): -h and --help exit 0 with the usage on
// stdout, a bad flag exits 2 with one stderr line.
func TestBinaryHelpAndBadFlag(t *testing.T) {
	bin := testBinary(t)
	for _, tc := range []struct {
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{[]string{"-h"}, 0, "Usage: snowgate-portal", ""},
		{[]string{"--help"}, 0, "-admin-addr", ""},
		{[]string{"--no-such-flag"}, 2, "", "-no-such-flag"},
	} {
		cmd := exec.Command(bin, tc.args...)
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tc.code {
			t.Errorf("%q: exit %d, want %d (stderr %q)", tc.args, code, tc.code, stderr.String())
		}
		if tc.stdout != "" && !strings.Contains(stdout.String(), tc.stdout) || tc.stdout == "" && stdout.Len() > 0 {
			t.Errorf("%q: stdout %q", tc.args, stdout.String())
		}
		if tc.stderr == "" && stderr.Len() > 0 ||
			tc.stderr != "" && (strings.Count(stderr.String(), "\n") != 1 || !strings.Contains(stderr.String(), tc.stderr)) {
			t.Errorf("%q: stderr %q, want one line naming %s", tc.args, stderr.String(), tc.stderr)
		}
	}
}
