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
// new queries, until its answers are in or timed out. A socket per query would give every query its own port
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

type udpPending struct {
	fwd      dns.ForwardID
	origID   uint16
	query    []byte // the core's copy of the query (never modified), for the question check
	deadline time.Time
}

// forwardUDP sends fs (forwards to one upstream) from the upstream's socket pool, unless a roam since they
// were drained from the core (p.roams) already answered them.
func (s *Server) forwardUDP(fs []dns.Forward, p *pending) {
	if s.roams.Load() != p.roams {
		return
	}
	u, err := s.udpUpstreamFor(fs[0].Upstream)
	sent := 0
	if err == nil {
		sent, err = s.sendUDP(u, fs, p)
	}
	if err != nil {
		var q pending
		s.mu.Lock()
		for _, f := range fs[sent:] {
			s.r.HandleUpstreamError(f.ID, err, s.cfg.Now())
		}
		s.drainLocked(&q)
		s.mu.Unlock()
		s.dispatch(&q)
	}
	if sent > 0 && !s.timerArmed.Load() {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
}

func (s *Server) udpUpstreamFor(addr netip.AddrPort) (*udpUpstream, error) {
	s.umu.Lock()
	defer s.umu.Unlock()
	if u := s.udpUps[addr]; u != nil {
		return u, nil
	}
	if s.ctx.Err() != nil {
		return nil, errors.New("dns server closed")
	}
	u := &udpUpstream{addr: addr, all: make(map[*udpSock]struct{})}
	s.udpUps[addr] = u
	return u, nil
}

// sendUDP sends fs over one of u's sockets, each under a fresh random id, in one system call where the
// platform allows; it returns how many were sent.
func (s *Server) sendUDP(u *udpUpstream, fs []dns.Forward, p *pending) (int, error) {
	for _, f := range fs {
		if len(f.Query) < 12 {
			return 0, errors.New("query shorter than a DNS header")
		}
	}
	now := time.Now()
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return 0, fmt.Errorf("upstream %s sockets closed", u.addr)
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
		if sk, err = s.openUDPSockLocked(u, now); err != nil {
			u.mu.Unlock()
			return 0, err
		}
		u.socks[i] = sk
	}
	// A batch may take a socket a little past udpSockMaxQueries; ids stay unique on it.
	for len(p.wbufs) < len(fs) {
		p.wbufs = append(p.wbufs, make([]byte, 0, 512))
	}
	p.ms = p.ms[:0]
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
			s.unsendLocked(u, sk, p.ms)
			u.mu.Unlock()
			return 0, fmt.Errorf("upstream %s: no free DNS id", u.addr)
		}
		sk.pending[id] = udpPending{fwd: f.ID, origID: binary.BigEndian.Uint16(f.Query), query: f.Query, deadline: f.Deadline}
		sk.sent++
		b := append(p.wbufs[j][:0], f.Query...)
		binary.BigEndian.PutUint16(b, id)
		p.wbufs[j] = b
		p.ms = append(p.ms, ipv4.Message{Buffers: p.wbufs[j : j+1 : j+1]})
	}
	conn, bc := sk.conn, sk.batch
	u.mu.Unlock()

	var n int
	var err error
	if len(p.ms) == 1 {
		if _, err = conn.Write(p.ms[0].Buffers[0]); err == nil {
			n = 1
		}
	} else {
		n, err = writeAll(bc, p.ms)
	}
	if err == nil && n < len(p.ms) {
		err = errors.New("short batch write")
	}
	if err != nil {
		u.mu.Lock()
		closeIt := s.unsendLocked(u, sk, p.ms[n:])
		u.mu.Unlock()
		if closeIt {
			_ = conn.Close()
		}
		return n, fmt.Errorf("sending to upstream %s/udp: %w", u.addr, err)
	}
	return n, nil
}

// unsendLocked forgets the queries of ms (not sent) on sk and reports whether sk is now to be closed.
func (s *Server) unsendLocked(u *udpUpstream, sk *udpSock, ms []ipv4.Message) bool {
	for _, m := range ms {
		delete(sk.pending, binary.BigEndian.Uint16(m.Buffers[0]))
	}
	return u.closeIfDoneLocked(sk)
}

// openUDPSockLocked opens a new connected socket to u (the kernel binds it to a random ephemeral port) and
// starts its reader. u.mu must be held.
func (s *Server) openUDPSockLocked(u *udpUpstream, now time.Time) (*udpSock, error) {
	if len(u.all) >= udpMaxSockets {
		return nil, fmt.Errorf("upstream %s: too many queries in flight", u.addr)
	}
	s.mu.Lock()
	closed := s.closed
	if !closed {
		s.wg.Add(1)
	}
	s.mu.Unlock()
	if closed {
		return nil, errors.New("dns server closed")
	}
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(u.addr))
	if err != nil {
		s.wg.Done()
		return nil, fmt.Errorf("opening a socket to upstream %s: %w", u.addr, err)
	}
	sk := &udpSock{conn: conn, batch: newBatchConn(conn), pending: make(map[uint16]udpPending, udpSockMaxQueries/4), born: now}
	u.all[sk] = struct{}{}
	go func() {
		defer s.wg.Done()
		s.readUpstream(u, sk)
	}()
	return sk, nil
}

// retireLocked takes sk out of use for new queries; it is closed when its last answer is in or timed out.
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
func (s *Server) readUpstream(u *udpUpstream, sk *udpSock) {
	msp, _ := s.readBufs.Get().(*[]ipv4.Message)
	if msp == nil {
		m := newMessages(batchSize, udpReadBuf)
		msp = &m
	}
	defer s.readBufs.Put(msp) // sockets are replaced often: reuse their buffers
	ms := *msp
	type answer struct {
		fwd dns.ForwardID
		msg []byte
	}
	answers := make([]answer, 0, batchSize)
	var p pending
	for {
		n, err := sk.batch.ReadBatch(ms, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || s.ctx.Err() != nil {
				return
			}
			// E.g. ECONNREFUSED from an ICMP port unreachable: the upstream is down, fail what is pending here.
			u.mu.Lock()
			var failed []dns.ForwardID
			for id, pq := range sk.pending {
				failed = append(failed, pq.fwd)
				delete(sk.pending, id)
			}
			closeIt := u.closeIfDoneLocked(sk)
			u.mu.Unlock()
			if len(failed) > 0 {
				s.mu.Lock()
				for _, id := range failed {
					s.r.HandleUpstreamError(id, fmt.Errorf("upstream %s/udp: %w", u.addr, err), s.cfg.Now())
				}
				s.drainLocked(&p)
				s.mu.Unlock()
				s.dispatch(&p)
			}
			if closeIt {
				_ = sk.conn.Close()
				return
			}
			continue
		}
		answers = answers[:0]
		u.mu.Lock()
		for i := range ms[:n] {
			m := &ms[i]
			ans := m.Buffers[0][:m.N]
			var from netip.AddrPort
			if ua, ok := m.Addr.(*net.UDPAddr); ok {
				from = ua.AddrPort()
			}
			if from.Addr().Unmap() != u.addr.Addr().Unmap() || from.Port() != u.addr.Port() {
				s.r.ReportDroppedAnswer(dns.DropWrongSource)
				s.log.Debug("dropped a DNS answer from an unexpected source", "upstream", u.addr, "from", from, "len", len(ans))
				continue
			}
			if len(ans) < 12 {
				s.r.ReportDroppedAnswer(dns.DropMalformed)
				s.log.Debug("dropped a DNS answer shorter than a header", "upstream", u.addr, "len", len(ans))
				continue
			}
			id := binary.BigEndian.Uint16(ans)
			pq, ok := sk.pending[id]
			if !ok || !dns.AnswerMatchesQuery(pq.query, ans) {
				// Late (timed out), duplicate, or spoofed: the real answer may still come.
				reason := dns.DropUnknownID
				if ok {
					reason = dns.DropWrongQuestion
				}
				s.r.ReportDroppedAnswer(reason)
				s.log.Debug("dropped a DNS answer matching no query in flight", "upstream", u.addr, "id", id, "reason", reason.String())
				continue
			}
			delete(sk.pending, id)
			binary.BigEndian.PutUint16(ans, pq.origID)
			answers = append(answers, answer{pq.fwd, ans})
		}
		closeIt := u.closeIfDoneLocked(sk)
		u.mu.Unlock()
		if len(answers) > 0 {
			s.mu.Lock()
			now := s.cfg.Now()
			for _, a := range answers {
				s.r.HandleUpstreamResponse(a.fwd, a.msg, now)
			}
			s.drainLocked(&p)
			s.mu.Unlock()
			s.dispatch(&p)
		}
		if closeIt {
			_ = sk.conn.Close() // retired and done: the next read ends this reader
		}
	}
}

// timerLoop reports UDP upstream timeouts to the core (which answers nothing, as without snowgate).
func (s *Server) timerLoop() {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		s.timerArmed.Store(false)
		next, ok := s.expireUDP(time.Now())
		if ok {
			s.timerArmed.Store(true)
			t.Reset(time.Until(next))
		}
		if ok {
			select {
			case <-s.ctx.Done():
				return
			case <-t.C:
			case <-s.kick:
			}
		} else {
			select {
			case <-s.ctx.Done():
				return
			case <-s.kick:
			}
		}
	}
}

// expireUDP fails pending UDP queries past their deadline, closes retired sockets left with nothing pending,
// and returns the next deadline.
func (s *Server) expireUDP(now time.Time) (time.Time, bool) {
	var expired []dns.ForwardID
	var toClose []*net.UDPConn
	var next time.Time
	s.umu.Lock()
	for _, u := range s.udpUps {
		u.mu.Lock()
		for sk := range u.all {
			for id, pq := range sk.pending {
				if !pq.deadline.After(now) {
					expired = append(expired, pq.fwd)
					delete(sk.pending, id)
				} else if next.IsZero() || pq.deadline.Before(next) {
					next = pq.deadline
				}
			}
			if u.closeIfDoneLocked(sk) {
				toClose = append(toClose, sk.conn)
			}
		}
		u.mu.Unlock()
	}
	s.umu.Unlock()
	for _, c := range toClose {
		_ = c.Close()
	}
	if len(expired) > 0 {
		var p pending
		s.mu.Lock()
		for _, id := range expired {
			s.r.HandleUpstreamError(id, dns.ErrUpstreamTimeout, s.cfg.Now())
		}
		s.drainLocked(&p)
		s.mu.Unlock()
		s.dispatch(&p)
	}
	return next, !next.IsZero()
}

// forgetUDPPending forgets the queries of forwards ids pending on the upstream UDP sockets (their answers will
// be dropped as unknown), closing retired sockets left with nothing pending.
func (s *Server) forgetUDPPending(ids []dns.ForwardID) {
	var toClose []*net.UDPConn
	s.umu.Lock()
	for _, u := range s.udpUps {
		u.mu.Lock()
		for sk := range u.all {
			for id, pq := range sk.pending {
				if slices.Contains(ids, pq.fwd) {
					delete(sk.pending, id)
				}
			}
			if u.closeIfDoneLocked(sk) {
				toClose = append(toClose, sk.conn)
			}
		}
		u.mu.Unlock()
	}
	s.umu.Unlock()
	for _, c := range toClose {
		_ = c.Close()
	}
}

// closeUDPUpstreams closes every upstream socket (Roam rebinds: new sockets are opened on the next query).
func (s *Server) closeUDPUpstreams() {
	s.umu.Lock()
	ups := s.udpUps
	s.udpUps = make(map[netip.AddrPort]*udpUpstream)
	s.umu.Unlock()
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
