//go:build !linux

package store

import (
	"syscall"
	"time"
)

// setUserTimeout does nothing: TCP_USER_TIMEOUT is Linux's.
func setUserTimeout(syscall.RawConn, time.Duration) error { return nil }
