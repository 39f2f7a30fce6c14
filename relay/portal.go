package relay

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/snowgate/snowgate/internal/phoenix"
	"github.com/snowgate/snowgate/internal/telemetry"
)

// portalTopic is the Phoenix topic a relay joins with its stamp secret.
const portalTopic = "relay"

// leaveTimeout bounds the wait for the portal's reply to phx_leave on drain.
const leaveTimeout = time.Second

// portalURL builds <api_url>/relay/websocket?ipv4=…&ipv6=…&port=…&name=….
func portalURL(p *PortalConfig, ip4, ip6 string, port int) (string, error) {
	u, err := url.Parse(p.APIURL)
	if err != nil {
		return "", fmt.Errorf("parse portal url: %w", err)
	}
	switch u.Scheme {
	case "http":
		u.Scheme = "ws"
	case "https":
		u.Scheme = "wss"
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/relay/websocket"
	q := u.Query()
	if ip4 != "" {
		q.Set("ipv4", ip4)
	}
	if ip6 != "" {
		q.Set("ipv6", ip6)
	}
	q.Set("port", strconv.Itoa(port))
	if p.Name != "" {
		q.Set("name", p.Name)
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// runPortal keeps the relay registered until ctx ends, then leaves the topic.
// Relaying does not depend on it: while the portal is away the relay only
// reports not ready.
func (s *Server) runPortal(ctx context.Context) {
	log := telemetry.Component(s.log, "relay/portal")
	ip4, ip6 := "", ""
	if s.cfg.PublicIP4.IsValid() {
		ip4 = s.cfg.PublicIP4.String()
	}
	if s.cfg.PublicIP6.IsValid() {
		ip6 = s.cfg.PublicIP6.String()
	}
	u, err := portalURL(s.cfg.Portal, ip4, ip6, int(s.Addr().Port()))
	if err != nil {
		log.Error("portal registration disabled", telemetry.Err(err))
		return
	}
	client := phoenix.NewClient(phoenix.ClientConfig{
		URL:           u,
		Token:         s.cfg.Portal.Token,
		Logger:        log,
		MeterProvider: s.cfg.MeterProvider,
	})
	defer client.Close() //nolint:errcheck // Close always returns nil
	client.Join(portalTopic, map[string]string{"stamp_secret": s.stampSecret})
	connCtx, cancelConn := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelConn()
	if err := client.Connect(connCtx, ""); err != nil {
		log.Error("portal client refused to connect", telemetry.Err(err))
		return
	}
	events := client.Events()
	for {
		select {
		case <-ctx.Done():
			s.portalUp.Store(false)
			s.leavePortal(client, log)
			return
		case ev, ok := <-events:
			if !ok {
				s.portalUp.Store(false)
				return
			}
			s.handlePortalEvent(ev, log)
		}
	}
}

func (s *Server) handlePortalEvent(ev phoenix.Event, log *slog.Logger) {
	switch ev.Kind {
	case phoenix.EventJoined:
		if ev.Topic == portalTopic {
			s.portalUp.Store(true)
			log.Info("joined the portal")
		}
	case phoenix.EventDisconnected:
		if s.portalUp.Swap(false) {
			log.Warn("portal connection lost; relaying continues, reconnecting", telemetry.Err(ev.Err))
		}
	case phoenix.EventFatal:
		s.portalUp.Store(false)
		// ERROR: an operator must fix the token. A 401 (phoenix.ErrUnauthorized) or an expired token says it is
		// expected now and then, so error telemetry counts it as a warning rather than an exception.
		log.Error("portal refused the relay; relaying continues unregistered", telemetry.Err(ev.Err))
	case phoenix.EventReplied:
		if ev.Status != "ok" {
			log.Warn("portal replied with an error", "topic", ev.Topic, "status", ev.Status)
		}
	case phoenix.EventMessage:
		log.Debug("portal message", "topic", ev.Topic, "event", ev.Event)
	}
}

// leavePortal sends phx_leave and waits briefly for the reply.
func (s *Server) leavePortal(client *phoenix.Client, log *slog.Logger) {
	ref, err := client.Push(portalTopic, phoenix.EventLeave, map[string]any{})
	if err != nil {
		return
	}
	timer := time.NewTimer(leaveTimeout)
	defer timer.Stop()
	for {
		select {
		case <-timer.C:
			log.Info("left the portal (no reply)")
			return
		case ev, ok := <-client.Events():
			if !ok || (ev.Kind == phoenix.EventReplied && ev.Ref == ref) {
				log.Info("left the portal")
				return
			}
		}
	}
}
