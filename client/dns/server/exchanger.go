package server

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"

	"golang.org/x/net/ipv4"

	"github.com/snowgate/snowgate/client/dns"
)

// ErrExchangerClosed is the error of forwards handed to a closed Exchanger (they get no Result).
var ErrExchangerClosed = errors.New("dns exchanger closed")

// Result is the outcome of one forward.
type Result struct {
	// ID is the forward's ID.
	ID dns.ForwardID
	// Response is the upstream's answer with the application's DNS id put back, nil when Err is set. It is
	// only valid during the Done call (UDP answers live in reused read buffers): dns.Resolver's
	// HandleUpstreamResponse copies what it keeps.
	Response []byte
	// Err says why the exchange failed: dial or send errors, the socket closed or reset by the upstream,
	// an ICMP unreachable. Feed it to HandleUpstreamError.
	Err error
}

// ExchangerConfig configures an Exchanger.
type ExchangerConfig struct {
	// Dial opens sockets to upstreams on the physical network (nil → net.Dialer): "tcp" ones per query, and
	// the connected "udp" sockets of the per-upstream pools, which must be *net.UDPConn (batched I/O). Put
	// what keeps DNS traffic off the tunnel (a bound interface, a socket mark) into it.
	Dial DialFunc
	// TunnelDial opens the socket of one forward with ThroughTunnel set, "udp" or "tcp" (nil → Dial).
	TunnelDial DialFunc
	// Done receives the Results of forwards: exactly one per forward handed to Exchange, unless the forward
	// was cancelled (Cancel, Roam, Close) before its result was taken. It is called from the Exchanger's
	// goroutines, possibly several at once, never from within Exchange, Cancel, Roam or Close; a batch of
	// results that arrived together comes in one call. It must not block for long (it holds up the socket it
	// reads) and must not call Close. Required.
	Done func([]Result)
	// OnDropped is told of every upstream answer the Exchanger drops: from another address or port, with no
	// query outstanding under its id, with another question (dns.AnswerMatchesQuery), or shorter than a DNS
	// header. Typically dns.Resolver.ReportDroppedAnswer. nil: not reported.
	OnDropped func(dns.AnswerDropReason)
	// Logger receives logs (nil → discard).
	Logger *slog.Logger
}

// Exchanger performs a dns.Resolver's forwards without owning the resolver: UDP ones to upstreams on the
// physical network through the RFC 5452 socket pools (random source ports rotated, random DNS ids, answers
// accepted only from the upstream with the id and question of a query outstanding on their socket), TCP
// ones over a connection of their own per query, ThroughTunnel ones over a socket of their own from
// TunnelDial. Every query leaves under a fresh random DNS id; the answer gets the application's id back.
//
// It has no timers: the resolver's deadlines are the one source of timeouts, and the caller Cancels the
// forwards that dns.Resolver.HandleTimeout expires (and those of HandleTCPClose). ForwardIDs must be unique
// among the forwards in flight (one Exchanger per Resolver, or Roam before handing it another Resolver's
// forwards). It owns its sockets and goroutines; Close stops them. Its methods are safe for concurrent use.
type Exchanger struct {
	cfg ExchangerConfig
	log *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex // guards own and closed; wg.Add happens under it while !closed
	own    map[dns.ForwardID]*ownExchange
	closed bool

	umu      sync.Mutex // guards udpUps
	udpUps   map[netip.AddrPort]*udpUpstream
	readBufs sync.Pool // *[]ipv4.Message for upstream socket readers
	scratch  sync.Pool // *sendScratch for Exchange
}

// ownExchange is a forward performed over a socket of its own (TCP, or through the tunnel).
type ownExchange struct {
	cancel context.CancelCauseFunc
}

// errRoamed is the cancellation cause of the exchanges a roam abandons: their TCP sockets are reset.
var errRoamed = errors.New("network roamed")

// errCancelled is the cancellation cause of the exchanges Cancel abandons: their sockets are closed.
var errCancelled = errors.New("forward cancelled")

// NewExchanger creates an Exchanger; Close stops it.
func NewExchanger(cfg ExchangerConfig) (*Exchanger, error) {
	if cfg.Done == nil {
		return nil, errors.New("dns exchanger: ExchangerConfig.Done is nil")
	}
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = d.DialContext
	}
	if cfg.TunnelDial == nil {
		cfg.TunnelDial = cfg.Dial
	}
	if cfg.OnDropped == nil {
		cfg.OnDropped = func(dns.AnswerDropReason) {}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Exchanger{
		cfg: cfg, log: log, ctx: ctx, cancel: cancel,
		own:    make(map[dns.ForwardID]*ownExchange),
		udpUps: make(map[netip.AddrPort]*udpUpstream),
	}, nil
}

// sendScratch is the scratch space of one Exchange call.
type sendScratch struct {
	sent  []bool
	group []dns.Forward
	wbufs [][]byte       // rewritten upstream queries
	ms    []ipv4.Message // batched writes
}

// Exchange starts the forwards fs. UDP forwards to the same upstream on the physical network leave
// together, in one system call where the platform allows. Their results come through Done; a forward that
// cannot even be sent gets an error Result, delivered from another goroutine.
func (e *Exchanger) Exchange(fs ...dns.Forward) {
	sc, _ := e.scratch.Get().(*sendScratch)
	if sc == nil {
		sc = &sendScratch{}
	}
	defer e.scratch.Put(sc)
	sc.sent = append(sc.sent[:0], make([]bool, len(fs))...)
	for i, f := range fs {
		if sc.sent[i] {
			continue
		}
		if f.Transport != dns.UDP || f.ThroughTunnel {
			e.startOwn(f)
			continue
		}
		// Every UDP forward to this upstream at once, over one socket and one system call.
		sc.group = append(sc.group[:0], f)
		for j := i + 1; j < len(fs); j++ {
			if g := fs[j]; !sc.sent[j] && g.Transport == dns.UDP && !g.ThroughTunnel && g.Upstream == f.Upstream {
				sc.group = append(sc.group, g)
				sc.sent[j] = true
			}
		}
		e.forwardUDP(sc.group, sc)
	}
	clear(sc.group)
	clear(sc.ms)
}

// fail delivers error results for fs from a goroutine of its own (Done is never called from within
// Exchange), unless the Exchanger is closed.
func (e *Exchanger) fail(fs []dns.Forward, err error) {
	rs := make([]Result, len(fs))
	for i, f := range fs {
		rs[i] = Result{ID: f.ID, Err: err}
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.wg.Add(1)
	e.mu.Unlock()
	go func() {
		defer e.wg.Done()
		e.cfg.Done(rs)
	}()
}

// Cancel abandons the forwards ids: an exchange over a socket of its own is ended (its socket closed), a
// query pending on an upstream UDP socket is forgotten there (its answer, should it come, is dropped like any
// unknown one, and a retired socket with nothing left pending is closed). No Result comes for them once
// Cancel returns, except one already being delivered. Unknown IDs are ignored.
func (e *Exchanger) Cancel(ids ...dns.ForwardID) {
	if len(ids) == 0 {
		return
	}
	var rest []dns.ForwardID
	e.mu.Lock()
	for _, id := range ids {
		if ox := e.own[id]; ox != nil {
			ox.cancel(errCancelled)
			delete(e.own, id)
		} else {
			rest = append(rest, id)
		}
	}
	e.mu.Unlock()
	if len(rest) > 0 {
		e.forgetUDPPending(rest)
	}
}

// Roam abandons every exchange in flight, without Results: TCP sockets are reset, the UDP pools closed.
// Later exchanges use new sockets with new local ports. Call it right after dns.Resolver.Roam, before
// handing over the forwards drained after it (the resent UDP queries among them).
func (e *Exchanger) Roam() {
	e.mu.Lock()
	n := len(e.own)
	for id, ox := range e.own {
		ox.cancel(errRoamed)
		delete(e.own, id)
	}
	e.mu.Unlock()
	e.closeUDPUpstreams()
	e.log.Debug("roamed: upstream DNS sockets abandoned", "exchanges", n)
}

// Close stops every goroutine and closes every socket of the Exchanger; it waits for them. Forwards in
// flight get no Result; later Exchange calls do nothing.
func (e *Exchanger) Close() error {
	e.mu.Lock()
	e.closed = true
	e.own = make(map[dns.ForwardID]*ownExchange)
	e.mu.Unlock()
	e.cancel()
	e.closeUDPUpstreams()
	e.wg.Wait()
	return nil
}

// startOwn performs one forward over a socket of its own, in a goroutine.
func (e *Exchanger) startOwn(f dns.Forward) {
	ctx, cancel := context.WithCancelCause(e.ctx)
	ox := &ownExchange{cancel: cancel}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		cancel(ErrExchangerClosed)
		return
	}
	if old := e.own[f.ID]; old != nil { // a reused ID: the old exchange is abandoned
		old.cancel(errCancelled)
	}
	e.own[f.ID] = ox
	e.wg.Add(1)
	e.mu.Unlock()
	go func() {
		defer e.wg.Done()
		defer cancel(nil)
		resp, err := e.exchangeOwn(ctx, f)
		e.mu.Lock()
		mine := e.own[f.ID] == ox
		if mine {
			delete(e.own, f.ID)
		}
		e.mu.Unlock()
		if !mine {
			return // cancelled, roamed or closed: nobody waits for it
		}
		e.cfg.Done([]Result{{ID: f.ID, Response: resp, Err: err}})
	}()
}

// exchangeOwn sends the query under a fresh random id over a fresh socket (so every exchange has its own local
// port, and the ones after a roam get new ones) and returns the first answer carrying that id and, over UDP,
// the query's question (dns.AnswerMatchesQuery; other datagrams are dropped and reported; over TCP another id
// fails the exchange and the core checks the question), with the application's id put back. When a roam
// abandons it, a TCP socket is reset (RST) rather than closed gracefully.
func (e *Exchanger) exchangeOwn(ctx context.Context, f dns.Forward) ([]byte, error) {
	dial := e.cfg.Dial
	if f.ThroughTunnel {
		dial = e.cfg.TunnelDial
	}
	network := f.Transport.String()
	if len(f.Query) < 12 {
		return nil, fmt.Errorf("upstream %s/%s: query shorter than a DNS header", f.Upstream, network)
	}
	nc, err := dial(ctx, network, f.Upstream.String())
	if err != nil {
		return nil, fmt.Errorf("dialing upstream %s/%s: %w", f.Upstream, network, err)
	}
	stop := context.AfterFunc(ctx, func() {
		if errors.Is(context.Cause(ctx), errRoamed) {
			resetConn(nc)
			return
		}
		_ = nc.Close()
	})
	defer stop()
	defer nc.Close()
	q := slices.Clone(f.Query)
	want := uint16(rand.Uint32())
	binary.BigEndian.PutUint16(q, want)
	if f.Transport == dns.TCP {
		err = WriteTCPMessage(nc, q)
	} else {
		_, err = nc.Write(q)
	}
	if err != nil {
		return nil, fmt.Errorf("sending to upstream %s/%s: %w", f.Upstream, network, ctxErr(ctx, err))
	}
	buf := make([]byte, 65535)
	for {
		var ans []byte
		if f.Transport == dns.TCP {
			ans, err = ReadTCPMessage(nc, buf)
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF // closed before answering
			}
		} else {
			var n int
			n, err = nc.Read(buf)
			ans = buf[:n]
		}
		if err != nil {
			return nil, fmt.Errorf("reading from upstream %s/%s: %w", f.Upstream, network, ctxErr(ctx, err))
		}
		if len(ans) >= 12 && binary.BigEndian.Uint16(ans) == want && (f.Transport == dns.TCP || dns.AnswerMatchesQuery(f.Query, ans)) {
			binary.BigEndian.PutUint16(ans, binary.BigEndian.Uint16(f.Query))
			return ans[:len(ans):len(ans)], nil
		}
		if f.Transport == dns.TCP {
			return nil, fmt.Errorf("upstream %s/tcp answered with a wrong id", f.Upstream)
		}
		switch {
		case len(ans) < 12:
			e.cfg.OnDropped(dns.DropMalformed)
		case binary.BigEndian.Uint16(ans) != want:
			e.cfg.OnDropped(dns.DropUnknownID)
		default:
			e.cfg.OnDropped(dns.DropWrongQuestion)
		}
	}
}

// ctxErr prefers the cancellation cause over the socket error it provoked.
func ctxErr(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); cause != nil {
		return cause
	}
	return err
}

// resetConn aborts a connection with RST where the transport allows it.
func resetConn(c net.Conn) {
	switch v := c.(type) {
	case interface{ Reset() error }:
		_ = v.Reset()
	case *net.TCPConn:
		_ = v.SetLinger(0)
		_ = v.Close()
	default:
		_ = c.Close()
	}
}
