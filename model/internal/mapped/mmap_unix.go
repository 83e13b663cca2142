//go:build unix

package mapped

import (
	"os"
	"syscall"
)

// mapFile maps the first size (> 0) bytes of f read-only and returns the
// mapping and the function that removes it.
func mapFile(f *os.File, size int) ([]byte, func([]byte) error, error) {
	data, err := syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, nil, err
	}
	return data, syscall.Munmap, nil
}
