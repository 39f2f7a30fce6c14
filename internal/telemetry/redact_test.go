package telemetry

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestIsSecretKey(t *testing.T) {
	tests := map[string]bool{
		"token": true, "Token": true, "x_auth_token": true, "auth-token": true, "password": true,
		"relay.password": true, "secret": true, "relay_secret": true, "psk": true, "wg.psk": true,
		"preshared_key": true, "private_key": true, "privateKey": true, "key": true, "keys": true,
		"static_key": true, "authorization": true, "api_key": true, "credentials": true,
		"public_key": false, "pubkey": false, "peer_public_key": false, "gateway": false, "path": false,
		"username": false, "id": false, "addr": false, "monkey": false, "tokenizer": false, "error": false,
	}
	for k, want := range tests {
		if got := isSecretKey(k); got != want {
			t.Errorf("isSecretKey(%q) = %v, want %v", k, got, want)
		}
	}
}

func TestScrubText(t *testing.T) {
	tests := []struct{ in, want string }{
		{"GET /client/websocket?name=a&token=abc.def-1 failed", "GET /client/websocket?name=a&token=[redacted] failed"},
		{`{"password":"hunter2","user":"u"}`, `{"password":"[redacted]","user":"u"}`},
		{"X-Authorization: Bearer eyJhbGciOi.x_y", "X-Authorization: Bearer [redacted]"},
		{"psk=AAAA+/== peer=1", "psk=[redacted] peer=1"},
		{"no secrets here", "no secrets here"},
	}
	for _, tc := range tests {
		if got := scrubText(tc.in); got != tc.want {
			t.Errorf("scrubText(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

type creds struct{ User, Password string }

func (c creds) LogValue() slog.Value {
	return slog.GroupValue(slog.String("user", c.User), slog.String("password", c.Password))
}

// TestNoSecretsInOutput logs secrets every way a careless caller might, at trace level in both formats,
// and greps the output for them.
func TestNoSecretsInOutput(t *testing.T) {
	secrets := []string{"tok-S1", "pw-S2", "psk-S3", "priv-S4", "sec-S5", "key-S6", "tok-S7", "pw-S8", "bearer-S9", "grp-S10", "pw-S11"}
	for _, format := range []string{FormatHuman, FormatJSON} {
		t.Run(format, func(t *testing.T) {
			l, buf := newTestLogger(t, Options{Component: "client", LogFormat: format, LogLevel: "trace"})
			l.Info("joined", "token", secrets[0], "password", secrets[1], "psk", secrets[2])
			Component(l, "node").Debug("device up", "private_key", secrets[3], "public_key", "PUB-visible")
			l.With("relay_secret", secrets[4]).Log(t.Context(), LevelTrace, "relay", slog.Group("wg", "key", secrets[5]))
			l.Warn("dial failed", Err(fmt.Errorf("GET /socket?token=%s: %w", secrets[6], errors.New("refused"))))
			l.Error("login", "msg_detail", "password="+secrets[7], "header", "Bearer "+secrets[8])
			l.WithGroup("token").Info("grouped", "value", secrets[9])
			l.Info("valuer", "creds", creds{User: "alice", Password: secrets[10]})
			PionLoggerFactory(l).NewLogger("turn").Debugf("auth password=%s", "pw-S12")
			out := buf.String()
			for _, s := range append(secrets, "pw-S12") {
				if strings.Contains(out, s) {
					t.Errorf("secret %q in output:\n%s", s, out)
				}
			}
			for _, s := range []string{"PUB-visible", "alice", Redacted} {
				if !strings.Contains(out, s) {
					t.Errorf("%q missing from output:\n%s", s, out)
				}
			}
		})
	}
}

// TestPionICEPasswordRedacted: pion prints ICE credentials in some debug messages; they never reach the log.
func TestPionICEPasswordRedacted(t *testing.T) {
	l, buf := newTestLogger(t, Options{LogLevel: "trace"})
	p := PionLoggerFactory(l).NewLogger("ice")
	p.Debugf("setting remote credentials ufrag: %s pwd: %s", "abcd", "s3cretIcePassw0rdValue")
	p.Errorf("check failed password=%s", "an0therSecretValue")
	p.Infof(`Started agent: isControlling? true, remoteUfrag: "ufragB", remotePwd: "%s"`, "th1rdSecretValue")
	out := buf.String()
	for _, secret := range []string{"s3cretIcePassw0rdValue", "an0therSecretValue", "th1rdSecretValue"} {
		if strings.Contains(out, secret) {
			t.Fatalf("secret %q in log:\n%s", secret, out)
		}
	}
	if !strings.Contains(out, "ufrag: abcd") {
		t.Fatalf("non-secret context lost:\n%s", out)
	}
}
