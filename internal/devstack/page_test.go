package devstack

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/snowgate/snowgate/internal/portalapi"
	"github.com/snowgate/snowgate/portalmock"
	"github.com/snowgate/snowgate/relay"
)

// hostileName is the demo resource's name in the live page test: the page must show it as text.
const hostileName = `demo <img id="xss" src="x"> & "quotes"`

// findChromium returns the browser to drive, or "".
func findChromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// artifactDir is where the test keeps its screenshots: $SNOWGATE_ARTIFACTS, else
// $TMPDIR/snowgate-artifacts-<uid> (it outlives the test, unlike t.TempDir; per user, so that a run
// as another user does not meet a directory it cannot write).
func artifactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("SNOWGATE_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), fmt.Sprintf("snowgate-artifacts-%d", os.Getuid()))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// picture is what the page draws, read from its DOM.
type picture struct {
	Clients  []pictureNode `json:"clients"`
	Relays   []pictureNode `json:"relays"`
	Gateways []pictureNode `json:"gateways"`
	Links    []pictureLink `json:"links"`
	// Load is the marker the test left in the page's window: unchanged means no reload.
	Load      string `json:"load"`
	Updates   string `json:"updates"`
	Status    string `json:"status"`
	Resources string `json:"resources"`
	XSS       bool   `json:"xss"`
}

type pictureNode struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Online string `json:"online"`
}

type pictureLink struct {
	Client     string `json:"client"`
	Gateway    string `json:"gateway"`
	Kind       string `json:"kind"`
	Path       string `json:"path"`
	Relays     string `json:"relays"`
	RelayNames string `json:"relayNames"`
	Label      string `json:"label"`
}

const readPicture = `(() => {
  const nodes = (kind) => [...document.querySelectorAll('#topology .node.' + kind)].map((e) => ({
    id: e.dataset.id, name: e.dataset.name, online: e.dataset.online }));
  return {
    clients: nodes('client'), relays: nodes('relay'), gateways: nodes('gateway'),
    links: [...document.querySelectorAll('#topology .link')].map((e) => Object.assign({}, e.dataset,
      { label: e.querySelector('.label').textContent })),
    load: String(window.__snowgateLoad), updates: document.body.dataset.updates || '',
    status: document.getElementById('status').textContent,
    resources: document.getElementById('resources').textContent,
    xss: document.getElementById('xss') !== null,
  };
})()`

func (p picture) String() string {
	b, _ := json.MarshalIndent(p, "", "  ")
	return string(b)
}

func (p picture) node(nodes []pictureNode, name string) (pictureNode, bool) {
	i := slices.IndexFunc(nodes, func(n pictureNode) bool { return n.Name == name })
	if i < 0 {
		return pictureNode{}, false
	}
	return nodes[i], true
}

func (p picture) online(nodes []pictureNode, name string) bool {
	n, ok := p.node(nodes, name)
	return ok && n.Online == "true"
}

// TestLivePageInChromium loads the portal's page in headless Chromium while the whole stack runs relayed,
// waits until the picture shows the client, the gateway, both relays and the connection through relay X,
// stops relay X, and waits until the same page (no reload) shows the connection through the other relay.
func TestLivePageInChromium(t *testing.T) {
	browser := findChromium()
	if browser == "" {
		t.Skip("chromium is not installed (apt-get install chromium): the live page test needs a browser")
	}
	begin := time.Now()
	file := portalmock.DefaultFile()
	for i := range file.Accounts[0].Resources {
		if file.Accounts[0].Resources[i].Address == DemoName {
			file.Accounts[0].Resources[i].Name = hostileName
		}
	}
	st := startStack(t, Options{Relays: 2, Clients: 1, Relayed: true, AdminAddr: "127.0.0.1:0", PortalFile: file})
	c := st.Clients[0]
	if body := fetch(t, c, "http://"+DemoName+"/live-page"); !strings.Contains(body, DemoPage) {
		t.Fatalf("demo page: %q", body)
	}
	relayName := map[string]string{} // relay id → name
	for _, r := range st.Portal.State().Relays {
		relayName[r.ID] = r.Name
	}
	stackUp := time.Since(begin)

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser),
		chromedp.Flag("headless", "new"),
		chromedp.NoSandbox, // the tests run as root in CI, where Chromium's sandbox refuses to start
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 1100),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelAlloc()
	tab, cancelTab := chromedp.NewContext(allocCtx, chromedp.WithErrorf(t.Logf))
	defer cancelTab()
	pageURL := st.Portal.PageURL()
	if pageURL == "" {
		t.Fatal("the portal has no page URL")
	}
	if err := chromedp.Do(tab, chromedp.Navigate(pageURL)); err != nil {
		t.Fatalf("open the page: %v", err)
	}
	browserUp := time.Since(begin)
	if _, err := chromedp.Run(tab, chromedp.Evaluate[string](`window.__snowgateLoad = 'first'`)); err != nil {
		t.Fatal(err)
	}
	look := func() picture {
		t.Helper()
		p, err := chromedp.Run(tab, chromedp.Evaluate[picture](readPicture))
		if err != nil {
			t.Fatalf("read the page: %v", err)
		}
		return p
	}
	// waitPicture polls the page (bounded) until ok holds; the page must never have reloaded.
	waitPicture := func(what string, timeout time.Duration, ok func(picture) bool) picture {
		t.Helper()
		deadline := time.Now().Add(timeout)
		for {
			p := look()
			if p.Load != "first" {
				t.Fatalf("the page reloaded (marker %q)", p.Load)
			}
			if ok(p) {
				return p
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out after %v waiting until the page shows %s; it shows:\n%s", timeout, what, p)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	dir := artifactDir(t)
	screenshot := func(name string) {
		t.Helper()
		png, err := chromedp.Run(tab, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s", path)
	}

	// 1. Everything is up and the connection goes through a relay (both sides report it).
	viaRelay := func(p picture) (pictureLink, bool) {
		for _, l := range p.Links {
			if l.Kind == "relay" && l.Path == "relay" && l.Relays != "" {
				return l, true
			}
		}
		return pictureLink{}, false
	}
	before := waitPicture("client-1, gateway-1, both relays and a relayed connection", time.Minute, func(p picture) bool {
		_, relayed := viaRelay(p)
		return p.online(p.Clients, c.Name) && p.online(p.Gateways, "gateway-1") &&
			p.online(p.Relays, "relay-1") && p.online(p.Relays, "relay-2") && relayed
	})
	link, _ := viaRelay(before)
	x := strings.Fields(link.Relays)[0] // the client's relay
	xName := relayName[x]
	if xName == "" || !strings.Contains(link.Label, "via "+xName) {
		t.Fatalf("link %+v: its relay %q is not an online relay %v, or the label does not name it", link, x, relayName)
	}
	if before.XSS || !strings.Contains(before.Resources, hostileName) {
		t.Fatalf("the resource name was not shown as text: element created %v, resources %q", before.XSS, before.Resources)
	}
	if !strings.HasPrefix(before.Status, "live") {
		t.Fatalf("status %q", before.Status)
	}
	t.Logf("before: %s %s → %s (%s)", link.Client[:8], link.Label, link.Gateway[:8], link.Relays)
	screenshot("live-page-1-relayed.png")
	firstPicture := time.Since(begin)

	// 2. Stop relay X: the same page shows it gone and the connection through the other relay.
	xi := slices.IndexFunc(st.Relays, func(r *relay.Server) bool {
		return portalapi.RelayID(r.StampSecret()) == x
	})
	if xi < 0 {
		t.Fatalf("relay %s is not one of the stack's", x)
	}
	updates := before.Updates
	killed := time.Now()
	if err := st.StopRelay(xi); err != nil {
		t.Fatal(err)
	}
	after := waitPicture(fmt.Sprintf("%s gone and the connection through the other relay", xName), time.Minute, func(p picture) bool {
		l, ok := viaRelay(p)
		return ok && !strings.Contains(l.Relays, x) && !p.online(p.Relays, xName) &&
			p.online(p.Clients, c.Name) && p.online(p.Gateways, "gateway-1")
	})
	moved := time.Since(killed)
	l, _ := viaRelay(after)
	if after.Updates == updates {
		t.Fatal("the picture changed without a state event")
	}
	t.Logf("after: %s %s → %s (%s), %v after stopping %s", l.Client[:8], l.Label, l.Gateway[:8], l.Relays, moved.Round(time.Millisecond), xName)
	screenshot("live-page-2-relay-stopped.png")

	// The connection still carries traffic.
	if body := fetch(t, c, "http://"+DemoName+"/after-relay-loss"); !strings.Contains(body, DemoPage) {
		t.Fatalf("demo page after the relay loss: %q", body)
	}
	t.Logf("timings: stack up %v, browser on the page %v, first full picture %v, picture moved %v after the relay stopped, total %v",
		stackUp.Round(time.Millisecond), browserUp.Round(time.Millisecond), firstPicture.Round(time.Millisecond),
		moved.Round(time.Millisecond), time.Since(begin).Round(time.Millisecond))
}
