package netlab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// ErrDoPanicked wraps the value of a panic raised by the function given to Namespace.Do.
var ErrDoPanicked = errors.New("netlab: function passed to Do panicked")

// Namespace is one network namespace of a lab (a host, a router or the switch behind a network).
// Hosts and routers embed it, so its methods run commands and Go code "on" that node.
type Namespace struct {
	lab  *Lab
	node string
	name string
}

// Name returns the namespace's name as `ip netns list` shows it (lab ID + "-" + node name).
func (n *Namespace) Name() string { return n.name }

// Node returns the node name the caller gave (e.g. "relay1").
func (n *Namespace) Node() string { return n.node }

// Path returns the namespace's bind-mount path (/run/netns/<name>), usable with setns(2) or
// `nsenter --net=<path>`.
func (n *Namespace) Path() string { return filepath.Join(netnsDir, n.name) }

// Exec runs name with args inside the namespace (via `ip netns exec`) and returns its combined
// output. A non-zero exit is an error that carries the output.
func (n *Namespace) Exec(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.name, name}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("netlab: %s: %s %s: %w: %s", n.node, name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// Run starts name with args inside the namespace and returns the started command. The process gets
// its own process group; it is killed (SIGKILL to the group, by pid) and waited for when tb's test
// ends or the lab closes, whichever comes first, and when ctx is done. Its stdout and stderr go to a
// file in tb.TempDir() whose tail is logged if the test failed. Start failures are fatal.
//
// Callers that want the exit status may call Wait themselves, but only from the test goroutine and
// before the test returns. The process also gets SIGKILL if the OS thread that started it exits
// (Pdeathsig), so a killed test binary leaves no process behind; therefore do not call Run from a
// goroutine that has locked its OS thread and exits without unlocking it.
func (n *Namespace) Run(tb testing.TB, ctx context.Context, name string, args ...string) *exec.Cmd {
	tb.Helper()
	logPath := filepath.Join(tb.TempDir(), fmt.Sprintf("%s-%s.log", n.node, filepath.Base(name)))
	logFile, err := os.Create(logPath)
	if err != nil {
		tb.Fatalf("netlab: %s: create log file: %v", n.node, err)
	}
	defer logFile.Close()

	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.name, name}, args...)...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if err := cmd.Start(); err != nil {
		tb.Fatalf("netlab: %s: start %s: %v", n.node, name, err)
	}
	p := &proc{cmd: cmd}
	if !n.lab.addProc(p) {
		p.kill()
		tb.Fatalf("netlab: %s: lab closed while starting %s", n.node, name)
	}
	tb.Cleanup(func() {
		p.kill()
		if tb.Failed() {
			if out, err := os.ReadFile(logPath); err == nil && len(out) > 0 {
				if len(out) > 4096 {
					out = out[len(out)-4096:]
				}
				tb.Logf("netlab: %s: output of %s %s (tail):\n%s", n.node, name, strings.Join(args, " "), out)
			}
		}
	})
	return cmd
}

// Do runs f on an OS thread that has been switched into the namespace with setns(2), and returns
// f's error. The thread is locked for the duration; the namespace it came from is saved and restored
// afterwards (if restoring fails, the thread is discarded rather than reused). The calling
// goroutine's own thread is never switched: f runs on a dedicated goroutine, and a panic or
// runtime.Goexit (t.FailNow) inside f is propagated to the caller.
//
// Warning: only the code f runs on that thread is in the namespace. Sockets created inside f keep
// the namespace for their whole life, so create sockets inside f and use them anywhere afterwards;
// but goroutines started inside f run on other threads, in the original namespace, and so do
// blocking DNS lookups that hand off to other threads. Use IP literals, not host names.
func (n *Namespace) Do(f func() error) error {
	type result struct {
		err      error
		panicVal any
		panicked bool
		goexit   bool
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		res := result{goexit: true}
		var orig = -1
		entered := false
		defer func() {
			if r := recover(); r != nil {
				res.panicVal, res.panicked, res.goexit = r, true, false
			}
			restored := true
			if entered {
				if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
					restored = false
					res.err = errors.Join(res.err, fmt.Errorf("netlab: %s: restore original network namespace: %w", n.node, err))
				}
			}
			if orig >= 0 {
				unix.Close(orig)
			}
			if restored {
				runtime.UnlockOSThread()
			} // else: the goroutine exits locked and the runtime terminates the thread.
			done <- res
		}()
		var err error
		orig, err = unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			res.err, res.goexit = fmt.Errorf("netlab: open current network namespace: %w", err), false
			return
		}
		target, err := unix.Open(n.Path(), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			res.err, res.goexit = fmt.Errorf("netlab: %s: open namespace: %w", n.node, err), false
			return
		}
		err = unix.Setns(target, unix.CLONE_NEWNET)
		unix.Close(target)
		if err != nil {
			res.err, res.goexit = fmt.Errorf("netlab: %s: setns: %w", n.node, err), false
			return
		}
		entered = true
		res.err = f()
		res.goexit = false
	}()
	res := <-done
	switch {
	case res.panicked:
		panic(fmt.Errorf("%w: %v", ErrDoPanicked, res.panicVal))
	case res.goexit:
		runtime.Goexit()
	}
	return res.err
}

// ListenUDP opens a UDP socket inside the namespace (see Do); network is "udp", "udp4" or "udp6"
// and addr an IP literal with port, e.g. "0.0.0.0:0" or "[2001:db8::2]:3478".
func (n *Namespace) ListenUDP(network, addr string) (*net.UDPConn, error) {
	var conn *net.UDPConn
	err := n.Do(func() error {
		laddr, err := net.ResolveUDPAddr(network, addr)
		if err != nil {
			return err
		}
		conn, err = net.ListenUDP(network, laddr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlab: %s: listen %s %s: %w", n.node, network, addr, err)
	}
	return conn, nil
}

// ListenTCP opens a TCP listener inside the namespace (see Do).
func (n *Namespace) ListenTCP(network, addr string) (*net.TCPListener, error) {
	var ln *net.TCPListener
	err := n.Do(func() error {
		laddr, err := net.ResolveTCPAddr(network, addr)
		if err != nil {
			return err
		}
		ln, err = net.ListenTCP(network, laddr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlab: %s: listen %s %s: %w", n.node, network, addr, err)
	}
	return ln, nil
}

// DialTCP connects to addr (an IP literal with port) from inside the namespace (see Do); ctx bounds
// the connection attempt.
func (n *Namespace) DialTCP(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := n.Do(func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlab: %s: dial %s %s: %w", n.node, network, addr, err)
	}
	return conn, nil
}

// DialUDP opens a connected UDP socket to raddr from inside the namespace (see Do).
func (n *Namespace) DialUDP(network, raddr string) (*net.UDPConn, error) {
	var conn *net.UDPConn
	err := n.Do(func() error {
		ra, err := net.ResolveUDPAddr(network, raddr)
		if err != nil {
			return err
		}
		conn, err = net.DialUDP(network, nil, ra)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlab: %s: dial %s %s: %w", n.node, network, raddr, err)
	}
	return conn, nil
}

// sysctl writes /proc/sys values (keys as paths relative to /proc/sys, e.g. "net/ipv4/ip_forward")
// from inside the namespace; /proc/sys/net shows the namespace of the thread that opens it, so this
// never touches the host's settings.
func (n *Namespace) sysctl(kv map[string]string) error {
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return n.Do(func() error {
		for _, k := range keys {
			if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(kv[k]), 0o644); err != nil {
				return fmt.Errorf("netlab: %s: sysctl %s=%s: %w", n.node, k, kv[k], err)
			}
		}
		return nil
	})
}

// ip runs `ip -n <ns> -batch -` with one command per line.
func (n *Namespace) ip(lines ...string) error {
	return run([]byte(strings.Join(lines, "\n")+"\n"), "ip", "-n", n.name, "-batch", "-")
}

// mustIP is ip with failures fatal to the lab's test.
func (n *Namespace) mustIP(lines ...string) {
	n.lab.tb.Helper()
	if err := n.ip(lines...); err != nil {
		n.lab.tb.Fatalf("netlab: %s: %v", n.node, err)
	}
}
