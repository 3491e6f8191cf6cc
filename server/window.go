package server

import (
	"sync"
	"time"
)

const (
	flowSlots      = 10
	flowSlotLength = 30 * time.Second
	flowWindow     = flowSlots * flowSlotLength
)

// window keeps values by key over the last flowWindow, in flowSlots slots
// of flowSlotLength: a slot older than the window is stale and reused.
// The traffic flows and the regions' peak demand are kept in one each.
type window[K comparable, V any] struct {
	mu    sync.Mutex
	slots [flowSlots]struct {
		n    int64 // the slot's number since the epoch
		vals map[K]V
	}
}

// update merges v into key's value in now's slot. merge takes and returns
// values (no pointer to escape), so that a call allocates nothing.
func (w *window[K, V]) update(now time.Time, key K, v V, merge func(V, V) V) {
	w.updateBounded(now, key, v, merge, 0)
}

// updateBounded is update for a key already in now's slot, or a new one
// while the slot has fewer than limit keys (0: any number); it reports
// whether it updated.
func (w *window[K, V]) updateBounded(now time.Time, key K, v V, merge func(V, V) V, limit int) bool {
	n := now.UnixNano() / int64(flowSlotLength)
	w.mu.Lock()
	defer w.mu.Unlock()
	s := &w.slots[n%flowSlots]
	if s.n != n || s.vals == nil {
		s.n, s.vals = n, make(map[K]V)
	}
	old, ok := s.vals[key]
	if !ok && limit > 0 && len(s.vals) >= limit {
		return false
	}
	s.vals[key] = merge(old, v)
	return true
}

// each calls f with every key's value in every slot of the window.
func (w *window[K, V]) each(now time.Time, f func(K, V)) {
	n := now.UnixNano() / int64(flowSlotLength)
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := range w.slots {
		s := &w.slots[i]
		if s.vals == nil || n-s.n >= flowSlots {
			continue
		}
		for k, v := range s.vals {
			f(k, v)
		}
	}
}
