// Package cliconf holds what the daemons' command lines share: flags whose defaults come from environment
// variables (the flag wins), the portal token's sources, the persisted device id, and the exit codes of the
// flag parser (-h/--help exits 0, a bad flag or value exits 2 with one line saying which).
package cliconf

import (
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Env reads defaults from environment variables for flags and collects the errors of malformed values, so
// that one parse reports them all.
type Env struct {
	Getenv func(string) string
	errs   []error
}

// Str returns the variable's value, or def when it is unset or empty.
func (e *Env) Str(name, def string) string {
	if v := e.Getenv(name); v != "" {
		return v
	}
	return def
}

// Int returns the variable as an integer, or def; a malformed value is recorded as an error.
func (e *Env) Int(name string, def int) int {
	v := e.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		e.errs = append(e.errs, fmt.Errorf("%s=%q: not an integer", name, v))
		return def
	}
	return n
}

// Bool returns the variable as a boolean (1, true, yes, on / 0, false, no, off), or def.
func (e *Env) Bool(name string, def bool) bool {
	v := strings.ToLower(strings.TrimSpace(e.Getenv(name)))
	switch v {
	case "":
		return def
	case "1", "true", "yes", "on":
		return true
	case "0", "false", "no", "off":
		return false
	}
	e.errs = append(e.errs, fmt.Errorf("%s=%q: not a boolean", name, v))
	return def
}

// Duration returns the variable as a duration, or def.
func (e *Env) Duration(name string, def time.Duration) time.Duration {
	v := e.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		e.errs = append(e.errs, fmt.Errorf("%s=%q: not a duration", name, v))
		return def
	}
	return d
}

// Err returns the errors recorded so far, joined.
func (e *Env) Err() error { return errors.Join(e.errs...) }

// Parse parses args with fs (whose output should be the program's stderr) and turns the outcome into an
// exit code for the caller: 0 and ok=false after -h/--help (usage printed), 2 and ok=false for a bad flag or
// stray arguments (one line on out naming the problem), ok=true otherwise.
func Parse(fs *flag.FlagSet, args []string, out io.Writer) (code int, ok bool) {
	// The flag package calls Usage itself on -h; silence it (a custom Usage may ignore Output) and print
	// the usage once below.
	usage := fs.Usage
	fs.Usage = func() {}
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.SetOutput(out)
	fs.Usage = usage
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.Usage()
		return 0, false
	case err != nil:
		fmt.Fprintf(out, "%s: %v (see -h)\n", fs.Name(), err)
		return 2, false
	case fs.NArg() > 0:
		fmt.Fprintf(out, "%s: unexpected arguments %q (see -h)\n", fs.Name(), fs.Args())
		return 2, false
	}
	return 0, true
}

// CredentialName is the systemd credential a token is read from when $CREDENTIALS_DIRECTORY is set
// (LoadCredential=snowgate-token:PATH).
const CredentialName = "snowgate-token"

// maxTokenFile bounds a token file read.
const maxTokenFile = 64 << 10

// ErrNoToken is returned by ResolveToken when no source holds a token.
var ErrNoToken = errors.New("no portal token: set SNOWGATE_TOKEN, --token-file or SNOWGATE_TOKEN_FILE")

// ReadToken reads a token file: surrounding whitespace (a trailing newline) is dropped; an empty token is an
// error.
func ReadToken(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	if err != nil {
		return "", fmt.Errorf("token file %s: %w", path, err)
	}
	if len(b) > maxTokenFile {
		return "", fmt.Errorf("token file %s: larger than %d bytes", path, maxTokenFile)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("token file %s: empty", path)
	}
	return tok, nil
}

// ResolveToken picks the portal token, first found: flagToken, the token file (flag or
// SNOWGATE_TOKEN_FILE, passed as tokenFile), the systemd credential, SNOWGATE_TOKEN. It returns ErrNoToken
// when none holds one.
func ResolveToken(flagToken, tokenFile string, getenv func(string) string) (string, error) {
	if flagToken != "" {
		return flagToken, nil
	}
	if tokenFile != "" {
		return ReadToken(tokenFile)
	}
	if dir := getenv("CREDENTIALS_DIRECTORY"); dir != "" {
		path := filepath.Join(dir, CredentialName)
		if _, err := os.Stat(path); err == nil {
			return ReadToken(path)
		}
	}
	if tok := strings.TrimSpace(getenv("SNOWGATE_TOKEN")); tok != "" {
		return tok, nil
	}
	return "", ErrNoToken
}

// SecretEnv are the variables holding secrets; daemons remove them from their environment once parsed, so
// that nothing later (a child process, a dump of the environment) sees them.
var SecretEnv = []string{"SNOWGATE_TOKEN", "SNOWGATE_TOKEN_FILE", "TURN_REST_SECRET"}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)

// ValidID reports whether s is acceptable as a device id (1–128 characters of letters, digits and
// ._:-, not starting with punctuation): it goes into the portal URL.
func ValidID(s string) bool { return idPattern.MatchString(s) }

// DeviceID returns the device id: explicit (SNOWGATE_ID or a flag) if given, else the one persisted in
// path, else a new random UUID (version 4) written to path (mode 0600, directories created 0700) so that
// the device keeps its id across restarts.
func DeviceID(explicit, path string) (string, error) {
	if explicit != "" {
		if !ValidID(explicit) {
			return "", fmt.Errorf("device id %q: want 1-128 letters, digits or ._:-", explicit)
		}
		return explicit, nil
	}
	if b, err := os.ReadFile(path); err == nil {
		id := strings.TrimSpace(string(b))
		if ValidID(id) {
			return id, nil
		}
		return "", fmt.Errorf("device id file %s: malformed id %q (delete the file to get a new one)", path, id)
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("device id file: %w", err)
	}
	id, err := newUUID()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", fmt.Errorf("device id file: %w", err)
	}
	if err := os.WriteFile(path, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("device id file: %w", err)
	}
	return id, nil
}

func newUUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("device id: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}

// Hostname returns the host name, or def when it cannot be read.
func Hostname(def string) string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return def
	}
	return h
}
