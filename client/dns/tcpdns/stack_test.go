package tcpdns

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStackBasics(t *testing.T) {
	st, err := New([]netip.Addr{netip.MustParseAddr("100.100.111.1"), netip.MustParseAddr("fd00:2021:1111:8000:100:100:111:1")}, 1280)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.WritePacket([]byte{0x20, 0}); !errors.Is(err, ErrNotIP) {
		t.Errorf("non-IP packet: %v", err)
	}
	if err := st.WritePacket(nil); !errors.Is(err, ErrNotIP) {
		t.Errorf("empty packet: %v", err)
	}
	// Garbage that looks like IPv4 is dropped by the stack, not a panic.
	if err := st.WritePacket([]byte{0x45, 1, 2, 3}); err != nil {
		t.Errorf("short IPv4: %v", err)
	}
	ln, err := st.Listen(netip.MustParseAddrPort("[fd00:2021:1111:8000:100:100:111:1]:53"))
	if err != nil {
		t.Fatal(err)
	}
	if ln.Addr().String() != "[fd00:2021:1111:8000:100:100:111:1]:53" {
		t.Errorf("addr %s", ln.Addr())
	}
	done := make(chan error, 1)
	go func() { _, err := ln.Accept(); done <- err }()
	_ = ln.Close()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Errorf("Accept after Close: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := st.ReadPacket(ctx, make([]byte, 1500)); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("ReadPacket with nothing to send: %v", err)
	}
}
