package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/snowgate/snowgate/internal/netlab"
	"golang.org/x/sys/unix"
)

// Latency without netem. netlab's Link.SetImpairment needs the sch_netem qdisc; kernels without it
// (this benchmark's Firecracker VM has neither netem nor fq) get the delay from an NFQUEUE helper
// instead: an iptables rule in the router's namespace queues every forwarded packet to
// helper-delay, which holds each packet's verdict for the delay and then accepts it, in arrival
// order. Each packet crossing the router, in either direction, is delayed once — the same as
// netem's delay on the router's uplink in each direction.

// nfqueue netlink constants (linux/netfilter/nfnetlink_queue.h).
const (
	nfnlSubsysQueue    = 3
	nfqnlMsgPacket     = 0
	nfqnlMsgVerdict    = 1
	nfqnlMsgConfig     = 2
	nfqaCfgCmd         = 1
	nfqaCfgParams      = 2
	nfqaCfgQueueMaxlen = 3
	nfqaCfgMask        = 4
	nfqaCfgFlags       = 5
	nfqaPacketHdr      = 1
	nfqaVerdictHdr     = 2
	nfqnlCfgCmdBind    = 1
	nfqnlCopyMeta      = 1
	nfqaCfgFFailOpen   = 1
	nfAccept           = 1
	nfnetlinkV0        = 0
	nlmsgHdrLen        = 16
	nfgenmsgLen        = 4
)

// nfqMsg builds a netlink message of the queue subsystem: header, nfgenmsg, attributes.
func nfqMsg(msgType uint16, flags uint16, queue uint16, attrs ...[]byte) []byte {
	b := make([]byte, nlmsgHdrLen+nfgenmsgLen)
	for _, a := range attrs {
		b = append(b, a...)
	}
	binary.NativeEndian.PutUint32(b[0:], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:], nfnlSubsysQueue<<8|msgType)
	binary.NativeEndian.PutUint16(b[6:], unix.NLM_F_REQUEST|flags)
	b[16] = unix.AF_UNSPEC
	b[17] = nfnetlinkV0
	binary.BigEndian.PutUint16(b[18:], queue)
	return b
}

// nlAttr is one netlink attribute, padded to 4 bytes.
func nlAttr(typ uint16, payload []byte) []byte {
	n := 4 + len(payload)
	b := make([]byte, (n+3)&^3)
	binary.NativeEndian.PutUint16(b[0:], uint16(n))
	binary.NativeEndian.PutUint16(b[2:], typ)
	copy(b[4:], payload)
	return b
}

func be32(v uint32) []byte { b := make([]byte, 4); binary.BigEndian.PutUint32(b, v); return b }

// nfqOpen binds a netlink socket to queue (copying metadata only, up to maxlen packets queued,
// packets passing unqueued if the queue is full).
func nfqOpen(queue uint16, maxlen uint32) (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return -1, fmt.Errorf("netlink socket: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("netlink bind: %w", err)
	}
	cmd := []byte{nfqnlCfgCmdBind, 0, 0, 0} // command, pad, pf (unused since Linux 3.8)
	params := append(be32(0), nfqnlCopyMeta)
	msgs := [][]byte{
		nfqMsg(nfqnlMsgConfig, unix.NLM_F_ACK, queue, nlAttr(nfqaCfgCmd, cmd)),
		nfqMsg(nfqnlMsgConfig, unix.NLM_F_ACK, queue, nlAttr(nfqaCfgParams, params), nlAttr(nfqaCfgQueueMaxlen, be32(maxlen)),
			nlAttr(nfqaCfgFlags, be32(nfqaCfgFFailOpen)), nlAttr(nfqaCfgMask, be32(nfqaCfgFFailOpen))),
	}
	buf := make([]byte, 8192)
	for _, m := range msgs {
		if err := unix.Sendto(fd, m, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("nfqueue config: %w", err)
		}
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("nfqueue config ack: %w", err)
		}
		if n >= nlmsgHdrLen+4 && binary.NativeEndian.Uint16(buf[4:]) == unix.NLMSG_ERROR {
			if e := int32(binary.NativeEndian.Uint32(buf[16:])); e != 0 {
				unix.Close(fd)
				return -1, fmt.Errorf("nfqueue config: %w", syscall.Errno(-e))
			}
		}
	}
	return fd, nil
}

// packetIDs returns the packet ids of the queue's packet messages in one netlink read.
func packetIDs(b []byte) []uint32 {
	var ids []uint32
	for len(b) >= nlmsgHdrLen {
		l := int(binary.NativeEndian.Uint32(b[0:]))
		if l < nlmsgHdrLen || l > len(b) {
			break
		}
		typ := binary.NativeEndian.Uint16(b[4:])
		if typ == nfnlSubsysQueue<<8|nfqnlMsgPacket && l >= nlmsgHdrLen+nfgenmsgLen {
			attrs := b[nlmsgHdrLen+nfgenmsgLen : l]
			for len(attrs) >= 4 {
				al := int(binary.NativeEndian.Uint16(attrs[0:]))
				at := binary.NativeEndian.Uint16(attrs[2:]) & 0x3fff
				if al < 4 || al > len(attrs) {
					break
				}
				if at == nfqaPacketHdr && al >= 8 {
					ids = append(ids, binary.BigEndian.Uint32(attrs[4:]))
				}
				attrs = attrs[min((al+3)&^3, len(attrs)):]
			}
		}
		b = b[min((l+3)&^3, len(b)):]
	}
	return ids
}

// helperDelay holds every packet of an NFQUEUE queue for -delay, then accepts it, until SIGTERM.
func helperDelay(args []string) int {
	fs := flag.NewFlagSet("delay", flag.ExitOnError)
	queue := fs.Uint("queue", 0, "NFQUEUE queue number")
	delay := fs.Duration("delay", 20*time.Millisecond, "delay per packet")
	_ = fs.Parse(args)
	fd, err := nfqOpen(uint16(*queue), 100000)
	if err != nil {
		fmt.Fprintln(os.Stderr, "delay:", err)
		return 1
	}
	type held struct {
		id  uint32
		due time.Time
	}
	ch := make(chan held, 200000)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() { // owner: this helper process; ends with it
		<-ctx.Done()
		unix.Close(fd)
	}()
	go func() { // the verdict sender; ends when the reader closes ch
		dst := &unix.SockaddrNetlink{Family: unix.AF_NETLINK}
		for h := range ch {
			if d := time.Until(h.due); d > 0 {
				time.Sleep(d)
			}
			v := append(be32(nfAccept), be32(h.id)...)
			_ = unix.Sendto(fd, nfqMsg(nfqnlMsgVerdict, 0, uint16(*queue), nlAttr(nfqaVerdictHdr, v)), 0, dst)
		}
	}()
	fmt.Println("ready")
	buf := make([]byte, 1<<20)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		now := time.Now()
		if err != nil {
			if errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EINTR) {
				continue
			}
			close(ch)
			if ctx.Err() != nil {
				return 0
			}
			fmt.Fprintln(os.Stderr, "delay:", err)
			return 1
		}
		for _, id := range packetIDs(buf[:n]) {
			ch <- held{id, now.Add(*delay)}
		}
	}
}

// latency sets a one-way delay on both NAT routers of l (d == 0 removes it): netem on their uplinks
// when the kernel has it, else the NFQUEUE helper (see helperDelay). It returns which was used.
func (l *lab) setLatency(ctx context.Context, self string, d time.Duration) (string, error) {
	if l.Lab.NetemAvailable() {
		for _, rt := range []*netlab.Router{l.RC, l.RG} {
			if err := rt.WAN().Link.SetImpairment(netlab.Impairment{Delay: d}); err != nil {
				return "", err
			}
		}
		return "netem", nil
	}
	for _, p := range l.delayers {
		p.stop(5 * time.Second)
	}
	l.delayers = nil
	for _, rt := range []*netlab.Router{l.RC, l.RG} {
		for _, ipt := range []string{"iptables-legacy", "ip6tables-legacy"} {
			_, _ = nsRun(ctx, rt.Namespace, 10*time.Second, ipt, "-t", "mangle", "-F", "FORWARD")
		}
	}
	if d == 0 {
		return "nfqueue", nil
	}
	for _, rt := range []*netlab.Router{l.RC, l.RG} {
		p, err := startProc(rt.Namespace, l.dir, "delay-"+rt.Node(), nil, self, "helper-delay", "-delay", d.String())
		if err != nil {
			return "", err
		}
		l.delayers = append(l.delayers, p)
		l.procs = append(l.procs, p)
		if err := eventually(ctx, 10*time.Second, 20*time.Millisecond, func() error {
			if !p.running() {
				return fmt.Errorf("delay helper exited: %s", p.log())
			}
			if len(p.log()) == 0 {
				return errors.New("delay helper not ready")
			}
			return nil
		}); err != nil {
			return "", err
		}
		for _, ipt := range []string{"iptables-legacy", "ip6tables-legacy"} {
			if out, err := nsRun(ctx, rt.Namespace, 10*time.Second, ipt, "-t", "mangle", "-A", "FORWARD", "-j", "NFQUEUE",
				"--queue-num", "0", "--queue-bypass"); err != nil {
				return "", fmt.Errorf("%s: %v: %s", ipt, err, out)
			}
		}
	}
	return "nfqueue", nil
}
