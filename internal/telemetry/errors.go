package telemetry

import (
	"errors"
	"log/slog"
	"reflect"
)

// KeyError and KeyErrorChain are the attribute keys written by Err.
const (
	KeyError      = "error"
	KeyErrorChain = "error.chain"
)

// Err returns an attribute that logs err as a structured value: "error" holds the error (printed as its
// message) and "error.chain" the message of each error in its wrap chain, outermost first
// (`error="dial: refused" error.chain=["dial: refused","refused"]`). The attribute is an inline group, so
// both keys appear at the top level. A nil err gives an empty attribute, which handlers ignore.
func Err(err error) slog.Attr {
	if err == nil {
		return slog.Attr{}
	}
	return slog.Attr{Key: "", Value: slog.GroupValue(
		slog.Any(KeyError, err),
		slog.Any(KeyErrorChain, errorChain(err)),
	)}
}

// errorChain lists the messages of err and every error it wraps, depth first (errors.Join and
// fmt.Errorf with several %w contribute each branch).
func errorChain(err error) []string {
	var out []string
	var walk func(error)
	walk = func(e error) {
		if e == nil || len(out) >= 32 {
			return
		}
		if msg := e.Error(); len(out) == 0 || out[len(out)-1] != msg {
			out = append(out, msg) // AsWarning and similar transparent wrappers add no entry
		}
		switch u := e.(type) {
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		case interface{ Unwrap() []error }:
			for _, c := range u.Unwrap() {
				walk(c)
			}
		}
	}
	walk(err)
	return out
}

// errorType names the most specific type in err's chain: the outermost error that is not a plain fmt.Errorf
// or errors.Join wrapper, else the type of err itself. It becomes exception.type in error telemetry.
func errorType(err error) string {
	for e := err; e != nil; {
		t := reflect.TypeOf(e).String()
		switch t {
		case "*fmt.wrapError", "*fmt.wrapErrors", "*errors.joinError", "*telemetry.warningError":
		default:
			return t
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			break
		}
		e = u.Unwrap()
	}
	return reflect.TypeOf(err).String()
}

// TelemetryWarning is implemented by errors that error telemetry must report as a warning message instead
// of an exception even when logged at ERROR (for example a 401 from the portal: an operator has to act, but
// it is not a bug). Any error in the chain implementing it with a true result downgrades the event.
// Packages that must not import telemetry can implement this method on their own error types.
type TelemetryWarning interface {
	TelemetryWarning() bool
}

// AsWarning wraps err so that error telemetry reports it as a warning rather than an exception (see
// TelemetryWarning). The message and chain are unchanged; errors.Is/As see through it. nil stays nil.
func AsWarning(err error) error {
	if err == nil {
		return nil
	}
	return &warningError{err: err}
}

type warningError struct{ err error }

func (w *warningError) Error() string          { return w.err.Error() }
func (w *warningError) Unwrap() error          { return w.err }
func (w *warningError) TelemetryWarning() bool { return true }

// isWarning reports whether err must be exported as a warning: some error in its chain implements
// TelemetryWarning, or errors.Is(err, s) for one of the configured sentinels.
func isWarning(err error, sentinels []error) bool {
	var tw TelemetryWarning
	if errors.As(err, &tw) && tw.TelemetryWarning() {
		return true
	}
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}
