package portalmock

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net/http"
)

// AdminHandler returns the admin API (JSON), protected by the configured admin token sent as
// "Authorization: Bearer <token>":
//
//	GET    /v1/resources          list resources
//	PUT    /v1/resources/{id}     create or replace (body: a resource as in the config file, JSON)
//	DELETE /v1/resources/{id}     delete (and its policies)
//	GET    /v1/policies           list policies
//	PUT    /v1/policies/{id}      create or replace (body: {"client":"<id>|*","resource":"<id>"})
//	DELETE /v1/policies/{id}      delete
//	GET    /v1/state              online clients, gateways, relays and flows
//	GET    /events                the live page's stream (server-sent events; see page.go)
//
// and, without a token, the live page itself: GET / (and its page.js and page.css), which reads /events
// with the token=… of its own URL ([Server.PageURL]).
//
// Changes are pushed at once: resource_created_or_updated / resource_deleted to affected clients,
// reject_access / resource_updated to gateways with flows. With no admin token configured every request
// is refused.
func (s *Server) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/resources", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, http.StatusOK, s.Resources()) })
	mux.HandleFunc("GET /v1/policies", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, http.StatusOK, s.Policies()) })
	mux.HandleFunc("GET /v1/state", func(w http.ResponseWriter, _ *http.Request) {
		st, err := s.state()
		respond(w, err, st)
	})
	mux.HandleFunc("GET /events", s.serveEvents)
	mux.HandleFunc("PUT /v1/resources/{id}", func(w http.ResponseWriter, r *http.Request) {
		var rc ResourceConfig
		if !readJSON(w, r, &rc) {
			return
		}
		rc.ID = r.PathValue("id")
		respond(w, s.PutResource(rc), rc)
	})
	mux.HandleFunc("DELETE /v1/resources/{id}", func(w http.ResponseWriter, r *http.Request) {
		respond(w, s.DeleteResource(r.PathValue("id")), nil)
	})
	mux.HandleFunc("PUT /v1/policies/{id}", func(w http.ResponseWriter, r *http.Request) {
		var p PolicyConfig
		if !readJSON(w, r, &p) {
			return
		}
		p.ID = r.PathValue("id")
		respond(w, s.PutPolicy(p), p)
	})
	mux.HandleFunc("DELETE /v1/policies/{id}", func(w http.ResponseWriter, r *http.Request) {
		respond(w, s.DeletePolicy(r.PathValue("id")), nil)
	})
	page := pageHandler()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			switch r.URL.Path {
			case "/", "/page.js", "/page.css":
				page.ServeHTTP(w, r)
				return
			}
		}
		var want string
		s.locked(func() { want = s.core.m.adminToken })
		got := bearerToken(r)
		if want == "" || subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "unauthorized"})
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad JSON: " + err.Error()})
		return false
	}
	return true
}

func respond(w http.ResponseWriter, err error, v any) {
	var pe *panicError
	switch {
	case errors.As(err, &pe):
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "internal error"})
	case errors.Is(err, ErrNotFound):
		writeJSON(w, http.StatusNotFound, map[string]string{"error": err.Error()})
	case err != nil:
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
	case v == nil:
		w.WriteHeader(http.StatusNoContent)
	default:
		writeJSON(w, http.StatusOK, v)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
