package daemon

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// readQueueStats reads the counters of queue num in the calling process's
// network namespace. ok is false when the queue is not bound.
func readQueueStats(num uint16) (queueStats, bool) {
	f, err := os.Open("/proc/net/netfilter/nfnetlink_queue")
	if err != nil {
		return queueStats{}, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// queue_number peer_portid queue_total copy_mode copy_range
		// queue_dropped user_dropped id_sequence 1
		fields := strings.Fields(sc.Text())
		if len(fields) < 7 || fields[0] != strconv.Itoa(int(num)) {
			continue
		}
		var v [3]uint64
		for i, idx := range []int{2, 5, 6} {
			v[i], _ = strconv.ParseUint(fields[idx], 10, 64)
		}
		return queueStats{queued: v[0], dropped: v[1], userDropped: v[2]}, true
	}
	return queueStats{}, false
}
