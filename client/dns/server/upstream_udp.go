package server

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/snowgate/snowgate/client/dns"
)

// udpUpstream is one long-lived UDP socket to an upstream resolver, shared by all forwarded UDP queries to it
// (no socket or goroutine per query: this keeps forwarding latency low). Each query goes out under a fresh
// random DNS id, unique on the socket, and the answer gets the application's id back before the core sees it.
type udpUpstream struct {
	addr netip.AddrPort
	conn *net.UDPConn

	mu      sync.Mutex
	pending map[uint16]udpPending
	wbuf    []byte
	closed  bool
}

type udpPending struct {
	fwd      dns.ForwardID
	origID   uint16
	deadline time.Time
}

// forwardUDP sends f over the shared socket to its upstream, creating the socket (and its reader) on first use,
// unless a roam since f was drained from the core (roams) already answered it.
func (s *Server) forwardUDP(f dns.Forward, roams uint64) {
	if s.roams.Load() != roams {
		return
	}
	u, err := s.udpUpstreamFor(f.Upstream)
	if err == nil {
		err = u.send(f)
	}
	if err != nil {
		var p pending
		s.mu.Lock()
		s.r.HandleUpstreamError(f.ID, err, s.cfg.Now())
		s.drainLocked(&p)
		s.mu.Unlock()
		s.dispatch(&p)
		return
	}
	if !s.timerArmed.Load() {
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
	s.mu.Lock()
	closed := s.closed
	if !closed {
		s.wg.Add(1)
	}
	s.mu.Unlock()
	if closed {
		return nil, errors.New("dns server closed")
	}
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		s.wg.Done()
		return nil, fmt.Errorf("opening a socket to upstream %s: %w", addr, err)
	}
	u := &udpUpstream{addr: addr, conn: conn, pending: make(map[uint16]udpPending)}
	s.udpUps[addr] = u
	go func() {
		defer s.wg.Done()
		s.readUpstream(u)
	}()
	return u, nil
}

func (u *udpUpstream) send(f dns.Forward) error {
	if len(f.Query) < 12 {
		return errors.New("query shorter than a DNS header")
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return fmt.Errorf("upstream %s socket closed", u.addr)
	}
	if len(u.pending) >= 60000 {
		return fmt.Errorf("upstream %s: too many queries in flight", u.addr)
	}
	var id uint16
	for {
		id = uint16(rand.Uint32())
		if _, taken := u.pending[id]; !taken {
			break
		}
	}
	u.wbuf = append(u.wbuf[:0], f.Query...)
	binary.BigEndian.PutUint16(u.wbuf, id)
	if _, err := u.conn.Write(u.wbuf); err != nil {
		return fmt.Errorf("sending to upstream %s/udp: %w", u.addr, err)
	}
	u.pending[id] = udpPending{fwd: f.ID, origID: binary.BigEndian.Uint16(f.Query), deadline: f.Deadline}
	return nil
}

// readUpstream delivers answers from one upstream socket until it is closed.
func (s *Server) readUpstream(u *udpUpstream) {
	buf := make([]byte, 65535)
	var p pending
	for {
		n, err := u.conn.Read(buf)
		if err != nil {
			u.mu.Lock()
			closed := u.closed
			var failed []dns.ForwardID
			if !closed && !errors.Is(err, net.ErrClosed) {
				// E.g. ECONNREFUSED from an ICMP port unreachable: the upstream is down, fail what is pending.
				for id, pq := range u.pending {
					failed = append(failed, pq.fwd)
					delete(u.pending, id)
				}
			}
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
			if closed || errors.Is(err, net.ErrClosed) || s.ctx.Err() != nil {
				return
			}
			continue
		}
		if n < 12 {
			continue
		}
		id := binary.BigEndian.Uint16(buf)
		u.mu.Lock()
		pq, ok := u.pending[id]
		if ok {
			delete(u.pending, id)
		}
		u.mu.Unlock()
		if !ok {
			continue // late, duplicate or spoofed
		}
		binary.BigEndian.PutUint16(buf, pq.origID)
		s.mu.Lock()
		s.r.HandleUpstreamResponse(pq.fwd, buf[:n], s.cfg.Now())
		s.drainLocked(&p)
		s.mu.Unlock()
		s.dispatch(&p)
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

// expireUDP fails pending UDP queries past their deadline and returns the next deadline.
func (s *Server) expireUDP(now time.Time) (time.Time, bool) {
	var expired []dns.ForwardID
	var next time.Time
	s.umu.Lock()
	for _, u := range s.udpUps {
		u.mu.Lock()
		for id, pq := range u.pending {
			if !pq.deadline.After(now) {
				expired = append(expired, pq.fwd)
				delete(u.pending, id)
			} else if next.IsZero() || pq.deadline.Before(next) {
				next = pq.deadline
			}
		}
		u.mu.Unlock()
	}
	s.umu.Unlock()
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

// closeUDPUpstreams closes every upstream socket (Roam rebinds: new sockets are opened on the next query).
func (s *Server) closeUDPUpstreams() {
	s.umu.Lock()
	ups := s.udpUps
	s.udpUps = make(map[netip.AddrPort]*udpUpstream)
	s.umu.Unlock()
	for _, u := range ups {
		u.mu.Lock()
		u.closed = true
		u.pending = map[uint16]udpPending{}
		u.mu.Unlock()
		_ = u.conn.Close()
	}
}
