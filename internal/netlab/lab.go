package netlab

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// Prefix is the first two characters of every namespace and interface name a lab creates.
const Prefix = "nl"

// netnsDir is where `ip netns add` bind-mounts named namespaces.
const netnsDir = "/run/netns"

// nodeName restricts the names callers give to networks, hosts and routers.
var nodeName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,19}$`)

// Lab is one test bed: a set of network namespaces, the veth links between them and the processes
// started in them. Create it with New; everything it creates carries the lab's unique name prefix
// (Lab.ID) and is removed by Close, which New registers with t.Cleanup.
//
// A Lab's methods may be called from several goroutines; topology changes are serialised.
type Lab struct {
	tb testing.TB
	id string

	mu         sync.Mutex
	closed     bool
	namespaces []*Namespace
	names      map[string]bool
	procs      []*proc
	netem      *netemProbe
}

type netemProbe struct {
	ok     bool
	reason string
}

// SkipReason returns why netlab cannot run on this machine, or "" if it can: it needs root (to
// create network namespaces) and iproute2's `ip`.
func SkipReason() string {
	if os.Geteuid() != 0 {
		return "netlab: end-to-end network test needs root to create network namespaces (CI runs it as root); skipping"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "netlab: iproute2 `ip` not found in PATH (apt-get install iproute2); skipping"
	}
	return ""
}

// New returns an empty lab. It skips the test (tb.Skip) unless the process is root and `ip` is
// installed, and registers Close with tb.Cleanup so the lab's namespaces and processes are removed
// however the test ends (pass, t.Fatal, panic inside the test function). If the test binary itself
// is killed (e.g. by -timeout) cleanups do not run; remove leftovers with
//
//	ip netns list | awk '/^nl/ {print $1}' | xargs -r -n1 ip netns del
func New(tb testing.TB) *Lab {
	tb.Helper()
	if reason := SkipReason(); reason != "" {
		tb.Skip(reason)
	}
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		tb.Fatalf("netlab: random lab id: %v", err)
	}
	l := &Lab{tb: tb, id: Prefix + hex.EncodeToString(b[:]), names: map[string]bool{}}
	tb.Cleanup(func() {
		if err := l.Close(); err != nil {
			tb.Errorf("netlab: cleanup: %v", err)
		}
	})
	return l
}

// ID returns the lab's unique prefix ("nl" and six hex digits); every namespace it creates is named
// ID + "-" + node name.
func (l *Lab) ID() string { return l.id }

// NamespaceNames returns the names of the namespaces the lab has created and not yet deleted.
func (l *Lab) NamespaceNames() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]string, 0, len(l.namespaces))
	for _, ns := range l.namespaces {
		out = append(out, ns.name)
	}
	return out
}

// Close kills every process started with Run (by process group), then deletes every namespace the
// lab created, by name, newest first; deleting a namespace destroys its veths and bridges with it.
// It is idempotent and safe to call before the test's own cleanup runs.
func (l *Lab) Close() error {
	l.mu.Lock()
	procs := l.procs
	namespaces := l.namespaces
	l.procs, l.namespaces, l.closed = nil, nil, true
	l.mu.Unlock()

	var errs []error
	for _, p := range procs {
		p.kill()
	}
	for i := len(namespaces) - 1; i >= 0; i-- {
		name := namespaces[i].name
		if err := run(nil, "ip", "netns", "del", name); err != nil {
			if _, statErr := os.Stat(filepath.Join(netnsDir, name)); statErr == nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// newNamespace creates the named namespace with loopback up, IPv6 DAD and router advertisements
// disabled (addresses are usable at once and nothing configures itself) and IPv6 addresses kept
// while a link is down.
func (l *Lab) newNamespace(node string) *Namespace {
	l.tb.Helper()
	if !nodeName.MatchString(node) {
		l.tb.Fatalf("netlab: invalid node name %q (want %s)", node, nodeName)
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		l.tb.Fatalf("netlab: lab %s is closed", l.id)
	}
	if l.names[node] {
		l.mu.Unlock()
		l.tb.Fatalf("netlab: node name %q used twice in lab %s", node, l.id)
	}
	l.names[node] = true
	ns := &Namespace{lab: l, node: node, name: l.id + "-" + node}
	l.mu.Unlock()

	if err := run(nil, "ip", "netns", "add", ns.name); err != nil {
		l.tb.Fatalf("netlab: %v", err)
	}
	l.mu.Lock()
	l.namespaces = append(l.namespaces, ns)
	l.mu.Unlock()

	err := ns.sysctl(map[string]string{
		"net/ipv6/conf/all/accept_dad":     "0",
		"net/ipv6/conf/default/accept_dad": "0",
		"net/ipv6/conf/all/accept_ra":      "0",
		"net/ipv6/conf/default/accept_ra":  "0",
		// Keep IPv6 addresses over Link.SetUp(false), as IPv4 does.
		"net/ipv6/conf/all/keep_addr_on_down":     "1",
		"net/ipv6/conf/default/keep_addr_on_down": "1",
	})
	if err != nil {
		l.tb.Fatalf("netlab: %v", err)
	}
	ns.mustIP("link set lo up")
	return ns
}

// NetemAvailable reports whether the kernel has the netem qdisc (sch_netem), which
// Link.SetImpairment needs. The answer is probed once per lab.
func (l *Lab) NetemAvailable() bool {
	ok, _ := l.netemStatus()
	return ok
}

func (l *Lab) netemStatus() (bool, string) {
	l.mu.Lock()
	if l.netem != nil {
		defer l.mu.Unlock()
		return l.netem.ok, l.netem.reason
	}
	l.mu.Unlock()

	probe := &netemProbe{ok: true}
	if _, err := exec.LookPath("tc"); err != nil {
		probe = &netemProbe{reason: "tc (iproute2) not found"}
	} else {
		// Probe in a throwaway namespace so nothing outside the lab is touched.
		ns := l.newNamespace("netem-probe")
		if err := run(nil, "tc", "-n", ns.name, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"); err != nil {
			probe = &netemProbe{reason: "sch_netem unavailable: " + err.Error()}
		}
		l.deleteNamespace(ns)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.netem == nil {
		l.netem = probe
	}
	return l.netem.ok, l.netem.reason
}

// deleteNamespace removes one namespace early (used by the netem probe).
func (l *Lab) deleteNamespace(ns *Namespace) {
	if err := run(nil, "ip", "netns", "del", ns.name); err != nil {
		l.tb.Logf("netlab: %v", err)
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, n := range l.namespaces {
		if n == ns {
			l.namespaces = append(l.namespaces[:i], l.namespaces[i+1:]...)
			break
		}
	}
	delete(l.names, ns.node)
}

// addProc records a started process so Close kills it.
func (l *Lab) addProc(p *proc) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.procs = append(l.procs, p)
	return true
}

// proc is a process started by Namespace.Run, killed (by process group) exactly once.
type proc struct {
	cmd  *exec.Cmd
	once sync.Once
}

func (p *proc) kill() {
	p.once.Do(func() {
		if p.cmd.Process == nil {
			return
		}
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Wait()
		}
	})
}

// run executes a command (stdin may be nil) and returns an error carrying the command line and its
// output if it fails.
func run(stdin []byte, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		if stdin != nil {
			return fmt.Errorf("%s %s: %w: %s\ninput:\n%s", name, strings.Join(args, " "), err, bytes.TrimSpace(out), stdin)
		}
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}
