package ctnetlink

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/mdlayher/netlink"
)

// unhex decodes a golden written as hex words with // comments per line:
// an nfgenmsg and netlink attributes, written as a little-endian host
// (x86, arm) sends them. Attribute headers are in host byte order, so on
// a big-endian host (mips) they are converted; payloads (addresses, ports
// in network order, flags) are left as written.
func unhex(t *testing.T, s string) []byte {
	t.Helper()
	var b strings.Builder
	for _, line := range strings.Split(s, "\n") {
		line, _, _ = strings.Cut(line, "//")
		b.WriteString(strings.Join(strings.Fields(line), ""))
	}
	out, err := hex.DecodeString(b.String())
	if err != nil {
		t.Fatalf("bad golden: %v", err)
	}
	if len(out) > 4 {
		hostOrderAttrs(out[4:])
	}
	return out
}

// hostOrderAttrs rewrites the little-endian attribute headers of b, nested
// ones included, in host byte order. It stops at a header that does not
// fit: the goldens of malformed messages stay malformed the same way.
func hostOrderAttrs(b []byte) {
	for len(b) >= 4 {
		n, typ := binary.LittleEndian.Uint16(b), binary.LittleEndian.Uint16(b[2:])
		if n < 4 || int(n) > len(b) {
			return
		}
		binary.NativeEndian.PutUint16(b, n)
		binary.NativeEndian.PutUint16(b[2:], typ)
		if typ&0x8000 != 0 { // NLA_F_NESTED
			hostOrderAttrs(b[4:n])
		}
		if a := (int(n) + 3) &^ 3; a < len(b) {
			b = b[a:]
		} else {
			return
		}
	}
}

var tuple4 = Tuple{
	Src: netip.MustParseAddrPort("192.0.2.10:40000"),
	Dst: netip.MustParseAddrPort("198.51.100.20:21"),
}

var tuple6 = Tuple{
	Src: netip.MustParseAddrPort("[2001:db8:1::10]:40000"),
	Dst: netip.MustParseAddrPort("[2001:db8:2::20]:21"),
}

// Netlink attribute headers are {u16 len; u16 type} in host byte order
// (little-endian here), len excluding padding; 0x8000 in type is
// NLA_F_NESTED. Payloads are big-endian except where noted.
const goldenTuple4Orig = `
	34 00 01 80                 // CTA_TUPLE_ORIG, nested, 52 bytes
	  14 00 01 80               //   CTA_TUPLE_IP, nested, 20 bytes
	    08 00 01 00 c0 00 02 0a //     CTA_IP_V4_SRC 192.0.2.10
	    08 00 02 00 c6 33 64 14 //     CTA_IP_V4_DST 198.51.100.20
	  1c 00 02 80               //   CTA_TUPLE_PROTO, nested, 28 bytes
	    05 00 01 00 06 00 00 00 //     CTA_PROTO_NUM 6 (TCP) + 3 pad
	    06 00 02 00 9c 40 00 00 //     CTA_PROTO_SRC_PORT 40000 + 2 pad
	    06 00 03 00 00 15 00 00 //     CTA_PROTO_DST_PORT 21 + 2 pad
`

func TestLiberalRequestGolden(t *testing.T) {
	m, err := liberalRequest(tuple4)
	if err != nil {
		t.Fatal(err)
	}
	// NFNL_SUBSYS_CTNETLINK (1) << 8 | IPCTNL_MSG_CT_NEW (0); update, so
	// NLM_F_REQUEST|NLM_F_ACK and no NLM_F_CREATE/NLM_F_EXCL.
	if m.Header.Type != 0x0100 {
		t.Errorf("type = %#04x, want 0x0100", m.Header.Type)
	}
	if want := netlink.Request | netlink.Acknowledge; m.Header.Flags != want {
		t.Errorf("flags = %v, want %v", m.Header.Flags, want)
	}
	want := unhex(t, `
		02 00 00 00                 // nfgenmsg: AF_INET, NFNETLINK_V0, res_id 0
	`+goldenTuple4Orig+`
		18 00 04 80                 // CTA_PROTOINFO, nested, 24 bytes
		  14 00 01 80               //   CTA_PROTOINFO_TCP, nested, 20 bytes
		    06 00 04 00 08 08 00 00 //     FLAGS_ORIGINAL {flags 0x08, mask 0x08}
		    06 00 05 00 08 08 00 00 //     FLAGS_REPLY    {flags 0x08, mask 0x08}
	`)
	if !bytes.Equal(m.Data, want) {
		t.Errorf("data:\n got %x\nwant %x", m.Data, want)
	}
}

func TestMarkRequestGolden(t *testing.T) {
	m, err := markRequest(tuple4, 0x20000000)
	if err != nil {
		t.Fatal(err)
	}
	if want := netlink.Request | netlink.Acknowledge; m.Header.Type != 0x0100 || m.Header.Flags != want {
		t.Errorf("header = %#04x %v, want 0x0100 %v (an update)", m.Header.Type, m.Header.Flags, want)
	}
	want := unhex(t, `
		02 00 00 00                 // nfgenmsg: AF_INET
	`+goldenTuple4Orig+`
		08 00 08 00 20 00 00 00     // CTA_MARK 0x20000000, big-endian
		08 00 15 00 20 00 00 00     // CTA_MARK_MASK 0x20000000: only that bit changes
	`)
	if !bytes.Equal(m.Data, want) {
		t.Errorf("data:\n got %x\nwant %x", m.Data, want)
	}
}

func TestGetRequestGolden(t *testing.T) {
	m, err := getRequest(tuple4)
	if err != nil {
		t.Fatal(err)
	}
	if want := netlink.Request | netlink.Acknowledge; m.Header.Type != 0x0101 || m.Header.Flags != want {
		t.Errorf("header = %#04x %v, want 0x0101 %v", m.Header.Type, m.Header.Flags, want)
	}
	want := unhex(t, `02 00 00 00`+goldenTuple4Orig)
	if !bytes.Equal(m.Data, want) {
		t.Errorf("data:\n got %x\nwant %x", m.Data, want)
	}
}

func TestGetRequestIPv6(t *testing.T) {
	m, err := getRequest(tuple6)
	if err != nil {
		t.Fatal(err)
	}
	want := unhex(t, `
		0a 00 00 00              // nfgenmsg: AF_INET6
		4c 00 01 80              // CTA_TUPLE_ORIG, 76 bytes
		  2c 00 01 80            //   CTA_TUPLE_IP, 44 bytes
		    14 00 03 00 20010db8000100000000000000000010 // CTA_IP_V6_SRC
		    14 00 04 00 20010db8000200000000000000000020 // CTA_IP_V6_DST
		  1c 00 02 80            //   CTA_TUPLE_PROTO
		    05 00 01 00 06 00 00 00
		    06 00 02 00 9c 40 00 00
		    06 00 03 00 00 15 00 00
	`)
	if !bytes.Equal(m.Data, want) {
		t.Errorf("data:\n got %x\nwant %x", m.Data, want)
	}
}

func TestFilterDumpRequestGolden(t *testing.T) {
	m, err := filterDumpRequest(tuple4, tuple4.Reverse())
	if err != nil {
		t.Fatal(err)
	}
	if want := netlink.Request | netlink.Dump; m.Header.Type != 0x0101 || m.Header.Flags != want {
		t.Errorf("header = %#04x %v, want 0x0101 %v", m.Header.Type, m.Header.Flags, want)
	}
	// The filter flags are NLA_U32 in host byte order.
	flags := hex.EncodeToString(binary.NativeEndian.AppendUint32(nil, 0x19))
	want := unhex(t, `02 00 00 00`+goldenTuple4Orig+`
		34 00 02 80                 // CTA_TUPLE_REPLY, 52 bytes
		  14 00 01 80
		    08 00 01 00 c6 33 64 14 //     src 198.51.100.20
		    08 00 02 00 c0 00 02 0a //     dst 192.0.2.10
		  1c 00 02 80
		    05 00 01 00 06 00 00 00
		    06 00 02 00 00 15 00 00 //     src port 21
		    06 00 03 00 9c 40 00 00 //     dst port 40000
		14 00 19 80                 // CTA_FILTER (25), nested, 20 bytes
		  08 00 01 00 `+flags+`     //   ORIG_FLAGS IP_SRC|PROTO_NUM|PROTO_SRC_PORT
		  08 00 02 00 `+flags+`     //   REPLY_FLAGS, same
	`)
	if !bytes.Equal(m.Data, want) {
		t.Errorf("data:\n got %x\nwant %x", m.Data, want)
	}
}

// entryMessage builds what the kernel sends for an entry: nfgenmsg, then
// attributes the decoder must skip around the two tuples.
func entryMessage(t *testing.T, flags netlink.HeaderFlags, tuples string) netlink.Message {
	t.Helper()
	data := unhex(t, `
		02 00 00 00
		08 00 03 00 00 00 01 8e      // CTA_STATUS
	`+tuples+`
		08 00 0c 00 8b ad f0 0d      // CTA_ID 0x8badf00d, big-endian
		08 00 07 00 00 00 01 2c      // CTA_TIMEOUT
		18 00 04 80                  // CTA_PROTOINFO
		  14 00 01 80
		    06 00 04 00 2b 00 00 00
		    06 00 05 00 27 00 00 00
	`)
	return netlink.Message{
		Header: netlink.Header{Type: 0x0100, Flags: flags},
		Data:   data,
	}
}

const goldenTuple4ReplyMasq = `
	34 00 02 80                 // CTA_TUPLE_REPLY
	  14 00 01 80
	    08 00 01 00 c6 33 64 14 //     src 198.51.100.20
	    08 00 02 00 c6 33 64 01 //     dst 198.51.100.1 (MASQUERADE)
	  1c 00 02 80
	    05 00 01 00 06 00 00 00
	    06 00 02 00 00 15 00 00 //     src port 21
	    06 00 03 00 c3 50 00 00 //     dst port 50000
`

func TestDecodeEntry(t *testing.T) {
	udpTuple := strings.Replace(goldenTuple4Orig, "05 00 01 00 06", "05 00 01 00 11", 1)
	tests := []struct {
		name    string
		tuples  string
		want    Entry
		wantErr error
	}{
		{
			name:   "tcp",
			tuples: goldenTuple4Orig + goldenTuple4ReplyMasq,
			want: Entry{
				Orig: tuple4,
				Reply: Tuple{
					Src: netip.MustParseAddrPort("198.51.100.20:21"),
					Dst: netip.MustParseAddrPort("198.51.100.1:50000"),
				},
				ID: 0x8badf00d,
			},
		},
		{name: "udp", tuples: udpTuple + goldenTuple4ReplyMasq, wantErr: errNotTCP},
		{name: "no reply tuple", tuples: goldenTuple4Orig, wantErr: ErrMalformed},
		{
			name:    "truncated address",
			tuples:  strings.Replace(goldenTuple4Orig, "08 00 01 00 c0 00 02 0a", "07 00 01 00 c0 00 02 00", 1) + goldenTuple4ReplyMasq,
			wantErr: ErrMalformed,
		},
		{
			name:    "missing port",
			tuples:  strings.Replace(goldenTuple4Orig, "06 00 03 00 00 15", "06 00 09 00 00 15", 1) + goldenTuple4ReplyMasq,
			wantErr: ErrMalformed,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeEntry(entryMessage(t, 0, tt.tuples))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("entry = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestDecodeEntryGarbage(t *testing.T) {
	// No input may panic; all must fail with ErrMalformed.
	for _, data := range [][]byte{nil, {2}, {2, 0, 0, 0, 0xff}, {2, 0, 0, 0, 4, 0, 1, 0x80}, bytes.Repeat([]byte{0xff}, 64)} {
		m := netlink.Message{Header: netlink.Header{Type: 0x0100}, Data: data}
		if _, err := decodeEntry(m); !errors.Is(err, ErrMalformed) {
			t.Errorf("decodeEntry(%x) err = %v, want ErrMalformed", data, err)
		}
	}
	m := entryMessage(t, 0, goldenTuple4Orig+goldenTuple4ReplyMasq)
	m.Header.Type = 0x0200 // NFNL_SUBSYS_CTNETLINK_EXP
	if _, err := decodeEntry(m); !errors.Is(err, ErrMalformed) {
		t.Errorf("expectation message: err = %v, want ErrMalformed", err)
	}
}

func TestDecodeEvent(t *testing.T) {
	tuples := goldenTuple4Orig + goldenTuple4ReplyMasq
	udp := strings.ReplaceAll(tuples, "05 00 01 00 06", "05 00 01 00 11")
	tests := []struct {
		name     string
		flags    netlink.HeaderFlags
		typ      netlink.HeaderType
		tuples   string
		wantKind eventKind
	}{
		{"new", netlink.Create | netlink.Excl, 0x0100, tuples, eventNew},
		{"update", 0, 0x0100, tuples, eventOther},
		{"destroy", 0, 0x0102, tuples, eventDestroy},
		{"new udp", netlink.Create | netlink.Excl, 0x0100, udp, eventOther},
		{"destroy udp", 0, 0x0102, udp, eventOther},
		{"get", 0, 0x0101, tuples, eventOther},
		{"expectation destroy", 0, 0x0202, tuples, eventOther},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := entryMessage(t, tt.flags, tt.tuples)
			m.Header.Type = tt.typ
			kind, e, err := decodeEvent(m)
			if err != nil {
				t.Fatal(err)
			}
			if kind != tt.wantKind {
				t.Fatalf("kind = %v, want %v", kind, tt.wantKind)
			}
			if kind != eventOther && (e.Orig != tuple4 || e.ID != 0x8badf00d) {
				t.Errorf("entry = %v id %#x, want %v id 0x8badf00d", e, e.ID, tuple4)
			}
		})
	}
}

// TestDecodeDestroyEvent decodes a DESTROY event laid out as the kernel
// writes one (ctnetlink_conntrack_event with IPCT_DESTROY): the tuples,
// CTA_ID, CTA_STATUS, then CTA_PROTOINFO holding the TCP state alone
// (tcp_to_nlattr with destroy set skips window scales and flags), with
// neither CTA_TIMEOUT (zero, skipped) nor labels.
func TestDecodeDestroyEvent(t *testing.T) {
	data := unhex(t, `
		02 00 00 00
	`+goldenTuple4Orig+goldenTuple4ReplyMasq+`
		08 00 0c 00 00 00 00 2a      // CTA_ID 42
		08 00 03 00 00 00 01 8e      // CTA_STATUS
		10 00 04 80                  // CTA_PROTOINFO
		  0c 00 01 80                //   CTA_PROTOINFO_TCP
		    05 00 01 00 07 00 00 00  //     STATE 7 (TIME_WAIT)
	`)
	m := netlink.Message{Header: netlink.Header{Type: 0x0102}, Data: data}
	kind, e, err := decodeEvent(m)
	if err != nil {
		t.Fatal(err)
	}
	want := Destroyed{
		Orig:     tuple4,
		Reply:    Tuple{Src: netip.MustParseAddrPort("198.51.100.20:21"), Dst: netip.MustParseAddrPort("198.51.100.1:50000")},
		ID:       42,
		TCPState: TCPTimeWait,
	}
	if kind != eventDestroy || e != want {
		t.Errorf("decodeEvent = %v, %+v; want destroy, %+v", kind, e, want)
	}
	// A CTA_ID of another size is malformed, not a zero ID.
	bad := unhex(t, `
		02 00 00 00
	`+goldenTuple4Orig+goldenTuple4ReplyMasq+`
		06 00 0c 00 00 2a 00 00      // CTA_ID of 2 bytes
	`)
	if _, _, err := decodeEvent(netlink.Message{Header: netlink.Header{Type: 0x0102}, Data: bad}); !errors.Is(err, ErrMalformed) {
		t.Errorf("short CTA_ID: err = %v, want ErrMalformed", err)
	}
}
