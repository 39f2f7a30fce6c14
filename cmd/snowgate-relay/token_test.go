package main

import (
	"github.com/snowgate/snowgate/internal/cliconf"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
)

func TestTokenSources(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	fileTok := write("token", "file-token\n")
	envFileTok := write("env-token", "  env-file-token \n")
	empty := write("empty", "\n")
	credDir := filepath.Join(dir, "creds")
	if err := os.Mkdir(credDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(credDir, cliconf.CredentialName), []byte("credential-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := map[string]string{"PUBLIC_IP4_ADDR": "198.18.0.1", "SNOWGATE_API_URL": "ws://portal:8081"}
	for _, tc := range []struct {
		name    string
		args    []string
		env     map[string]string
		want    string
		wantErr bool
	}{
		{"env token", nil, map[string]string{"SNOWGATE_TOKEN": "env-token"}, "env-token", false},
		{"flag token wins", []string{"--token", "flag-token", "--token-file", fileTok}, map[string]string{"SNOWGATE_TOKEN": "env-token"}, "flag-token", false},
		{"token file flag", []string{"--token-file", fileTok}, map[string]string{"SNOWGATE_TOKEN": "env-token"}, "file-token", false},
		{"token file flag beats env file", []string{"--token-file", fileTok}, map[string]string{"SNOWGATE_TOKEN_FILE": envFileTok}, "file-token", false},
		{"token file env", nil, map[string]string{"SNOWGATE_TOKEN_FILE": envFileTok, "SNOWGATE_TOKEN": "env-token"}, "env-file-token", false},
		{"systemd credential", nil, map[string]string{"CREDENTIALS_DIRECTORY": credDir, "SNOWGATE_TOKEN": "env-token"}, "credential-token", false},
		{"token file beats credential", nil, map[string]string{"CREDENTIALS_DIRECTORY": credDir, "SNOWGATE_TOKEN_FILE": envFileTok}, "env-file-token", false},
		{"credential directory without the credential", nil, map[string]string{"CREDENTIALS_DIRECTORY": dir, "SNOWGATE_TOKEN": "env-token"}, "env-token", false},
		{"empty token file", []string{"--token-file", empty}, nil, "", true},
		{"missing token file", nil, map[string]string{"SNOWGATE_TOKEN_FILE": filepath.Join(dir, "nope")}, "", true},
		{"no token at all", nil, nil, "", true},
		{"no portal: token file not read", []string{"--api-url", "", "--token-file", filepath.Join(dir, "nope")}, nil, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range base {
				env[k] = v
			}
			for k, v := range tc.env {
				env[k] = v
			}
			o, err := parse(tc.args, func(k string) string { return env[k] }, io.Discard)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("no error; token %q", o.relay.Portal.Token)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.relay.Portal == nil {
				if tc.want != "" {
					t.Fatalf("no portal config, want token %q", tc.want)
				}
				return
			}
			if got := o.relay.Portal.Token; got != tc.want {
				t.Fatalf("token %q, want %q", got, tc.want)
			}
		})
	}
}

// TestRunUnsetsSecrets: the secret variables leave the environment even
// when the configuration is refused.
func TestRunUnsetsSecrets(t *testing.T) {
	var unset []string
	env := map[string]string{"SNOWGATE_TOKEN": "t", "TURN_REST_SECRET": "s"} // no public address: refused
	code := run(nil, func(k string) string { return env[k] }, func(k string) error {
		unset = append(unset, k)
		return nil
	}, io.Discard)
	if code != 2 {
		t.Fatalf("exit %d, want 2", code)
	}
	for _, name := range []string{"SNOWGATE_TOKEN", "SNOWGATE_TOKEN_FILE", "TURN_REST_SECRET"} {
		if !slices.Contains(unset, name) {
			t.Errorf("%s not unset (unset: %v)", name, unset)
		}
	}
}

func TestHealthcheck(t *testing.T) {
	var ready atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" || !ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	}))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	getenv := func(k string) string {
		if k == "HEALTH_CHECK_ADDR" {
			return "0.0.0.0:" + port // unspecified host: probes loopback
		}
		return ""
	}
	if code := healthcheck(nil, getenv, io.Discard); code != 1 {
		t.Fatalf("not ready: exit %d, want 1", code)
	}
	ready.Store(true)
	for _, args := range [][]string{nil, {"--addr", srv.Listener.Addr().String()}, {"--addr", ":" + port}} {
		if code := healthcheck(args, getenv, io.Discard); code != 0 {
			t.Fatalf("ready, args %q: exit %d, want 0", args, code)
		}
	}
	// Nothing listening, no address, bad usage.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	_ = l.Close()
	if code := healthcheck([]string{"--addr", closed}, getenv, io.Discard); code != 1 {
		t.Fatalf("nothing listening: exit %d, want 1", code)
	}
	if code := healthcheck([]string{"--addr", ""}, getenv, io.Discard); code != 1 {
		t.Fatalf("empty address: exit %d, want 1", code)
	}
	if code := healthcheck([]string{"extra"}, getenv, io.Discard); code != 2 {
		t.Fatalf("stray argument: exit %d, want 2", code)
	}
}
