package relay

import (
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"
)

// Vectors computed independently with python3:
//
//	base64.b64encode(hashlib.sha256(f"{e}:{secret}:{salt}".encode()).digest()).rstrip("=")
//	base64.b64encode(hmac.new(secret, username, hashlib.sha1).digest())
func TestPasswordVectors(t *testing.T) {
	tests := []struct {
		name, username, secret, want string
		rest                         bool
	}{
		{"firezone gateway expiry", "2145916800:n1q2h7n6mBlTcd8PcXyw0b9vA7tm2Ztqp5wPKhP3m9M",
			"0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",
			"yze4toXTAv6o2KIR43PAI6MWX4AlwNlqx9HpxoqU6zc", false},
		{"firezone short", "1700000000:abc", "secret", "jcXo/GkSCeVxyIzlPqARpG6RCLYHzTEOq81UP+q6rqU", false},
		{"rest with user", "1700000000:alice", "north", "Cd/49soE35ICqcJF/bCTn8Z4OyE=", true},
		{"rest bare expiry", "2145916800", "s3cr3t", "KgBW06gLsai/t1dryJinxSnvnjw=", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := FirezonePassword(tt.username, tt.secret)
			if tt.rest {
				got = TURNRESTPassword(tt.username, tt.secret)
			}
			if got != tt.want {
				t.Fatalf("password(%q) = %q, want %q", tt.username, got, tt.want)
			}
		})
	}
}

func TestAuthenticatorKey(t *testing.T) {
	now := time.Unix(1_600_000_000, 0)
	fz := NewAuthenticator(AuthFirezone, "secret", DefaultRealm)
	rest := NewAuthenticator(AuthTURNREST, "north", "example.org")
	tests := []struct {
		name      string
		a         *Authenticator
		user      string
		realm     string
		now       time.Time
		wantErr   error
		wantID    string
		wantKeyHx string
	}{
		// md5("1700000000:abc:firezone:jcXo/...") computed with python3.
		{"firezone ok", fz, "1700000000:abc", "firezone", now, nil, "abc", "570d5a6f9c361d425966843d4d8dc49a"},
		{"firezone expired", fz, "1700000000:abc", "firezone", time.Unix(1_700_000_001, 0), ErrExpiredUsername, "", ""},
		{"firezone expiry equals now", fz, "1700000000:abc", "firezone", time.Unix(1_700_000_000, 0), nil, "abc", "570d5a6f9c361d425966843d4d8dc49a"},
		{"firezone wrong realm", fz, "1700000000:abc", "other", now, ErrWrongRealm, "", ""},
		{"firezone no salt", fz, "1700000000", "firezone", now, ErrMalformedUsername, "", ""},
		{"firezone empty salt", fz, "1700000000:", "firezone", now, ErrMalformedUsername, "", ""},
		{"firezone leading zero", fz, "01700000000:abc", "firezone", now, ErrMalformedUsername, "", ""},
		{"firezone signed", fz, "+1700000000:abc", "firezone", now, ErrMalformedUsername, "", ""},
		{"firezone negative", fz, "-1:abc", "firezone", now, ErrMalformedUsername, "", ""},
		{"firezone letters", fz, "17x:abc", "firezone", now, ErrMalformedUsername, "", ""},
		{"firezone huge", fz, "9999999999999999999999:abc", "firezone", now, ErrMalformedUsername, "", ""},
		{"empty", fz, "", "firezone", now, ErrMalformedUsername, "", ""},
		{"too long", fz, "1700000000:" + strings.Repeat("a", 600), "firezone", now, ErrMalformedUsername, "", ""},
		{"rest ok", rest, "1700000000:alice", "example.org", now, nil, "alice", ""},
		{"rest bare", rest, "1700000000", "example.org", now, nil, "1700000000", ""},
		{"rest expired", rest, "1500000000:alice", "example.org", now, ErrExpiredUsername, "", ""},
		{"rest user first rejected", rest, "alice:1700000000", "example.org", now, ErrMalformedUsername, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, key, err := tt.a.Key(tt.user, tt.realm, tt.now)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if id != tt.wantID {
				t.Fatalf("userID = %q, want %q", id, tt.wantID)
			}
			if len(key) != 16 {
				t.Fatalf("key length %d", len(key))
			}
			if tt.wantKeyHx != "" && hex.EncodeToString(key) != tt.wantKeyHx {
				t.Fatalf("key = %x, want %s", key, tt.wantKeyHx)
			}
		})
	}
}

func FuzzParseUsername(f *testing.F) {
	for _, s := range []string{"1700000000:abc", "0:x", "", ":", "1:", "01:a", "1:a:b", "9223372036854775807:x", "\xff:\x00"} {
		f.Add(s)
	}
	a := NewAuthenticator(AuthFirezone, "s", DefaultRealm)
	r := NewAuthenticator(AuthTURNREST, "s", DefaultRealm)
	f.Fuzz(func(t *testing.T, s string) {
		for _, scheme := range []AuthScheme{AuthFirezone, AuthTURNREST} {
			u, err := ParseUsername(scheme, s)
			if err != nil {
				if !errors.Is(err, ErrMalformedUsername) {
					t.Fatalf("unexpected error class: %v", err)
				}
				continue
			}
			if u.Expiry.Unix() < 0 {
				t.Fatalf("negative expiry from %q", s)
			}
			if scheme == AuthFirezone && u.User == "" {
				t.Fatalf("empty salt accepted: %q", s)
			}
		}
		_, _, _ = a.Key(s, DefaultRealm, time.Unix(0, 0))
		_, _, _ = r.Key(s, DefaultRealm, time.Unix(0, 0))
	})
}
