//go:build !unix

package mapped

import (
	"io"
	"os"
)

// mapFile reads the first size bytes of f into memory: this platform has no
// syscall.Mmap. The "mapping" is an ordinary slice that the garbage
// collector frees once it is dropped.
func mapFile(f *os.File, size int) ([]byte, func([]byte) error, error) {
	data := make([]byte, size)
	if _, err := io.ReadFull(f, data); err != nil {
		return nil, nil, err
	}
	return data, func([]byte) error { return nil }, nil
}
