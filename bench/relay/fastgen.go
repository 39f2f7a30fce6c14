package main

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha1" //nolint:gosec // TURN REST passwords are HMAC-SHA1 by definition
	"encoding/base64"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pion/stun/v4"
	"golang.org/x/net/ipv4"
)

// The fast load generator (--gen fast) replaces turnutils_uclient and
// turnutils_peer in --netns mode. Its two halves run as child processes of
// the benchmark (the same binary, re-executed with a subcommand), each in
// the "outside" namespace and optionally pinned to a CPU with taskset:
//
//   - fastgen-client makes --channels TURN allocations from as many UDP
//     sockets (distinct source ports), each with a permission and a channel
//     bound to the peer, then sends pre-built ChannelData frames in batches
//     (sendmmsg through golang.org/x/net/ipv4) at stepped offered rates,
//     round-robin over the channels, and counts the ChannelData that comes
//     back (recvmmsg);
//   - fastgen-peer echoes every datagram it receives back to its sender
//     (recvmmsg, then sendmmsg of the same batch).
//
// So one offered datagram is one round trip through the relay (two relayed
// datagrams: client → peer and peer → client). For each step the client
// prints a "start" line, sends for the step's duration, waits for the
// stragglers, and prints an "end" line with its counts; the parent samples
// CPU times at both lines.

// fastStep is one step's outcome as the client reports it.
type fastStep struct {
	rate       int // offered datagrams/s (0: as fast as possible)
	sent, recv int64
	sendTime   time.Duration // time spent sending (the step's duration)
}

// turnRESTCreds returns a TURN REST username and password (coturn's
// --use-auth-secret scheme, which snowgate-relay's --turn-rest-secret
// implements too): the username is "expiry:user", the password
// base64(HMAC-SHA1(secret, username)).
func turnRESTCreds(secret, user string, validity time.Duration) (string, string) {
	u := strconv.FormatInt(time.Now().Add(validity).Unix(), 10) + ":" + user
	mac := hmac.New(sha1.New, []byte(secret))
	mac.Write([]byte(u))
	return u, base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// turnCtl performs TURN requests over conn (a UDP socket that is not yet
// used for data).
type turnCtl struct {
	conn              *net.UDPConn
	server            *net.UDPAddr
	user, pass, realm string
	nonce             string
}

// roundTrip sends msg and waits up to 3 s (with two retransmissions) for
// the response with the same transaction id.
func (t *turnCtl) roundTrip(msg *stun.Message) (*stun.Message, error) {
	buf := make([]byte, 2048)
	for attempt := 0; attempt < 3; attempt++ {
		if _, err := t.conn.WriteToUDP(msg.Raw, t.server); err != nil {
			return nil, fmt.Errorf("write: %w", err)
		}
		deadline := time.Now().Add(time.Second)
		for {
			_ = t.conn.SetReadDeadline(deadline)
			n, _, err := t.conn.ReadFromUDP(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break
				}
				return nil, fmt.Errorf("read: %w", err)
			}
			if !stun.IsMessage(buf[:n]) {
				continue
			}
			resp := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
			if err := resp.Decode(); err != nil {
				return nil, fmt.Errorf("decode: %w", err)
			}
			if resp.TransactionID == msg.TransactionID {
				_ = t.conn.SetReadDeadline(time.Time{})
				return resp, nil
			}
		}
	}
	return nil, errors.New("no response after 3 attempts")
}

// request performs an authenticated request (the 401 nonce exchange first
// if needed) and returns the success response.
func (t *turnCtl) request(method stun.Method, attrs ...stun.Setter) (*stun.Message, error) {
	for attempt := 0; attempt < 3; attempt++ {
		setters := []stun.Setter{stun.TransactionID, stun.NewType(method, stun.ClassRequest)}
		setters = append(setters, attrs...)
		if t.nonce != "" {
			setters = append(setters, stun.NewUsername(t.user), stun.NewRealm(t.realm), stun.NewNonce(t.nonce),
				stun.NewLongTermIntegrity(t.user, t.realm, t.pass))
		}
		msg, err := stun.Build(setters...)
		if err != nil {
			return nil, fmt.Errorf("build %v: %w", method, err)
		}
		resp, err := t.roundTrip(msg)
		if err != nil {
			return nil, fmt.Errorf("%v: %w", method, err)
		}
		if resp.Type.Class != stun.ClassErrorResponse {
			return resp, nil
		}
		var ec stun.ErrorCodeAttribute
		_ = ec.GetFrom(resp)
		if (ec.Code == stun.CodeUnauthorized && t.nonce == "") || ec.Code == stun.CodeStaleNonce {
			var nonce stun.Nonce
			var realm stun.Realm
			if nonce.GetFrom(resp) == nil && realm.GetFrom(resp) == nil {
				t.nonce, t.realm = nonce.String(), realm.String()
				continue
			}
		}
		return nil, fmt.Errorf("%v: error %d %s", method, ec.Code, ec.Reason)
	}
	return nil, fmt.Errorf("%v: no final response", method)
}

type setterFunc func(m *stun.Message) error

func (f setterFunc) AddTo(m *stun.Message) error { return f(m) }

func peerAttr(a netip.AddrPort) stun.Setter {
	return setterFunc(func(m *stun.Message) error {
		x := stun.XORMappedAddress{IP: a.Addr().AsSlice(), Port: int(a.Port())}
		return x.AddToAs(m, stun.AttrXORPeerAddress)
	})
}

// bindChannel allocates a UDP relay, permits peer and binds channel to it.
func (t *turnCtl) bindChannel(peer netip.AddrPort, channel uint16) error {
	if _, err := t.request(stun.MethodAllocate,
		stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{17, 0, 0, 0}}); err != nil {
		return err
	}
	if _, err := t.request(stun.MethodCreatePermission, peerAttr(peer)); err != nil {
		return err
	}
	_, err := t.request(stun.MethodChannelBind, peerAttr(peer),
		stun.RawAttribute{Type: stun.AttrChannelNumber, Value: []byte{byte(channel >> 8), byte(channel), 0, 0}})
	return err
}

// channelData builds a ChannelData frame of size bytes in all (header
// included) for channel.
func channelData(channel uint16, size int) []byte {
	if size < 8 {
		size = 8
	}
	b := make([]byte, size)
	binary.BigEndian.PutUint16(b, channel)
	binary.BigEndian.PutUint16(b[2:], uint16(size-4)) //nolint:gosec // size is small
	for i := 4; i < size; i++ {
		b[i] = byte(i)
	}
	return b
}

// parseFastLine parses the client's "end" line:
// "end <step> rate=R sent=S recv=N send_ns=D".
func parseFastLine(line string) (int, fastStep, error) {
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "end" {
		return 0, fastStep{}, fmt.Errorf("not an end line: %q", line)
	}
	step, err := strconv.Atoi(f[1])
	if err != nil {
		return 0, fastStep{}, fmt.Errorf("bad step in %q: %w", line, err)
	}
	vals := map[string]int64{}
	for _, kv := range f[2:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return 0, fastStep{}, fmt.Errorf("bad field %q", kv)
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fastStep{}, fmt.Errorf("bad field %q: %w", kv, err)
		}
		vals[k] = n
	}
	return step, fastStep{rate: int(vals["rate"]), sent: vals["sent"], recv: vals["recv"],
		sendTime: time.Duration(vals["send_ns"])}, nil
}

// fastgenClient is the client half (subcommand fastgen-client); see the
// comment at the top of this file. It writes its progress lines to stdout.
func fastgenClient(args []string) error {
	fs := flag.NewFlagSet("fastgen-client", flag.ContinueOnError)
	server := fs.String("server", "", "the relay's TURN address (ip:port)")
	peer := fs.String("peer", "", "the peer's address (ip:port)")
	local := fs.String("local", "", "local IP to bind the client sockets to")
	channels := fs.Int("channels", 50, "allocations (one socket, one channel each)")
	size := fs.Int("size", 120, "ChannelData frame size in bytes, header included")
	ratesFlag := fs.String("rates", "50000", "offered datagrams/s per step (0: as fast as possible)")
	step := fs.Duration("step", 5*time.Second, "sending time per step")
	batch := fs.Int("batch", 64, "datagrams per sendmmsg/recvmmsg")
	noControl := fs.Bool("no-control", false, "send without allocating (for the generator's own send rate, with nothing listening)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	rates, err := intList(*ratesFlag)
	if err != nil {
		return err
	}
	if *channels < 1 || *channels > 4096 || *batch < 1 || *batch > 1024 || *step <= 0 || *step > time.Minute || len(rates) > 20 {
		return errors.New("fastgen-client: channels 1–4096, batch 1–1024, step ≤ 1 min, ≤ 20 rates")
	}
	srvAP, err1 := netip.ParseAddrPort(*server)
	peerAP, err2 := netip.ParseAddrPort(*peer)
	localIP, err3 := netip.ParseAddr(*local)
	if err := errors.Join(err1, err2, err3); err != nil {
		return fmt.Errorf("fastgen-client: %w", err)
	}
	srvAddr := net.UDPAddrFromAddrPort(srvAP)
	conns := make([]*net.UDPConn, *channels)
	for i := range conns {
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(localIP, 0)))
		if err != nil {
			return fmt.Errorf("fastgen-client: listen: %w", err)
		}
		defer c.Close()
		if err := bigBuffers(c); err != nil {
			return err
		}
		conns[i] = c
	}
	if !*noControl {
		user, pass := turnRESTCreds(secret, "bench", time.Hour)
		deadline := time.Now().Add(30 * time.Second)
		for i, c := range conns {
			if time.Now().After(deadline) {
				return errors.New("fastgen-client: allocations took more than 30 s")
			}
			t := &turnCtl{conn: c, server: srvAddr, user: user, pass: pass}
			if err := t.bindChannel(peerAP, uint16(0x4000+i)); err != nil { //nolint:gosec // i < 4096
				return fmt.Errorf("fastgen-client: channel %d: %w", i, err)
			}
		}
	}

	// Receivers: one goroutine per socket, counting ChannelData of its
	// channel. They end when the sockets close (deferred above, and below).
	counts := make([]atomic.Int64, len(conns))
	var wg sync.WaitGroup
	defer wg.Wait()
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pc := ipv4.NewPacketConn(c)
			ms := make([]ipv4.Message, *batch)
			for j := range ms {
				ms[j].Buffers = [][]byte{make([]byte, 2048)}
			}
			want := uint16(0x4000 + i) //nolint:gosec // i < 4096
			for {
				n, err := pc.ReadBatch(ms, 0)
				if err != nil {
					if errors.Is(err, net.ErrClosed) {
						return
					}
					continue // e.g. ECONNREFUSED from an ICMP error
				}
				var got int64
				for _, m := range ms[:n] {
					if m.N >= 4 && binary.BigEndian.Uint16(m.Buffers[0]) == want {
						got++
					}
				}
				counts[i].Add(got)
			}
		}()
	}
	total := func() int64 {
		var s int64
		for i := range counts {
			s += counts[i].Load()
		}
		return s
	}

	pcs := make([]*ipv4.PacketConn, len(conns))
	out := make([][]ipv4.Message, len(conns))
	for i, c := range conns {
		pcs[i] = ipv4.NewPacketConn(c)
		frame := channelData(uint16(0x4000+i), *size) //nolint:gosec // i < 4096
		out[i] = make([]ipv4.Message, *batch)
		for j := range out[i] {
			out[i][j] = ipv4.Message{Buffers: [][]byte{frame}, Addr: srvAddr}
		}
	}
	// send offers rate datagrams/s (0: as fast as it can) for d, round-robin
	// over the channels, n per sendmmsg, and returns how many it sent.
	send := func(rate int, d time.Duration, n int) (int64, error) {
		var sent int64
		start := time.Now()
		end := start.Add(d)
		for ci := 0; ; ci = (ci + 1) % len(pcs) {
			now := time.Now()
			if !now.Before(end) {
				return sent, nil
			}
			if rate > 0 {
				due := start.Add(time.Duration(float64(sent+int64(n)) / float64(rate) * float64(time.Second)))
				if due.After(now) {
					time.Sleep(min(due.Sub(now), end.Sub(now)))
					ci-- // this channel's turn again
					if ci < 0 {
						ci = len(pcs) - 1
					}
					continue
				}
			}
			k, err := pcs[ci].WriteBatch(out[ci][:n], 0)
			sent += int64(max(k, 0))
			if err != nil && !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOBUFS) {
				return sent, fmt.Errorf("sendmmsg: %w", err)
			}
		}
	}
	// drain waits until no more echoes arrive (200 ms without one, 2 s at most).
	drain := func() {
		last, since := total(), time.Now()
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
			if t := total(); t != last {
				last, since = t, time.Now()
			} else if time.Since(since) >= 200*time.Millisecond {
				return
			}
		}
	}

	if !*noControl {
		// Warm-up: every channel must echo before the steps start.
		if _, err := send(10*len(conns), time.Second, 1); err != nil {
			return fmt.Errorf("fastgen-client: warm-up: %w", err)
		}
		drain()
		for i := range counts {
			if counts[i].Load() == 0 {
				return fmt.Errorf("fastgen-client: channel %d: no echo during the warm-up", i)
			}
		}
	}
	w := bufio.NewWriter(os.Stdout)
	for k, rate := range rates {
		fmt.Fprintf(w, "start %d\n", k)
		_ = w.Flush()
		r0 := total()
		began := time.Now()
		sent, err := send(rate, *step, *batch)
		took := time.Since(began)
		if err != nil {
			return fmt.Errorf("fastgen-client: step %d: %w", k, err)
		}
		drain()
		fmt.Fprintf(w, "end %d rate=%d sent=%d recv=%d send_ns=%d\n", k, rate, sent, total()-r0, took.Nanoseconds())
		_ = w.Flush()
	}
	return nil
}

// fastgenPeer is the peer half (subcommand fastgen-peer): it echoes every
// datagram back to its sender, in batches, until SIGTERM or --max-time.
func fastgenPeer(args []string) error {
	fs := flag.NewFlagSet("fastgen-peer", flag.ContinueOnError)
	listen := fs.String("listen", "", "address to listen on (ip:port)")
	batch := fs.Int("batch", 64, "datagrams per recvmmsg/sendmmsg")
	maxTime := fs.Duration("max-time", 10*time.Minute, "exit after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	la, err := net.ResolveUDPAddr("udp4", *listen)
	if err != nil {
		return fmt.Errorf("fastgen-peer: %w", err)
	}
	c, err := net.ListenUDP("udp4", la)
	if err != nil {
		return fmt.Errorf("fastgen-peer: %w", err)
	}
	defer c.Close()
	if err := bigBuffers(c); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *maxTime)
	defer cancel()
	go func() {
		<-ctx.Done()
		_ = c.Close()
	}()
	pc := ipv4.NewPacketConn(c)
	in := make([]ipv4.Message, *batch)
	out := make([]ipv4.Message, *batch)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, 2048)}
		out[i].Buffers = [][]byte{nil}
	}
	var recv, echoed int64
	defer func() { fmt.Printf("peer recv=%d echoed=%d\n", recv, echoed) }()
	for {
		n, err := pc.ReadBatch(in, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			continue
		}
		recv += int64(n)
		for i, m := range in[:n] {
			out[i].Buffers[0] = m.Buffers[0][:m.N]
			out[i].Addr = m.Addr
		}
		for off := 0; off < n; {
			k, err := pc.WriteBatch(out[off:n], 0)
			if k <= 0 || (err != nil && !errors.Is(err, syscall.ENOBUFS)) {
				break // the rest of the batch is lost (counted as not echoed)
			}
			off += k
			echoed += int64(k)
		}
	}
}
