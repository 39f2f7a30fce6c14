package telemetry

import (
	"regexp"
	"strings"
)

// Redacted replaces the value of every attribute whose key names a secret.
const Redacted = "[redacted]"

// isSecretWord reports whether a whole key segment, lower-cased with '_' and '-' removed, names a secret.
func isSecretWord(w string) bool {
	switch w {
	case "token", "tokens", "password", "passwd", "passphrase", "secret", "secrets", "psk", "presharedkey",
		"privatekey", "privkey", "key", "keys", "credential", "credentials", "authorization", "cookie", "apikey",
		"bearer":
		return true
	}
	return false
}

// isSecretKey reports whether an attribute key (possibly a dotted group path such as "relay.password")
// names a secret. Each dotted segment is compared case-insensitively: "token", "x_auth_token",
// "private_key", "privateKey", "wg.psk", "key", "keys", "preshared-key", "relay_secret" are secret;
// "public_key", "pubkey", "tokenizer" are not. Any segment ending in "_key"/"-key" counts as secret unless
// qualified by "public"/"pub".
func isSecretKey(key string) bool {
	for len(key) > 0 {
		seg := key
		if i := strings.IndexByte(key, '.'); i >= 0 {
			seg, key = key[:i], key[i+1:]
		} else {
			key = ""
		}
		if secretSegment(strings.ToLower(seg)) {
			return true
		}
	}
	return false
}

func secretSegment(seg string) bool {
	if seg == "" {
		return false
	}
	if isSecretWord(seg) {
		return true
	}
	if !strings.ContainsAny(seg, "_-") {
		return false
	}
	var words [8]string // keys have few words; extra words are ignored
	n := 0
	joined := make([]byte, 0, 32)
	for w := range strings.FieldsFuncSeq(seg, func(r rune) bool { return r == '_' || r == '-' }) {
		joined = append(joined, w...)
		if n < len(words) {
			words[n] = w
			n++
		}
		switch w {
		case "token", "tokens", "password", "passwd", "secret", "psk", "credential", "credentials":
			return true
		}
	}
	if isSecretWord(string(joined)) {
		return true
	}
	if n >= 2 && (words[n-1] == "key" || words[n-1] == "keys") {
		return words[n-2] != "public" && words[n-2] != "pub"
	}
	return false
}

// secretInText matches secrets embedded in free text: query parameters or key=value pairs with a secret
// name, and HTTP bearer credentials.
var secretInText = regexp.MustCompile(`(?i)((?:token|password|passwd|pwd|secret|psk|private_key|preshared_key|api_key)["']?\s*[=:]\s*["']?)([^&\s"',;}]+)|(bearer\s+)([A-Za-z0-9\-._~+/]+=*)`)

// scrubText redacts secrets embedded in free text (messages, error strings). It is a second line of
// defence; the rule is still to never pass secrets to a logger.
func scrubText(s string) string {
	if !mayContainSecret(s) {
		return s
	}
	return secretInText.ReplaceAllStringFunc(s, func(m string) string {
		sub := secretInText.FindStringSubmatch(m)
		if sub[1] != "" {
			return sub[1] + Redacted
		}
		return sub[3] + Redacted
	})
}

func mayContainSecret(s string) bool {
	l := strings.ToLower(s)
	for _, w := range []string{"token", "passw", "secret", "psk", "key", "bearer"} {
		if strings.Contains(l, w) {
			return true
		}
	}
	return false
}
