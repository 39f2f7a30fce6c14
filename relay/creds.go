package relay

import (
	"crypto/hmac"
	"crypto/sha1" //nolint:gosec // TURN REST (coturn use-auth-secret) is defined over HMAC-SHA1.
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/pion/turn/v5"
)

// AuthScheme selects how the relay checks TURN usernames and passwords.
type AuthScheme int

const (
	// AuthFirezone is the portal's scheme: username "<expiry>:<salt>",
	// password = base64-nopad(sha256("<expiry>:<stamp_secret>:<salt>")).
	AuthFirezone AuthScheme = iota
	// AuthTURNREST is coturn's use-auth-secret / static-auth-secret scheme:
	// username "<expiry>[:<user>]", password = base64(HMAC-SHA1(secret, username)).
	AuthTURNREST
)

// String names the scheme for logs and flags.
func (s AuthScheme) String() string {
	switch s {
	case AuthFirezone:
		return "firezone"
	case AuthTURNREST:
		return "turn-rest"
	default:
		return "unknown(" + strconv.Itoa(int(s)) + ")"
	}
}

// DefaultRealm is the realm the portal's credentials are made for.
const DefaultRealm = "firezone"

// maxUsernameLen is STUN's limit on USERNAME (RFC 8489 §14.3: < 513 bytes).
const maxUsernameLen = 512

// Sentinel errors returned by the credential check; the reason label of the
// auth-failure metric is derived from them.
var (
	// ErrMalformedUsername: the username does not follow the scheme's format.
	ErrMalformedUsername = errors.New("malformed username")
	// ErrExpiredUsername: the username's expiry is in the past.
	ErrExpiredUsername = errors.New("expired username")
	// ErrWrongRealm: the request's REALM is not the relay's.
	ErrWrongRealm = errors.New("wrong realm")
)

// Username is a parsed TURN username of either scheme.
type Username struct {
	// Expiry is when the credentials stop being valid.
	Expiry time.Time
	// User is the part after the first ':' (the Firezone salt or the REST user
	// id); for a REST username without ':' it is the whole username.
	User string
}

// ParseUsername parses "<expiry>:<rest>" (Firezone: rest is the salt and is
// required) or, for TURN REST, also a bare "<expiry>". The expiry must be a
// canonical non-negative decimal number of Unix seconds (no sign, no leading
// zeros), so that one password corresponds to exactly one username text.
func ParseUsername(scheme AuthScheme, username string) (Username, error) {
	if len(username) == 0 || len(username) > maxUsernameLen {
		return Username{}, fmt.Errorf("%w: length %d", ErrMalformedUsername, len(username))
	}
	expiryText, rest, hasColon := strings.Cut(username, ":")
	expiry, err := parseExpiry(expiryText)
	if err != nil {
		return Username{}, err
	}
	switch scheme {
	case AuthFirezone:
		if !hasColon || rest == "" {
			return Username{}, fmt.Errorf("%w: want <expiry>:<salt>", ErrMalformedUsername)
		}
	case AuthTURNREST:
		if !hasColon {
			rest = username
		}
	default:
		return Username{}, fmt.Errorf("%w: unknown scheme %v", ErrMalformedUsername, scheme)
	}
	return Username{Expiry: time.Unix(expiry, 0), User: rest}, nil
}

func parseExpiry(s string) (int64, error) {
	if s == "" || len(s) > 18 || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("%w: bad expiry", ErrMalformedUsername)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("%w: bad expiry", ErrMalformedUsername)
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: bad expiry: %w", ErrMalformedUsername, err)
	}
	return v, nil
}

// FirezonePassword derives the password for a Firezone username
// "<expiry>:<salt>": base64-nopad(sha256("<expiry>:<stampSecret>:<salt>")).
// It does not check the format; callers parse first.
func FirezonePassword(username, stampSecret string) string {
	expiry, salt, _ := strings.Cut(username, ":")
	sum := sha256.Sum256([]byte(expiry + ":" + stampSecret + ":" + salt))
	return base64.RawStdEncoding.EncodeToString(sum[:])
}

// TURNRESTPassword derives coturn's REST password: base64(HMAC-SHA1(secret, username)).
func TURNRESTPassword(username, secret string) string {
	mac := hmac.New(sha1.New, []byte(secret))
	mac.Write([]byte(username)) //nolint:errcheck // hash writes never fail
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// Authenticator checks usernames and returns the long-term key of RFC 8489
// §9.2 (md5(username:realm:password)) that pion uses to verify
// MESSAGE-INTEGRITY. It is safe for concurrent use (it is immutable).
type Authenticator struct {
	scheme AuthScheme
	secret string
	realm  string
}

// NewAuthenticator returns a checker for scheme with the stamp secret
// (Firezone) or REST shared secret, accepting only realm.
func NewAuthenticator(scheme AuthScheme, secret, realm string) *Authenticator {
	return &Authenticator{scheme: scheme, secret: secret, realm: realm}
}

// Key returns the user id (salt or REST user, used for quotas) and the
// long-term key for username in realm at time now, or a wrapped sentinel
// error (ErrMalformedUsername, ErrExpiredUsername, ErrWrongRealm).
func (a *Authenticator) Key(username, realm string, now time.Time) (userID string, key []byte, err error) {
	if realm != a.realm {
		return "", nil, ErrWrongRealm
	}
	u, err := ParseUsername(a.scheme, username)
	if err != nil {
		return "", nil, err
	}
	if u.Expiry.Before(now) {
		return "", nil, ErrExpiredUsername
	}
	var password string
	switch a.scheme {
	case AuthTURNREST:
		password = TURNRESTPassword(username, a.secret)
	default:
		password = FirezonePassword(username, a.secret)
	}
	return u.User, turn.GenerateAuthKey(username, realm, password), nil
}
