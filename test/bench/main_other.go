//go:build !linux

package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "bench: the rig benchmark runs on Linux only (network namespaces, netfilter)")
	os.Exit(1)
}
