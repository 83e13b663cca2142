//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package gguf

import "golang.org/x/sys/unix"

// madvise passes a for the page-aligned mapped bytes b to the kernel.
func madvise(b []byte, a Advice) error {
	advice := unix.MADV_WILLNEED
	if a == DontNeed {
		advice = unix.MADV_DONTNEED
	}
	return unix.Madvise(b, advice)
}
