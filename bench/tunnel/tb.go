package main

import (
	"fmt"
	"log"
	"os"
	"sync"
	"testing"
)

// errFatal is the panic value of benchTB.Fatalf (and Skip, which means the machine cannot run the
// benchmark): main recovers it, runs the cleanups and exits non-zero.
type errFatal struct{ msg string }

func (e errFatal) Error() string { return e.msg }

// benchTB adapts netlab's testing.TB to a program: netlab only calls the methods defined here
// (Helper, Logf, Errorf, Fatalf, Skip, Skipf, Cleanup, TempDir, Failed, Name); the embedded nil
// interface is never called. Fatalf and Skip panic with errFatal; call netlab only from the main
// goroutine, whose deferred recover runs the cleanups (netlab's namespaces are deleted there).
type benchTB struct {
	testing.TB

	mu       sync.Mutex
	cleanups []func()
	failed   bool
	dir      string
}

// newBenchTB returns the root scope, its files in a new directory under parent ("" for the system's
// temporary directory).
func newBenchTB(parent string) (*benchTB, error) {
	dir, err := os.MkdirTemp(parent, "snowgate-bench-")
	if err != nil {
		return nil, err
	}
	return &benchTB{dir: dir}, nil
}

func (b *benchTB) Helper()                 {}
func (b *benchTB) Name() string            { return "bench" }
func (b *benchTB) Logf(f string, a ...any) { log.Printf(f, a...) }
func (b *benchTB) Log(a ...any)            { log.Print(a...) }
func (b *benchTB) Errorf(f string, a ...any) {
	b.mu.Lock()
	b.failed = true
	b.mu.Unlock()
	log.Printf("error: "+f, a...)
}
func (b *benchTB) Error(a ...any) { b.Errorf("%s", fmt.Sprint(a...)) }
func (b *benchTB) Fatalf(f string, a ...any) {
	b.Errorf(f, a...)
	panic(errFatal{fmt.Sprintf(f, a...)})
}
func (b *benchTB) Fatal(a ...any)           { b.Fatalf("%s", fmt.Sprint(a...)) }
func (b *benchTB) FailNow()                 { b.Fatalf("FailNow") }
func (b *benchTB) Skip(a ...any)            { b.Fatalf("cannot run: %s", fmt.Sprint(a...)) }
func (b *benchTB) Skipf(f string, a ...any) { b.Fatalf("cannot run: "+f, a...) }
func (b *benchTB) SkipNow()                 { b.Fatalf("cannot run") }
func (b *benchTB) Failed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.failed
}

// Cleanup registers f to run (last registered first) when close runs.
func (b *benchTB) Cleanup(f func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cleanups = append(b.cleanups, f)
}

// TempDir returns a new directory under the run's directory (removed by close).
func (b *benchTB) TempDir() string {
	d, err := os.MkdirTemp(b.dir, "t")
	if err != nil {
		b.Fatalf("temp dir: %v", err)
	}
	return d
}

// close runs the cleanups registered so far, newest first, and forgets them.
func (b *benchTB) close() {
	for {
		b.mu.Lock()
		n := len(b.cleanups)
		if n == 0 {
			b.mu.Unlock()
			return
		}
		f := b.cleanups[n-1]
		b.cleanups = b.cleanups[:n-1]
		b.mu.Unlock()
		func() {
			defer func() {
				if r := recover(); r != nil {
					log.Printf("cleanup panicked: %v", r)
				}
			}()
			f()
		}()
	}
}
