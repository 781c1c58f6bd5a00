package ctnetlink

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/netfilter"

	"github.com/ftpalg/ftpalg/internal/nlmsg"
)

// Attribute and message numbers from include/uapi/linux/netfilter/
// nfnetlink_conntrack.h and nf_conntrack_tcp.h. They are part of the kernel
// ABI and never change.
const (
	msgCTNew    = 0 // IPCTNL_MSG_CT_NEW: create, or update without NLM_F_CREATE
	msgCTGet    = 1 // IPCTNL_MSG_CT_GET
	msgCTDelete = 2 // IPCTNL_MSG_CT_DELETE: also the type of DESTROY events

	ctaTupleOrig  = 1  // CTA_TUPLE_ORIG
	ctaTupleReply = 2  // CTA_TUPLE_REPLY
	ctaStatus     = 3  // CTA_STATUS
	ctaProtoinfo  = 4  // CTA_PROTOINFO
	ctaMark       = 8  // CTA_MARK
	ctaID         = 12 // CTA_ID
	ctaSeqAdjOrig = 15 // CTA_SEQ_ADJ_ORIG
	ctaSeqAdjRepl = 16 // CTA_SEQ_ADJ_REPLY
	ctaMarkMask   = 21 // CTA_MARK_MASK
	ctaLabels     = 22 // CTA_LABELS
	ctaLabelsMask = 23 // CTA_LABELS_MASK
	ctaFilter     = 25 // CTA_FILTER (Linux 5.8+)

	ctaTupleIP    = 1 // CTA_TUPLE_IP
	ctaTupleProto = 2 // CTA_TUPLE_PROTO

	ctaIPv4Src = 1 // CTA_IP_V4_SRC
	ctaIPv4Dst = 2 // CTA_IP_V4_DST
	ctaIPv6Src = 3 // CTA_IP_V6_SRC
	ctaIPv6Dst = 4 // CTA_IP_V6_DST

	ctaProtoNum     = 1 // CTA_PROTO_NUM
	ctaProtoSrcPort = 2 // CTA_PROTO_SRC_PORT
	ctaProtoDstPort = 3 // CTA_PROTO_DST_PORT

	ctaProtoinfoTCP           = 1 // CTA_PROTOINFO_TCP
	ctaProtoinfoTCPState      = 1 // CTA_PROTOINFO_TCP_STATE
	ctaProtoinfoTCPFlagsOrig  = 4 // CTA_PROTOINFO_TCP_FLAGS_ORIGINAL
	ctaProtoinfoTCPFlagsReply = 5 // CTA_PROTOINFO_TCP_FLAGS_REPLY

	ctaSeqAdjPos    = 1 // CTA_SEQADJ_CORRECTION_POS
	ctaSeqAdjBefore = 2 // CTA_SEQADJ_OFFSET_BEFORE
	ctaSeqAdjAfter  = 3 // CTA_SEQADJ_OFFSET_AFTER

	statusSeqAdjust = 1 << 6 // IPS_SEQ_ADJUST

	ctaFilterOrigFlags  = 1 // CTA_FILTER_ORIG_FLAGS
	ctaFilterReplyFlags = 2 // CTA_FILTER_REPLY_FLAGS

	// CTA_FILTER_F_* from net/netfilter/nf_internals.h: which fields of a
	// tuple a filtered dump compares.
	filterIPSrc        = 1 << 0
	filterProtoNum     = 1 << 3
	filterProtoSrcPort = 1 << 4

	protoTCP = 6

	// TCPFlagBeLiberal is IP_CT_TCP_FLAG_BE_LIBERAL: conntrack skips the
	// window check (tcp_in_window) for segments sent by the side whose
	// flags carry it.
	TCPFlagBeLiberal = 0x08
)

func family(t Tuple) netfilter.ProtoFamily {
	if t.Src.Addr().Is4() {
		return netfilter.ProtoIPv4
	}
	return netfilter.ProtoIPv6
}

// encodeTuple appends a CTA_TUPLE_{ORIG,REPLY} nest for the TCP tuple t.
// Ports are big-endian (the encoder's byte order); the kernel reads them as
// __be16 whether or not NLA_F_NET_BYTEORDER is set, and libnetfilter_conntrack
// does not set it either.
func encodeTuple(ae *netlink.AttributeEncoder, typ uint16, t Tuple) {
	ae.Nested(typ, func(ae *netlink.AttributeEncoder) error {
		ae.Nested(ctaTupleIP, func(ae *netlink.AttributeEncoder) error {
			if t.Src.Addr().Is4() {
				ae.Bytes(ctaIPv4Src, t.Src.Addr().AsSlice())
				ae.Bytes(ctaIPv4Dst, t.Dst.Addr().AsSlice())
			} else {
				ae.Bytes(ctaIPv6Src, t.Src.Addr().AsSlice())
				ae.Bytes(ctaIPv6Dst, t.Dst.Addr().AsSlice())
			}
			return nil
		})
		ae.Nested(ctaTupleProto, func(ae *netlink.AttributeEncoder) error {
			ae.Uint8(ctaProtoNum, protoTCP)
			ae.Uint16(ctaProtoSrcPort, t.Src.Port())
			ae.Uint16(ctaProtoDstPort, t.Dst.Port())
			return nil
		})
		return nil
	})
}

func encode(t Tuple, typ uint8, flags netlink.HeaderFlags, ae *netlink.AttributeEncoder) (netlink.Message, error) {
	m, err := netfilter.EncodeNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysCTNetlink,
		MessageType: netfilter.MessageType(typ),
		Family:      family(t),
		Flags:       flags,
	}, ae)
	if err != nil {
		return netlink.Message{}, fmt.Errorf("encoding ctnetlink message for %s: %w", t, err)
	}
	return m, nil
}

// getRequest builds IPCTNL_MSG_CT_GET for the entry that has t as either of
// its tuples. The kernel (ctnetlink_get_conntrack) parses CTA_TUPLE_ORIG and
// looks it up with nf_conntrack_find_get, which searches the tuples of both
// directions, so a reply tuple finds its entry too. NLM_F_ACK is needed:
// the kernel marks the entry it answers with NLM_F_MULTI, and the ACK is
// what ends that "multipart" answer.
func getRequest(t Tuple) (netlink.Message, error) {
	ae := netfilter.NewAttributeEncoder()
	encodeTuple(ae, ctaTupleOrig, t)
	return encode(t, msgCTGet, netlink.Request|netlink.Acknowledge, ae)
}

// filterDumpRequest builds a dump of the entries whose original tuple has
// orig's source (address and port) and whose reply tuple has reply's
// source, using the kernel's CTA_FILTER (Linux 5.8+). It is the lookup of
// last resort, for entries with both SNAT and DNAT: neither tuple ftpalg
// sees is a hash key then, and the kernel has to walk its table.
func filterDumpRequest(orig, reply Tuple) (netlink.Message, error) {
	const flags = filterIPSrc | filterProtoNum | filterProtoSrcPort
	ae := netfilter.NewAttributeEncoder()
	encodeTuple(ae, ctaTupleOrig, orig)
	encodeTuple(ae, ctaTupleReply, reply)
	ae.Nested(ctaFilter, func(ae *netlink.AttributeEncoder) error {
		// NLA_U32 in host byte order (nla_get_u32), unlike the rest of
		// ctnetlink, so it bypasses the big-endian encoder.
		ae.Bytes(ctaFilterOrigFlags, binary.NativeEndian.AppendUint32(nil, flags))
		ae.Bytes(ctaFilterReplyFlags, binary.NativeEndian.AppendUint32(nil, flags))
		return nil
	})
	return encode(orig, msgCTGet, netlink.Request|netlink.Dump, ae)
}

// liberalRequest builds the update that sets IP_CT_TCP_FLAG_BE_LIBERAL in
// both directions of the entry whose original tuple is orig, and changes
// nothing else.
//
// IPCTNL_MSG_CT_NEW without NLM_F_CREATE updates an existing entry
// (ctnetlink_new_conntrack -> ctnetlink_change_conntrack) and only touches
// what the message carries. For CTA_PROTOINFO_TCP, nlattr_to_tcp applies
// each present field on its own: STATE and WSCALE only if present (so they
// are left out here: a stale copy would rewind the state machine), and each
// FLAGS_* attribute, a struct nf_ct_tcp_flags {u8 flags; u8 mask}, as
// seen[dir].flags = seen[dir].flags&^mask | flags&mask. {0x08, 0x08} sets
// BE_LIBERAL and leaves every other flag bit alone.
func liberalRequest(orig Tuple) (netlink.Message, error) {
	ae := netfilter.NewAttributeEncoder()
	encodeTuple(ae, ctaTupleOrig, orig)
	encodeLiberal(ae)
	return encode(orig, msgCTNew, netlink.Request|netlink.Acknowledge, ae)
}

// encodeLiberal appends the CTA_PROTOINFO that sets BE_LIBERAL in both
// directions (see liberalRequest).
func encodeLiberal(ae *netlink.AttributeEncoder) {
	ae.Nested(ctaProtoinfo, func(ae *netlink.AttributeEncoder) error {
		ae.Nested(ctaProtoinfoTCP, func(ae *netlink.AttributeEncoder) error {
			flags := []byte{TCPFlagBeLiberal, TCPFlagBeLiberal}
			ae.Bytes(ctaProtoinfoTCPFlagsOrig, flags)
			ae.Bytes(ctaProtoinfoTCPFlagsReply, flags)
			return nil
		})
		return nil
	})
}

// markRequest builds the update that sets the bits of bits in the ct mark
// of the entry whose original tuple is orig, and changes nothing else:
// ctnetlink_change_mark computes mark&^CTA_MARK_MASK ^ CTA_MARK, so bits as
// both value and mask sets those bits and keeps every other one (an
// administrator's own connmark bits survive). Both are big-endian u32.
func markRequest(orig Tuple, bits uint32) (netlink.Message, error) {
	ae := netfilter.NewAttributeEncoder()
	encodeTuple(ae, ctaTupleOrig, orig)
	ae.Uint32(ctaMark, bits)
	ae.Uint32(ctaMarkMask, bits)
	return encode(orig, msgCTNew, netlink.Request|netlink.Acknowledge, ae)
}

// labelsRequest builds the update that sets the label bits selected by mask
// to those of labels on the entry whose original tuple is orig, and with
// liberal also BE_LIBERAL in both directions, in one message: the kernel
// applies both in one ctnetlink_change_conntrack (protoinfo before labels).
// nf_connlabels_replace computes (old & ~mask) | (labels & mask) word by
// word, so bits outside mask (an administrator's own) are kept. Both
// attributes are the kernel's host-order longs (conntrack.Labels.Bytes).
// With adj, the entry's seqadj too (see seqAdjRequest), applied before the
// labels.
func labelsRequest(orig Tuple, labels, mask [16]byte, liberal bool, adj *[2]SeqAdj) (netlink.Message, error) {
	ae := netfilter.NewAttributeEncoder()
	encodeTuple(ae, ctaTupleOrig, orig)
	if liberal {
		encodeLiberal(ae)
	}
	if adj != nil {
		encodeSeqAdj(ae, adj)
	}
	ae.Bytes(ctaLabels, labels[:])
	ae.Bytes(ctaLabelsMask, mask[:])
	return encode(orig, msgCTNew, netlink.Request|netlink.Acknowledge, ae)
}

// seqAdjRequest builds the update that sets the seqadj of both directions
// of the entry whose original tuple is orig (ctnetlink_change_seq_adj: each
// CTA_SEQ_ADJ_* needs all three values, big-endian u32). The kernel ignores
// it, and says nothing, on an entry without the seqadj extension; it sets
// IPS_SEQ_ADJUST on one with it.
func seqAdjRequest(orig Tuple, adj *[2]SeqAdj) (netlink.Message, error) {
	ae := netfilter.NewAttributeEncoder()
	encodeTuple(ae, ctaTupleOrig, orig)
	encodeSeqAdj(ae, adj)
	return encode(orig, msgCTNew, netlink.Request|netlink.Acknowledge, ae)
}

func encodeSeqAdj(ae *netlink.AttributeEncoder, adj *[2]SeqAdj) {
	for i, typ := range [2]uint16{ctaSeqAdjOrig, ctaSeqAdjRepl} {
		a := adj[i]
		ae.Nested(typ, func(ae *netlink.AttributeEncoder) error {
			ae.Uint32(ctaSeqAdjPos, a.Pos)
			ae.Uint32(ctaSeqAdjBefore, uint32(a.Before))
			ae.Uint32(ctaSeqAdjAfter, uint32(a.After))
			return nil
		})
	}
}

// dumpRequest builds a dump of every conntrack entry of both families.
func dumpRequest() (netlink.Message, error) {
	m, err := netfilter.EncodeNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysCTNetlink,
		MessageType: netfilter.MessageType(msgCTGet),
		Family:      netfilter.ProtoUnspec,
		Flags:       netlink.Request | netlink.Dump,
	}, netfilter.NewAttributeEncoder())
	if err != nil {
		return netlink.Message{}, fmt.Errorf("encoding ctnetlink dump: %w", err)
	}
	return m, nil
}

// errNotTCP marks entries and events of other protocols, which callers skip.
var errNotTCP = fmt.Errorf("not a TCP entry: %w", ErrMalformed)

// decodeEntry decodes the tuples of a ctnetlink entry message (a GET reply,
// a dump part or an event). Attributes other than the tuples are skipped.
func decodeEntry(m netlink.Message) (Entry, error) {
	h, ad, err := netfilter.DecodeNetlink(m)
	if err != nil {
		return Entry{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if h.SubsystemID != netfilter.NFSubsysCTNetlink {
		return Entry{}, fmt.Errorf("%w: subsystem %d", ErrMalformed, h.SubsystemID)
	}
	var (
		e                Entry
		haveOrig, haveRe bool
		tcp              = true
	)
	for ad.Next() {
		switch ad.Type() {
		case ctaTupleOrig:
			ad.Nested(tupleDecoder(&e.Orig, &tcp))
			haveOrig = true
		case ctaTupleReply:
			ad.Nested(tupleDecoder(&e.Reply, &tcp))
			haveRe = true
		case ctaLabels:
			copy(e.Labels[:], ad.Bytes())
			e.HasLabels = true
		case ctaID:
			e.ID = ad.Uint32()
		case ctaStatus:
			e.SeqAdjust = ad.Uint32()&statusSeqAdjust != 0
		case ctaSeqAdjOrig, ctaSeqAdjRepl:
			a := &e.SeqAdj[0]
			if ad.Type() == ctaSeqAdjRepl {
				a = &e.SeqAdj[1]
			}
			ad.Nested(func(ad *netlink.AttributeDecoder) error {
				for ad.Next() {
					switch ad.Type() {
					case ctaSeqAdjPos:
						a.Pos = ad.Uint32()
					case ctaSeqAdjBefore:
						a.Before = int32(ad.Uint32())
					case ctaSeqAdjAfter:
						a.After = int32(ad.Uint32())
					}
				}
				return nil
			})
		case ctaProtoinfo:
			ad.Nested(func(ad *netlink.AttributeDecoder) error {
				for ad.Next() {
					if ad.Type() != ctaProtoinfoTCP {
						continue
					}
					ad.Nested(func(ad *netlink.AttributeDecoder) error {
						for ad.Next() {
							if ad.Type() == ctaProtoinfoTCPState {
								e.TCPState = TCPState(ad.Uint8())
							}
						}
						return nil
					})
				}
				return nil
			})
		}
	}
	if err := ad.Err(); err != nil {
		if !tcp {
			return Entry{}, errNotTCP
		}
		return Entry{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if !haveOrig || !haveRe {
		return Entry{}, fmt.Errorf("%w: entry without both tuples", ErrMalformed)
	}
	return e, nil
}

// tupleDecoder decodes a CTA_TUPLE_* nest into t. It sets *tcp to false and
// fails for other protocols, whose ports mean something else or are absent.
func tupleDecoder(t *Tuple, tcp *bool) func(*netlink.AttributeDecoder) error {
	return func(ad *netlink.AttributeDecoder) error {
		var (
			src, dst       netip.Addr
			sport, dport   uint16
			proto          uint8
			haveSP, haveDP bool
			addrErr        error
		)
		for ad.Next() {
			switch ad.Type() {
			case ctaTupleIP:
				ad.Nested(func(ad *netlink.AttributeDecoder) error {
					for ad.Next() {
						a, ok := netip.AddrFromSlice(ad.Bytes())
						if !ok {
							addrErr = fmt.Errorf("address of %d bytes", len(ad.Bytes()))
							continue
						}
						switch ad.Type() {
						case ctaIPv4Src, ctaIPv6Src:
							src = a
						case ctaIPv4Dst, ctaIPv6Dst:
							dst = a
						}
					}
					return addrErr
				})
			case ctaTupleProto:
				ad.Nested(func(ad *netlink.AttributeDecoder) error {
					for ad.Next() {
						switch ad.Type() {
						case ctaProtoNum:
							proto = ad.Uint8()
						case ctaProtoSrcPort:
							sport, haveSP = ad.Uint16(), true
						case ctaProtoDstPort:
							dport, haveDP = ad.Uint16(), true
						}
					}
					return nil
				})
			}
		}
		if err := ad.Err(); err != nil {
			return err
		}
		if proto != protoTCP {
			*tcp = false
			return fmt.Errorf("protocol %d", proto)
		}
		if !src.IsValid() || !dst.IsValid() || !haveSP || !haveDP {
			return fmt.Errorf("incomplete tuple")
		}
		t.Src = netip.AddrPortFrom(src, sport)
		t.Dst = netip.AddrPortFrom(dst, dport)
		return nil
	}
}

// NewFlow is a conntrack NEW event for a TCP connection: the entry was just
// created (by the first SYN, or through ctnetlink).
type NewFlow = Entry

// Destroyed is a conntrack DESTROY event for a TCP connection: the entry
// has left the table (see WatchHandler.Destroyed for when). The kernel
// (ctnetlink_conntrack_event) sends both tuples, the ID, the status and the
// TCP state the entry ended in, but neither labels nor seqadj: Orig, Reply,
// ID, TCPState and SeqAdjust are set, Labels, HasLabels and SeqAdj are zero.
type Destroyed = Entry

// eventKind tells the events Watch reports apart.
type eventKind uint8

const (
	eventOther   eventKind = iota // neither, or not a TCP entry: skipped
	eventNew                      // IPCTNL_MSG_CT_NEW with NLM_F_CREATE
	eventDestroy                  // IPCTNL_MSG_CT_DELETE
)

// decodeEvent decodes a multicast message from the NFNLGRP_CONNTRACK_NEW or
// NFNLGRP_CONNTRACK_DESTROY group. Messages that are neither a NEW nor a
// DESTROY event, and events of entries that are not TCP, are eventOther.
func decodeEvent(m netlink.Message) (eventKind, Entry, error) {
	h, _, err := netfilter.DecodeNetlink(m)
	if err != nil {
		return eventOther, Entry{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if h.SubsystemID != netfilter.NFSubsysCTNetlink {
		return eventOther, Entry{}, nil
	}
	var kind eventKind
	switch {
	// Events reuse IPCTNL_MSG_CT_NEW for NEW and UPDATE; NEW carries
	// NLM_F_CREATE|NLM_F_EXCL (ctnetlink_conntrack_event).
	case h.MessageType == msgCTNew && h.Flags&(netlink.Create|netlink.Excl) != 0:
		kind = eventNew
	// DESTROY is IPCTNL_MSG_CT_DELETE, without flags.
	case h.MessageType == msgCTDelete:
		kind = eventDestroy
	default:
		return eventOther, Entry{}, nil
	}
	e, err := decodeEntry(m)
	if err == errNotTCP {
		return eventOther, Entry{}, nil
	}
	if err != nil {
		return eventOther, Entry{}, err
	}
	return kind, e, nil
}

// parseAnswer handles one datagram of the answer to the request with
// sequence number seq: entry messages go to each, an NLMSG_ERROR (an ACK if
// its code is 0) or NLMSG_DONE ends the answer (done). Messages with another
// sequence number are stale answers to requests that timed out, and are
// skipped. The first error from each is returned once the answer is done,
// so the socket is left clean for the next request.
func parseAnswer(b []byte, seq uint32, each func(netlink.Message) error) (done bool, err error) {
	var eachErr error
	for len(b) > 0 {
		h, body, rest, err := nlmsg.Next(b)
		if err != nil {
			return true, fmt.Errorf("%w: %w", ErrMalformed, err)
		}
		b = rest
		m := netlink.Message{
			Header: netlink.Header{Length: h.Len, Type: netlink.HeaderType(h.Type), Flags: netlink.HeaderFlags(h.Flags), Sequence: h.Seq, PID: h.PID},
			Data:   body,
		}
		if m.Header.Sequence != seq {
			continue
		}
		switch m.Header.Type {
		case netlink.Error, netlink.Done:
			if len(m.Data) >= 4 {
				if code := int32(binary.NativeEndian.Uint32(m.Data)); code < 0 {
					return true, syscall.Errno(-code)
				}
			} else if m.Header.Type == netlink.Error {
				return true, fmt.Errorf("%w: short error message", ErrMalformed)
			}
			return true, eachErr
		default:
			if err := each(m); err != nil && eachErr == nil {
				eachErr = err
			}
		}
	}
	return false, nil
}
