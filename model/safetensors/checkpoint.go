package safetensors

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// File names of a Hugging Face checkpoint directory.
const (
	// SingleFileName is the file of an unsharded checkpoint.
	SingleFileName = "model.safetensors"
	// IndexFileName is the index of a sharded checkpoint.
	IndexFileName = "model.safetensors.index.json"
)

// ShardFileName returns the conventional name of shard k (1-based) of n:
// model-0000k-of-0000n.safetensors.
func ShardFileName(k, n int) string {
	return fmt.Sprintf("model-%05d-of-%05d.safetensors", k, n)
}

// Index is a parsed model.safetensors.index.json.
type Index struct {
	// TotalSize is metadata.total_size: the checkpoint's tensor bytes, as
	// the writer computed them; 0 if absent.
	TotalSize int64
	// WeightMap maps each tensor name to the shard file, relative to the
	// checkpoint directory, that holds it.
	WeightMap map[string]string
}

// Files returns the distinct shard files that the index names, sorted.
func (x *Index) Files() []string {
	var files []string
	for _, f := range x.WeightMap {
		files = append(files, f)
	}
	slices.Sort(files)
	return slices.Compact(files)
}

// ReadIndex reads and parses the index file at name.
func ReadIndex(name string) (*Index, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	x, err := ParseIndex(data)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	return x, nil
}

// ParseIndex parses the contents of a model.safetensors.index.json. It
// requires a "weight_map" object of strings, rejects duplicate tensor names
// and file names that are empty, absolute or leave the directory, and
// ignores other top-level keys. Errors wrap [ErrIndex] or [ErrDuplicate].
func ParseIndex(data []byte) (*Index, error) {
	members, err := decodeObject(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrIndex, err)
	}
	x := &Index{}
	haveMap := false
	for _, m := range members {
		switch m.key {
		case "metadata":
			if x.TotalSize, err = parseIndexMetadata(m.value); err != nil {
				return nil, fmt.Errorf("%w: metadata: %w", ErrIndex, err)
			}
		case "weight_map":
			wm, err := decodeObject(m.value)
			if err != nil {
				return nil, fmt.Errorf("%w: weight_map: %w", ErrIndex, err)
			}
			x.WeightMap = make(map[string]string, len(wm))
			for _, e := range wm {
				file, err := decodeString(e.value)
				if err != nil {
					return nil, fmt.Errorf("%w: weight_map: tensor %q: %w", ErrIndex, e.key, err)
				}
				if !validShardName(file) {
					return nil, fmt.Errorf("%w: weight_map: tensor %q: bad file name %q", ErrIndex, e.key, file)
				}
				x.WeightMap[e.key] = path.Clean(file)
			}
			haveMap = true
		}
	}
	if !haveMap {
		return nil, fmt.Errorf("%w: no weight_map", ErrIndex)
	}
	return x, nil
}

// parseIndexMetadata returns metadata.total_size, or 0 if it is absent.
// Some writers emit it as a float (14483464192.0); any integral,
// non-negative number is accepted.
func parseIndexMetadata(raw json.RawMessage) (int64, error) {
	if strings.TrimSpace(string(raw)) == "null" {
		return 0, nil
	}
	members, err := decodeObject(raw)
	if err != nil {
		return 0, err
	}
	for _, m := range members {
		if m.key != "total_size" {
			continue
		}
		s := strings.TrimSpace(string(m.value))
		if n, err := strconv.ParseInt(s, 10, 64); err == nil && n >= 0 {
			return n, nil
		}
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || f < 0 || f >= math.MaxInt64 || f != math.Trunc(f) {
			return 0, fmt.Errorf("total_size %.40s is not a non-negative integer", s)
		}
		return int64(f), nil
	}
	return 0, nil
}

// validShardName reports whether name, a slash-separated path from an
// index, stays inside the checkpoint directory.
func validShardName(name string) bool {
	return name != "" && !strings.Contains(name, `\`) && filepath.IsLocal(filepath.FromSlash(name))
}

// Checkpoint is a Hugging Face checkpoint directory opened for a chosen set
// of tensors. Its methods are safe for concurrent use.
type Checkpoint struct {
	files   []*File          // the opened files
	tensors map[string]*File // wanted tensor name → file holding it
	names   []string         // keys of tensors, sorted
	mapped  int64            // data bytes of the wanted tensors
}

// OpenCheckpoint opens the checkpoint in dir for the tensors whose names
// want accepts (all of them if want is nil).
//
// If dir holds model.safetensors, that file is the checkpoint (as in
// transformers, it takes precedence over an index). Otherwise
// model.safetensors.index.json names the shard files, and only the shards
// holding at least one wanted tensor are opened: the others need not be
// valid, or even present, so a node can download just the shards it needs.
// Each opened shard is checked against the index: it must hold every tensor
// that the index assigns to it, and none that the index assigns to another
// file (tensors the index does not mention are ignored).
//
// Errors wrap [ErrNoCheckpoint] if dir has neither file, [ErrNotFound] if
// a shard lacks a tensor the index assigns to it, [ErrDuplicate] if a tensor
// is in two files, [ErrIndex] for a malformed index, [fs.ErrNotExist] for a
// missing shard, and the errors of [OpenFile].
func OpenCheckpoint(dir string, want func(name string) bool) (*Checkpoint, error) {
	if want == nil {
		want = func(string) bool { return true }
	}
	single := filepath.Join(dir, SingleFileName)
	ok, err := fileExists(single)
	if err != nil {
		return nil, err
	}
	if ok {
		return openSingle(single, want)
	}
	index := filepath.Join(dir, IndexFileName)
	if ok, err = fileExists(index); err != nil {
		return nil, err
	}
	if ok {
		return openSharded(dir, index, want)
	}
	return nil, fmt.Errorf("%w: %s has neither %s nor %s", ErrNoCheckpoint, dir, SingleFileName, IndexFileName)
}

// fileExists reports whether path exists, and errors other than its absence.
func fileExists(path string) (bool, error) {
	_, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("safetensors: %w", err)
	}
	return true, nil
}

func openSingle(path string, want func(string) bool) (*Checkpoint, error) {
	f, err := OpenFile(path)
	if err != nil {
		return nil, err
	}
	c := &Checkpoint{tensors: make(map[string]*File)}
	for _, ti := range f.header.Tensors {
		if want(ti.Name) {
			c.add(ti, f)
		}
	}
	if len(c.tensors) == 0 {
		f.Close() // nothing wanted: do not hold the mapping
	} else {
		c.files = append(c.files, f)
	}
	slices.Sort(c.names)
	return c, nil
}

func openSharded(dir, indexPath string, want func(string) bool) (_ *Checkpoint, err error) {
	x, err := ReadIndex(indexPath)
	if err != nil {
		return nil, err
	}
	// The wanted tensors (want is called once per name), the shards that
	// hold them, and the tensors the index puts in each of those.
	wanted := make(map[string]bool)
	needed := make(map[string]bool)
	for name, file := range x.WeightMap {
		if want(name) {
			wanted[name] = true
			needed[file] = true
		}
	}
	assigned := make(map[string][]string)
	for name, file := range x.WeightMap {
		if needed[file] {
			assigned[file] = append(assigned[file], name)
		}
	}

	c := &Checkpoint{tensors: make(map[string]*File)}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	files := make([]string, 0, len(needed))
	for file := range needed {
		files = append(files, file)
	}
	slices.Sort(files)
	for _, file := range files {
		f, err := OpenFile(filepath.Join(dir, filepath.FromSlash(file)))
		if err != nil {
			return nil, fmt.Errorf("%w (shard named by %s)", err, indexPath)
		}
		c.files = append(c.files, f)
		names := assigned[file]
		slices.Sort(names)
		for _, name := range names {
			ti, ok := f.header.Lookup(name)
			if !ok {
				return nil, fmt.Errorf("%w: %s assigns %q to %s, which lacks it", ErrNotFound, indexPath, name, file)
			}
			if wanted[name] {
				c.add(ti, f)
			}
		}
		for _, ti := range f.header.Tensors {
			if other, ok := x.WeightMap[ti.Name]; ok && other != file {
				return nil, fmt.Errorf("%w: %q is in both %s and %s", ErrDuplicate, ti.Name, file, other)
			}
		}
	}
	slices.Sort(c.names)
	return c, nil
}

// add records the wanted tensor ti of file f.
func (c *Checkpoint) add(ti TensorInfo, f *File) {
	c.tensors[ti.Name] = f
	c.names = append(c.names, ti.Name)
	c.mapped += ti.Size()
}

// Names returns the names of the wanted tensors, sorted.
func (c *Checkpoint) Names() []string { return slices.Clone(c.names) }

// Tensor returns the wanted tensor named name; see [File.Tensor]. A tensor
// absent from the checkpoint or not selected by want gives an error wrapping
// [ErrNotFound].
func (c *Checkpoint) Tensor(name string) (Tensor, error) {
	f, ok := c.tensors[name]
	if !ok {
		return Tensor{}, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	return f.Tensor(name)
}

// MappedBytes returns the total data size of the wanted tensors in bytes:
// what loading them all touches, not the size of the mapped files.
func (c *Checkpoint) MappedBytes() int64 { return c.mapped }

// Close closes the checkpoint's files; see [File.Close]. Closing a closed
// Checkpoint does nothing.
func (c *Checkpoint) Close() error {
	var errs []error
	for _, f := range c.files {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}
