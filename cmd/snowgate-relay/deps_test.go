package main

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// forbiddenDeps are module path prefixes the relay binary must never link: it relays TURN traffic and has no
// use for WireGuard or a userspace TCP/IP stack, which would only grow the binary and its attack surface. A
// dependency sneaking in through a shared package (as wireguard-go once did through internal/telemetry's log
// adapter) fails this test.
//
// Allowed on purpose: github.com/cilium/ebpf, with which relay/kernelpath loads and attaches the XDP program
// that relays channel data in the kernel (pure Go over golang.org/x/sys; the program itself is a committed
// object, so building needs no C toolchain).
var forbiddenDeps = []string{"golang.zx2c4.com/wireguard", "gvisor.dev/"}

// TestRelayDependencyFence lists the packages linked into snowgate-relay (go list -deps) and fails on any
// forbidden one, naming the packages that import it.
func TestRelayDependencyFence(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not found: cannot list the relay's dependencies")
	}
	out, err := exec.Command(goBin, "list", "-deps", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, ".").Output()
	if err != nil {
		var stderr string
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("go list -deps: %v\n%s", err, stderr)
	}
	importers := map[string][]string{} // package → packages importing it
	var pkgs []string
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		pkgs = append(pkgs, f[0])
		for _, imp := range f[1:] {
			importers[imp] = append(importers[imp], f[0])
		}
	}
	if len(pkgs) < 10 {
		t.Fatalf("go list -deps listed only %d packages:\n%s", len(pkgs), out)
	}
	for _, p := range pkgs {
		for _, bad := range forbiddenDeps {
			if p == strings.TrimSuffix(bad, "/") || strings.HasPrefix(p, bad) || strings.HasPrefix(p, bad+"/") {
				t.Errorf("snowgate-relay links %s (imported by %v)", p, importers[p])
			}
		}
	}
}
