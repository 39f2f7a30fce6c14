package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/snowgate/snowgate/bench/internal/procstat"
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
	// napi holds the NAPI kernel threads of rly0 and out0 once
	// threadedNAPI has run.
	napi map[string][]int
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

// xdpRuntime returns the run time and run count of the XDP program
// attached to rly0 in the relay namespace (the relay's own, whatever else
// runs on the machine); false if there is none.
func (l *netnsLab) xdpRuntime() (time.Duration, uint64, bool) {
	var id uint32
	if err := inNetns(l.relay, func() error {
		link, err := netlink.LinkByName("rly0")
		if err != nil {
			return err
		}
		if x := link.Attrs().Xdp; x != nil && x.Attached {
			id = x.ProgId
		}
		return nil
	}); err != nil || id == 0 {
		return 0, 0, false
	}
	p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
	if err != nil {
		return 0, 0, false
	}
	defer p.Close()
	st, err := p.Stats()
	if err != nil {
		return 0, 0, false
	}
	return st.Runtime, st.RunCount, true
}

// napiThreads returns the pids of kernel threads named napi/<dev>-<id>.
func napiThreads(dev string) map[int]bool {
	out := map[int]bool{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile("/proc/" + e.Name() + "/comm"); err == nil &&
			strings.HasPrefix(string(b), "napi/"+dev+"-") {
			out[pid] = true
		}
	}
	return out
}

// threadedNAPI turns on GRO (so that veth always receives through NAPI,
// with or without an XDP program) and threaded NAPI on both veth ends, and
// pins rly0's NAPI thread to relayCPU and out0's to outsideCPU: the relay
// side's receive work (the XDP program included) then runs on the relay's
// CPU, as on a host whose NIC interrupts go to its own cores, instead of on
// whichever CPU sent the frame.
func (l *netnsLab) threadedNAPI(relayCPU, outsideCPU int) error {
	l.napi = map[string][]int{}
	for _, side := range []struct {
		ns, dev string
		cpu     int
	}{{l.relay, "rly0", relayCPU}, {l.outside, "out0", outsideCPU}} {
		before := napiThreads(side.dev)
		if out, err := exec.Command("ip", "netns", "exec", side.ns, "ethtool", "-K", side.dev, "gro", "on").CombinedOutput(); err != nil {
			return fmt.Errorf("ethtool -K %s gro on: %w: %s", side.dev, err, out)
		}
		if out, err := exec.Command("ip", "netns", "exec", side.ns, "sh", "-c",
			"echo 1 > /sys/class/net/"+side.dev+"/threaded").CombinedOutput(); err != nil {
			return fmt.Errorf("threaded NAPI on %s: %w: %s", side.dev, err, out)
		}
		for pid := range napiThreads(side.dev) {
			if before[pid] {
				continue // another namespace's device of the same name
			}
			var set unix.CPUSet
			set.Set(side.cpu)
			if err := unix.SchedSetaffinity(pid, &set); err != nil {
				return fmt.Errorf("pin NAPI thread %d of %s: %w", pid, side.dev, err)
			}
			// Softirq work preempts processes; a NAPI thread does not
			// unless it is real-time. The lowest SCHED_FIFO priority gives
			// it that precedence (over other jobs on the machine too), and
			// the kernel's RT throttling still leaves processes 5 %.
			if err := unix.SchedSetAttr(pid, &unix.SchedAttr{Policy: unix.SCHED_FIFO, Priority: 1}, 0); err != nil {
				return fmt.Errorf("SCHED_FIFO for NAPI thread %d of %s: %w", pid, side.dev, err)
			}
			l.napi[side.dev] = append(l.napi[side.dev], pid)
		}
		if len(l.napi[side.dev]) == 0 {
			return fmt.Errorf("no NAPI thread appeared for %s", side.dev)
		}
	}
	return nil
}

// vethDrops sums rx_dropped and tx_dropped of rly0 and out0 (frames lost
// between the namespaces: a full NAPI ring, XDP_TX failures).
func (l *netnsLab) vethDrops() uint64 {
	var sum uint64
	for _, side := range [][2]string{{l.relay, "rly0"}, {l.outside, "out0"}} {
		_ = inNetns(side[0], func() error {
			link, err := netlink.LinkByName(side[1])
			if err != nil {
				return err
			}
			if st := link.Attrs().Statistics; st != nil {
				sum += st.RxDropped + st.TxDropped
			}
			return nil
		})
	}
	return sum
}

// napiCPU is the CPU time of dev's NAPI threads (threadedNAPI).
func (l *netnsLab) napiCPU(dev string) time.Duration {
	var sum time.Duration
	for _, pid := range l.napi[dev] {
		d, _ := procstat.CPUTime(pid)
		sum += d
	}
	return sum
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

// bigBuffers gives c 4 MiB socket buffers, above the sysctl limits
// (SO_RCVBUFFORCE and SO_SNDBUFFORCE: the benchmark runs as root).
func bigBuffers(c *net.UDPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = errors.Join(unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20),
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4<<20))
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("socket buffers: %w", serr)
	}
	return nil
}
