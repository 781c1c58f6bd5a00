// Command bench runs the same FTP workloads through three gateways — plain
// NAT, the kernel's FTP conntrack helper and ftpalg — each in a ClientNAT
// network-namespace rig of its own, in one run on one machine, and prints
// ftpalg's results as ratios to the other two. Machines are shared and
// noisy, so absolute numbers drift between runs; ratios from one run do
// not. See README.md for the workloads and how to read the table.
//
// Usage (as root):
//
//	make build && FTPALG_BIN=$PWD/bin/ftpalg go run ./test/bench [flags]
package main
