package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/internal/telemetry/teltest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestDevStack is what `make run` does: the stack comes up with no config, both relays register, a client
// with a development token joins and its init lists the relays, and /readyz says ready.
func TestDevStack(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var out teltest.Buffer
	stacks := make(chan *Stack, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--listen", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"},
			&out, func(s *Stack) { stacks <- s })
	}()
	var st *Stack
	select {
	case st = <-stacks:
	case err := <-done:
		t.Fatalf("dev stack exited early: %v\n%s", err, out.String())
	case <-ctx.Done():
		t.Fatalf("dev stack not ready: %s", out.String())
	}
	if got := len(st.Relays); got != 2 {
		t.Fatalf("relays = %d, want 2", got)
	}

	resp, err := http.Get("http://" + st.MetricsAddr.String() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz = %d, want 200", resp.StatusCode)
	}

	c := phoenix.NewClient(phoenix.ClientConfig{
		URL:   st.Portal.URL() + "/client/websocket?name=dev&external_id=dev-1",
		Token: "dev-client-token-1",
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
			if len(ids) != 2 {
				t.Fatalf("init lists %d distinct relays, want 2: %s", len(ids), ev.Payload)
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("dev stack: %v", err)
			}
			return
		case <-ctx.Done():
			t.Fatalf("no init: %s", out.String())
		}
	}
}

// -h / --help print the usage on stdout and exit 0; a bad flag exits 2 with one line on stderr naming it.
func TestCommandLineExitCodes(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		code       int
		stdout     string
		stderrLine string
	}{
		{[]string{"-h"}, 0, "-relays", ""},
		{[]string{"--help"}, 0, "Usage: snowgate-devstack", ""},
		{[]string{"--bogus"}, 2, "", "-bogus"},
		{[]string{"--relays", "many"}, 2, "", "-relays"},
		{[]string{"--relays", "99"}, 1, "", "want 0..16"},
	} {
		var stdout, stderr strings.Builder
		code := exitCode(run(t.Context(), tc.args, io.Discard, nil), &stdout, &stderr)
		if code != tc.code {
			t.Errorf("%q: exit %d, want %d (stderr %q)", tc.args, code, tc.code, stderr.String())
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
