// Package deploy holds no code: its tests keep the deployment files (docker-compose.yml, deploy/docker,
// deploy/systemd, deploy/relay-fleet) true to the binaries. They validate the files with the real tools when
// installed (docker-compose, systemd-analyze, nft, bash + envsubst) and skip those parts with a message
// otherwise, and they cross-check every environment variable and flag the files name against the string
// literals of the corresponding cmd/<binary> sources, so a renamed flag breaks the build here, not in a
// deployment.
package deploy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"go/ast"
	"go/constant"
	"go/parser"
	"go/token"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// root is the repository root, relative to this package's directory (go test runs tests there).
const root = ".."

// repoPath joins parts below the repository root.
func repoPath(parts ...string) string { return filepath.Join(append([]string{root}, parts...)...) }

func readFile(t *testing.T, parts ...string) string {
	t.Helper()
	b, err := os.ReadFile(repoPath(parts...))
	if err != nil {
		t.Fatalf("read %s: %v", filepath.Join(parts...), err)
	}
	return string(b)
}

// binaryDir maps a binary name ("snowgate-relay") to its cmd directory, and reports whether it exists.
func binaryDir(bin string) (string, bool) {
	dir := repoPath("cmd", bin)
	st, err := os.Stat(filepath.Join(dir, "main.go"))
	return dir, err == nil && !st.IsDir()
}

// stringLiterals returns every string literal in the non-test Go files of the binary in dir and of the
// packages of this module it links (the daemons share their flags through internal/cliconf). Environment
// variable names and flag names appear there as literals ("SNOWGATE_TOKEN", "api-url"), so membership in
// this set is how the tests check that a deployment file names only settings the binary reads.
func stringLiterals(t *testing.T, dir string) map[string]bool {
	t.Helper()
	set := map[string]bool{}
	cmd := exec.Command("go", "list", "-deps", "-f", "{{if .Module}}{{if .Module.Main}}{{.Dir}}{{end}}{{end}}", ".")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps in %s: %v", dir, err)
	}
	for _, d := range strings.Fields(string(out)) {
		for k := range dirLiterals(t, d) {
			set[k] = true
		}
	}
	return set
}

// dirLiterals returns every string literal in the non-test Go files of dir.
func dirLiterals(t *testing.T, dir string) map[string]bool {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read %s: %v", dir, err)
	}
	fset := token.NewFileSet()
	set := map[string]bool{}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, name), nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatalf("parse %s: %v", filepath.Join(dir, name), err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if bl, ok := n.(*ast.BasicLit); ok && bl.Kind == token.STRING {
				if s, err := strconv.Unquote(bl.Value); err == nil {
					set[s] = true
				}
			}
			return true
		})
	}
	return set
}

// sourceIndex caches, for one test, the string literals of each binary (stringLiterals takes a second or two
// per binary: go list plus parsing every package it links).
type sourceIndex struct {
	t    *testing.T
	bins map[string]map[string]bool
}

func newSourceIndex(t *testing.T) *sourceIndex {
	return &sourceIndex{t: t, bins: map[string]map[string]bool{}}
}

// literals returns the string literals of binary bin ("snowgate-client"); a missing binary is fatal.
func (ix *sourceIndex) literals(bin string) map[string]bool {
	ix.t.Helper()
	if lits, ok := ix.bins[bin]; ok {
		return lits
	}
	dir, ok := binaryDir(bin)
	if !ok {
		ix.t.Fatalf("binary %s: %s/main.go does not exist", bin, dir)
	}
	lits := stringLiterals(ix.t, dir)
	ix.bins[bin] = lits
	return lits
}

// checkEnvNames fails for every name in names that the binary's sources do not mention.
func checkEnvNames(t *testing.T, where, bin string, names []string) {
	t.Helper()
	newSourceIndex(t).checkEnvNames(where, bin, names)
}

// checkEnvNames is the package function with the index's cache.
func (ix *sourceIndex) checkEnvNames(where, bin string, names []string) {
	ix.t.Helper()
	dir, _ := binaryDir(bin)
	lits := ix.literals(bin)
	for _, n := range names {
		if !lits[n] {
			ix.t.Errorf("%s: environment variable %s is not read by %s (no %q literal in %s)", where, n, bin, n, dir)
		}
	}
}

// checkFlagNames fails for every --flag / -flag in args that the binary's sources do not define.
func checkFlagNames(t *testing.T, where, bin string, args []string) {
	t.Helper()
	newSourceIndex(t).checkFlagNames(where, bin, args)
}

// checkFlagNames is the package function with the index's cache.
func (ix *sourceIndex) checkFlagNames(where, bin string, args []string) {
	ix.t.Helper()
	dir, _ := binaryDir(bin)
	lits := ix.literals(bin)
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name := strings.TrimLeft(a, "-")
		name, _, _ = strings.Cut(name, "=")
		if !lits[name] {
			ix.t.Errorf("%s: flag %s is not defined by %s (no %q literal in %s)", where, a, bin, name, dir)
		}
	}
}

// goConst evaluates the untyped constant name declared in a Go file of the repository (for example
// relay.DefaultSocketBuffer in relay/config.go), so deployment defaults can be checked against the code's.
// It understands literals, parentheses, unary and binary operators, shifts, other constants of the same
// file and time.Nanosecond … time.Hour.
func goConst(t *testing.T, file, name string) constant.Value {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), repoPath(file), nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatalf("parse %s: %v", file, err)
	}
	exprs := map[string]ast.Expr{}
	for _, d := range f.Decls {
		gd, ok := d.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, s := range gd.Specs {
			vs := s.(*ast.ValueSpec)
			for i, n := range vs.Names {
				if i < len(vs.Values) {
					exprs[n.Name] = vs.Values[i]
				}
			}
		}
	}
	units := map[string]int64{
		"Nanosecond": 1, "Microsecond": 1e3, "Millisecond": 1e6, "Second": 1e9, "Minute": 60e9, "Hour": 3600e9,
	}
	var eval func(e ast.Expr, depth int) (constant.Value, error)
	eval = func(e ast.Expr, depth int) (constant.Value, error) {
		if depth > 20 {
			return nil, errors.New("constant definitions nest too deep")
		}
		switch e := e.(type) {
		case *ast.BasicLit:
			v := constant.MakeFromLiteral(e.Value, e.Kind, 0)
			if v.Kind() == constant.Unknown {
				return nil, fmt.Errorf("bad literal %s", e.Value)
			}
			return v, nil
		case *ast.ParenExpr:
			return eval(e.X, depth+1)
		case *ast.UnaryExpr:
			x, err := eval(e.X, depth+1)
			if err != nil {
				return nil, err
			}
			return constant.UnaryOp(e.Op, x, 0), nil
		case *ast.BinaryExpr:
			x, err := eval(e.X, depth+1)
			if err != nil {
				return nil, err
			}
			y, err := eval(e.Y, depth+1)
			if err != nil {
				return nil, err
			}
			if e.Op == token.SHL || e.Op == token.SHR {
				s, ok := constant.Uint64Val(y)
				if !ok {
					return nil, fmt.Errorf("bad shift count %v", y)
				}
				return constant.Shift(x, e.Op, uint(s)), nil
			}
			return constant.BinaryOp(x, e.Op, y), nil
		case *ast.SelectorExpr:
			if pkg, ok := e.X.(*ast.Ident); ok && pkg.Name == "time" {
				if n, ok := units[e.Sel.Name]; ok {
					return constant.MakeInt64(n), nil
				}
			}
		case *ast.Ident:
			if x, ok := exprs[e.Name]; ok {
				return eval(x, depth+1)
			}
		case *ast.CallExpr: // conversions such as time.Duration(5)
			if len(e.Args) == 1 {
				return eval(e.Args[0], depth+1)
			}
		}
		return nil, fmt.Errorf("cannot evaluate %T", e)
	}
	x, ok := exprs[name]
	if !ok {
		t.Fatalf("%s: no constant %s (the deploy tests read it; update them if it moved)", file, name)
	}
	v, err := eval(x, 0)
	if err != nil {
		t.Fatalf("%s: constant %s: %v (the deploy tests read it; update them if its form changed)", file, name, err)
	}
	return v
}

// goConstInt64 is goConst for integer (and time.Duration) constants.
func goConstInt64(t *testing.T, file, name string) int64 {
	t.Helper()
	v, ok := constant.Int64Val(constant.ToInt(goConst(t, file, name)))
	if !ok {
		t.Fatalf("%s: constant %s is not an int64", file, name)
	}
	return v
}

// parseEnvFile reads KEY=VALUE lines (systemd EnvironmentFile syntax without quoting), skipping comments.
func parseEnvFile(t *testing.T, where, text string) (map[string]string, []string) {
	t.Helper()
	env := map[string]string{}
	var order []string
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || !regexp.MustCompile(`^[A-Z_][A-Z0-9_]*$`).MatchString(k) {
			t.Errorf("%s:%d: not a KEY=VALUE line: %q", where, n, line)
			continue
		}
		if _, dup := env[k]; dup {
			t.Errorf("%s:%d: %s set twice", where, n, k)
		}
		env[k] = v
		order = append(order, k)
	}
	return env, order
}

// forbidden are the private ranges no test or deployment example may use (design.md, test addresses).
var forbidden = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
}

// labRanges are the ranges the compose lab may use: the "internet" and the documentation LANs.
var labRanges = []netip.Prefix{
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("192.0.2.0/24"),
	netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("203.0.113.0/24"),
	netip.MustParsePrefix("2001:db8::/32"),
}

var ipv4Token = regexp.MustCompile(`\b\d{1,3}(?:\.\d{1,3}){3}(?:/\d{1,2})?\b`)

// forbiddenAddrs returns every IPv4 address or prefix in text that overlaps 10/8, 172.16/12 or 192.168/16.
func forbiddenAddrs(text string) []string {
	var bad []string
	for _, m := range ipv4Token.FindAllString(text, -1) {
		p, err := netip.ParsePrefix(m)
		if err != nil {
			a, aerr := netip.ParseAddr(m)
			if aerr != nil {
				continue
			}
			p = netip.PrefixFrom(a, 32)
		}
		for _, f := range forbidden {
			if f.Overlaps(p) {
				bad = append(bad, m)
			}
		}
	}
	return bad
}

func inLabRanges(p netip.Prefix) bool {
	for _, r := range labRanges {
		if r.Bits() <= p.Bits() && r.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// TestNoPrivateRanges scans every deployment file for addresses in 10/8, 172.16/12 and 192.168/16.
func TestNoPrivateRanges(t *testing.T) {
	files := []string{repoPath("docker-compose.yml")}
	err := filepath.WalkDir(repoPath("deploy"), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && !strings.HasSuffix(p, "_test.go") {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if bad := forbiddenAddrs(string(b)); len(bad) > 0 {
			t.Errorf("%s uses private addresses %v: use 198.18.0.0/15 for the internet and 192.0.2.0/24, "+
				"198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32 for LANs", f, bad)
		}
	}
}

func TestForbiddenAddrs(t *testing.T) {
	for _, tc := range []struct {
		text string
		bad  bool
	}{
		{"198.18.0.101", false},
		{"subnet: 192.0.2.0/26", false},
		{"never 10/8, 172.16/12 or 192.168/16", false}, // prose, not addresses
		{"10.1.2.3", true},
		{"172.31.0.0/24", true},
		{"172.32.0.1", false},
		{"192.168.1.0/24", true},
		{"0.0.0.0/0", true}, // overlaps everything
		{"127.0.0.1:8082", false},
	} {
		if got := len(forbiddenAddrs(tc.text)) > 0; got != tc.bad {
			t.Errorf("forbiddenAddrs(%q) found=%v, want %v", tc.text, got, tc.bad)
		}
	}
}

// runTool runs a command with a timeout and returns its combined output.
func runTool(t *testing.T, dir string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// parseSystemdDuration parses a systemd time span: a bare number of seconds, or units such as "1min 30s".
func parseSystemdDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.Atoi(s); err == nil {
		return time.Duration(n) * time.Second, nil
	}
	r := strings.NewReplacer("min", "m", "sec", "s", " ", "")
	d, err := time.ParseDuration(r.Replace(s))
	if err != nil {
		return 0, fmt.Errorf("time span %q: %w", s, err)
	}
	return d, nil
}

func TestParseSystemdDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"60": time.Minute, "60s": time.Minute, "1min 30s": 90 * time.Second, "2min": 2 * time.Minute, "500ms": 500 * time.Millisecond,
	} {
		got, err := parseSystemdDuration(in)
		if err != nil || got != want {
			t.Errorf("parseSystemdDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := parseSystemdDuration("soon"); err == nil {
		t.Error(`parseSystemdDuration("soon") succeeded`)
	}
}
