package core

import "errors"

// Errors returned by this package; callers branch on them with errors.Is.
var (
	// ErrInvalidConfig reports a bad Config.
	ErrInvalidConfig = errors.New("gateway core: invalid configuration")
)
