package socks5

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// runCurl runs the real curl through the proxy and returns stdout, stderr and the exit error.
func runCurl(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	path, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl is not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, append([]string{"-sS", "--max-time", "20", "--noproxy", ""}, args...)...)
	cmd.Env = []string{"PATH=/usr/bin:/bin"} // no *_proxy variables from the environment
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	return stdout.String(), stderr.String(), err
}

func TestCurlSOCKS5Hostname(t *testing.T) {
	web := helloServer(t)
	srv := &Server{Dial: hostDial, Resolve: fakeResolver(map[string][]netip.Addr{"demo.snowgate.test": {web.Addr()}})}
	proxy := startServer(t, srv)

	url := fmt.Sprintf("http://demo.snowgate.test:%d/", web.Port())
	out, errOut, err := runCurl(t, "--socks5-hostname", proxy, url)
	if err != nil {
		t.Fatalf("curl --socks5-hostname: %v: %s", err, errOut)
	}
	if want := fmt.Sprintf("hello from demo.snowgate.test:%d", web.Port()); out != want {
		t.Fatalf("curl got %q, want %q", out, want)
	}

	// --socks5 resolves locally and sends an IPv4 address.
	out, errOut, err = runCurl(t, "--socks5", proxy, "http://"+web.String()+"/")
	if err != nil || !strings.HasPrefix(out, "hello from ") {
		t.Fatalf("curl --socks5: %q, %v: %s", out, err, errOut)
	}

	// An unknown name fails with the host unreachable reply (code 4).
	_, errOut, err = runCurl(t, "--socks5-hostname", proxy, "http://nxdomain.snowgate.test/")
	if err == nil || !strings.Contains(errOut, "(4)") {
		t.Fatalf("curl to an unknown name: %v, stderr %q; want a failure naming reply 4", err, errOut)
	}
}
