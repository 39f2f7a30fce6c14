package portalapi

import (
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"
)

// GatewayRelayExpiry is the fixed expiry of gateways' relay credentials (2038-01-01T00:00:00Z).
var GatewayRelayExpiry = time.Date(2038, 1, 1, 0, 0, 0, 0, time.UTC)

func b64sha256(s string) string {
	h := sha256.Sum256([]byte(s))
	return base64.RawStdEncoding.EncodeToString(h[:])
}

// RelayCredentials derives the TURN username and password a peer with the given public key (its base64
// WireGuard key, as sent in the URL) uses on a relay with the given stamp secret:
//
//	salt     = b64nopad(sha256(public_key))
//	username = "<expiry unix seconds>:<salt>"
//	password = b64nopad(sha256("<expiry>:<stamp_secret>:<salt>"))
//
// The relay recomputes the password from the username with [RelayPassword].
func RelayCredentials(stampSecret, publicKey string, expiresAt time.Time) (username, password string) {
	salt := b64sha256(publicKey)
	username = strconv.FormatInt(expiresAt.Unix(), 10) + ":" + salt
	return username, RelayPassword(stampSecret, username)
}

// RelayPassword computes the password for a username "<expiry>:<salt>": b64nopad(sha256("<expiry>:<stamp_secret>:<salt>")).
func RelayPassword(stampSecret, username string) string {
	expiry, salt, _ := cutColon(username)
	return b64sha256(expiry + ":" + stampSecret + ":" + salt)
}

// ParseRelayUsername splits a relay username into its expiry and salt.
func ParseRelayUsername(username string) (expiresAt time.Time, salt string, err error) {
	e, salt, ok := cutColon(username)
	if !ok {
		return time.Time{}, "", fmt.Errorf("portalapi: relay username %q has no ':'", username)
	}
	n, err := strconv.ParseInt(e, 10, 64)
	if err != nil {
		return time.Time{}, "", fmt.Errorf("portalapi: relay username expiry: %w", err)
	}
	return time.Unix(n, 0).UTC(), salt, nil
}

func cutColon(s string) (before, after string, ok bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == ':' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// FlowPeer describes one side of a flow for the derivations: its id and base64 WireGuard public key.
type FlowPeer struct {
	ID        string
	PublicKey string
}

// IceCredentialsFor derives both sides' ICE credentials of a client→gateway flow:
// h = base32-lowercase-nopad(sha256("<client_id>:<client_pk>:<gateway_id>:<gateway_pk>")) (52 chars);
// client ufrag h[0:4], password h[4:26]; gateway ufrag h[26:30], password h[30:52]. They stay the same until
// either key changes.
func IceCredentialsFor(client, gateway FlowPeer) (clientCreds, gatewayCreds IceCredentials) {
	sum := sha256.Sum256([]byte(client.ID + ":" + client.PublicKey + ":" + gateway.ID + ":" + gateway.PublicKey))
	h := base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:])
	h = toLower(h)
	return IceCredentials{Username: h[0:4], Password: h[4:26]},
		IceCredentials{Username: h[26:30], Password: h[30:52]}
}

func toLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// PresharedKey derives the WireGuard PSK of a client→gateway pair: PBKDF2-HMAC-SHA256 with password
// clientPSKBase ‖ gatewayPSKBase, salt "WG_PSK|C_ID:<cid>|G_ID:<gid>|C_PK:<cpk>|G_PK:<gpk>", 1 iteration,
// 32 bytes, standard base64 (padded).
func PresharedKey(client FlowPeer, clientPSKBase []byte, gateway FlowPeer, gatewayPSKBase []byte) (string, error) {
	secret := make([]byte, 0, len(clientPSKBase)+len(gatewayPSKBase))
	secret = append(append(secret, clientPSKBase...), gatewayPSKBase...)
	salt := "WG_PSK|C_ID:" + client.ID + "|G_ID:" + gateway.ID + "|C_PK:" + client.PublicKey + "|G_PK:" + gateway.PublicKey
	key, err := pbkdf2.Key(sha256.New, string(secret), []byte(salt), 1, 32)
	if err != nil {
		return "", fmt.Errorf("portalapi: psk: %w", err)
	}
	return base64.StdEncoding.EncodeToString(key), nil
}

// RelayID derives a relay's id from its stamp secret: the first 16 bytes of sha256(stamp_secret) as a UUID,
// with the version nibble set to 8 (RFC 9562 "custom", since it is neither random nor a name-based v5) and
// the RFC 4122 variant bits (10xx). The same secret always gives the same id; a rebooted relay (new secret)
// is a new relay.
func RelayID(stampSecret string) string {
	sum := sha256.Sum256([]byte(stampSecret))
	u := sum[:16]
	u[6] = (u[6] & 0x0f) | 0x80
	u[8] = (u[8] & 0x3f) | 0x80
	h := hex.EncodeToString(u)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
