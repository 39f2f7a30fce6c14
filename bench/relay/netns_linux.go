package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/snowgate/snowgate/internal/xdppass"
)

// --netns addresses (198.18.0.0/15, the benchmarking range).
const (
	netnsRelayIP  = "198.18.0.1"
	netnsClientIP = "198.18.0.2"
	netnsPeerIP   = "198.18.0.3"
)

// netnsLab is two namespaces joined by a veth pair: "relay" (the server,
// on rly0) and "outside" (uclient and turnutils_peer, on out0).
type netnsLab struct {
	relay, outside string
	pass           io.Closer
	stats          io.Closer // BPF run-time statistics, on while the lab exists
}

func ipCmd(args ...string) error {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func newNetnsLab() (*netnsLab, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("--netns needs root")
	}
	id := os.Getpid()
	l := &netnsLab{relay: fmt.Sprintf("sgbench%d-relay", id), outside: fmt.Sprintf("sgbench%d-outside", id)}
	steps := [][]string{
		{"netns", "add", l.relay},
		{"netns", "add", l.outside},
		{"-n", l.relay, "link", "add", "rly0", "type", "veth", "peer", "name", "out0", "netns", l.outside},
		{"-n", l.relay, "addr", "add", netnsRelayIP + "/24", "dev", "rly0"},
		{"-n", l.outside, "addr", "add", netnsClientIP + "/24", "dev", "out0"},
		{"-n", l.outside, "addr", "add", netnsPeerIP + "/24", "dev", "out0"},
		{"-n", l.relay, "link", "set", "lo", "up"},
		{"-n", l.outside, "link", "set", "lo", "up"},
		{"-n", l.relay, "link", "set", "rly0", "up"},
		{"-n", l.outside, "link", "set", "out0", "up"},
	}
	for _, s := range steps {
		if err := ipCmd(s...); err != nil {
			l.close()
			return nil, err
		}
	}
	err := inNetns(l.outside, func() error {
		if err := setTxChecksum("out0", false); err != nil {
			return err
		}
		ifc, err := net.InterfaceByName("out0")
		if err != nil {
			return err
		}
		l.pass, err = xdppass.Attach(ifc.Index)
		return err
	})
	if err != nil {
		l.close()
		return nil, fmt.Errorf("prepare out0: %w", err)
	}
	// The XDP program's own run time (BPF_ENABLE_STATS: on only while the
	// descriptor is open, so until the benchmark ends).
	if l.stats, err = ebpf.EnableStats(unix.BPF_STATS_RUN_TIME); err != nil {
		fmt.Fprintf(os.Stderr, "bench: BPF run-time statistics unavailable (%v): no xdp column\n", err)
	}
	return l, nil
}

// bootClock is the time since boot (the clock of BPF programs' load times).
func bootClock() time.Duration {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// xdpRuntime returns the run time and run count of the newest XDP program
// named turn_router (snowgate's) loaded after since (boot clock); false if
// there is none.
func xdpRuntime(since time.Duration) (time.Duration, uint64, bool) {
	var best *ebpf.Program
	var bestLoad time.Duration
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			break
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		info, err := p.Info()
		load, ok := time.Duration(0), false
		if err == nil {
			load, ok = info.LoadTime()
		}
		if err != nil || info.Name != "turn_router" || !ok || load < since || load < bestLoad {
			_ = p.Close()
			continue
		}
		if best != nil {
			_ = best.Close()
		}
		best, bestLoad = p, load
	}
	if best == nil {
		return 0, 0, false
	}
	defer best.Close()
	st, err := best.Stats()
	if err != nil {
		return 0, 0, false
	}
	return st.Runtime, st.RunCount, true
}

// prime resolves the relay's neighbours (client and peer) before a run, so
// that channels enter the kernel path at once.
func (l *netnsLab) prime() error {
	for _, a := range []string{netnsClientIP, netnsPeerIP} {
		if out, err := exec.Command("ip", "netns", "exec", l.relay, "ping", "-c", "1", "-W", "2", a).CombinedOutput(); err != nil {
			return fmt.Errorf("ping %s from the relay namespace: %w: %s", a, err, out)
		}
	}
	return nil
}

// close deletes the namespaces (and with them the veth pair).
func (l *netnsLab) close() {
	if l.stats != nil {
		_ = l.stats.Close()
		l.stats = nil
	}
	if l.pass != nil {
		_ = l.pass.Close()
		l.pass = nil
	}
	_ = ipCmd("netns", "del", l.outside)
	_ = ipCmd("netns", "del", l.relay)
}

// inNetns runs f on a locked thread switched into namespace ns, and
// switches back.
func inNetns(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		err = unix.Setns(target, unix.CLONE_NEWNET)
		unix.Close(target)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		err = f()
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		} // else the thread ends with the goroutine
		errc <- err
	}()
	return <-errc
}

// setTxChecksum sets dev's transmit checksum offload (ETHTOOL_STXCSUM).
func setTxChecksum(dev string, on bool) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	val := struct{ cmd, data uint32 }{cmd: 0x17}
	if on {
		val.data = 1
	}
	var ifr struct {
		name [unix.IFNAMSIZ]byte
		data unsafe.Pointer
		_    [16]byte
	}
	copy(ifr.name[:], dev)
	ifr.data = unsafe.Pointer(&val)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(&val)
	if errno != 0 {
		return fmt.Errorf("ethtool tx off on %s: %w", dev, errno)
	}
	return nil
}
