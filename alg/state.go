package alg

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrState reports a saved Dialog that cannot be restored.
var ErrState = errors.New("alg: bad saved dialog state")

// stateVersion prefixes a saved Dialog; bump it when the layout changes.
const stateVersion = 1

// MarshalBinary saves the dialog, for a process that takes over the
// connection after a restart.
func (d Dialog) MarshalBinary() ([]byte, error) {
	b := make([]byte, 0, 8+queueLen)
	b = append(b, stateVersion, d.head, d.n, d.flags)
	b = binary.BigEndian.AppendUint16(b, d.lost)
	b = binary.BigEndian.AppendUint32(b, d.maxLine)
	b = append(b, d.multi[:]...)
	for _, c := range d.queue {
		b = append(b, byte(c))
	}
	return b, nil
}

// UnmarshalBinary restores a dialog saved by MarshalBinary.
func (d *Dialog) UnmarshalBinary(b []byte) error {
	if len(b) != 13+queueLen || b[0] != stateVersion {
		return fmt.Errorf("%w: %d bytes, version %d", ErrState, len(b), firstByte(b))
	}
	var s Dialog
	s.head, s.n, s.flags = b[1], b[2], b[3]
	s.lost = binary.BigEndian.Uint16(b[4:])
	s.maxLine = binary.BigEndian.Uint32(b[6:])
	copy(s.multi[:], b[10:13])
	for i := range s.queue {
		s.queue[i] = cmd(b[13+i])
		if s.queue[i] > cmdPASS {
			return fmt.Errorf("%w: command %d", ErrState, s.queue[i])
		}
	}
	if int(s.head) >= queueLen || int(s.n) > queueLen {
		return fmt.Errorf("%w: queue %d+%d", ErrState, s.head, s.n)
	}
	*d = s
	return nil
}

func firstByte(b []byte) int {
	if len(b) == 0 {
		return -1
	}
	return int(b[0])
}
