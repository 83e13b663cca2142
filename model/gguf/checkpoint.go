package gguf

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
)

// The metadata keys of split files, as llama.cpp's gguf-split writes them.
// split.no counts from 0; the file names count from 1.
const (
	KeySplitCount        = "split.count"
	KeySplitNo           = "split.no"
	KeySplitTensorsCount = "split.tensors.count"
)

// splitName matches the name of one part of a split model.
var splitName = regexp.MustCompile(`^(.*)-([0-9]{5})-of-([0-9]{5})\.gguf$`)

// SplitPath is the name of part i (counting from 1) of n of the split
// model with prefix: PREFIX-0000i-of-0000n.gguf.
func SplitPath(prefix string, i, n int) string {
	return fmt.Sprintf("%s-%05d-of-%05d.gguf", prefix, i, n)
}

// Checkpoint is a model in one GGUF file or split across several, as one
// set of tensors. Its methods are safe for concurrent use.
type Checkpoint struct {
	files []*File
	// names lists the tensors in file order; owner maps each to its file.
	names []string
	owner map[string]*File
}

// Open opens the model at path: a single GGUF file, or any part of a split
// model (NAME-00002-of-00003.gguf), in which case every part is opened and
// checked against the others: each part's split.no and split.count, and
// the first part's split.tensors.count.
func Open(path string) (*Checkpoint, error) {
	m := splitName.FindStringSubmatch(filepath.Base(path))
	if m == nil {
		f, err := OpenFile(path)
		if err != nil {
			return nil, err
		}
		if n, err := f.Metadata().Uint(KeySplitCount); err == nil && n > 1 {
			f.Close()
			return nil, fmt.Errorf("%w: %s says it is one of %d parts, but its name is not NAME-0000i-of-0000n.gguf", ErrSplit, path, n)
		}
		return newCheckpoint([]*File{f})
	}
	n, _ := strconv.Atoi(m[3])
	if n < 1 {
		return nil, fmt.Errorf("%w: %s: split of %d parts", ErrSplit, path, n)
	}
	prefix := filepath.Join(filepath.Dir(path), m[1])
	files := make([]*File, 0, n)
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	for i := range n {
		f, err := OpenFile(SplitPath(prefix, i+1, n))
		if err != nil {
			closeAll()
			return nil, err
		}
		files = append(files, f)
		if err := checkPart(f, i, n); err != nil {
			closeAll()
			return nil, err
		}
	}
	c, err := newCheckpoint(files)
	if err != nil {
		closeAll()
		return nil, err
	}
	if n > 1 {
		want, err := files[0].Metadata().Uint(KeySplitTensorsCount)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("%w: %s: %w", ErrSplit, files[0].Path(), err)
		}
		if want != uint64(len(c.names)) {
			closeAll()
			return nil, fmt.Errorf("%w: %s says %d tensors, the %d parts hold %d", ErrSplit, files[0].Path(), want, n, len(c.names))
		}
	}
	return c, nil
}

// checkPart checks that f's split metadata makes it part i (from 0) of n.
func checkPart(f *File, i, n int) error {
	count, err := f.Metadata().Uint(KeySplitCount)
	if errors.Is(err, ErrNotFound) && n == 1 {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrSplit, f.Path(), err)
	}
	no, err := f.Metadata().Uint(KeySplitNo)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrSplit, f.Path(), err)
	}
	if count != uint64(n) || no != uint64(i) {
		return fmt.Errorf("%w: %s says it is part %d (from 0) of %d, its name part %d of %d", ErrSplit, f.Path(), no, count, i, n)
	}
	return nil
}

func newCheckpoint(files []*File) (*Checkpoint, error) {
	c := &Checkpoint{files: files, owner: make(map[string]*File)}
	for _, f := range files {
		for _, t := range f.Header().Tensors {
			if prev, dup := c.owner[t.Name]; dup {
				return nil, fmt.Errorf("%w: tensor %q is in both %s and %s", ErrSplit, t.Name, prev.Path(), f.Path())
			}
			c.owner[t.Name] = f
			c.names = append(c.names, t.Name)
		}
	}
	return c, nil
}

// Paths returns the paths of the checkpoint's files, in part order.
func (c *Checkpoint) Paths() []string {
	paths := make([]string, len(c.files))
	for i, f := range c.files {
		paths[i] = f.Path()
	}
	return paths
}

// Metadata returns the model's metadata: that of its first file, which is
// where llama.cpp keeps all of it for a split model.
func (c *Checkpoint) Metadata() *Metadata { return c.files[0].Metadata() }

// Names returns the names of the tensors in file order.
func (c *Checkpoint) Names() []string { return append([]string(nil), c.names...) }

// Info returns the description of the tensor named name.
func (c *Checkpoint) Info(name string) (TensorInfo, error) {
	f, ok := c.owner[name]
	if !ok {
		return TensorInfo{}, fmt.Errorf("%w: tensor %q", ErrNotFound, name)
	}
	return f.Info(name)
}

// Tensor returns the tensor named name as a view of its file's mapping,
// valid until Close.
func (c *Checkpoint) Tensor(name string) (Tensor, error) {
	f, ok := c.owner[name]
	if !ok {
		return Tensor{}, fmt.Errorf("%w: tensor %q", ErrNotFound, name)
	}
	return f.Tensor(name)
}

// Close closes every file; tensor data handed out before must no longer be
// used. Close is idempotent.
func (c *Checkpoint) Close() error {
	var errs []error
	for _, f := range c.files {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}
