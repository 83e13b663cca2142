package gguf

import (
	"fmt"
	"math"
	"slices"
)

// Value is one metadata value: a scalar, a string, or an array. The zero
// Value is invalid.
type Value struct {
	typ ValueType
	// v holds the value as the Go type of typ: uint8 … float64, bool,
	// string, or Array.
	v any
}

// Array is an array value: elements of one type, held as a slice of that
// type's Go type ([]uint8 … []float64, []bool, []string), or []Array for an
// array of arrays.
type Array struct {
	Elem   ValueType
	Values any
}

// Len is the number of elements.
func (a Array) Len() int {
	switch v := a.Values.(type) {
	case []uint8:
		return len(v)
	case []int8:
		return len(v)
	case []uint16:
		return len(v)
	case []int16:
		return len(v)
	case []uint32:
		return len(v)
	case []int32:
		return len(v)
	case []float32:
		return len(v)
	case []bool:
		return len(v)
	case []string:
		return len(v)
	case []Array:
		return len(v)
	case []uint64:
		return len(v)
	case []int64:
		return len(v)
	case []float64:
		return len(v)
	}
	return 0
}

// Constructors of each kind of value, for writing metadata.
func Uint8(v uint8) Value     { return Value{TypeUint8, v} }
func Int8(v int8) Value       { return Value{TypeInt8, v} }
func Uint16(v uint16) Value   { return Value{TypeUint16, v} }
func Int16(v int16) Value     { return Value{TypeInt16, v} }
func Uint32(v uint32) Value   { return Value{TypeUint32, v} }
func Int32(v int32) Value     { return Value{TypeInt32, v} }
func Float32(v float32) Value { return Value{TypeFloat32, v} }
func Bool(v bool) Value       { return Value{TypeBool, v} }
func String(v string) Value   { return Value{TypeString, v} }
func Uint64(v uint64) Value   { return Value{TypeUint64, v} }
func Int64(v int64) Value     { return Value{TypeInt64, v} }
func Float64(v float64) Value { return Value{TypeFloat64, v} }

// ArrayOf is an array value of the elements in values, whose type must be
// one of the slice types Array lists; it fails for any other.
func ArrayOf(values any) (Value, error) {
	var elem ValueType
	switch v := values.(type) {
	case []uint8:
		elem = TypeUint8
	case []int8:
		elem = TypeInt8
	case []uint16:
		elem = TypeUint16
	case []int16:
		elem = TypeInt16
	case []uint32:
		elem = TypeUint32
	case []int32:
		elem = TypeInt32
	case []float32:
		elem = TypeFloat32
	case []bool:
		elem = TypeBool
	case []string:
		elem = TypeString
	case []uint64:
		elem = TypeUint64
	case []int64:
		elem = TypeInt64
	case []float64:
		elem = TypeFloat64
	case []Array:
		elem = TypeArray
		for _, a := range v {
			sub, err := ArrayOf(a.Values)
			if err != nil {
				return Value{}, err
			}
			if sub.v.(Array).Elem != a.Elem {
				return Value{}, fmt.Errorf("%w: nested array of %s holds %T", ErrType, a.Elem, a.Values)
			}
		}
	default:
		return Value{}, fmt.Errorf("%w: cannot make an array of %T", ErrType, values)
	}
	return Value{TypeArray, Array{Elem: elem, Values: values}}, nil
}

// Type is the value's type.
func (v Value) Type() ValueType { return v.typ }

// Any is the value as its Go type: uint8 … float64, bool, string or Array.
func (v Value) Any() any { return v.v }

// Array is the value as an array, if it is one.
func (v Value) Array() (Array, bool) {
	a, ok := v.v.(Array)
	return a, ok
}

// String formats the value for people; long arrays are elided.
func (v Value) String() string {
	a, ok := v.v.(Array)
	if !ok {
		return fmt.Sprint(v.v)
	}
	if n := a.Len(); n > 8 {
		return fmt.Sprintf("[%s × %d]", a.Elem, n)
	}
	return fmt.Sprint(a.Values)
}

// KV is one metadata entry.
type KV struct {
	Key   string
	Value Value
}

// Metadata is a file's metadata entries, in file order, with typed lookups.
// It is read-only once parsed and safe for concurrent use.
type Metadata struct {
	kvs   []KV
	index map[string]int
}

// NewMetadata builds Metadata from entries; a key given twice is an error.
func NewMetadata(kvs []KV) (*Metadata, error) {
	m := &Metadata{kvs: slices.Clone(kvs), index: make(map[string]int, len(kvs))}
	for i, kv := range kvs {
		if kv.Value.typ.size() == 0 || kv.Value.v == nil {
			return nil, fmt.Errorf("%w: key %q has no value", ErrMetadata, kv.Key)
		}
		if a, ok := kv.Value.v.(Array); ok {
			if v, err := ArrayOf(a.Values); err != nil || v.v.(Array).Elem != a.Elem {
				return nil, fmt.Errorf("%w: key %q: array of %s holds %T", ErrMetadata, kv.Key, a.Elem, a.Values)
			}
		}
		if _, dup := m.index[kv.Key]; dup {
			return nil, fmt.Errorf("%w: duplicate key %q", ErrMetadata, kv.Key)
		}
		m.index[kv.Key] = i
	}
	return m, nil
}

// All returns the entries in file order. The slice is a copy; the values
// it holds must not be modified.
func (m *Metadata) All() []KV { return slices.Clone(m.kvs) }

// Keys returns the keys in file order.
func (m *Metadata) Keys() []string {
	keys := make([]string, len(m.kvs))
	for i, kv := range m.kvs {
		keys[i] = kv.Key
	}
	return keys
}

// Lookup returns the value of key.
func (m *Metadata) Lookup(key string) (Value, bool) {
	i, ok := m.index[key]
	if !ok {
		return Value{}, false
	}
	return m.kvs[i].Value, true
}

func (m *Metadata) get(key string) (Value, error) {
	v, ok := m.Lookup(key)
	if !ok {
		return Value{}, fmt.Errorf("%w: metadata key %q", ErrNotFound, key)
	}
	return v, nil
}

func typeError(key string, v Value, want string) error {
	return fmt.Errorf("%w: metadata %q is %s, want %s", ErrType, key, describe(v), want)
}

func describe(v Value) string {
	if a, ok := v.v.(Array); ok {
		return "array of " + a.Elem.String()
	}
	return v.typ.String()
}

// String returns the string value of key.
func (m *Metadata) String(key string) (string, error) {
	v, err := m.get(key)
	if err != nil {
		return "", err
	}
	s, ok := v.v.(string)
	if !ok {
		return "", typeError(key, v, "string")
	}
	return s, nil
}

// Uint returns the value of key, which may be of any integer type but must
// not be negative.
func (m *Metadata) Uint(key string) (uint64, error) {
	v, err := m.get(key)
	if err != nil {
		return 0, err
	}
	u, ok := asUint(v.v)
	if !ok {
		return 0, typeError(key, v, "a non-negative integer")
	}
	return u, nil
}

// Int returns the value of key, which may be of any integer type that fits
// an int64.
func (m *Metadata) Int(key string) (int64, error) {
	v, err := m.get(key)
	if err != nil {
		return 0, err
	}
	switch x := v.v.(type) {
	case int8:
		return int64(x), nil
	case int16:
		return int64(x), nil
	case int32:
		return int64(x), nil
	case int64:
		return x, nil
	}
	if u, ok := asUint(v.v); ok && u <= math.MaxInt64 {
		return int64(u), nil
	}
	return 0, typeError(key, v, "an integer")
}

func asUint(v any) (uint64, bool) {
	switch x := v.(type) {
	case uint8:
		return uint64(x), true
	case uint16:
		return uint64(x), true
	case uint32:
		return uint64(x), true
	case uint64:
		return x, true
	case int8:
		return uint64(x), x >= 0
	case int16:
		return uint64(x), x >= 0
	case int32:
		return uint64(x), x >= 0
	case int64:
		return uint64(x), x >= 0
	}
	return 0, false
}

// Float returns the value of key, which may be a float32 or float64.
func (m *Metadata) Float(key string) (float64, error) {
	v, err := m.get(key)
	if err != nil {
		return 0, err
	}
	switch x := v.v.(type) {
	case float32:
		return float64(x), nil
	case float64:
		return x, nil
	}
	return 0, typeError(key, v, "a float")
}

// Bool returns the boolean value of key.
func (m *Metadata) Bool(key string) (bool, error) {
	v, err := m.get(key)
	if err != nil {
		return false, err
	}
	b, ok := v.v.(bool)
	if !ok {
		return false, typeError(key, v, "bool")
	}
	return b, nil
}

// Strings returns the array of strings of key. The slice is shared: do not
// modify it.
func (m *Metadata) Strings(key string) ([]string, error) { return arrayOf[string](m, key) }

// Float32s returns the array of float32 of key. The slice is shared: do not
// modify it.
func (m *Metadata) Float32s(key string) ([]float32, error) { return arrayOf[float32](m, key) }

// Int32s returns the array of int32 of key. The slice is shared: do not
// modify it.
func (m *Metadata) Int32s(key string) ([]int32, error) { return arrayOf[int32](m, key) }

func arrayOf[T any](m *Metadata, key string) ([]T, error) {
	v, err := m.get(key)
	if err != nil {
		return nil, err
	}
	if a, ok := v.v.(Array); ok {
		if s, ok := a.Values.([]T); ok {
			return s, nil
		}
	}
	var zero T
	return nil, typeError(key, v, fmt.Sprintf("array of %T", zero))
}

// String formats the elements.
func (a Array) String() string { return fmt.Sprint(a.Values) }
