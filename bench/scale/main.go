// Command scale measures what connections and allocations cost in memory (issue 13, section 4), on
// loopback without root:
//
//   - gateway: the gateway's node (node.Node, one wireguard-go peer, ICE and connection state per client)
//     with -gw-conns connections from as many client nodes, against a wireguard-go device (the module
//     go.mod pins) with as many peers configured through IpcSet: RSS per connection and per peer;
//   - relay: the relay (package relay, snowgate-relay's defaults) with -allocs allocations, made from as
//     many client sockets: RSS, Go heap and goroutines per allocation.
//
// The measured side runs in a child process (this program re-executed), so that its RSS holds only what
// is measured; every figure is the difference between the child's state with the connections and
// without them, after a forced GC that returns free memory to the OS. bench/run runs it; see
// bench/README.md. The markdown table goes to stdout, progress to stderr.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"strings"
	"time"
)

func main() {
	log.SetFlags(log.Ltime)
	log.SetPrefix("bench/scale: ")
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "child-relay":
			os.Exit(childRelay(os.Args[2:]))
		case "child-hub":
			os.Exit(childHub(os.Args[2:]))
		case "child-wg":
			os.Exit(childWG(os.Args[2:]))
		}
	}
	os.Exit(run())
}

func run() int {
	sections := flag.String("sections", "gateway,relay", "comma-separated sections: gateway, relay")
	gwConns := flag.Int("gw-conns", 1000, "gateway section: client connections (and wireguard-go peers)")
	allocs := flag.Int("allocs", 10000, "relay section: allocations")
	timeout := flag.Duration("timeout", 5*time.Minute, "upper bound of each section's setup")
	heapDir := flag.String("heap-profiles", "", "write the children's heap profiles (with the connections) into this directory")
	flag.Parse()
	want := map[string]bool{}
	for _, s := range strings.Split(*sections, ",") {
		want[strings.TrimSpace(s)] = true
	}
	prof := func(name string) string {
		if *heapDir == "" {
			return ""
		}
		return *heapDir + "/" + name + ".heap"
	}
	var b strings.Builder
	if want["gateway"] {
		res, err := runGateway(*gwConns, *timeout, prof("gateway"), prof("wireguard-go"))
		if err != nil {
			log.Printf("gateway: %v", err)
			return 1
		}
		writeGateway(&b, res)
	}
	if want["relay"] {
		res, err := runRelay(*allocs, *timeout, prof("relay"))
		if err != nil {
			log.Printf("relay: %v", err)
			return 1
		}
		writeRelay(&b, res)
	}
	fmt.Print(b.String())
	return 0
}

// per is the growth from a to b per item, in KB (RSS) or bytes converted to KB.
func perKB(a, b uint64, n int) float64 {
	if n == 0 {
		return 0
	}
	return (float64(b) - float64(a)) / float64(n)
}

func writeRelay(b *strings.Builder, r *relayResult) {
	fmt.Fprintf(b, "#### Relay\n\n")
	fmt.Fprintf(b, "The relay (package relay with snowgate-relay's defaults; TURN REST credentials, one username per "+
		"allocation) in a child process on 127.0.0.1; %d allocations made from as many UDP sockets on 127.0.0.2 "+
		"(64 at a time, %v; %d failed), idle. Per allocation: the child's growth from before to after, each "+
		"measured after a forced GC that returns free memory to the OS.\n\n", r.allocs+r.failed, r.took.Round(time.Millisecond), r.failed)
	b.WriteString("| allocations | RSS MB | RSS KB/allocation | Go heap KB/allocation | goroutine stacks KB/allocation | goroutines/allocation | threads |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|---:|\n")
	fmt.Fprintf(b, "| 0 | %.1f | – | – | – | – | %d |\n", float64(r.before.RSSKB)/1024, r.before.Threads)
	fmt.Fprintf(b, "| %d | %.1f | %.2f | %.2f | %.2f | %.2f | %d |\n", r.allocs, float64(r.after.RSSKB)/1024,
		perKB(r.before.RSSKB, r.after.RSSKB, r.allocs),
		perKB(r.before.HeapInuse, r.after.HeapInuse, r.allocs)/1024,
		perKB(r.before.StackInuse, r.after.StackInuse, r.allocs)/1024,
		perKB(uint64(r.before.Goroutines), uint64(r.after.Goroutines), r.allocs), r.after.Threads)
	per := perKB(r.before.RSSKB, r.after.RSSKB, r.allocs)
	verdict := "met"
	if per > targetRelayKB {
		verdict = "**missed**"
	}
	fmt.Fprintf(b, "\nTarget: ≤ %d KB per idle allocation: %.2f KB: %s. At this cost a relay with 512 MiB of memory "+
		"(%.0f MB at rest) holds about %.0f allocations.\n\n", targetRelayKB, per, verdict,
		float64(r.before.RSSKB)/1024, (512*1024-float64(r.before.RSSKB)-64*1024)/max(per, 0.1))
}

// Targets (issue 13).
const (
	targetRelayKB   = 8   // relay: ≤ 8 KB RSS per idle allocation
	targetGatewayWG = 1.5 // gateway: ≤ 1.5× wireguard-go's cost per peer
)
