package alg

import (
	"net/netip"
	"testing"
)

func BenchmarkClientLinePORT(b *testing.B) {
	base := NewDialog(Config{})
	line := []byte("PORT 192,0,2,10,195,80")
	b.ReportAllocs()
	b.SetBytes(int64(len(line)))
	for b.Loop() {
		d := base
		if f := d.ClientLine(line); !f.Usable() {
			b.Fatal(f.Err)
		}
	}
}

func BenchmarkClientLineEPRT6(b *testing.B) {
	base := NewDialog(Config{})
	line := []byte("EPRT |2|2001:db8:1234:5678::9abc|50000|")
	b.ReportAllocs()
	b.SetBytes(int64(len(line)))
	for b.Loop() {
		d := base
		if f := d.ClientLine(line); !f.Usable() {
			b.Fatal(f.Err)
		}
	}
}

// BenchmarkClientLineOther is the common case: a command that is not an
// address line.
func BenchmarkClientLineOther(b *testing.B) {
	base := NewDialog(Config{})
	line := []byte("RETR /pub/some/file.tar.gz")
	b.ReportAllocs()
	for b.Loop() {
		d := base
		d.ClientLine(line)
	}
}

func BenchmarkServerLine227(b *testing.B) {
	base := greeted(b)
	base.ClientLine([]byte("PASV"))
	line := []byte("227 Entering Passive Mode (192,0,2,10,195,80).")
	b.ReportAllocs()
	b.SetBytes(int64(len(line)))
	for b.Loop() {
		d := base
		if f := d.ServerLine(line); !f.Usable() {
			b.Fatal(f.Err)
		}
	}
}

func BenchmarkServerLine229(b *testing.B) {
	base := greeted(b)
	base.ClientLine([]byte("EPSV"))
	line := []byte("229 Entering Extended Passive Mode (|||50000|)")
	b.ReportAllocs()
	for b.Loop() {
		d := base
		if f := d.ServerLine(line); !f.Usable() {
			b.Fatal(f.Err)
		}
	}
}

// BenchmarkServerLineUnsolicited is the refusal path (pure-ftpd "227
// Logout."): it must be as cheap and allocation-free as the rest.
func BenchmarkServerLineUnsolicited(b *testing.B) {
	base := greeted(b)
	base.ClientLine([]byte("QUIT"))
	line := []byte("227 Logout.")
	b.ReportAllocs()
	for b.Loop() {
		d := base
		d.ServerLine(line)
	}
}

func BenchmarkMayRewrite(b *testing.B) {
	d := greeted(b)
	d.ClientLine([]byte("PASV"))
	client := []byte("PORT 192,0,2")
	server := []byte("227 Entering Passive Mode (192,0,2")
	b.ReportAllocs()
	for b.Loop() {
		if !d.MayRewrite(Client, client) || !d.MayRewrite(Server, server) {
			b.Fatal("not held")
		}
	}
}

func BenchmarkRewrite(b *testing.B) {
	d := NewDialog(Config{})
	line := []byte("PORT 10,0,0,1,195,80")
	f := d.ClientLine(line)
	to := netip.MustParseAddrPort("198.51.100.200:50000")
	dst := make([]byte, 0, 128)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if dst, err = f.Rewrite(dst[:0], line, to); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRewriteEPRT6(b *testing.B) {
	d := NewDialog(Config{})
	line := []byte("EPRT |2|2001:db8::1|50000|")
	f := d.ClientLine(line)
	to := netip.MustParseAddrPort("[2001:db8:1234:5678::9abc]:50000")
	dst := make([]byte, 0, 128)
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if dst, err = f.Rewrite(dst[:0], line, to); err != nil {
			b.Fatal(err)
		}
	}
}
