package kernelpath

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestObjectIsCurrent regenerates the BPF object and its Go bindings with
// gen.go's own go:generate command into a temporary directory and compares
// them with the committed files: a change to bpf/turnrouter.c (or to the
// flags) must come with `go generate ./relay/kernelpath`. Needs clang and
// llvm-strip (Debian: clang, llvm) and libbpf's headers (libbpf-dev), as CI
// has; skipped without clang.
func TestObjectIsCurrent(t *testing.T) {
	if _, err := exec.LookPath("clang"); err != nil {
		t.Skip("clang not installed: cannot check that the committed BPF object is current (install clang, llvm, libbpf-dev)")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not found: cannot run bpf2go")
	}
	src, err := os.ReadFile("gen.go")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^//go:generate go tool bpf2go (.*)$`).FindSubmatch(src)
	if m == nil {
		t.Fatal("no bpf2go go:generate line in gen.go")
	}
	args, err := splitQuoted(string(m[1]))
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	cmd := exec.Command(goBin, append([]string{"tool", "bpf2go", "-output-dir", out, "-go-package", "kernelpath"}, args...)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bpf2go: %v\n%s", err, b)
	}
	gen, err := filepath.Glob(filepath.Join(out, "*"))
	if err != nil || len(gen) == 0 {
		t.Fatalf("bpf2go wrote nothing (%v)", err)
	}
	for _, p := range gen {
		name := filepath.Base(p)
		fresh, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		committed, err := os.ReadFile(name)
		if err != nil {
			t.Errorf("%s is generated but not committed: run go generate ./relay/kernelpath", name)
			continue
		}
		if !bytes.Equal(fresh, committed) {
			t.Errorf("%s is stale: run go generate ./relay/kernelpath and commit the result", name)
		}
	}
}

// splitQuoted splits a go:generate argument list (words, "quoted words").
func splitQuoted(s string) ([]string, error) {
	var out []string
	var cur strings.Builder
	inQuote, inWord := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			inWord = true
		case r == ' ' && !inQuote:
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inQuote {
		return nil, os.ErrInvalid
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out, nil
}
