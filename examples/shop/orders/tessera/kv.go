package tessera

import (
	"tessera/internal/wit/imports/wasi_keyvalue_atomics"
	"tessera/internal/wit/imports/wasi_keyvalue_store"
	witTypes "tessera/internal/wit/types"
)

// KVError is a failed key-value operation. Kind is "no-such-store", "access-denied" or
// "other".
type KVError struct {
	Kind    string
	Message string
}

func (e *KVError) Error() string {
	if e.Message == "" {
		return "keyvalue: " + e.Kind
	}
	return "keyvalue: " + e.Kind + ": " + e.Message
}

func kvError(e wasi_keyvalue_store.Error) error {
	switch e.Tag() {
	case wasi_keyvalue_store.Error_NoSuchStore:
		return &KVError{Kind: "no-such-store"}
	case wasi_keyvalue_store.Error_AccessDenied:
		return &KVError{Kind: "access-denied"}
	default:
		return &KVError{Kind: "other", Message: e.Other()}
	}
}

// Bucket is a namespace of keys in the service's key-value store.
type Bucket struct {
	b *wasi_keyvalue_store.Bucket
}

// OpenBucket opens a bucket: "default" always exists, others must be declared in the
// service's manifest (buckets = [...]).
func OpenBucket(name string) (*Bucket, error) {
	res := wasi_keyvalue_store.Open(name)
	if res.IsErr() {
		return nil, kvError(res.Err())
	}
	return &Bucket{res.Ok()}, nil
}

// Close releases the bucket's handle (the garbage collector would, eventually).
func (b *Bucket) Close() { b.b.Drop() }

// Get returns a key's value; ok is false if the key is absent.
func (b *Bucket) Get(key string) (value []byte, ok bool, err error) {
	res := b.b.Get(key)
	if res.IsErr() {
		return nil, false, kvError(res.Err())
	}
	if v := res.Ok(); v.IsSome() {
		return v.Some(), true, nil
	}
	return nil, false, nil
}

// Set sets a key, replacing any value it had.
func (b *Bucket) Set(key string, value []byte) error {
	if res := b.b.Set(key, value); res.IsErr() {
		return kvError(res.Err())
	}
	return nil
}

// Delete removes a key; removing an absent key is not an error.
func (b *Bucket) Delete(key string) error {
	if res := b.b.Delete(key); res.IsErr() {
		return kvError(res.Err())
	}
	return nil
}

// Exists reports whether a key is present.
func (b *Bucket) Exists(key string) (bool, error) {
	res := b.b.Exists(key)
	if res.IsErr() {
		return false, kvError(res.Err())
	}
	return res.Ok(), nil
}

// Keys returns every key of the bucket in ascending byte order.
func (b *Bucket) Keys() ([]string, error) {
	var keys []string
	cursor := witTypes.None[string]()
	for {
		res := b.b.ListKeys(cursor)
		if res.IsErr() {
			return keys, kvError(res.Err())
		}
		page := res.Ok()
		keys = append(keys, page.Keys...)
		if page.Cursor.IsNone() {
			return keys, nil
		}
		cursor = page.Cursor
	}
}

// Increment atomically adds delta to the integer stored at key (absent counts as 0) and
// returns the new value. Counters are stored as decimal text, so Get reads e.g. "42".
func (b *Bucket) Increment(key string, delta int64) (int64, error) {
	res := wasi_keyvalue_atomics.Increment(b.b, key, delta)
	if res.IsErr() {
		return 0, kvError(res.Err())
	}
	return res.Ok(), nil
}
