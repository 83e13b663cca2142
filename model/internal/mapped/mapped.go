// Package mapped maps whole checkpoint files read-only, for the readers of
// model/safetensors and model/gguf: both view tensor data in place in the
// mapping and validate it themselves.
package mapped

import (
	"fmt"
	"math"
	"os"
)

// Open maps the regular file at path read-only and shared, and returns its
// bytes and the function that removes the mapping. An empty file gives nil
// data (there is nothing to map). The mapping outlives the file
// descriptor; the file must not be truncated or rewritten in place while
// it is mapped (replacing it by rename is safe).
func Open(path string) (data []byte, unmap func() error, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%s: not a regular file", path)
	}
	size := fi.Size()
	switch {
	case size == 0:
		return nil, func() error { return nil }, nil
	case size > math.MaxInt:
		return nil, nil, fmt.Errorf("%s: file of %d bytes exceeds the address space", path, size)
	}
	data, unmapData, err := mapFile(f, int(size))
	if err != nil {
		return nil, nil, fmt.Errorf("map %s: %w", path, err)
	}
	return data, func() error { return unmapData(data) }, nil
}
