package client

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	clcore "github.com/snowgate/snowgate/client/core"
	"github.com/snowgate/snowgate/client/dns/server"
	"github.com/snowgate/snowgate/client/dns/tcpdns"
	"github.com/snowgate/snowgate/internal/telemetry"
	"github.com/snowgate/snowgate/internal/tunnel"
)

// dnsGlue carries out the core's DNS actions: forwards through a server.Exchanger, and DNS over TCP on the
// sentinels through a tcpdns stack whose connections feed the core's HandleDNSTCP… methods. It owns the
// stack's goroutines and the exchanger; close stops them.
type dnsGlue struct {
	log    *slog.Logger
	core   *clcore.Client
	driver *tunnel.Driver
	inj    tunnel.Injector
	ex     *server.Exchanger
	mtu    int

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	stack     *tcpdns.Stack
	sentinels []netip.Addr
	stackStop context.CancelFunc
	conns     map[uint64]*tcpConn
	nextID    uint64
}

type tcpConn struct {
	c  *tcpdns.Conn
	mu sync.Mutex // serialises writes (answers go out in any order)
}

func newDNSGlue(log *slog.Logger, core *clcore.Client, dial, tunnelDial server.DialFunc) (*dnsGlue, error) {
	ctx, cancel := context.WithCancel(context.Background())
	g := &dnsGlue{log: log, core: core, ctx: ctx, cancel: cancel, conns: map[uint64]*tcpConn{}, mtu: 1280}
	ex, err := server.NewExchanger(server.ExchangerConfig{
		Dial: dial, TunnelDial: tunnelDial, Logger: log,
		Done: g.results,
	})
	if err != nil {
		cancel()
		return nil, err
	}
	g.ex = ex
	return g, nil
}

// attach gives the glue the driver and the injector (known once the daemon runs).
func (g *dnsGlue) attach(d *tunnel.Driver, inj tunnel.Injector) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.driver, g.inj = d, inj
}

// results feeds the exchanger's results to the core (the response is copied by the resolver).
func (g *dnsGlue) results(rs []server.Result) {
	g.mu.Lock()
	d := g.driver
	g.mu.Unlock()
	if d == nil {
		return
	}
	d.Do(func(now time.Time) {
		for _, r := range rs {
			g.core.HandleDNSResponse(r.ID, r.Response, r.Err, now)
		}
	})
}

// exec carries out one DNS action; it reports whether a was one.
func (g *dnsGlue) exec(a tunnel.Action) bool {
	switch a := a.(type) {
	case clcore.DNSForward:
		g.ex.Exchange(a.Forward)
	case clcore.DNSCancel:
		g.ex.Cancel(a.IDs...)
	case clcore.DNSRoam:
		g.ex.Roam()
	case clcore.DNSTCPPacket:
		g.mu.Lock()
		st := g.stack
		g.mu.Unlock()
		if st != nil {
			if err := st.WritePacket(a.Packet); err != nil {
				g.log.Debug("DNS TCP packet dropped", telemetry.Err(err))
			}
		}
	case clcore.DNSTCPReply:
		g.mu.Lock()
		c := g.conns[a.Handle]
		g.mu.Unlock()
		if c != nil {
			c.mu.Lock()
			_ = c.c.SetWriteDeadline(time.Now().Add(2 * time.Second))
			err := server.WriteTCPMessage(c.c, a.Payload)
			c.mu.Unlock()
			if err != nil {
				g.log.Debug("DNS TCP answer not written", telemetry.Err(err))
			}
		}
	default:
		return false
	}
	return true
}

// setSentinels (re)creates the TCP stack for the sentinel addresses of the core's SetDNS.
func (g *dnsGlue) setSentinels(addrs []netip.Addr) {
	addrs = slices.Clone(addrs)
	slices.SortFunc(addrs, func(a, b netip.Addr) int { return a.Compare(b) })
	g.mu.Lock()
	if slices.Equal(addrs, g.sentinels) {
		g.mu.Unlock()
		return
	}
	old, oldStop := g.stack, g.stackStop
	g.stack, g.stackStop, g.sentinels = nil, nil, addrs
	g.mu.Unlock()
	if oldStop != nil {
		oldStop()
		old.Close()
	}
	if len(addrs) == 0 {
		return
	}
	st, err := tcpdns.New(addrs, g.mtu)
	if err != nil {
		g.log.Warn("DNS over TCP unavailable", telemetry.Err(err))
		return
	}
	ctx, stop := context.WithCancel(g.ctx)
	var lns []*tcpdns.Listener
	for _, a := range addrs {
		ln, err := st.Listen(netip.AddrPortFrom(a, 53))
		if err != nil {
			g.log.Warn("DNS over TCP unavailable on a sentinel", "sentinel", a, telemetry.Err(err))
			continue
		}
		lns = append(lns, ln)
	}
	g.mu.Lock()
	g.stack, g.stackStop = st, stop
	g.mu.Unlock()
	g.wg.Add(1)
	go func() { // the stack's packets towards the applications
		defer g.wg.Done()
		buf := make([]byte, 65536)
		for {
			n, err := st.ReadPacket(ctx, buf)
			if err != nil {
				return
			}
			g.mu.Lock()
			inj := g.inj
			g.mu.Unlock()
			if inj != nil {
				_ = inj.WriteTUN(buf[:n])
			}
		}
	}()
	for _, ln := range lns {
		g.wg.Add(1)
		go g.accept(ctx, ln)
	}
}

// accept serves one sentinel's DNS-over-TCP connections.
func (g *dnsGlue) accept(ctx context.Context, ln *tcpdns.Listener) {
	defer g.wg.Done()
	go func() { <-ctx.Done(); _ = ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		conn := c.(*tcpdns.Conn)
		g.mu.Lock()
		g.nextID++
		id := g.nextID
		d := g.driver
		g.mu.Unlock()
		if d == nil {
			_ = conn.Reset()
			continue
		}
		server := addrPortOf(conn.LocalAddr())
		var acceptErr error
		d.Do(func(now time.Time) { acceptErr = g.core.HandleDNSTCPAccept(server, id, now) })
		if acceptErr != nil {
			g.log.Debug("DNS over TCP connection refused", telemetry.Err(acceptErr))
			_ = conn.Reset()
			continue
		}
		tc := &tcpConn{c: conn}
		g.mu.Lock()
		g.conns[id] = tc
		g.mu.Unlock()
		g.wg.Add(1)
		go g.serve(ctx, d, id, tc, server)
	}
}

// serve reads the queries of one connection until it closes, idles out or the stack goes.
func (g *dnsGlue) serve(ctx context.Context, d *tunnel.Driver, id uint64, tc *tcpConn, srv netip.AddrPort) {
	defer g.wg.Done()
	stop := context.AfterFunc(ctx, func() { _ = tc.c.Close() })
	defer stop()
	client := addrPortOf(tc.c.RemoteAddr())
	buf := make([]byte, 65535)
	for {
		_ = tc.c.SetReadDeadline(time.Now().Add(server.TCPIdleTimeout))
		msg, err := server.ReadTCPMessage(tc.c, buf)
		if err != nil {
			break
		}
		q := slices.Clone(msg)
		d.Do(func(now time.Time) { g.core.HandleDNSTCPQuery(id, client, srv, q, now) })
	}
	g.mu.Lock()
	delete(g.conns, id)
	g.mu.Unlock()
	_ = tc.c.Close()
	d.Do(func(now time.Time) { g.core.HandleDNSTCPClose(id, now) })
}

// close stops the stack, every connection and the exchanger, and waits for their goroutines.
func (g *dnsGlue) close() {
	g.cancel()
	g.mu.Lock()
	st := g.stack
	g.stack = nil
	g.mu.Unlock()
	if st != nil {
		st.Close()
	}
	g.wg.Wait()
	_ = g.ex.Close()
}

func addrPortOf(a net.Addr) netip.AddrPort {
	switch v := a.(type) {
	case *net.TCPAddr:
		return v.AddrPort()
	case *net.UDPAddr:
		return v.AddrPort()
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.AddrPort{}
	}
	return ap
}
