package main

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/snowgate/snowgate/relay"
)

func TestChannelDataFrame(t *testing.T) {
	b := channelData(0x4007, 120)
	if len(b) != 120 || binary.BigEndian.Uint16(b) != 0x4007 || binary.BigEndian.Uint16(b[2:]) != 116 {
		t.Fatalf("frame header % x, len %d: want channel 4007, length 116, 120 bytes", b[:4], len(b))
	}
}

func TestTURNRESTCredsMatchTheRelays(t *testing.T) {
	u, p := turnRESTCreds("s3cret", "bench", time.Hour)
	if !strings.HasSuffix(u, ":bench") {
		t.Fatalf("username %q: want expiry:bench", u)
	}
	if want := relay.TURNRESTPassword(u, "s3cret"); p != want {
		t.Fatalf("password %q, relay computes %q", p, want)
	}
}

func TestParseFastLine(t *testing.T) {
	k, st, err := parseFastLine("end 3 rate=50000 sent=249000 recv=248500 send_ns=5000000000")
	if err != nil || k != 3 || st.rate != 50000 || st.sent != 249000 || st.recv != 248500 || st.sendTime != 5*time.Second {
		t.Fatalf("got %d %+v %v", k, st, err)
	}
	if _, _, err := parseFastLine("start 3"); err == nil {
		t.Fatal("a start line parsed as an end line")
	}
}

func TestSaturationSummary(t *testing.T) {
	step := func(rate int, sent, recv int64) fastStep {
		return fastStep{rate: rate, sent: sent, recv: recv, sendTime: time.Second}
	}
	var b strings.Builder
	printFastTable(&b, []fastResult{
		{server: "coturn", size: 120, step: step(10000, 10000, 10000)},
		{server: "coturn", size: 120, step: step(20000, 20000, 15000)},
		{server: "snowgate", size: 120, step: step(10000, 10000, 10000)},
		{server: "snowgate", size: 120, step: step(20000, 20000, 19900)},
		{server: "snowgate", size: 120, step: step(0, 40000, 30000)},
	})
	out := b.String()
	for _, want := range []string{"| 120 | snowgate | 20000 | 30000 | 2.00 |", "| 120 | coturn | 10000 | 15000 | 1.00 |"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
}
