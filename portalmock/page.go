package portalmock

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"time"
)

// The live page: the admin address serves a read-only web page (GET /, its script and style sheet, all
// embedded) that draws the system's topology and keeps it current from a server-sent event stream
// (GET /events). The page itself holds no data and needs no token; /events, like the admin API, needs the
// admin token (a browser's EventSource cannot set headers, so the page passes the token=… query parameter
// of its own URL on). See [Server.PageURL].

//go:embed page
var pageFiles embed.FS

// DefaultEventsHeartbeat is how often /events sends a comment line when nothing changes, so that proxies
// and the browser see a live stream and a vanished browser is noticed.
const DefaultEventsHeartbeat = 15 * time.Second

// PageSite is a site in a [PageState].
type PageSite struct {
	ID      string `json:"id"`
	Name    string `json:"name"`
	Account string `json:"account"`
}

// PagePolicy is a policy in a [PageState], with the names of what it links.
type PagePolicy struct {
	ID string `json:"id"`
	// Client is the client's id, or "*" for every client of the account; ClientName its name.
	Client       string `json:"client"`
	ClientName   string `json:"client_name"`
	Resource     string `json:"resource"`
	ResourceName string `json:"resource_name"`
}

// PageState is what /events streams: the configuration (sites, resources, policies) and the live [State].
type PageState struct {
	State
	Sites     []PageSite       `json:"sites"`
	Resources []ResourceConfig `json:"resources"`
	Policies  []PagePolicy     `json:"policies"`
}

func (c *core) pageState() PageState {
	ps := PageState{State: c.state(), Sites: []PageSite{}, Resources: []ResourceConfig{}, Policies: []PagePolicy{}}
	for _, aid := range sortedKeys(c.m.accounts) {
		a := c.m.accounts[aid]
		for _, sid := range sortedKeys(a.sites) {
			ps.Sites = append(ps.Sites, PageSite{ID: sid, Name: a.sites[sid].Name, Account: a.slug})
		}
	}
	for _, id := range sortedKeys(c.m.resources) {
		ps.Resources = append(ps.Resources, c.m.resources[id])
	}
	for _, id := range sortedKeys(c.m.policies) {
		p := c.m.policies[id]
		pp := PagePolicy{ID: id, Client: p.Client, ClientName: "every client", Resource: p.Resource, ResourceName: p.Resource}
		if d := c.m.clients[p.Client]; d != nil {
			pp.ClientName = d.name
		} else if p.Client != "*" {
			pp.ClientName = p.Client
		}
		if r, ok := c.m.resources[p.Resource]; ok {
			pp.ResourceName = r.Name
		}
		ps.Policies = append(ps.Policies, pp)
	}
	return ps
}

// PageState returns what the live page shows.
func (s *Server) PageState() (PageState, error) {
	var ps PageState
	err := s.apply(func(c *core) { ps = c.pageState() })
	s.logPanic("portal bug: taking the page state panicked", err)
	return ps, err
}

// PageURL is the live page's address, with the admin token in the query, once StartAdmin has been called
// ("" before, or without an admin token). It carries a secret: print it for the user, never log it.
func (s *Server) PageURL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.adminURL == "" || s.core.m.adminToken == "" {
		return ""
	}
	return s.adminURL + "/?" + url.Values{"token": {s.core.m.adminToken}}.Encode()
}

// changed wakes everyone waiting on the server's notify channel (the page streams, WaitFor) after a change
// that emitted no event (an admin change of resources or policies). s.mu is held.
func (s *Server) changed() {
	close(s.notify)
	s.notify = make(chan struct{})
}

// pageHandler serves the page's static files.
func pageHandler() http.Handler {
	sub, err := fs.Sub(pageFiles, "page")
	if err != nil {
		panic("portalmock: embedded page: " + err.Error()) // a build mistake, caught by every test
	}
	files := http.FileServerFS(sub)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		// The page runs only its own script and style sheet and connects only back here.
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer") // the page's URL carries the token
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}

// serveEvents streams the page state as server-sent events: "state" events carrying the whole PageState as
// JSON, one at once and one after every change (identical snapshots are not repeated), and a comment line
// every heartbeat. It returns when the browser goes away, a write fails or stalls, or the server closes
// (Close waits for it).
func (s *Server) serveEvents(w http.ResponseWriter, r *http.Request) {
	open := false
	s.locked(func() {
		if open = !s.closed; open {
			s.wg.Add(1) // Close waits for the stream to end
		}
	})
	if !open {
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	defer s.wg.Done()
	s.streams.Add(1)
	defer s.streams.Add(-1)
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	write := func(b []byte) error {
		if err := rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return err
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		return rc.Flush()
	}
	if write([]byte("retry: 2000\n\n")) != nil {
		return
	}
	heartbeat := time.NewTicker(s.cfg.EventsHeartbeat)
	defer heartbeat.Stop()
	ctx := r.Context()
	var last []byte
	for {
		var ch <-chan struct{}
		s.locked(func() { ch = s.notify }) // before the snapshot: no change slips between the two
		st, err := s.PageState()
		if err != nil {
			return
		}
		b, err := json.Marshal(st)
		if err != nil {
			s.log.Error("encode page state", "error", err)
			return
		}
		if !bytes.Equal(b, last) {
			if write(fmt.Appendf(nil, "event: state\ndata: %s\n\n", b)) != nil {
				return
			}
			last = b
		}
		for changed := false; !changed; {
			select {
			case <-ctx.Done():
				return
			case <-ch:
				changed = true
			case <-heartbeat.C:
				if write([]byte(": heartbeat\n\n")) != nil {
					return
				}
			}
		}
	}
}
