package rules

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"testing"

	"golang.org/x/net/bpf"
)

// The programs of pureACK4 and pureACK6, annotated in pureack.go, written
// with an assembler so the test checks the bytecode strings instruction by
// instruction.
var (
	pureACK4Prog = []bpf.Instruction{
		bpf.LoadMemShift{Off: 0},
		bpf.LoadIndirect{Off: 12, Size: 1},
		bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0xf0},
		bpf.ALUOpConstant{Op: bpf.ALUOpShiftRight, Val: 2},
		bpf.ALUOpX{Op: bpf.ALUOpAdd},
		bpf.TAX{},
		bpf.LoadAbsolute{Off: 2, Size: 2},
		bpf.JumpIfX{Cond: bpf.JumpEqual, SkipTrue: 0, SkipFalse: 1},
		bpf.RetConstant{Val: 0xffff},
		bpf.RetConstant{Val: 0},
	}
	pureACK6Prog = []bpf.Instruction{
		bpf.LoadAbsolute{Off: 6, Size: 1},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: 6, SkipTrue: 0, SkipFalse: 7},
		bpf.LoadAbsolute{Off: 52, Size: 1},
		bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0xf0},
		bpf.ALUOpConstant{Op: bpf.ALUOpShiftRight, Val: 2},
		bpf.TAX{},
		bpf.LoadAbsolute{Off: 4, Size: 2},
		bpf.JumpIfX{Cond: bpf.JumpEqual, SkipTrue: 0, SkipFalse: 1},
		bpf.RetConstant{Val: 0xffff},
		bpf.RetConstant{Val: 0},
	}
)

func xtBytecode(t testing.TB, prog []bpf.Instruction) string {
	t.Helper()
	raw, err := bpf.Assemble(prog)
	if err != nil {
		t.Fatal(err)
	}
	parts := []string{fmt.Sprint(len(raw))}
	for _, r := range raw {
		parts = append(parts, fmt.Sprintf("%d %d %d %d", r.Op, r.Jt, r.Jf, r.K))
	}
	return strings.Join(parts, ",")
}

// segment builds an IP packet carrying a TCP segment: ipOpt bytes of IPv4
// options (NOPs; ignored for IPv6), tcpOpt bytes of TCP options (NOPs),
// payload bytes of data; ext adds an IPv6 hop-by-hop extension header.
// Both option lengths must be multiples of 4.
func segment(v6 bool, ipOpt, tcpOpt, payload int, ext bool) []byte {
	tcp := make([]byte, 20+tcpOpt+payload)
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 21)
	binary.BigEndian.PutUint32(tcp[4:], 1000)
	binary.BigEndian.PutUint32(tcp[8:], 2000)
	tcp[12] = byte((20+tcpOpt)/4) << 4
	tcp[13] = 0x10 // ACK
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	for i := 20; i < 20+tcpOpt; i++ {
		tcp[i] = 1 // NOP
	}
	for i := 20 + tcpOpt; i < len(tcp); i++ {
		tcp[i] = 'x'
	}
	if !v6 {
		ip := make([]byte, 20+ipOpt)
		ip[0] = 0x40 | byte((20+ipOpt)/4)
		binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)+len(tcp)))
		ip[8], ip[9] = 64, 6
		copy(ip[12:], []byte{192, 0, 2, 10})
		copy(ip[16:], []byte{198, 51, 100, 20})
		for i := 20; i < len(ip); i++ {
			ip[i] = 1 // NOP
		}
		binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip))
		return append(ip, tcp...)
	}
	ip := make([]byte, 40)
	ip[0] = 0x60
	ip[6], ip[7] = 6, 64
	copy(ip[8:], []byte{0x20, 0x01, 0x0d, 0xb8, 0, 1, 15: 0x10})
	copy(ip[24:], []byte{0x20, 0x01, 0x0d, 0xb8, 0, 2, 15: 0x20})
	if ext {
		ip[6] = 0                               // hop-by-hop options, then TCP
		ip = append(ip, 6, 0, 1, 4, 0, 0, 0, 0) // next TCP, length 0 (8 bytes), PadN
	}
	binary.BigEndian.PutUint16(ip[4:], uint16(len(ip)-40+len(tcp)))
	return append(ip, tcp...)
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// layout is one packet shape of the proof.
type layout struct {
	v6                     bool
	ipOpt, tcpOpt, payload int
	ext                    bool
}

func (l layout) String() string {
	fam := "v4"
	if l.v6 {
		fam = "v6"
	}
	return fmt.Sprintf("%s ipopt=%d tcpopt=%d payload=%d ext=%v", fam, l.ipOpt, l.tcpOpt, l.payload, l.ext)
}

// wantMatch is what the rule must decide: skip only segments without a
// byte of payload, and never guess where it cannot see (IPv6 extension
// headers are queued).
func (l layout) wantMatch() bool { return l.payload == 0 && !l.ext }

// layouts lists every IP and TCP header length (IPv4 IHL 5-15, data
// offset 5-15) with payloads 0-5, 39-41 and a full segment, and IPv6 with
// and without an extension header.
func layouts() []layout {
	payloads := []int{0, 1, 2, 3, 4, 5, 39, 40, 41, 1400}
	var ls []layout
	for tcpOpt := 0; tcpOpt <= 40; tcpOpt += 4 {
		for _, p := range payloads {
			for ipOpt := 0; ipOpt <= 40; ipOpt += 4 {
				ls = append(ls, layout{ipOpt: ipOpt, tcpOpt: tcpOpt, payload: p})
			}
			ls = append(ls, layout{v6: true, tcpOpt: tcpOpt, payload: p},
				layout{v6: true, tcpOpt: tcpOpt, payload: p, ext: true})
		}
	}
	return ls
}

func vm(t testing.TB, v6 bool) *bpf.VM {
	t.Helper()
	prog := pureACK4Prog
	if v6 {
		prog = pureACK6Prog
	}
	m, err := bpf.NewVM(prog)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestPureACKPrograms(t *testing.T) {
	if got := xtBytecode(t, pureACK4Prog); got != pureACK4 {
		t.Errorf("IPv4 bytecode %q, assembled program %q", pureACK4, got)
	}
	if got := xtBytecode(t, pureACK6Prog); got != pureACK6 {
		t.Errorf("IPv6 bytecode %q, assembled program %q", pureACK6, got)
	}
	v4, v6 := vm(t, false), vm(t, true)
	n := 0
	for _, l := range layouts() {
		m := v4
		if l.v6 {
			m = v6
		}
		pkt := segment(l.v6, l.ipOpt, l.tcpOpt, l.payload, l.ext)
		got, err := m.Run(pkt)
		if err != nil {
			t.Fatalf("%v: %v", l, err)
		}
		if (got != 0) != l.wantMatch() {
			t.Errorf("%v: program returned %d, want match=%v", l, got, l.wantMatch())
		}
		// Every truncation of a data-bearing segment must not match
		// either: a load past the end ends the program with 0.
		if l.payload > 0 {
			for cut := range len(pkt) - l.payload {
				if got, _ := m.Run(pkt[:cut]); got != 0 {
					t.Errorf("%v cut to %d bytes: matched", l, cut)
				}
			}
		}
		n++
	}
	t.Logf("%d layouts", n)
}

// TCP flag bits as xt_tcp compares them (byte 13 of the header).
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
	tcpURG = 0x20
)

// tcpFlagBits are the flag names iptables prints in --tcp-flags.
var tcpFlagBits = map[string]uint8{"FIN": tcpFIN, "SYN": tcpSYN, "RST": tcpRST, "PSH": tcpPSH, "ACK": tcpACK, "URG": tcpURG}

// flagsMatch evaluates the --tcp-flags MASK COMP of spec as xt_tcp does,
// (flags & mask) == comp, for a segment with flags.
func flagsMatch(t *testing.T, spec []string, flags uint8) bool {
	t.Helper()
	i := slices.Index(spec, "--tcp-flags")
	if i < 0 || i+2 >= len(spec) {
		t.Fatalf("no --tcp-flags in %q", spec)
	}
	bits := func(list string) uint8 {
		var b uint8
		for _, name := range strings.Split(list, ",") {
			v, ok := tcpFlagBits[name]
			if !ok {
				t.Fatalf("unknown flag %q in %q", name, spec)
			}
			b |= v
		}
		return b
	}
	return flags&bits(spec[i+1]) == bits(spec[i+2])
}

// TestSkipSpecs checks, for every combination of FIN, SYN, RST, PSH, ACK
// and URG, which segments without payload each skip rule lets pass, with
// and without SkipHandshake, and what else the rules require: the family's
// program, SEEN matched positively (set only where it should be), never a
// rewritten connection.
func TestSkipSpecs(t *testing.T) {
	for _, f := range []Family{IPv4, IPv6} {
		for _, hs := range []bool{false, true} {
			t.Run(fmt.Sprintf("%v handshake=%v", f, hs), func(t *testing.T) {
				rules := map[string][]string{
					"ack":    skipSpec(f, "21,2121", hs, false),
					"kernel": kernelSkipSpec(f, "21,2121", false),
				}
				if hs {
					rules["syn"] = synSkipSpec(f, "21,2121")
					rules["fin"] = skipSpec(f, "21,2121", true, true)
					rules["kernel fin"] = kernelSkipSpec(f, "21,2121", true)
				}
				for flags := 0; flags < 0x40; flags++ {
					fl := uint8(flags)
					var want []string // rules that must match
					switch {
					case fl&tcpRST != 0: // always queued
					case hs && fl&(tcpSYN|tcpFIN) == tcpSYN:
						want = []string{"syn"}
					case fl&(tcpSYN|tcpACK|tcpFIN) == tcpACK:
						want = []string{"ack", "kernel"}
					case hs && fl&(tcpSYN|tcpACK|tcpFIN) == tcpACK|tcpFIN:
						want = []string{"fin", "kernel fin"}
					}
					var got []string
					for name, spec := range rules {
						if flagsMatch(t, spec, fl) {
							got = append(got, name)
						}
					}
					slices.Sort(got)
					if !slices.Equal(got, want) {
						t.Errorf("flags %#02x: rules %q match, want %q", fl, got, want)
					}
				}
				for name, spec := range rules {
					if !slices.Contains(spec, PureACKBytecode(f)) || !slices.Contains(spec, "RETURN") {
						t.Errorf("%s: %q lacks the family's program or RETURN", name, spec)
					}
					txt := formatRule(spec)
					if strings.Contains(txt, "! --label 121") {
						t.Errorf("%s: %s matches SEEN inverted", name, txt)
					}
					if strings.HasPrefix(name, "fin") || strings.HasSuffix(name, " fin") {
						// The client's FIN only: a server's would overtake its 221.
						if !strings.Contains(txt, "--dports 21,2121") || strings.Contains(txt, "--ports") {
							t.Errorf("%s: not for the client's segments only: %s", name, txt)
						}
					}
					wantSet := name == "syn" || (name == "ack" && !hs)
					if got := strings.Contains(txt, "--label 121 --set"); got != wantSet {
						t.Errorf("%s: sets SEEN %v, want %v: %s", name, got, wantSet, txt)
					}
					if !strings.HasPrefix(name, "kernel") && !strings.Contains(txt, "--label 121") {
						t.Errorf("%s: does not require SEEN: %s", name, txt)
					}
					if !strings.HasPrefix(name, "kernel") && !strings.Contains(txt, "! --label 127") {
						t.Errorf("%s: does not exclude rewritten connections: %s", name, txt)
					}
				}
			})
		}
	}
}

// FuzzPureACK runs the programs on arbitrary bytes: whenever one matches,
// the packet's own length fields must say there is no payload, computed
// here independently of the program.
func FuzzPureACK(f *testing.F) {
	f.Add(segment(false, 0, 0, 0, false))  // v4 pure ACK: matches
	f.Add(segment(false, 0, 12, 1, false)) // v4 with timestamps, one byte
	f.Add(segment(false, 40, 40, 0, false))
	f.Add(segment(true, 0, 0, 0, false))  // v6 pure ACK
	f.Add(segment(true, 0, 12, 5, false)) // v6 "NOOP\n"-sized payload
	f.Add(segment(true, 0, 0, 0, true))   // v6 with hop-by-hop: queued
	f.Add([]byte{0x45})                   // truncated
	v4, v6 := vm(f, false), vm(f, true)
	f.Fuzz(func(t *testing.T, pkt []byte) {
		if got, _ := v4.Run(pkt); got != 0 {
			ihl := int(pkt[0]&0xf) * 4
			doff := int(pkt[ihl+12]>>4) * 4 // the program read it, so it is there
			if total := int(binary.BigEndian.Uint16(pkt[2:])); total != ihl+doff {
				t.Fatalf("v4 program matched total length %d, headers %d+%d", total, ihl, doff)
			}
		}
		if got, _ := v6.Run(pkt); got != 0 {
			if pkt[6] != 6 {
				t.Fatalf("v6 program matched next header %d", pkt[6])
			}
			doff := int(pkt[52]>>4) * 4
			if pl := int(binary.BigEndian.Uint16(pkt[4:])); pl != doff {
				t.Fatalf("v6 program matched payload length %d, TCP header %d", pl, doff)
			}
		}
	})
}
