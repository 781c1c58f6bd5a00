// Package nfq binds one netfilter queue (an iptables or nftables NFQUEUE
// target) and serves it: every queued packet goes to a handler, whose
// verdict, with an optional replacement packet, goes back to the kernel.
//
// It speaks the nfnetlink_queue protocol directly on a blocking socket read
// by one locked OS thread, so that a packet's wait for its verdict is one
// kernel wake-up, the handler and one write. Verdicts of packets read
// together are written together. The message encoding (message.go) is pure
// and fuzzed; the socket lives in queue_linux.go.
package nfq
