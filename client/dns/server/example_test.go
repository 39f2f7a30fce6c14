package server_test

import (
	"net/netip"
	"sync"
	"time"

	"github.com/snowgate/snowgate/client/dns"
	"github.com/snowgate/snowgate/client/dns/server"
)

// A daemon that keeps the resolver inside its own sans-IO core, under its own lock, uses an Exchanger for the
// upstream I/O: it hands over what PollForward yields, feeds the Results back, runs the core's timer and
// cancels what expires, and roams both together.
func ExampleExchanger() {
	var mu sync.Mutex // the daemon's core lock
	r, _ := dns.New(dns.Config{UpstreamDNS: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:53")}})

	var ex *server.Exchanger
	drain := func() { // with mu held: hand the core's new forwards to the exchanger
		var fs []dns.Forward
		for f, ok := r.PollForward(); ok; f, ok = r.PollForward() {
			fs = append(fs, f)
		}
		ex.Exchange(fs...) // never calls Done itself, so holding mu is fine
		for rep, ok := r.PollReply(); ok; rep, ok = r.PollReply() {
			_ = rep // write the answer back to the application (an IP packet to the TUN, a TCP stream, …)
		}
	}
	ex, _ = server.NewExchanger(server.ExchangerConfig{
		Done: func(results []server.Result) {
			mu.Lock()
			defer mu.Unlock()
			for _, res := range results {
				if res.Err != nil {
					r.HandleUpstreamError(res.ID, res.Err, time.Now())
				} else {
					r.HandleUpstreamResponse(res.ID, res.Response, time.Now())
				}
			}
			drain()
		},
		OnDropped: r.ReportDroppedAnswer,
	})
	defer ex.Close()

	// When the core's timer fires (PollTimeout):
	mu.Lock()
	ex.Cancel(r.HandleTimeout(time.Now()).Expired...)
	drain()
	mu.Unlock()

	// On a network change:
	mu.Lock()
	r.Roam(time.Now())
	ex.Roam()
	drain() // the UDP queries in flight, resent from new sockets
	mu.Unlock()
}
