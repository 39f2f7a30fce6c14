package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/snowgate/snowgate/internal/telemetry/teltest"
	"github.com/snowgate/snowgate/portalmock"
)

// portalRun is the portal binary's run started in the background by startRun.
type portalRun struct {
	srv    *portalmock.Server
	out    *teltest.Buffer
	cancel context.CancelFunc
	done   chan error
}

// startRun starts run with args and waits until the portal listens; the error is run's own when it exits
// before that. The run is stopped at the end of the test at the latest.
func startRun(t *testing.T, args ...string) (*portalRun, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	r := &portalRun{out: &teltest.Buffer{}, cancel: cancel, done: make(chan error, 1)}
	started := make(chan *portalmock.Server, 1)
	go func() { r.done <- run(ctx, args, r.out, func(s *portalmock.Server) { started <- s }) }()
	t.Cleanup(func() { _ = r.stop() })
	select {
	case r.srv = <-started:
		return r, nil
	case err := <-r.done:
		r.done <- err // for stop
		return nil, fmt.Errorf("run exited early: %w\n%s", err, r.out.String())
	case <-time.After(10 * time.Second):
		return nil, fmt.Errorf("portal did not start:\n%s", r.out.String())
	}
}

// stop cancels the run and returns its error (once; later calls return nil).
func (r *portalRun) stop() error {
	r.cancel()
	select {
	case err, ok := <-r.done:
		if ok {
			close(r.done)
		}
		return err
	case <-time.After(10 * time.Second):
		return errors.New("portal did not stop")
	}
}

// The binary starts with examples/portal.yaml, logs where it listens, serves the admin API, and stops on
// cancellation.
func TestRunExampleConfig(t *testing.T) {
	r, err := startRun(t, "--config", "../../examples/portal.yaml", "--listen", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, out := r.srv, r.out
	addr := strings.TrimPrefix(srv.URL(), "ws://")
	if !strings.Contains(out.String(), "portal listening") || !strings.Contains(out.String(), addr) {
		t.Errorf("log does not say where the portal listens (%s):\n%s", addr, out.String())
	}
	req, _ := http.NewRequestWithContext(t.Context(), "GET", srv.AdminURL()+"/v1/resources", nil)
	req.Header.Set("Authorization", "Bearer "+portalmock.DefaultAdminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	http.DefaultClient.CloseIdleConnections()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("admin API: %d", resp.StatusCode)
	}
	if err := r.stop(); err != nil {
		t.Errorf("run: %v", err)
	}
}

func TestRunBadConfig(t *testing.T) {
	if err := run(t.Context(), []string{"--config", "/nonexistent.yaml"}, io.Discard, nil); err == nil {
		t.Error("missing config accepted")
	}
}

// TestStatsLine: the portal logs one INFO stats line per interval with who is online.
func TestStatsLine(t *testing.T) {
	r, err := startRun(t, "--listen", "127.0.0.1:0", "--admin-addr", "", "--stats-interval", "50ms")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(r.out.String(), "INFO portal: stats clients_online=0 gateways_online=0 relays=0 flows=0") {
		if time.Now().After(deadline) {
			t.Fatalf("no stats line:\n%s", r.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}

// -h / --help print the usage on stdout and exit 0; a bad command line exits 2 with one line on stderr
// naming the flag (run's outcome through exitCode, as main does).
func TestCommandLineExitCodes(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		code       int
		stdout     string // substring ("" = must be empty)
		stderrLine string // substring of the single stderr line ("" = must be empty)
	}{
		{[]string{"-h"}, 0, "-listen", ""},
		{[]string{"--help"}, 0, "healthcheck", ""},
		{[]string{"-help"}, 0, "-stats-interval", ""},
		{[]string{"--listen", "127.0.0.1:0", "-h"}, 0, "Usage: snowgate-portal", ""},
		{[]string{"--bogus"}, 2, "", "-bogus"},
		{[]string{"--stats-interval", "soon"}, 2, "", "-stats-interval"},
		{[]string{"--listen"}, 2, "", "-listen"},
		{[]string{"stray"}, 2, "", `"stray"`},
		{[]string{"--config", "/nonexistent.yaml", "--listen", "127.0.0.1:0", "--admin-addr", ""}, 1, "", "nonexistent"},
	} {
		var stdout, stderr strings.Builder
		code := exitCode(run(t.Context(), tc.args, io.Discard, nil), &stdout, &stderr)
		if code != tc.code {
			t.Errorf("%q: exit %d, want %d (stderr %q)", tc.args, code, tc.code, stderr.String())
		}
		if tc.stdout == "" && stdout.Len() > 0 || !strings.Contains(stdout.String(), tc.stdout) {
			t.Errorf("%q: stdout %q, want it to contain %q", tc.args, stdout.String(), tc.stdout)
		}
		lines := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n")
		switch {
		case tc.stderrLine == "" && stderr.Len() > 0:
			t.Errorf("%q: stderr %q, want none", tc.args, stderr.String())
		case tc.stderrLine != "" && (len(lines) != 1 || !strings.Contains(lines[0], tc.stderrLine)):
			t.Errorf("%q: stderr %q, want one line naming %s", tc.args, stderr.String(), tc.stderrLine)
		}
	}
}
