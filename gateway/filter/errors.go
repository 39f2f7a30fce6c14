package filter

import "errors"

// Errors returned by this package. Callers branch on them with errors.Is; the
// returned errors wrap them with context.
var (
	// ErrInvalidFilter reports a filter with an unknown protocol or an empty
	// port range (start > end).
	ErrInvalidFilter = errors.New("filter: invalid filter")
	// ErrInvalidResource reports a resource that cannot go into a Table: an
	// empty id, an unknown kind, an invalid destination prefix or a DNS
	// resource destination that is not a single address.
	ErrInvalidResource = errors.New("filter: invalid resource")
)
