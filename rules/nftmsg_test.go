package rules

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/nlmsg"
)

// Host-order fields of netlink headers, for writing expected messages.
func ne16(v uint16) []byte { return binary.NativeEndian.AppendUint16(nil, v) }
func ne32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

// TestAppendNFTBatchLayout spells out, field by field from the kernel's
// uapi headers, the batch adding one element to routed_pinholes of the ip
// table. TestNFTBatchMatchesGoogle (Linux only) compares every kind of
// batch with google/nftables.
func TestAppendNFTBatchLayout(t *testing.T) {
	key := []byte{198, 51, 100, 20, 192, 0, 2, 10, 0x08, 0x49, 0, 0}
	op := nftElemOp{
		set: nftSetRef{family: 2 /* NFPROTO_IPV4 */, table: "ftpalg", name: "routed_pinholes", id: 1},
		key: key,
		ttl: 62 * time.Second,
	}
	got, err := appendNFTBatch([]byte("kept"), 100, []nftElemOp{op})
	if err != nil {
		t.Fatal(err)
	}
	batch := func(typ uint16, seq uint32) []byte {
		return bytes.Join([][]byte{
			ne32(20), ne16(typ), ne16(0x1 /* NLM_F_REQUEST */), ne32(seq), ne32(0),
			{0 /* AF_UNSPEC */, 0 /* NFNETLINK_V0 */, 0, 10 /* res_id NFNL_SUBSYS_NFTABLES, big-endian */},
		}, nil)
	}
	elem := bytes.Join([][]byte{
		ne32(16 + 4 + 20 + 8 + 12 + 40),
		ne16(10<<8 | 12),        // NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWSETELEM
		ne16(0x1 | 0x4 | 0x400), // NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE
		ne32(101), ne32(0),
		{2, 0, 0, 0},                                     // NFPROTO_IPV4, NFNETLINK_V0, res_id 0
		ne16(20), ne16(2), []byte("routed_pinholes\x00"), // NFTA_SET_ELEM_LIST_SET
		ne16(8), ne16(4), {0, 0, 0, 1}, // NFTA_SET_ELEM_LIST_SET_ID, big-endian
		ne16(11), ne16(1), []byte("ftpalg\x00"), {0}, // NFTA_SET_ELEM_LIST_TABLE, padded
		ne16(40), ne16(3 | 0x8000), // NFTA_SET_ELEM_LIST_ELEMENTS, nested
		ne16(36), ne16(1 | 0x8000), // NFTA_LIST_ELEM, nested
		ne16(20), ne16(1 | 0x8000), // NFTA_SET_ELEM_KEY, nested
		ne16(16), ne16(1), key, // NFTA_DATA_VALUE
		ne16(12), ne16(4), {0, 0, 0, 0, 0, 0, 0xf2, 0x30}, // NFTA_SET_ELEM_TIMEOUT: 62000 ms, big-endian
	}, nil)
	want := bytes.Join([][]byte{[]byte("kept"), batch(0x10, 100), elem, batch(0x11, 102)}, nil)
	if !bytes.Equal(got, want) {
		t.Errorf("batch:\n got %x\nwant %x", got, want)
	}
}

func TestAppendNFTBatchInvalid(t *testing.T) {
	set := nftSetRef{family: 2, table: "ftpalg", name: "routed_pinholes", id: 1}
	tests := []struct {
		name string
		op   nftElemOp
	}{
		{"NUL in set name", nftElemOp{set: nftSetRef{table: "ftpalg", name: "a\x00b"}, key: []byte{1}}},
		{"NUL in table name", nftElemOp{set: nftSetRef{table: "ft\x00", name: "s"}, key: []byte{1}}},
		{"empty key", nftElemOp{set: set}},
		{"key beyond an attribute", nftElemOp{set: set, key: make([]byte, 70000)}},
		{"value beyond a message", nftElemOp{set: set, key: []byte{1}, val: make([]byte, nftMaxMsg)}},
		{"name beyond a message", nftElemOp{set: nftSetRef{table: "ftpalg", name: strings.Repeat("s", 65000)}, key: []byte{1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := []byte("kept")
			b, err := appendNFTBatch(prefix, 1, []nftElemOp{tt.op})
			if err == nil {
				t.Fatalf("no error; encoded %d bytes", len(b))
			}
			if !bytes.Equal(b, prefix) {
				t.Errorf("returned %q, want the buffer as it was", b)
			}
		})
	}
}

func TestNFTTimeoutMillis(t *testing.T) {
	for _, tt := range []struct {
		ttl  time.Duration
		ms   uint64
		send bool
	}{
		{0, 0, false},
		{-time.Second, 0, false},
		{time.Nanosecond, 1, true},
		{time.Millisecond, 1, true},
		{1999 * time.Microsecond, 1, true},
		{62 * time.Second, 62000, true},
		{400 * 24 * time.Hour, 400 * 24 * 3600 * 1000, true},
	} {
		ms, send := nftTimeoutMillis(tt.ttl)
		if ms != tt.ms || send != tt.send {
			t.Errorf("nftTimeoutMillis(%v) = %d, %v; want %d, %v", tt.ttl, ms, send, tt.ms, tt.send)
		}
	}
}

// nlAck is an NLMSG_ERROR message answering seq with errno (negated, as
// the kernel sends it), followed by extra bytes of the request.
func nlAck(seq uint32, errno int32, extra ...byte) []byte {
	return bytes.Join([][]byte{
		ne32(uint32(16 + 4 + 16 + len(extra))), ne16(2), ne16(0x100), ne32(seq), ne32(4242),
		ne32(uint32(-errno)),
		make([]byte, 16), // the request's header
		extra,
	}, nil)
}

func TestParseNFTAcks(t *testing.T) {
	done := bytes.Join([][]byte{ne32(20), ne16(3 /* NLMSG_DONE */), ne16(0), ne32(9), ne32(0), ne32(0)}, nil)
	tests := []struct {
		name    string
		in      []byte
		want    []nftAck
		wantErr bool
	}{
		{name: "ack", in: nlAck(7, 0), want: []nftAck{{7, 0}}},
		{name: "error", in: nlAck(8, 2), want: []nftAck{{8, syscall.ENOENT}}},
		{name: "error with the request, unpadded", in: nlAck(8, 1, 1, 2, 3), want: []nftAck{{8, syscall.EPERM}}},
		{name: "several", in: bytes.Join([][]byte{nlAck(1, 0), done, nlAck(2, 17)}, nil),
			want: []nftAck{{1, 0}, {2, syscall.EEXIST}}},
		{name: "other messages only", in: done},
		{name: "empty"},
		{name: "short header", in: nlAck(1, 0)[:15], wantErr: true},
		{name: "length beyond datagram", in: nlAck(1, 0)[:30], wantErr: true},
		{name: "length below header", in: append(ne32(8), make([]byte, 16)...), wantErr: true},
		{name: "error without errno", in: bytes.Join([][]byte{ne32(16), ne16(2), ne16(0), ne32(1), ne32(0)}, nil), wantErr: true},
		{name: "good then garbage", in: append(nlAck(3, 0), 1, 2, 3), want: []nftAck{{3, 0}}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseNFTAcks(tt.in, nil)
			if (err != nil) != tt.wantErr {
				t.Errorf("error %v, want error %v", err, tt.wantErr)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("acks %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("ack %d = %+v, want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func FuzzParseNFTAcks(f *testing.F) {
	f.Add(nlAck(1, 0))
	f.Add(bytes.Join([][]byte{nlAck(1, 2, 9), nlAck(2, 0)}, nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		acks, err := parseNFTAcks(b, nil)
		if err == nil && len(acks) > len(b)/20 {
			t.Errorf("%d acks from %d bytes", len(acks), len(b))
		}
	})
}

func TestNFTAckWait(t *testing.T) {
	set := nftSetRef{family: 2, table: "ftpalg", name: "nat_pinholes", id: 2}
	targets := nftSetRef{family: 2, table: "ftpalg", name: "nat_targets", id: 3}
	ops := []nftElemOp{
		{del: true, set: targets, key: []byte{1}},
		{set: targets, key: []byte{1}, val: []byte{2}, ttl: time.Second},
		{set: set, key: []byte{1}, ttl: time.Second},
	}
	type step struct {
		ack  nftAck
		done bool
		err  string // substring; "" for none
	}
	tests := []struct {
		name  string
		begin uint32
		steps []step
	}{
		{"all acked", 10, []step{{nftAck{11, 0}, false, ""}, {nftAck{12, 0}, false, ""}, {nftAck{13, 0}, true, ""}}},
		{"stale answers skipped", 10, []step{
			{nftAck{9, syscall.ENOENT}, false, ""}, {nftAck{3, 0}, false, ""}, {nftAck{15, 0}, false, ""},
			{nftAck{11, 0}, false, ""}, {nftAck{12, 0}, false, ""}, {nftAck{0xffffffa6, 0}, false, ""}, {nftAck{13, 0}, true, ""}}},
		{"first op fails", 10, []step{{nftAck{11, syscall.ENOENT}, true, "deleting from nat_targets: no such file"}}},
		{"map op fails", 10, []step{{nftAck{11, 0}, false, ""}, {nftAck{12, syscall.EINVAL}, true, "adding to map nat_targets"}}},
		{"set op fails", 10, []step{{nftAck{11, 0}, false, ""}, {nftAck{12, 0}, false, ""}, {nftAck{13, syscall.E2BIG}, true, "adding to set nat_pinholes"}}},
		{"batch refused", 10, []step{{nftAck{10, syscall.EPERM}, true, "transaction: operation not permitted"}}},
		{"batch end refused", 10, []step{{nftAck{14, syscall.EINVAL}, true, "transaction"}}},
		{"batch acks ignored", 10, []step{{nftAck{10, 0}, false, ""}, {nftAck{11, 0}, false, ""}, {nftAck{12, 0}, false, ""}, {nftAck{14, 0}, false, ""}, {nftAck{13, 0}, true, ""}}},
		{"sequence numbers wrap", 0xfffffffe, []step{{nftAck{0xfffffffd, 0}, false, ""}, {nftAck{0xffffffff, 0}, false, ""}, {nftAck{0, 0}, false, ""}, {nftAck{1, 0}, true, ""}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := nftAckWait{begin: tt.begin, ops: ops}
			for i, s := range tt.steps {
				done, err := w.take(s.ack)
				if done != s.done {
					t.Errorf("step %d (%+v): done %v, want %v", i, s.ack, done, s.done)
				}
				switch {
				case s.err == "" && err != nil:
					t.Errorf("step %d: error %v", i, err)
				case s.err != "" && (err == nil || !strings.Contains(err.Error(), s.err)):
					t.Errorf("step %d: error %v, want one containing %q", i, err, s.err)
				case err != nil && (!errors.Is(err, ErrNFTables) || !errors.Is(err, s.ack.errno)):
					t.Errorf("step %d: error %v wraps neither ErrNFTables nor %v", i, err, s.ack.errno)
				}
			}
		})
	}
	if done, err := (nftAckWait{begin: 1}).take(nftAck{1, syscall.EPERM}); !done || err == nil {
		t.Errorf("empty transaction, batch refused: done %v, error %v", done, err)
	}
}

func FuzzAppendNFTBatch(f *testing.F) {
	f.Add("nat_targets", []byte{1, 2, 3, 4}, []byte{5, 6, 7, 8}, int64(time.Minute), false)
	f.Add("routed_pinholes", []byte{1}, []byte(nil), int64(0), true)
	f.Fuzz(func(t *testing.T, name string, key, val []byte, ttl int64, del bool) {
		op := nftElemOp{del: del, set: nftSetRef{family: 10, table: "ftpalg", name: name, id: 3},
			key: key, val: val, ttl: time.Duration(ttl)}
		b, err := appendNFTBatch(nil, 7, []nftElemOp{op, op})
		if err != nil {
			return
		}
		// Four messages whose lengths add up, numbered 7 to 10.
		for seq := uint32(7); seq <= 10; seq++ {
			if len(b) < nlmsg.HeaderLen {
				t.Fatalf("message %d missing", seq)
			}
			n := binary.NativeEndian.Uint32(b)
			if n < nlmsg.HeaderLen+nfgenLen || uint64(n) > uint64(len(b)) || n%4 != 0 {
				t.Fatalf("message %d: length %d of %d bytes", seq, n, len(b))
			}
			if got := binary.NativeEndian.Uint32(b[8:]); got != seq {
				t.Fatalf("message %d numbered %d", seq, got)
			}
			b = b[n:]
		}
		if len(b) != 0 {
			t.Fatalf("%d bytes after the batch", len(b))
		}
	})
}
