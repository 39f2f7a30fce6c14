package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The measured side of each section runs in a child process (this program re-executed with a child-*
// subcommand), so that its RSS holds nothing but what is measured. Parent and child speak JSON lines:
// the parent writes commands to the child's stdin, the child writes replies and events to stdout.

// msg is one line of the parent–child protocol; unused fields are empty.
type msg struct {
	Op    string `json:"op"`
	ID    string `json:"id,omitempty"`
	Key   string `json:"key,omitempty"`   // a WireGuard public key (hex or base64, per op)
	Sdp   string `json:"sdp,omitempty"`   // an ICE candidate
	Ufrag string `json:"ufrag,omitempty"` // ICE credentials of the parent's side
	Pwd   string `json:"pwd,omitempty"`
	Addr  string `json:"addr,omitempty"`
	Text  string `json:"text,omitempty"` // free text: errors, file names
	N     int    `json:"n,omitempty"`
	Stats *stats `json:"stats,omitempty"`
}

// stats describe the child's memory after a forced GC and a return of free memory to the OS.
type stats struct {
	RSSKB      uint64 `json:"rss_kb"`
	HeapInuse  uint64 `json:"heap_inuse"`
	StackInuse uint64 `json:"stack_inuse"`
	Goroutines int    `json:"goroutines"`
	Threads    int    `json:"threads"`
}

// childStats collects this process's stats. FreeOSMemory (a GC, then returning every free page) makes
// RSS comparable between measurements: what remains is what the process holds, not what its pools
// cached.
func childStats() *stats {
	// Two cycles first: sync.Pool's victim cache (wireguard-go's buffer pools) lives through one.
	runtime.GC()
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s := &stats{HeapInuse: ms.HeapInuse, StackInuse: ms.StackInuse, Goroutines: runtime.NumGoroutine()}
	s.RSSKB, _ = statusField(os.Getpid(), "VmRSS")
	th, _ := statusField(os.Getpid(), "Threads")
	s.Threads = int(th)
	return s
}

// statusField reads a numeric field ("VmRSS", kB; "Threads") of /proc/<pid>/status.
func statusField(pid int, field string) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == field {
			return strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		}
	}
	return 0, fmt.Errorf("%s not in /proc/%d/status", field, pid)
}

// writeHeapProfile writes the heap profile (after a GC) to path.
func writeHeapProfile(path string) error {
	runtime.GC()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return pprof.Lookup("heap").WriteTo(f, 0)
}

// childOut is the child's side of the protocol: replies and events to stdout, one line each.
type childOut struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func newChildOut() *childOut { return &childOut{enc: json.NewEncoder(os.Stdout)} }

func (c *childOut) send(m msg) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = c.enc.Encode(m)
}

// serveCommon answers the commands every child knows ("stats", "heap"); false if m is none of them.
func (c *childOut) serveCommon(m msg) bool {
	switch m.Op {
	case "stats":
		c.send(msg{Op: "stats", Stats: childStats()})
	case "heap":
		err := writeHeapProfile(m.Text)
		r := msg{Op: "heap"}
		if err != nil {
			r.Text = err.Error()
		}
		c.send(r)
	default:
		return false
	}
	return true
}

// child is a running child process as the parent sees it.
type child struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	mu     sync.Mutex
	enc    *json.Encoder
	events chan msg // every line the child writes
	// events2 carries the replies to "stats" and "heap" when a goroutine of the parent consumes
	// events (statsVia, heapVia).
	events2 chan msg
	done    chan struct{}
}

// startChild runs this program with args; the child dies with the parent (Pdeathsig).
func startChild(args ...string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, args...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", args[0], err)
	}
	c := &child{cmd: cmd, in: in, enc: json.NewEncoder(in), events: make(chan msg, 4096), events2: make(chan msg, 1), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		defer close(c.events)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var m msg
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				fmt.Fprintf(os.Stderr, "bench/scale: %s: bad line %q\n", args[0], sc.Text())
				continue
			}
			c.events <- m
		}
	}()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) send(m msg) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.enc.Encode(m)
}

// wait returns the next line whose op is op, handing every other line to other (nil: dropped).
func (c *child) wait(op string, timeout time.Duration, other func(msg)) (msg, error) {
	deadline := time.After(timeout)
	for {
		select {
		case m, ok := <-c.events:
			if !ok {
				return msg{}, fmt.Errorf("child exited while waiting for %q", op)
			}
			if m.Op == op {
				return m, nil
			}
			if m.Op == "error" {
				return msg{}, fmt.Errorf("child: %s", m.Text)
			}
			if other != nil {
				other(m)
			}
		case <-deadline:
			return msg{}, fmt.Errorf("no %q from the child within %v", op, timeout)
		}
	}
}

// stats asks the child for its stats.
func (c *child) stats() (*stats, error) {
	if err := c.send(msg{Op: "stats"}); err != nil {
		return nil, err
	}
	m, err := c.wait("stats", 60*time.Second, nil)
	if err != nil {
		return nil, err
	}
	return m.Stats, nil
}

// heap asks the child to write its heap profile to path.
func (c *child) heap(path string) error {
	if err := c.send(msg{Op: "heap", Text: path}); err != nil {
		return err
	}
	m, err := c.wait("heap", 60*time.Second, nil)
	if err == nil && m.Text != "" {
		err = fmt.Errorf("heap profile: %s", m.Text)
	}
	return err
}

// stop closes the child's stdin (it exits) and waits, killing it after timeout.
func (c *child) stop(timeout time.Duration) {
	_ = c.in.Close()
	select {
	case <-c.done:
	case <-time.After(timeout):
		_ = c.cmd.Process.Kill()
	}
	_ = c.cmd.Wait()
}

// readCommands decodes the parent's commands from stdin into a channel, closed at EOF.
func readCommands() <-chan msg {
	ch := make(chan msg, 256)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(os.Stdin)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var m msg
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				ch <- m
			}
		}
	}()
	return ch
}

// statsVia is stats for a child whose events a goroutine of the parent consumes, handing replies to
// events2.
func (c *child) statsVia() (*stats, error) {
	if err := c.send(msg{Op: "stats"}); err != nil {
		return nil, err
	}
	select {
	case m := <-c.events2:
		return m.Stats, nil
	case <-time.After(60 * time.Second):
		return nil, fmt.Errorf("no stats from the child")
	}
}

// heapVia is heap for a child whose events a goroutine of the parent consumes.
func (c *child) heapVia(path string) error {
	if err := c.send(msg{Op: "heap", Text: path}); err != nil {
		return err
	}
	select {
	case m := <-c.events2:
		if m.Text != "" {
			return fmt.Errorf("heap profile: %s", m.Text)
		}
		return nil
	case <-time.After(60 * time.Second):
		return fmt.Errorf("no heap profile from the child")
	}
}
