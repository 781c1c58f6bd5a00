package nfq

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/ftpalg/ftpalg/internal/nlmsg"
)

// Wire constants from include/uapi/linux/netfilter/nfnetlink_queue.h and
// nfnetlink.h. Netlink headers and attribute headers are in host byte
// order; the values inside NFQUEUE attributes are big-endian.
const (
	subsysQueue = 3 // NFNL_SUBSYS_QUEUE

	msgPacket  = 0 // NFQNL_MSG_PACKET: kernel → us, one queued packet
	msgVerdict = 1 // NFQNL_MSG_VERDICT: us → kernel
	msgConfig  = 2 // NFQNL_MSG_CONFIG

	attrPacketHdr  = 1  // NFQA_PACKET_HDR: struct nfqnl_msg_packet_hdr
	attrVerdictHdr = 2  // NFQA_VERDICT_HDR: struct nfqnl_msg_verdict_hdr
	attrPayload    = 10 // NFQA_PAYLOAD: the packet from its network header
	attrCapLen     = 13 // NFQA_CAP_LEN: the packet's length when the copy is shorter

	cfgCmd      = 1 // NFQA_CFG_CMD: struct nfqnl_msg_config_cmd
	cfgParams   = 2 // NFQA_CFG_PARAMS: struct nfqnl_msg_config_params
	cfgQueueMax = 3 // NFQA_CFG_QUEUE_MAXLEN: __be32
	cfgMask     = 4 // NFQA_CFG_MASK: __be32, which flags to change
	cfgFlags    = 5 // NFQA_CFG_FLAGS: __be32

	cmdBind   = 1 // NFQNL_CFG_CMD_BIND
	cmdUnbind = 2 // NFQNL_CFG_CMD_UNBIND

	copyPacket = 2 // NFQNL_COPY_PACKET

	flagFailOpen = 1 // NFQA_CFG_F_FAIL_OPEN

	nlmsgError = 2 // NLMSG_ERROR
	nlmsgDone  = 3 // NLMSG_DONE

	nlmRequest = 0x1 // NLM_F_REQUEST
	nlmAck     = 0x4 // NLM_F_ACK

	nfgenLen    = 4 // struct nfgenmsg
	nlaHdrLen   = 4 // struct nlattr
	nlaTypeMask = 0x3fff
)

// Verdict is what happens to a queued packet.
type Verdict uint32

// Verdicts a handler may return (NF_DROP and NF_ACCEPT).
const (
	Drop   Verdict = 0
	Accept Verdict = 1
)

func (v Verdict) String() string {
	switch v {
	case Drop:
		return "drop"
	case Accept:
		return "accept"
	}
	return fmt.Sprintf("verdict(%d)", uint32(v))
}

// Packet is one queued packet as the kernel reports it. Payload aliases the
// reader's buffer: it is valid only until the handler returns.
type Packet struct {
	// ID names the packet in its verdict.
	ID uint32
	// Proto is the link-layer protocol (ETH_P_IP or ETH_P_IPV6).
	Proto uint16
	// Hook is the netfilter hook the packet was queued from.
	Hook uint8
	// Payload is the packet from its network header on.
	Payload []byte
	// Truncated is set when Payload is shorter than the packet (the
	// copy range cut it): such a packet must not be rewritten.
	Truncated bool
}

// Errors of parsing and of the kernel's replies.
var (
	// ErrMalformed reports a message that does not parse. The kernel
	// never sends one; seeing it means a bug here or a foreign sender.
	ErrMalformed = errors.New("nfq: malformed netlink message")
	// ErrNotPacket reports a well-formed message that is not a queued
	// packet (an acknowledgement, for instance).
	ErrNotPacket = errors.New("nfq: not a packet message")
)

var ne = binary.NativeEndian

// nextMessage splits the first netlink message off b. It returns the
// message's type, flags, sequence number and body (after the nlmsghdr),
// and the rest of b after the message's aligned end.
func nextMessage(b []byte) (typ, flags uint16, seq uint32, body, rest []byte, err error) {
	h, body, rest, err := nlmsg.Next(b)
	if err != nil {
		return 0, 0, 0, nil, nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return h.Type, h.Flags, h.Seq, body, rest, nil
}

// parsePacket reads an NFQNL_MSG_PACKET body (nfgenmsg and attributes).
func parsePacket(typ uint16, body []byte) (Packet, error) {
	var p Packet
	if typ != subsysQueue<<8|msgPacket {
		return p, fmt.Errorf("%w: type %#x", ErrNotPacket, typ)
	}
	if len(body) < nfgenLen {
		return p, fmt.Errorf("%w: packet message of %d bytes", ErrMalformed, len(body))
	}
	var haveHdr, havePayload bool
	capLen := -1
	for b := body[nfgenLen:]; len(b) > 0; {
		if len(b) < nlaHdrLen {
			return p, fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(b))
		}
		n := int(ne.Uint16(b))
		if n < nlaHdrLen || n > len(b) {
			return p, fmt.Errorf("%w: attribute length %d of %d bytes", ErrMalformed, n, len(b))
		}
		v := b[nlaHdrLen:n]
		switch ne.Uint16(b[2:]) & nlaTypeMask {
		case attrPacketHdr:
			if len(v) < 7 {
				return p, fmt.Errorf("%w: packet header of %d bytes", ErrMalformed, len(v))
			}
			p.ID = binary.BigEndian.Uint32(v)
			p.Proto = binary.BigEndian.Uint16(v[4:])
			p.Hook = v[6]
			haveHdr = true
		case attrPayload:
			p.Payload = v
			havePayload = true
		case attrCapLen:
			if len(v) < 4 {
				return p, fmt.Errorf("%w: capture length of %d bytes", ErrMalformed, len(v))
			}
			capLen = int(binary.BigEndian.Uint32(v))
		}
		a := nlmsg.Align(n)
		if a >= len(b) {
			break
		}
		b = b[a:]
	}
	if !haveHdr {
		return p, fmt.Errorf("%w: packet message without a packet header", ErrMalformed)
	}
	if !havePayload {
		// Only with a copy mode other than ours; the verdict still
		// needs the ID, so the packet is returned with the error.
		return p, fmt.Errorf("%w: packet %d without payload", ErrMalformed, p.ID)
	}
	p.Truncated = capLen > len(p.Payload)
	return p, nil
}

// parseError reads an NLMSG_ERROR body: the errno (0 for an
// acknowledgement) and the sequence number of the request it answers.
func parseError(body []byte) (errno int32, seq uint32, err error) {
	if len(body) < 4+nlmsg.HeaderLen {
		return 0, 0, fmt.Errorf("%w: error message of %d bytes", ErrMalformed, len(body))
	}
	return int32(ne.Uint32(body)), ne.Uint32(body[4+8:]), nil
}

// appendHeader appends a netlink header and an nfgenmsg for queue num, with
// the length left zero; finish fills it in.
func appendHeader(b []byte, msg uint16, flags uint16, seq uint32, family uint8, num uint16) []byte {
	b = ne.AppendUint32(b, 0)
	b = ne.AppendUint16(b, subsysQueue<<8|msg)
	b = ne.AppendUint16(b, flags)
	b = ne.AppendUint32(b, seq)
	b = ne.AppendUint32(b, 0) // to the kernel
	b = append(b, family, 0 /* NFNETLINK_V0 */)
	return binary.BigEndian.AppendUint16(b, num)
}

// appendAttr appends one attribute, padded to the netlink alignment.
func appendAttr(b []byte, typ uint16, v []byte) []byte {
	b = ne.AppendUint16(b, uint16(nlaHdrLen+len(v)))
	b = ne.AppendUint16(b, typ)
	b = append(b, v...)
	for range nlmsg.Align(len(v)) - len(v) {
		b = append(b, 0)
	}
	return b
}

// finish sets the length of the message that starts at b[start:].
func finish(b []byte, start int) []byte {
	ne.PutUint32(b[start:], uint32(len(b)-start))
	return b
}

// appendVerdict appends the verdict message for packet id. A non-nil
// payload replaces the packet (the kernel takes its length from the
// attribute and fixes nothing else: checksums are the caller's).
func appendVerdict(b []byte, num uint16, id uint32, v Verdict, payload []byte) []byte {
	start := len(b)
	b = appendHeader(b, msgVerdict, nlmRequest, 0, 0 /* AF_UNSPEC */, num)
	var hdr [8]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(v))
	binary.BigEndian.PutUint32(hdr[4:], id)
	b = appendAttr(b, attrVerdictHdr, hdr[:])
	if payload != nil {
		b = appendAttr(b, attrPayload, payload)
	}
	return finish(b, start)
}

// appendCommand appends a config message carrying one command (bind or
// unbind) for queue num; it asks for an acknowledgement.
func appendCommand(b []byte, seq uint32, num uint16, cmd uint8) []byte {
	start := len(b)
	b = appendHeader(b, msgConfig, nlmRequest|nlmAck, seq, 0, num)
	// struct nfqnl_msg_config_cmd { __u8 command; __u8 _pad; __be16 pf; }:
	// pf is unused by the kernel since 3.8.
	b = appendAttr(b, cfgCmd, []byte{cmd, 0, 0, 0})
	return finish(b, start)
}

// appendParams appends a config message setting copy mode and range,
// queue length and flags for queue num; it asks for an acknowledgement.
func appendParams(b []byte, seq uint32, num uint16, copyRange, maxLen, flags uint32) []byte {
	start := len(b)
	b = appendHeader(b, msgConfig, nlmRequest|nlmAck, seq, 0, num)
	// struct nfqnl_msg_config_params { __be32 copy_range; __u8 copy_mode; } __packed
	var params [5]byte
	binary.BigEndian.PutUint32(params[:], copyRange)
	params[4] = copyPacket
	b = appendAttr(b, cfgParams, params[:])
	b = appendAttr(b, cfgQueueMax, binary.BigEndian.AppendUint32(nil, maxLen))
	b = appendAttr(b, cfgMask, binary.BigEndian.AppendUint32(nil, flagFailOpen))
	b = appendAttr(b, cfgFlags, binary.BigEndian.AppendUint32(nil, flags))
	return finish(b, start)
}
