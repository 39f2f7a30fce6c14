package main

import (
	"math"
	"testing"
)

func TestQuantile(t *testing.T) {
	xs := []float64{5, 1, 3, 2, 4}
	if got := median(xs); got != 3 {
		t.Fatalf("median = %v, want 3", got)
	}
	if got := quantile(xs, 0.95); math.Abs(got-4.8) > 1e-9 {
		t.Fatalf("p95 = %v, want 4.8", got)
	}
	if got := median([]float64{1, 2}); got != 1.5 {
		t.Fatalf("median of two = %v, want 1.5", got)
	}
	if !math.IsNaN(median(nil)) {
		t.Fatal("median of nothing is not NaN")
	}
	if xs[0] != 5 {
		t.Fatal("quantile sorted its argument")
	}
	if got := medSpan([]float64{3, 1, 2}, "%.1f"); got != "2.0 (1.0–3.0)" {
		t.Fatalf("medSpan = %q", got)
	}
}
