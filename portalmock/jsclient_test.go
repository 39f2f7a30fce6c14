package portalmock

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snowgate/snowgate/internal/portalapi"
)

// TestPhoenixJSClient drives the portal with the official Phoenix JavaScript client (the `phoenix` npm
// package, V2 serializer, token as a query parameter) run by Node.js: a valid token joins `client` and
// receives init; a bad token is refused with 401.
func TestPhoenixJSClient(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node not installed: the Phoenix JS interop test needs Node.js (apt-get install nodejs npm)")
	}
	dir := filepath.Join("testdata", "jsclient")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "phoenix", "package.json")); err != nil {
		t.Skip("Phoenix JS client not installed: run make js-deps (npm ci --prefix portalmock/testdata/jsclient)")
	}
	s := startServer(t, nil)

	run := func(token string) (map[string]json.RawMessage, error) {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, node, "client.js", s.URL(), token, newKey(t))
		cmd.Dir = dir
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, runErr := cmd.Output()
		var res map[string]json.RawMessage
		if err := json.Unmarshal(out, &res); err != nil {
			return nil, errors.Join(runErr, err, errors.New("stdout: "+string(out)+" stderr: "+stderr.String()))
		}
		return res, runErr
	}

	res, err := run(DefaultClientToken1)
	if err != nil {
		t.Fatalf("valid token: %v (output %v)", err, res)
	}
	var ev string
	_ = json.Unmarshal(res["event"], &ev)
	if ev != portalapi.EventInit {
		t.Fatalf("got %v, want init", res)
	}
	m, err := portalapi.DecodeClientIngress(portalapi.EventInit, res["payload"])
	if err != nil {
		t.Fatal(err)
	}
	init, ok := m.(portalapi.ClientInit)
	if !ok || init.Interface.IPv4.String() != "100.64.0.1" || len(init.Resources) != 5 {
		t.Errorf("init = %+v", m)
	}

	res, err = run("not-a-token")
	if err == nil {
		t.Fatalf("bad token accepted: %v", res)
	}
	var msg string
	_ = json.Unmarshal(res["error"], &msg)
	if !strings.Contains(msg, "401") {
		t.Errorf("bad token: error %q, want a 401", msg)
	}
}
