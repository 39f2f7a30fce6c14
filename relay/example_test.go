package relay_test

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/snowgate/snowgate/relay"
)

// An in-process relay on loopback, as the dev stack and node tests run it.
func ExampleNew() {
	lo := netip.MustParseAddr("127.0.0.1")
	srv, err := relay.New(relay.Config{
		PublicIP4:    lo,
		ListenAddr4:  lo,
		ListenPort:   -1, // ephemeral
		Sockets:      1,
		AllowPeers:   []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		DrainTimeout: -1,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		fmt.Println(err)
		return
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()

	// Credentials as the portal derives them for a peer.
	username := strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10) + ":some-salt"
	password := relay.FirezonePassword(username, srv.StampSecret())
	fmt.Println(srv.Addr().Addr(), srv.Ready(), len(password) == 43)

	cancel()
	fmt.Println(<-done)
	// Output:
	// 127.0.0.1 true true
	// <nil>
}
