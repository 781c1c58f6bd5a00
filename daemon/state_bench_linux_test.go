package daemon

import (
	"log/slog"
	"net/netip"
	"testing"

	"github.com/ftpalg/ftpalg/conntrack"
)

// BenchmarkStateWrite is one durable save of a rewritten connection's state,
// as a PORT rewrite, and each command and reply after it, waits for before
// its packet is released. Set TMPDIR to a tmpfs (/dev/shm) to measure what
// a router with --state-dir under /run pays.
func BenchmarkStateWrite(b *testing.B) {
	s, err := openStateStore(b.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	st := conntrack.FlowState{Session: 7, Dialog: make([]byte, 40), Mapping: true}
	st.Conn.Client = netip.MustParseAddrPort("192.0.2.10:40000")
	st.Conn.Server = netip.MustParseAddrPort("198.51.100.20:21")
	st.Halves[0].Edits = []conntrack.EditState{{Start: 100, OldLen: 25, Repl: []byte("PORT 198,51,100,1,200,1\r\n")}}
	for b.Loop() {
		s.save(st)
	}
}
