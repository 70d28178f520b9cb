package fs

import (
	"container/list"
	"sync"

	digest "github.com/opencontainers/go-digest"
)

// memKey names a chunk by its layer and place in the blob, so that chunks of
// unverified layers, which have no trusted digest, can be kept too.
type memKey struct {
	layer        digest.Digest
	start, inner int64
}

// memCache keeps recently read, verified chunks, least recently used first
// out, within a byte budget. The kernel reads a file in requests much smaller
// than a chunk; this is what makes the second request of a chunk cheap.
type memCache struct {
	mu    sync.Mutex
	max   int64
	size  int64
	order *list.List // of *memEntry, most recent first
	m     map[memKey]*list.Element
}

type memEntry struct {
	key  memKey
	data []byte
}

func newMemCache(maxBytes int64) *memCache {
	return &memCache{max: maxBytes, order: list.New(), m: map[memKey]*list.Element{}}
}

// get returns the chunk; callers must not modify it.
func (c *memCache) get(k memKey) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.m[k]
	if !ok {
		return nil, false
	}
	c.order.MoveToFront(el)
	return el.Value.(*memEntry).data, true
}

// has reports whether the chunk is kept, without making it more recent.
func (c *memCache) has(k memKey) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.m[k]
	return ok
}

// put adds a chunk, which must not be modified afterwards.
func (c *memCache) put(k memKey, data []byte) {
	n := int64(len(data))
	c.mu.Lock()
	defer c.mu.Unlock()
	if n > c.max {
		return
	}
	if el, ok := c.m[k]; ok {
		c.order.MoveToFront(el)
		return
	}
	c.m[k] = c.order.PushFront(&memEntry{key: k, data: data})
	c.size += n
	for c.size > c.max {
		el := c.order.Back()
		e := el.Value.(*memEntry)
		c.order.Remove(el)
		delete(c.m, e.key)
		c.size -= int64(len(e.data))
	}
}
