// Package ctnetlink is ftpalg's client for the kernel's conntrack table over
// netlink (ctnetlink).
//
// ftpalg needs three things from conntrack, all for the control connection
// or data connections of one FTP session:
//
//   - the address the peer sees for a sender behind NAT, to put into PORT,
//     EPRT, 227 and 229 ([Client.PublicAddr]; the mapping from what ftpalg
//     sees in mangle FORWARD to conntrack's tuples is documented on [Entry]);
//   - liberal TCP window tracking on a control connection whose payload
//     length ftpalg changed, so that conntrack does not mark the peers'
//     acknowledgements INVALID ([Client.SetLiberal]);
//   - NEW events, to learn that a data connection went through a pinhole,
//     and DESTROY events, to learn that a control connection ended
//     ([Client.Watch], filtered in the kernel by [EventFilter]).
//
// Messages are built and decoded here (message.go, pure Go and unit tested
// against hand-checked bytes) rather than with ti-mo/conntrack's Flow, whose
// Update always sends the TCP state and window scale too and would rewind
// them, and whose Get hangs with mdlayher/netlink v1.11.2.
package ctnetlink
