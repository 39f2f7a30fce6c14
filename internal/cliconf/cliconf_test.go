package cliconf

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestEnv(t *testing.T) {
	vars := map[string]string{"A": "x", "N": "7", "BAD": "seven", "B": "yes", "D": "2s", "BD": "nope"}
	e := &Env{Getenv: func(k string) string { return vars[k] }}
	if e.Str("A", "d") != "x" || e.Str("MISSING", "d") != "d" {
		t.Fatal("Str")
	}
	if e.Int("N", 1) != 7 || e.Int("MISSING", 1) != 1 || e.Bool("B", false) != true || e.Duration("D", 0) != 2*time.Second {
		t.Fatal("typed values")
	}
	if e.Err() != nil {
		t.Fatalf("no error yet: %v", e.Err())
	}
	_ = e.Int("BAD", 3)
	_ = e.Bool("BD", false)
	err := e.Err()
	if err == nil || !strings.Contains(err.Error(), `BAD="seven"`) || !strings.Contains(err.Error(), `BD="nope"`) {
		t.Fatalf("errors: %v", err)
	}
}

func TestParseExitCodes(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		ok   bool
		out  string
	}{
		{nil, 0, true, ""},
		{[]string{"-h"}, 0, false, "-level"},
		{[]string{"--help"}, 0, false, "-level"},
		{[]string{"--nope"}, 2, false, "flag provided but not defined: -nope"},
		{[]string{"--level", "x"}, 2, false, "invalid value"},
		{[]string{"extra"}, 2, false, "unexpected arguments"},
	} {
		var out bytes.Buffer
		fs := flag.NewFlagSet("prog", flag.ContinueOnError)
		fs.Int("level", 1, "a level")
		code, ok := Parse(fs, tc.args, &out)
		if code != tc.code || ok != tc.ok || !strings.Contains(out.String(), tc.out) {
			t.Errorf("%v: code %d ok %v out %q", tc.args, code, ok, out.String())
		}
		if tc.code == 2 && strings.Count(strings.TrimSpace(out.String()), "\n") != 0 {
			t.Errorf("%v: want one line, got %q", tc.args, out.String())
		}
	}
}

func TestResolveToken(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tok")
	if err := os.WriteFile(file, []byte("  from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cred := filepath.Join(dir, "creds")
	if err := os.Mkdir(cred, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cred, CredentialName), []byte("from-cred"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"SNOWGATE_TOKEN": "from-env"}
	get := func(k string) string { return env[k] }
	if tok, _ := ResolveToken("flag", file, get); tok != "flag" {
		t.Fatal("flag first")
	}
	if tok, _ := ResolveToken("", file, get); tok != "from-file" {
		t.Fatal("file second")
	}
	env["CREDENTIALS_DIRECTORY"] = cred
	if tok, _ := ResolveToken("", "", get); tok != "from-cred" {
		t.Fatal("credential third")
	}
	delete(env, "CREDENTIALS_DIRECTORY")
	if tok, _ := ResolveToken("", "", get); tok != "from-env" {
		t.Fatal("env last")
	}
	delete(env, "SNOWGATE_TOKEN")
	if _, err := ResolveToken("", "", get); !errors.Is(err, ErrNoToken) {
		t.Fatalf("none: %v", err)
	}
	empty := filepath.Join(dir, "empty")
	_ = os.WriteFile(empty, []byte("\n"), 0o600)
	if _, err := ResolveToken("", empty, get); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("empty file: %v", err)
	}
}

func TestDeviceID(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "id")
	id, err := DeviceID("", path)
	if err != nil || !ValidID(id) || len(id) != 36 {
		t.Fatalf("new id %q, %v", id, err)
	}
	again, err := DeviceID("", path)
	if err != nil || again != id {
		t.Fatalf("persisted id %q, %v; want %q", again, err, id)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("id file mode: %v %v", st.Mode(), err)
	}
	if got, err := DeviceID("laptop-1", path); err != nil || got != "laptop-1" {
		t.Fatalf("explicit: %q %v", got, err)
	}
	if _, err := DeviceID("bad id/../x", path); err == nil {
		t.Fatal("malformed explicit id accepted")
	}
	_ = os.WriteFile(path, []byte("../../etc\n"), 0o600)
	if _, err := DeviceID("", path); err == nil {
		t.Fatal("malformed persisted id accepted")
	}
}

// A custom Usage runs once for -h: the flag package must not call it during Parse as well.
func TestParseHelpPrintsUsageOnce(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	calls := 0
	fs.Usage = func() { calls++ }
	if code, ok := Parse(fs, []string{"-h"}, io.Discard); code != 0 || ok {
		t.Fatalf("Parse(-h) = %d, %v", code, ok)
	}
	if calls != 1 {
		t.Fatalf("usage printed %d times, want 1", calls)
	}
}
