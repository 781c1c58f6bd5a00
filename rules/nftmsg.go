package rules

import (
	"encoding/binary"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/ftpalg/ftpalg/internal/nlmsg"
)

// The per-pinhole transactions of the nftables backend (adding, expiring
// and deleting set and map elements) are on the packet path: the packet
// announcing a data connection waits for its verdict until the pinhole is
// open. google/nftables, which does everything else, builds each batch out
// of many small allocations and waits for the kernel's answer in Go's
// network poller on a socket it opens for every transaction, which costs
// tens of microseconds more than the kernel takes. So these few messages
// are encoded here by hand, byte for byte as google/nftables v0.3.0 encodes
// the same SetAddElements and SetDeleteElements calls (a test checks this
// against it), and nftSock (nftmsg_linux.go) sends them on one blocking
// netlink socket. This file does no I/O, so its encoding and the reading of
// acknowledgements are tested on any OS.

// Netlink and nf_tables numbers from the kernel's uapi headers
// (linux/netlink.h, linux/netfilter/nfnetlink.h,
// linux/netfilter/nf_tables.h). They are ABI and never change; they are
// spelled out here because golang.org/x/sys/unix has them only on Linux.
const (
	nlaHdrLen = 4 // struct nlattr
	nfgenLen  = 4 // struct nfgenmsg

	nlmsgError = 0x2 // NLMSG_ERROR: an acknowledgement or an error

	nlmFRequest = 0x1   // NLM_F_REQUEST
	nlmFAck     = 0x4   // NLM_F_ACK
	nlmFCreate  = 0x400 // NLM_F_CREATE

	nlaFNested = 0x8000 // NLA_F_NESTED

	nfnlMsgBatchBegin  = 0x10 // NFNL_MSG_BATCH_BEGIN
	nfnlMsgBatchEnd    = 0x11 // NFNL_MSG_BATCH_END
	nfnlSubsysNFTables = 10   // NFNL_SUBSYS_NFTABLES
	nfnetlinkV0        = 0    // NFNETLINK_V0

	nftMsgNewSetElem = 12 // NFT_MSG_NEWSETELEM
	nftMsgDelSetElem = 14 // NFT_MSG_DELSETELEM

	nftaSetElemListTable    = 1 // NFTA_SET_ELEM_LIST_TABLE
	nftaSetElemListSet      = 2 // NFTA_SET_ELEM_LIST_SET
	nftaSetElemListElements = 3 // NFTA_SET_ELEM_LIST_ELEMENTS
	nftaSetElemListSetID    = 4 // NFTA_SET_ELEM_LIST_SET_ID
	nftaListElem            = 1 // NFTA_LIST_ELEM
	nftaSetElemKey          = 1 // NFTA_SET_ELEM_KEY
	nftaSetElemData         = 2 // NFTA_SET_ELEM_DATA
	nftaSetElemTimeout      = 4 // NFTA_SET_ELEM_TIMEOUT
	nftaDataValue           = 1 // NFTA_DATA_VALUE

	// nftMaxMsg bounds one encoded message. A pinhole's messages take
	// about 150 bytes; the bound keeps every length within its field
	// and the batch within a single datagram the kernel accepts.
	nftMaxMsg = 4096
)

// nftSetRef names a set or map of an nftables table as element messages
// address it.
type nftSetRef struct {
	family uint8  // the table's family: NFPROTO_IPV4 or NFPROTO_IPV6
	table  string // the table's name
	name   string // the set's or map's name
	// id is the set's transaction ID from AddSet. google/nftables sends
	// it with every element message; the kernel looks sets up by name
	// first, so it only matters in the transaction creating the set.
	id uint32
}

// nftElemOp is one message of a fast-path transaction: it adds one
// element, with its timeout and, in a map, its value, or deletes one.
type nftElemOp struct {
	del bool
	set nftSetRef
	key []byte
	val []byte        // the map value; nil in a set and when deleting
	ttl time.Duration // the element's timeout; 0 sends none
}

// what names the operation in errors, as nftConn's other errors do.
func (o nftElemOp) what() string {
	switch {
	case o.del:
		return "deleting from " + o.set.name
	case o.val != nil:
		return "adding to map " + o.set.name
	default:
		return "adding to set " + o.set.name
	}
}

// nlWriter appends netlink messages and attributes to a buffer. Lengths
// are written when a message or attribute ends; the first error sticks,
// so callers check once at the end.
type nlWriter struct {
	b   []byte
	err error
}

// begin appends the header of an attribute (nested ones included) and
// returns where it starts, for end.
func (w *nlWriter) begin(typ uint16) int {
	off := len(w.b)
	w.b = binary.NativeEndian.AppendUint16(w.b, 0)
	w.b = binary.NativeEndian.AppendUint16(w.b, typ)
	return off
}

// end writes the length of the attribute that starts at off and pads it
// to 4 bytes. The length of a nested attribute includes the padding of
// what it holds; that of a leaf does not include its own.
func (w *nlWriter) end(off int) {
	n := len(w.b) - off
	if n > 0xffff {
		w.fail(fmt.Errorf("encoding set element message: attribute of %d bytes", n))
		return
	}
	binary.NativeEndian.PutUint16(w.b[off:], uint16(n))
	for len(w.b)%4 != 0 {
		w.b = append(w.b, 0)
	}
}

// attr appends a leaf attribute.
func (w *nlWriter) attr(typ uint16, data []byte) {
	off := w.begin(typ)
	w.b = append(w.b, data...)
	w.end(off)
}

// str appends a NUL-terminated string attribute.
func (w *nlWriter) str(typ uint16, s string) {
	if strings.IndexByte(s, 0) >= 0 {
		w.fail(fmt.Errorf("encoding set element message: name %q contains NUL", s))
		return
	}
	off := w.begin(typ)
	w.b = append(w.b, s...)
	w.b = append(w.b, 0)
	w.end(off)
}

// msg appends a netlink header and the nfnetlink header (nfgenmsg) of a
// message and returns where the message starts, for endMsg. The
// nfgenmsg's res_id is big-endian; everything else is in host order.
func (w *nlWriter) msg(typ, flags uint16, seq uint32, family uint8, resID uint16) int {
	off := len(w.b)
	w.b = binary.NativeEndian.AppendUint32(w.b, 0) // nlmsg_len, set by endMsg
	w.b = binary.NativeEndian.AppendUint16(w.b, typ)
	w.b = binary.NativeEndian.AppendUint16(w.b, flags)
	w.b = binary.NativeEndian.AppendUint32(w.b, seq)
	w.b = binary.NativeEndian.AppendUint32(w.b, 0) // nlmsg_pid: 0 is the kernel's to fill in
	w.b = append(w.b, family, nfnetlinkV0)
	w.b = binary.BigEndian.AppendUint16(w.b, resID)
	return off
}

// endMsg writes the length of the message that starts at off. Attributes
// are padded, so the message needs none.
func (w *nlWriter) endMsg(off int) {
	n := len(w.b) - off
	if n > nftMaxMsg {
		w.fail(fmt.Errorf("encoding set element message: message of %d bytes", n))
		return
	}
	binary.NativeEndian.PutUint32(w.b[off:], uint32(n))
}

func (w *nlWriter) fail(err error) {
	if w.err == nil {
		w.err = err
	}
}

// appendNFTBatch appends ops to b as one nf_tables transaction: a batch
// begin with sequence number seq, the ops with seq+1 onwards, and a batch
// end with seq+len(ops)+1. Every op asks for an acknowledgement, as
// google/nftables does; the batch messages do not, so the kernel answers
// the ops and nothing else unless the batch as a whole fails.
func appendNFTBatch(b []byte, seq uint32, ops []nftElemOp) ([]byte, error) {
	w := nlWriter{b: b}
	w.endMsg(w.msg(nfnlMsgBatchBegin, nlmFRequest, seq, 0, nfnlSubsysNFTables))
	for i, o := range ops {
		w.elemMsg(seq+1+uint32(i), o)
	}
	w.endMsg(w.msg(nfnlMsgBatchEnd, nlmFRequest, seq+uint32(len(ops))+1, 0, nfnlSubsysNFTables))
	if w.err != nil {
		return b, w.err
	}
	return w.b, nil
}

// elemMsg appends the NEWSETELEM or DELSETELEM message of o, with the
// attributes in google/nftables' order: set name, set ID, table, and the
// list of one element holding its key, timeout and map value. It sends
// NLM_F_CREATE with deletions too, which the kernel ignores there.
func (w *nlWriter) elemMsg(seq uint32, o nftElemOp) {
	typ := uint16(nfnlSubsysNFTables<<8 | nftMsgNewSetElem)
	if o.del {
		typ = nfnlSubsysNFTables<<8 | nftMsgDelSetElem
	}
	if len(o.key) == 0 {
		w.fail(fmt.Errorf("encoding set element message: %s: empty key", o.what()))
		return
	}
	m := w.msg(typ, nlmFRequest|nlmFAck|nlmFCreate, seq, o.set.family, 0)
	w.str(nftaSetElemListSet, o.set.name)
	w.attr(nftaSetElemListSetID, binary.BigEndian.AppendUint32(nil, o.set.id))
	w.str(nftaSetElemListTable, o.set.table)
	list := w.begin(nftaSetElemListElements | nlaFNested)
	elem := w.begin(nftaListElem | nlaFNested)
	key := w.begin(nftaSetElemKey | nlaFNested)
	w.attr(nftaDataValue, o.key)
	w.end(key)
	if ms, ok := nftTimeoutMillis(o.ttl); ok {
		w.attr(nftaSetElemTimeout, binary.BigEndian.AppendUint64(nil, ms))
	}
	if len(o.val) > 0 {
		data := w.begin(nftaSetElemData | nlaFNested)
		w.attr(nftaDataValue, o.val)
		w.end(data)
	}
	w.end(elem)
	w.end(list)
	w.endMsg(m)
}

// nftTimeoutMillis is an element timeout as NFTA_SET_ELEM_TIMEOUT carries
// it, in whole milliseconds, and whether to send one: like
// google/nftables, none for 0, which gives the element the set's default
// (ftpalg's sets have none, so it never expires). A negative timeout is
// sent as none too, rather than as an absurd unsigned one, and a positive
// one under a millisecond as 1 ms rather than 0, which is not what was
// asked for.
func nftTimeoutMillis(ttl time.Duration) (uint64, bool) {
	if ttl <= 0 {
		return 0, false
	}
	return uint64(max(ttl.Milliseconds(), 1)), true
}

// nftAck is an acknowledgement the kernel sent: the sequence number of the
// message it answers and its error, 0 for success.
type nftAck struct {
	seq   uint32
	errno syscall.Errno
}

// parseNFTAcks appends to acks the acknowledgements (NLMSG_ERROR
// messages) in b, one datagram read from the socket, and skips any other
// message. It reports a datagram that is not a sequence of well-formed
// netlink messages.
func parseNFTAcks(b []byte, acks []nftAck) ([]nftAck, error) {
	for len(b) > 0 {
		h, body, rest, err := nlmsg.Next(b)
		if err != nil {
			return acks, fmt.Errorf("%w: netlink reply: %w", ErrNFTables, err)
		}
		b = rest
		if h.Type == nlmsgError {
			if len(body) < 4 {
				return acks, fmt.Errorf("%w: netlink error message of %d bytes", ErrNFTables, h.Len)
			}
			// struct nlmsgerr: the negated errno, then the header
			// (and, for errors, the body) of the request.
			e := int64(int32(binary.NativeEndian.Uint32(body)))
			if e < 0 {
				e = -e
			}
			acks = append(acks, nftAck{seq: h.Seq, errno: syscall.Errno(e)})
		}
	}
	return acks, nil
}

// nftAckWait follows the acknowledgements of one transaction sent by
// appendNFTBatch with sequence number begin.
type nftAckWait struct {
	begin uint32
	ops   []nftElemOp
}

// take takes one acknowledgement and reports whether the transaction is
// over, and with which error. The kernel processes a batch completely
// before it answers, then acknowledges every op in order, failed ones with
// their error, and answers a failure of the batch as a whole (no
// permission, a failed commit, a malformed message) with one error for
// the batch begin or the message at fault. So the transaction is over at
// the acknowledgement of the last op or at the first error; later answers
// may still be queued then, and the caller must not read the socket for
// another transaction. An acknowledgement whose sequence number is not the
// transaction's is a stale one, ignored.
func (w nftAckWait) take(a nftAck) (bool, error) {
	n := uint32(len(w.ops))
	i := a.seq - w.begin // wraps around with the sequence numbers
	switch {
	case i > n+1:
		return false, nil
	case i == 0 || i == n+1:
		if a.errno == 0 {
			// Not asked for; Linux 6.10 and later answer batch
			// messages only when they carry NLM_F_ACK.
			return false, nil
		}
		return true, fmt.Errorf("%w: transaction: %w", ErrNFTables, a.errno)
	case a.errno != 0:
		return true, fmt.Errorf("%w: %s: %w", ErrNFTables, w.ops[i-1].what(), a.errno)
	default:
		return i == n, nil
	}
}
