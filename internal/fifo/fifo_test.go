package fifo

import (
	"slices"
	"testing"

	"pgregory.net/rapid"
)

// TestQueueMatchesSliceModel: any sequence of Push, Pop, Peek, DeleteFunc and Clear behaves like the obvious
// slice queue, and slots outside the queued range are always zero (no references kept to what was handed out).
func TestQueueMatchesSliceModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		var q Queue[*int]
		var model []*int
		next := 0
		t.Repeat(map[string]func(*rapid.T){
			"push": func(t *rapid.T) {
				next++
				v := new(int)
				*v = next
				q.Push(v)
				model = append(model, v)
			},
			"push many": func(t *rapid.T) {
				for range rapid.IntRange(1, 40).Draw(t, "n") {
					next++
					v := new(int)
					*v = next
					q.Push(v)
					model = append(model, v)
				}
			},
			"pop": func(t *rapid.T) {
				v, ok := q.Pop()
				if len(model) == 0 {
					if ok {
						t.Fatalf("Pop on an empty queue = %v", *v)
					}
					return
				}
				if !ok || v != model[0] {
					t.Fatalf("Pop = %v %v, want %d", v, ok, *model[0])
				}
				model = model[1:]
			},
			"peek": func(t *rapid.T) {
				v, ok := q.Peek()
				if ok != (len(model) > 0) || (ok && v != model[0]) {
					t.Fatalf("Peek = %v %v, model %d long", v, ok, len(model))
				}
			},
			"delete odd": func(t *rapid.T) {
				odd := func(p *int) bool { return *p%2 == 1 }
				want := len(model)
				model = slices.DeleteFunc(slices.Clone(model), odd)
				if n := q.DeleteFunc(odd); n != want-len(model) {
					t.Fatalf("DeleteFunc removed %d, want %d", n, want-len(model))
				}
			},
			"clear": func(t *rapid.T) {
				q.Clear()
				model = nil
			},
			"": func(t *rapid.T) {
				if q.Len() != len(model) {
					t.Fatalf("Len = %d, want %d", q.Len(), len(model))
				}
				if !slices.Equal(q.buf[q.head:], model) {
					t.Fatalf("queue holds %v, want %v", q.buf[q.head:], model)
				}
				for i, p := range q.buf[:q.head] {
					if p != nil {
						t.Fatalf("popped slot %d still holds %d", i, *p)
					}
				}
				for i, p := range q.buf[len(q.buf):cap(q.buf)] {
					if p != nil {
						t.Fatalf("spare slot %d holds %d", i, *p)
					}
				}
			},
		})
	})
}

// TestSteadyFlowDoesNotAllocate: a queue that is never drained completely (push two, pop one, and back)
// reuses its storage instead of growing or allocating.
func TestSteadyFlowDoesNotAllocate(t *testing.T) {
	var q Queue[int]
	for i := range 64 {
		q.Push(i)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		q.Push(1)
		q.Pop()
	})
	if allocs != 0 {
		t.Errorf("%v allocations per push+pop", allocs)
	}
	if c := cap(q.buf); c > 256 {
		t.Errorf("capacity grew to %d for 64 queued elements", c)
	}
	var empty Queue[int]
	if _, ok := empty.Pop(); ok {
		t.Error("zero Queue not empty")
	}
}
