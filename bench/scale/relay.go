package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha1" //nolint:gosec // TURN REST credentials are HMAC-SHA1 by definition.
	"encoding/base64"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v4"

	"github.com/snowgate/snowgate/relay"
)

// restSecret is the TURN REST secret the benchmark's relay and its clients share.
const restSecret = "bench-scale-secret"

// childRelay runs the relay (package relay, configured like snowgate-relay with its defaults, TURN REST
// credentials instead of a portal) on 127.0.0.1 until stdin closes, answering "stats" and "heap".
func childRelay(args []string) int {
	_ = args
	out := newChildOut()
	srv, err := relay.New(relay.Config{
		PublicIP4: netip.MustParseAddr("127.0.0.1"), ListenAddr4: netip.MustParseAddr("127.0.0.1"),
		ListenPort: -1, DrainTimeout: -1,
		Auth: relay.AuthTURNREST, RESTSecret: restSecret,
		MaxAllocations: 1_000_000,
		Logger:         slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	if err != nil {
		out.send(msg{Op: "error", Text: err.Error()})
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		out.send(msg{Op: "error", Text: err.Error()})
		return 1
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	out.send(msg{Op: "ready", Addr: srv.Addr().String()})
	for m := range readCommands() {
		out.serveCommon(m)
	}
	cancel()
	<-done
	return 0
}

// relayResult is the relay section's outcome.
type relayResult struct {
	allocs        int
	failed        int
	took          time.Duration
	before, after *stats
}

// runRelay starts the relay child, makes n allocations from n client sockets on 127.0.0.2 (one
// username each, so the per-user quota does not apply), and measures the child before and after.
func runRelay(n int, timeout time.Duration, profile string) (*relayResult, error) {
	c, err := startChild("child-relay")
	if err != nil {
		return nil, err
	}
	defer c.stop(10 * time.Second)
	ready, err := c.wait("ready", 30*time.Second, nil)
	if err != nil {
		return nil, err
	}
	server, err := netip.ParseAddrPort(ready.Addr)
	if err != nil {
		return nil, err
	}
	time.Sleep(time.Second) // let the workers and the exporter settle before the baseline
	before, err := c.stats()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conns, ok, err := allocateMany(ctx, server, n)
	defer func() {
		for _, pc := range conns {
			_ = pc.Close()
		}
	}()
	if err != nil {
		return nil, err
	}
	took := time.Since(start)
	log.Printf("relay: %d of %d allocations in %v", ok, n, took.Round(time.Millisecond))
	after, err := c.stats()
	if err != nil {
		return nil, err
	}
	if profile != "" {
		if err := c.heap(profile); err != nil {
			return nil, err
		}
	}
	return &relayResult{allocs: ok, failed: n - ok, took: took, before: before, after: after}, nil
}

// allocateMany opens n UDP sockets on 127.0.0.2 and makes one allocation from each (64 at a time).
// It returns the sockets (the allocations live on after this returns, until they expire) and how many
// allocations succeeded.
func allocateMany(ctx context.Context, server netip.AddrPort, n int) ([]*net.UDPConn, int, error) {
	conns := make([]*net.UDPConn, 0, n)
	for range n {
		pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
		if err != nil {
			return conns, 0, fmt.Errorf("socket %d: %w", len(conns), err)
		}
		conns = append(conns, pc)
	}
	var ok atomic.Int64
	var firstErr error
	var errOnce sync.Once
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := allocate(ctx, conns[i], server, fmt.Sprintf("%d:bench%d", time.Now().Add(24*time.Hour).Unix(), i)); err != nil {
					errOnce.Do(func() { firstErr = err })
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	if ok.Load() == 0 && firstErr != nil {
		return conns, 0, firstErr
	}
	if firstErr != nil {
		log.Printf("relay: first allocation error: %v", firstErr)
	}
	return conns, int(ok.Load()), nil
}

// allocate runs one Allocate exchange (the unauthenticated request, its 401, the authenticated one)
// from pc, three tries per request.
func allocate(ctx context.Context, pc *net.UDPConn, server netip.AddrPort, user string) error {
	mac := hmac.New(sha1.New, []byte(restSecret))
	mac.Write([]byte(user))
	pass := base64.StdEncoding.EncodeToString(mac.Sum(nil))
	transport := stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{17, 0, 0, 0}}
	allocType := stun.NewType(stun.MethodAllocate, stun.ClassRequest)
	first, err := stun.Build(stun.TransactionID, allocType, transport, stun.Fingerprint)
	if err != nil {
		return err
	}
	resp, err := exchange(ctx, pc, server, first)
	if err != nil {
		return err
	}
	var code stun.ErrorCodeAttribute
	if err := code.GetFrom(resp); err != nil || code.Code != stun.CodeUnauthorized {
		return fmt.Errorf("allocate: expected 401, got %v (%v)", resp.Type, code)
	}
	var realm stun.Realm
	var nonce stun.Nonce
	if err := errors.Join(realm.GetFrom(resp), nonce.GetFrom(resp)); err != nil {
		return fmt.Errorf("allocate: 401 without realm or nonce: %w", err)
	}
	req, err := stun.Build(stun.TransactionID, allocType, transport, stun.NewUsername(user), realm, nonce,
		stun.NewLongTermIntegrity(user, realm.String(), pass), stun.Fingerprint)
	if err != nil {
		return err
	}
	resp, err = exchange(ctx, pc, server, req)
	if err != nil {
		return err
	}
	if resp.Type.Class != stun.ClassSuccessResponse {
		_ = code.GetFrom(resp)
		return fmt.Errorf("allocate: %v (%v)", resp.Type, code)
	}
	return nil
}

// exchange sends req and waits for the response with its transaction id (three tries, 1 s each).
func exchange(ctx context.Context, pc *net.UDPConn, server netip.AddrPort, req *stun.Message) (*stun.Message, error) {
	buf := make([]byte, 1500)
	for try := 0; try < 3; try++ {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if _, err := pc.WriteToUDPAddrPort(req.Raw, server); err != nil {
			return nil, err
		}
		_ = pc.SetReadDeadline(time.Now().Add(time.Second))
		for {
			k, _, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				break // timeout: send again
			}
			resp := &stun.Message{Raw: append([]byte(nil), buf[:k]...)}
			if resp.Decode() != nil || resp.TransactionID != req.TransactionID {
				continue
			}
			return resp, nil
		}
	}
	return nil, fmt.Errorf("no answer from %v to %v", server, req.Type)
}
