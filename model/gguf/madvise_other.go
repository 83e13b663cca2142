//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package gguf

// madvise does nothing: this platform has no madvise, and advice is only
// a hint.
func madvise([]byte, Advice) error { return nil }
