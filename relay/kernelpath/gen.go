package kernelpath

// The BPF object is compiled by bpf2go (Debian: clang, llvm for llvm-strip,
// libbpf-dev for bpf_helpers.h) and committed, so that `go build` needs no
// C toolchain. CI regenerates it into a temporary directory and compares
// (TestObjectIsCurrent). -mcpu=v3 needs Linux 5.1.
//go:generate go tool bpf2go -tags linux -cflags "-O2 -g -Wall -Werror -mcpu=v3" turnrouter bpf/turnrouter.c
