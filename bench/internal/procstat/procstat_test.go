package procstat

import (
	"os"
	"testing"
)

func TestCPUTimeOfThisProcess(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc here")
	}
	d, err := CPUTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if d < 0 {
		t.Fatalf("CPU time %v", d)
	}
	if _, err := CPUTime(-1); err == nil {
		t.Fatal("CPU time of pid -1: no error")
	}
}
