package main

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Placements of the benchmark's processes on the CPUs:
//
//   - free: every process where the scheduler puts it;
//   - shared: the FTP client (this process, all its threads) and the FTP
//     server on one CPU, ftpalg and the rest free, as on a router whose
//     traffic comes from elsewhere while its own cores are shared. On veth
//     a forwarded packet is processed in softirq on the CPU that sent it,
//     so here the routers' kernel work (NAT, conntrack, the helper) runs
//     on the client's and server's CPU while ftpalg may use another one.
const (
	placeFree   = "free"
	placeShared = "shared"
)

// sharedCPU is the CPU the shared placement uses.
const sharedCPU = 0

// pinSelf binds every thread of this process to cpu. Threads the Go
// runtime starts later inherit the mask of the thread that creates them,
// which is one of these.
func pinSelf(cpu int) error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return fmt.Errorf("pinning the client: %w", err)
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := pin(tid, cpu); err != nil {
			return fmt.Errorf("pinning the client's thread %d: %w", tid, err)
		}
	}
	return nil
}

// pin binds one thread or process to cpu; children it forks later
// inherit the binding.
func pin(pid, cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	return unix.SchedSetaffinity(pid, &set)
}
