package server

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/snowgate/snowgate/client/dns"
)

// Upstream UDP socket pool (RFC 5452 §9.2: make spoofed answers hard by spreading queries over random source
// ports). Every upstream gets udpPoolSize connected sockets, each bound by the kernel to a random ephemeral port
// (Linux picks UDP ephemeral ports at random), used round robin. A socket is replaced by a new one (new random
// port) after udpSockMaxQueries queries or udpSockMaxAge, whichever comes first; the old one stays open, without
// new queries, until its answers are in or its queries cancelled. A socket per query would give every query its own port
// but costs socket+connect+epoll registration+close, a reader goroutine and its wake-up per query, and no two
// queries could share a sendmmsg/recvmmsg: several times the system calls of the forwarding path. The pool
// costs those once per udpSockMaxQueries queries (about 0.02 system calls per query) and still lets a burst of
// queries to one upstream leave in one sendmmsg, and their answers arrive in one recvmmsg per socket.
const (
	udpPoolSize       = 4
	udpSockMaxQueries = 256
	udpSockMaxAge     = 10 * time.Second
	// udpMaxSockets bounds the sockets (in use and retired) per upstream: about udpSockMaxQueries queries each
	// (a batch may go a little past it), so it also bounds the UDP queries in flight to one upstream.
	udpMaxSockets = 128
	// udpReadBuf is the largest upstream answer read whole. The core cuts every UDP reply to at most
	// dns.MaxUDPPayload bytes (TC set) anyway, and a longer answer read cut short is truncated all the same.
	udpReadBuf = 4096
)

// udpUpstream is the socket pool for one upstream resolver. Each query goes out under a fresh random DNS id
// (math/rand/v2's generator, seeded by the runtime from the OS's entropy), unique on its socket; an answer is
// accepted only from the upstream's address and port, on the socket the query left from, with the id of a
// query outstanding there and that query's question (dns.AnswerMatchesQuery). The answer gets the
// application's id back before the core sees it.
type udpUpstream struct {
	addr netip.AddrPort

	mu     sync.Mutex
	socks  [udpPoolSize]*udpSock // the sockets new queries use (nil: not opened yet)
	next   int
	all    map[*udpSock]struct{} // every open socket, in use or retired
	closed bool
}

// udpSock is one connected socket of a pool; its fields are guarded by the pool's mu.
type udpSock struct {
	conn    *net.UDPConn
	batch   batchConn
	pending map[uint16]udpPending
	sent    int
	born    time.Time
	retired bool // no new queries; closed once pending is empty
}

// errPoolClosed is the error of a send on a pool that Roam or Close closed.
var errPoolClosed = errors.New("upstream sockets closed")

type udpPending struct {
	fwd    dns.ForwardID
	origID uint16
	query  []byte // the core's copy of the query (never modified), for the question check
}

// forwardUDP sends fs (forwards to one upstream) from the upstream's socket pool; those it cannot send get an
// error Result.
func (e *Exchanger) forwardUDP(fs []dns.Forward, sc *sendScratch) {
	var sent int
	var err error
	for range 2 { // a pool closed by a Roam since it was looked up is replaced by a new one
		var u *udpUpstream
		if u, err = e.udpUpstreamFor(fs[0].Upstream); err == nil {
			sent, err = e.sendUDP(u, fs, sc)
		}
		if !errors.Is(err, errPoolClosed) {
			break
		}
	}
	if err != nil {
		if errors.Is(err, ErrExchangerClosed) {
			return
		}
		e.fail(slices.Clone(fs[sent:]), err)
	}
}

func (e *Exchanger) udpUpstreamFor(addr netip.AddrPort) (*udpUpstream, error) {
	e.umu.Lock()
	defer e.umu.Unlock()
	if u := e.udpUps[addr]; u != nil {
		return u, nil
	}
	if e.ctx.Err() != nil {
		return nil, ErrExchangerClosed
	}
	u := &udpUpstream{addr: addr, all: make(map[*udpSock]struct{})}
	e.udpUps[addr] = u
	return u, nil
}

// sendUDP sends fs over one of u's sockets, each under a fresh random id, in one system call where the
// platform allows; it returns how many were sent.
func (e *Exchanger) sendUDP(u *udpUpstream, fs []dns.Forward, sc *sendScratch) (int, error) {
	for _, f := range fs {
		if len(f.Query) < 12 {
			return 0, errors.New("query shorter than a DNS header")
		}
	}
	now := time.Now()
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return 0, fmt.Errorf("upstream %s: %w", u.addr, errPoolClosed)
	}
	i := u.next
	u.next = (u.next + 1) % udpPoolSize
	sk := u.socks[i]
	if sk == nil || sk.sent >= udpSockMaxQueries || now.Sub(sk.born) >= udpSockMaxAge {
		if sk != nil {
			u.retireLocked(sk)
			u.socks[i] = nil
		}
		var err error
		if sk, err = e.openUDPSockLocked(u, now); err != nil {
			u.mu.Unlock()
			return 0, err
		}
		u.socks[i] = sk
	}
	// A batch may take a socket a little past udpSockMaxQueries; ids stay unique on it.
	for len(sc.wbufs) < len(fs) {
		sc.wbufs = append(sc.wbufs, make([]byte, 0, 512))
	}
	sc.ms = sc.ms[:0]
	for j, f := range fs {
		// At most about udpSockMaxQueries ids are ever taken on a socket, so a free one is found at once.
		var id uint16
		found := false
		for range 64 {
			id = uint16(rand.Uint32())
			if _, taken := sk.pending[id]; !taken {
				found = true
				break
			}
		}
		if !found {
			e.unsendLocked(u, sk, sc.ms)
			u.mu.Unlock()
			return 0, fmt.Errorf("upstream %s: no free DNS id", u.addr)
		}
		sk.pending[id] = udpPending{fwd: f.ID, origID: binary.BigEndian.Uint16(f.Query), query: f.Query}
		sk.sent++
		b := append(sc.wbufs[j][:0], f.Query...)
		binary.BigEndian.PutUint16(b, id)
		sc.wbufs[j] = b
		sc.ms = append(sc.ms, ipv4.Message{Buffers: sc.wbufs[j : j+1 : j+1]})
	}
	conn, bc := sk.conn, sk.batch
	u.mu.Unlock()

	var n int
	var err error
	if len(sc.ms) == 1 {
		if _, err = conn.Write(sc.ms[0].Buffers[0]); err == nil {
			n = 1
		}
	} else {
		n, err = writeAll(bc, sc.ms)
	}
	if err == nil && n < len(sc.ms) {
		err = errors.New("short batch write")
	}
	if err != nil {
		u.mu.Lock()
		closeIt := e.unsendLocked(u, sk, sc.ms[n:])
		u.mu.Unlock()
		if closeIt {
			_ = conn.Close()
		}
		return n, fmt.Errorf("sending to upstream %s/udp: %w", u.addr, err)
	}
	return n, nil
}

// unsendLocked forgets the queries of ms (not sent) on sk and reports whether sk is now to be closed.
func (e *Exchanger) unsendLocked(u *udpUpstream, sk *udpSock, ms []ipv4.Message) bool {
	for _, m := range ms {
		delete(sk.pending, binary.BigEndian.Uint16(m.Buffers[0]))
	}
	return u.closeIfDoneLocked(sk)
}

// openUDPSockLocked opens a new connected socket to u (the kernel binds it to a random ephemeral port) and
// starts its reader. u.mu must be held.
func (e *Exchanger) openUDPSockLocked(u *udpUpstream, now time.Time) (*udpSock, error) {
	if len(u.all) >= udpMaxSockets {
		return nil, fmt.Errorf("upstream %s: too many queries in flight", u.addr)
	}
	e.mu.Lock()
	closed := e.closed
	if !closed {
		e.wg.Add(1)
	}
	e.mu.Unlock()
	if closed {
		return nil, ErrExchangerClosed
	}
	nc, err := e.cfg.Dial(e.ctx, "udp", u.addr.String())
	if err != nil {
		e.wg.Done()
		return nil, fmt.Errorf("opening a socket to upstream %s: %w", u.addr, err)
	}
	conn, ok := nc.(*net.UDPConn)
	if !ok {
		_ = nc.Close()
		e.wg.Done()
		return nil, fmt.Errorf("opening a socket to upstream %s: Dial returned a %T, not a *net.UDPConn", u.addr, nc)
	}
	sk := &udpSock{conn: conn, batch: newBatchConn(conn), pending: make(map[uint16]udpPending, udpSockMaxQueries/4), born: now}
	u.all[sk] = struct{}{}
	go func() {
		defer e.wg.Done()
		e.readUpstream(u, sk)
	}()
	return sk, nil
}

// retireLocked takes sk out of use for new queries; it is closed when its last answer is in or its last
// query cancelled (the caller cancels what the resolver's deadlines expire).
func (u *udpUpstream) retireLocked(sk *udpSock) {
	sk.retired = true
	if u.closeIfDoneLocked(sk) {
		_ = sk.conn.Close()
	}
}

// closeIfDoneLocked reports whether sk is retired with nothing pending, forgetting it if so: the caller closes
// its conn (which ends its reader).
func (u *udpUpstream) closeIfDoneLocked(sk *udpSock) bool {
	if !sk.retired || len(sk.pending) > 0 {
		return false
	}
	if _, open := u.all[sk]; !open {
		return false
	}
	delete(u.all, sk)
	return true
}

// readUpstream delivers the answers arriving on one socket of u's pool until it is closed.
func (e *Exchanger) readUpstream(u *udpUpstream, sk *udpSock) {
	msp, _ := e.readBufs.Get().(*[]ipv4.Message)
	if msp == nil {
		m := newMessages(batchSize, udpReadBuf)
		msp = &m
	}
	defer e.readBufs.Put(msp) // sockets are replaced often: reuse their buffers
	ms := *msp
	results := make([]Result, 0, batchSize)
	for {
		n, err := sk.batch.ReadBatch(ms, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || e.ctx.Err() != nil {
				return
			}
			// E.g. ECONNREFUSED from an ICMP port unreachable: the upstream is down, fail what is pending here.
			results = results[:0]
			u.mu.Lock()
			for id, pq := range sk.pending {
				results = append(results, Result{ID: pq.fwd, Err: fmt.Errorf("upstream %s/udp: %w", u.addr, err)})
				delete(sk.pending, id)
			}
			closeIt := u.closeIfDoneLocked(sk)
			u.mu.Unlock()
			if len(results) > 0 {
				e.cfg.Done(results)
			}
			if closeIt {
				_ = sk.conn.Close()
				return
			}
			continue
		}
		results = results[:0]
		u.mu.Lock()
		for i := range ms[:n] {
			m := &ms[i]
			ans := m.Buffers[0][:m.N]
			var from netip.AddrPort
			if ua, ok := m.Addr.(*net.UDPAddr); ok {
				from = ua.AddrPort()
			}
			if from.Addr().Unmap() != u.addr.Addr().Unmap() || from.Port() != u.addr.Port() {
				e.cfg.OnDropped(dns.DropWrongSource)
				e.log.Debug("dropped a DNS answer from an unexpected source", "upstream", u.addr, "from", from, "len", len(ans))
				continue
			}
			if len(ans) < 12 {
				e.cfg.OnDropped(dns.DropMalformed)
				e.log.Debug("dropped a DNS answer shorter than a header", "upstream", u.addr, "len", len(ans))
				continue
			}
			id := binary.BigEndian.Uint16(ans)
			pq, ok := sk.pending[id]
			if !ok || !dns.AnswerMatchesQuery(pq.query, ans) {
				// Late (cancelled), duplicate, or spoofed: the real answer may still come.
				reason := dns.DropUnknownID
				if ok {
					reason = dns.DropWrongQuestion
				}
				e.cfg.OnDropped(reason)
				e.log.Debug("dropped a DNS answer matching no query in flight", "upstream", u.addr, "id", id, "reason", reason.String())
				continue
			}
			delete(sk.pending, id)
			binary.BigEndian.PutUint16(ans, pq.origID)
			results = append(results, Result{ID: pq.fwd, Response: ans})
		}
		closeIt := u.closeIfDoneLocked(sk)
		u.mu.Unlock()
		if len(results) > 0 {
			e.cfg.Done(results)
		}
		clear(results) // no references to the read buffers beyond the Done call
		if closeIt {
			_ = sk.conn.Close() // retired and done: the next read ends this reader
		}
	}
}

// forgetUDPPending forgets the queries of forwards ids pending on the upstream UDP sockets (their answers will
// be dropped as unknown), closing retired sockets left with nothing pending.
func (e *Exchanger) forgetUDPPending(ids []dns.ForwardID) {
	var set map[dns.ForwardID]struct{}
	if len(ids) > 8 {
		set = make(map[dns.ForwardID]struct{}, len(ids))
		for _, id := range ids {
			set[id] = struct{}{}
		}
	}
	cancelled := func(id dns.ForwardID) bool {
		if set != nil {
			_, ok := set[id]
			return ok
		}
		return slices.Contains(ids, id)
	}
	var toClose []*net.UDPConn
	e.umu.Lock()
	for _, u := range e.udpUps {
		u.mu.Lock()
		for sk := range u.all {
			for id, pq := range sk.pending {
				if cancelled(pq.fwd) {
					delete(sk.pending, id)
				}
			}
			if u.closeIfDoneLocked(sk) {
				toClose = append(toClose, sk.conn)
			}
		}
		u.mu.Unlock()
	}
	e.umu.Unlock()
	for _, c := range toClose {
		_ = c.Close()
	}
}

// closeUDPUpstreams closes every upstream socket, forgetting what is pending (Roam, Close): new sockets are
// opened on the next query.
func (e *Exchanger) closeUDPUpstreams() {
	e.umu.Lock()
	ups := e.udpUps
	e.udpUps = make(map[netip.AddrPort]*udpUpstream)
	e.umu.Unlock()
	for _, u := range ups {
		u.mu.Lock()
		u.closed = true
		all := u.all
		u.all = map[*udpSock]struct{}{}
		u.socks = [udpPoolSize]*udpSock{}
		for sk := range all {
			sk.pending = map[uint16]udpPending{}
		}
		u.mu.Unlock()
		for sk := range all {
			_ = sk.conn.Close()
		}
	}
}
