package ctnetlink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/internal/nlmsg"
	"github.com/ftpalg/ftpalg/internal/nlsock"
)

// eventReadBuffer is the receive buffer asked for the event socket. A burst
// of new data connections must fit while the handler runs; the kernel caps
// it at net.core.rmem_max.
const eventReadBuffer = 4 << 20

// answerBuffer holds the largest datagram the kernel sends on a query
// socket: dump parts are capped at 32 KiB (netlink_dump), single answers
// are far smaller.
const answerBuffer = 64 << 10

// queryTimeout bounds a request's round trip, which normally takes
// microseconds: a caller holding a packet's verdict must not hang on it.
const queryTimeout = 2 * time.Second

// Client is a ctnetlink connection to the conntrack table of one network
// namespace. It is safe for concurrent use; requests on it are serialised
// (one netlink round trip at a time).
type Client struct {
	log *slog.Logger
	// fd is the query socket: a blocking netlink socket, written and
	// read by the caller's thread under mu. The kernel answers a request
	// before the write returns, so the read finds the answer waiting; on
	// an idle machine this takes 7-8 µs where mdlayher/netlink's
	// poller-based socket took 30-55 µs, and a lookup holds a packet's
	// verdict. seq numbers the requests; buf holds one answer datagram.
	mu  sync.Mutex
	fd  int
	seq uint32
	buf []byte
	// events joins NFNLGRP_CONNTRACK_NEW from Subscribe (or Watch), and
	// NFNLGRP_CONNTRACK_DESTROY from SubscribeDestroy (or a Watch with a
	// Destroyed handler), until Watch returns. It is opened with the
	// query socket so that both live in the namespace Open was called
	// in, whichever thread Watch later runs on.
	events     *netlink.Conn
	subscribed atomic.Bool // NEW joined
	destroying atomic.Bool // DESTROY joined
	watching   atomic.Bool
	overruns   atomic.Uint64
}

// Open connects to ctnetlink in the network namespace of the calling thread.
// A nil log discards log output.
func Open(log *slog.Logger) (*Client, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	fd, err := nlsock.Open(queryTimeout)
	if err != nil {
		return nil, fmt.Errorf("opening ctnetlink socket: %w", err)
	}
	ev, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("opening ctnetlink event socket: %w", err)
	}
	if err := ev.SetReadBuffer(eventReadBuffer); err != nil {
		log.Warn("ctnetlink: cannot enlarge event socket buffer", "bytes", eventReadBuffer, "err", err)
	}
	return &Client{log: log, fd: fd, buf: make([]byte, answerBuffer), events: ev}, nil
}

// Close closes the connection. A running Watch returns; a request in
// flight is waited for.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var err error
	if c.fd >= 0 {
		err = unix.Close(c.fd)
		c.fd = -1
	}
	return errors.Join(err, c.events.Close())
}

// ErrClosed reports a request on a closed Client.
var ErrClosed = errors.New("ctnetlink: client closed")

// roundTrip sends req and passes each entry message of the answer to each,
// until the kernel's ACK or DONE ends the answer. Answers to earlier
// requests that timed out are recognised by their sequence number and
// skipped.
//
// It does not use netlink.Conn.Execute: mdlayher/netlink v1.11.2 keeps
// reading after a message flagged NLM_F_MULTI until it sees NLMSG_DONE, and
// ctnetlink answers a GET with one NLM_F_MULTI entry followed by an ACK,
// never DONE, so Execute blocks forever (mdlayher/netlink PR #315).
func (c *Client) roundTrip(req netlink.Message, each func(netlink.Message) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd < 0 {
		return ErrClosed
	}
	c.seq++
	req.Header.Sequence = c.seq
	req.Header.Length = uint32(nlmsg.HeaderLen + len(req.Data))
	b, err := req.MarshalBinary()
	if err != nil {
		return fmt.Errorf("encoding ctnetlink request: %w", err)
	}
	if err := nlsock.Retry(queryTimeout, func() error { _, err := unix.Write(c.fd, b); return err }); err != nil {
		return fmt.Errorf("sending ctnetlink request: %w", nlsock.Err("write", queryTimeout, err))
	}
	for {
		n, err := c.recv()
		if err != nil {
			return err
		}
		done, err := parseAnswer(c.buf[:n], c.seq, each)
		if done || err != nil {
			return err
		}
	}
}

// recv reads one datagram from the query socket into c.buf.
func (c *Client) recv() (int, error) {
	var n, flags int
	err := nlsock.Retry(queryTimeout, func() (err error) {
		n, _, flags, _, err = unix.Recvmsg(c.fd, c.buf, nil, 0)
		return err
	})
	switch {
	case err != nil:
		return 0, fmt.Errorf("receiving ctnetlink answer: %w", nlsock.Err("recvmsg", queryTimeout, err))
	case flags&unix.MSG_TRUNC != 0:
		return 0, fmt.Errorf("%w: answer larger than %d bytes", ErrMalformed, len(c.buf))
	}
	return n, nil
}

// get asks the kernel for the entry having t as one of its tuples.
func (c *Client) get(t Tuple) (Entry, error) {
	req, err := getRequest(t)
	if err != nil {
		return Entry{}, err
	}
	var (
		e Entry
		n int
	)
	err = c.roundTrip(req, func(m netlink.Message) error {
		n++
		var err error
		e, err = decodeEntry(m)
		return err
	})
	if errors.Is(err, unix.ENOENT) {
		return Entry{}, ErrNotFound
	}
	if err != nil {
		return Entry{}, err
	}
	if n != 1 {
		return Entry{}, fmt.Errorf("%w: %d answers to a get", ErrMalformed, n)
	}
	return e, nil
}

// dumpFiltered returns the entries whose original and reply tuples have the
// sources of orig and reply.
func (c *Client) dumpFiltered(orig, reply Tuple) ([]Entry, error) {
	req, err := filterDumpRequest(orig, reply)
	if err != nil {
		return nil, err
	}
	var entries []Entry
	err = c.roundTrip(req, func(m netlink.Message) error {
		e, err := decodeEntry(m)
		if err == nil {
			entries = append(entries, e)
		}
		return err
	})
	return entries, err
}

// Lookup finds the conntrack entry of the TCP connection a packet belongs
// to, given the packet's tuple as seen in mangle FORWARD, and the direction
// the packet travels in.
//
// It asks for seen, then for seen reversed: one of them is a tuple of the
// entry unless the connection has both SNAT and DNAT (see Entry). Only then
// does it fall back to two filtered dumps, which walk the whole conntrack
// hash in the kernel (about 3 ms each with 262144 buckets, against about
// 6 µs for a lookup); callers should cache the result per connection, and
// a miss (ErrNotFound) costs the walks too.
func (c *Client) Lookup(seen Tuple) (Entry, Direction, error) {
	seen, err := seen.normalize()
	if err != nil {
		return Entry{}, 0, err
	}
	for _, key := range [...]Tuple{seen, seen.Reverse()} {
		e, err := c.get(key)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return Entry{}, 0, fmt.Errorf("looking up conntrack entry of %s: %w", seen, err)
		}
		if d, ok := e.Direction(seen); ok {
			return e, d, nil
		}
		// An unrelated entry owns the key (possible only with NAT
		// mappings that collide with a direct connection); keep looking.
		c.log.Debug("ctnetlink: tuple belongs to another entry", "seen", seen, "entry", e)
	}
	// Original-direction hypothesis: seen.Src is Orig.Src and seen.Dst is
	// Reply.Src; then the reply-direction one.
	for _, h := range [...]struct{ orig, reply Tuple }{
		{seen, seen.Reverse()},
		{seen.Reverse(), seen},
	} {
		entries, err := c.dumpFiltered(h.orig, h.reply)
		if err != nil {
			return Entry{}, 0, fmt.Errorf("searching conntrack table for %s: %w", seen, err)
		}
		for _, e := range entries {
			if d, ok := e.Direction(seen); ok {
				return e, d, nil
			}
		}
	}
	return Entry{}, 0, fmt.Errorf("looking up conntrack entry of %s: %w", seen, ErrNotFound)
}

// PublicAddr returns the address the peer sees for the sender of a packet
// whose tuple in mangle FORWARD is seen: the kernel FTP helper's
// ct->tuplehash[!dir].tuple.dst. See Entry for the mapping.
func (c *Client) PublicAddr(seen Tuple) (netip.Addr, error) {
	e, d, err := c.Lookup(seen)
	if err != nil {
		return netip.Addr{}, err
	}
	return e.PublicAddr(d), nil
}

// SetLiberal sets IP_CT_TCP_FLAG_BE_LIBERAL in both directions of the
// conntrack entry of the connection seen belongs to (seen as in Lookup), so
// that conntrack accepts sequence and acknowledgement numbers that no longer
// match the payload it saw once ftpalg has changed a payload's length. Only
// that entry is affected; TCP state, window scale and the other flags stay.
func (c *Client) SetLiberal(seen Tuple) error {
	e, _, err := c.Lookup(seen)
	if err != nil {
		return fmt.Errorf("setting liberal window tracking: %w", err)
	}
	return c.SetLiberalEntry(e)
}

// SetLiberalEntry is SetLiberal for an entry already looked up, saving the
// lookup's round trips.
func (c *Client) SetLiberalEntry(e Entry) error {
	orig, err := e.Orig.normalize()
	if err != nil {
		return fmt.Errorf("setting liberal window tracking on %s: %w", e, err)
	}
	req, err := liberalRequest(orig)
	if err != nil {
		return err
	}
	if err := c.update(req); err != nil {
		return fmt.Errorf("setting liberal window tracking on %s: %w", e, err)
	}
	return nil
}

// update sends an update of one entry (IPCTNL_MSG_CT_NEW without
// NLM_F_CREATE), which answers with an ack only; no such entry is
// ErrNotFound.
func (c *Client) update(req netlink.Message) error {
	err := c.roundTrip(req, func(netlink.Message) error { return nil })
	if errors.Is(err, unix.ENOENT) {
		return ErrNotFound
	}
	return err
}

// SetMarkBits sets bits in the ct mark of the conntrack entry whose
// original tuple is orig (as a NEW event reports it), leaving its other
// mark bits alone. The daemon marks a data connection that came through a
// pinhole, so a static rule admits that one entry's retransmitted SYNs
// after the pinhole closed.
func (c *Client) SetMarkBits(orig Tuple, bits uint32) error {
	n, err := orig.normalize()
	if err != nil {
		return fmt.Errorf("setting mark %#x on %s: %w", bits, orig, err)
	}
	req, err := markRequest(n, bits)
	if err != nil {
		return err
	}
	if err := c.update(req); err != nil {
		return fmt.Errorf("setting mark %#x on %s: %w", bits, orig, err)
	}
	return nil
}

// ErrNoLabels reports an entry that cannot hold labels: it was created
// before any connlabel rule (iptables -m connlabel, nft ct label) was loaded
// in its network namespace, so the kernel gave it no label extension and
// refuses CTA_LABELS with ENOSPC.
var ErrNoLabels = errors.New("conntrack entry has no label extension (created before a connlabel rule was loaded)")

// SetLabels sets the label bits selected by mask to those of labels on the
// entry one of whose two tuples is t (both as the kernel lays them out, see
// conntrack.Labels.Bytes), and with liberal also BE_LIBERAL in both
// directions, in one update. BE_LIBERAL is applied even when the labels are
// refused (ErrNoLabels): the kernel applies protoinfo first.
//
// The kernel looks the tuple up in its hash, which holds both tuples of
// every entry, so a reply tuple names its entry as well as the original one
// does (TestLabelsByReplyTuple): a caller that saw a connection after DNAT
// needs no copy of its original tuple.
func (c *Client) SetLabels(t Tuple, labels, mask [16]byte, liberal bool) error {
	return c.setLabels(t, labels, mask, liberal, nil)
}

// SetLabelsSeqAdj is SetLabels without BE_LIBERAL and with the entry's
// seqadj (original direction, then reply) in the same update, applied
// before the labels. The seqadj is ignored on an entry without the
// extension (see SetSeqAdj).
func (c *Client) SetLabelsSeqAdj(t Tuple, labels, mask [16]byte, adj [2]SeqAdj) error {
	return c.setLabels(t, labels, mask, false, &adj)
}

// SetSeqAdj sets the seqadj of both directions (original, then reply) of the
// entry one of whose tuples is t. The kernel ignores it without an error on
// an entry without the seqadj extension: Get the entry back (SeqAdjust) to
// know whether it took.
func (c *Client) SetSeqAdj(t Tuple, adj [2]SeqAdj) error {
	n, err := t.normalize()
	if err != nil {
		return fmt.Errorf("setting seqadj on %s: %w", t, err)
	}
	req, err := seqAdjRequest(n, &adj)
	if err != nil {
		return err
	}
	if err := c.update(req); err != nil {
		return fmt.Errorf("setting seqadj on the entry of %s: %w", t, err)
	}
	return nil
}

// Get returns the entry one of whose tuples is t (one GET; ErrNotFound).
func (c *Client) Get(t Tuple) (Entry, error) {
	n, err := t.normalize()
	if err != nil {
		return Entry{}, fmt.Errorf("getting the entry of %s: %w", t, err)
	}
	e, err := c.get(n)
	if err != nil {
		return Entry{}, fmt.Errorf("getting the entry of %s: %w", t, err)
	}
	return e, nil
}

func (c *Client) setLabels(t Tuple, labels, mask [16]byte, liberal bool, adj *[2]SeqAdj) error {
	n, err := t.normalize()
	if err != nil {
		return fmt.Errorf("setting labels on %s: %w", t, err)
	}
	req, err := labelsRequest(n, labels, mask, liberal, adj)
	if err != nil {
		return err
	}
	if err := c.update(req); err != nil {
		if errors.Is(err, unix.ENOSPC) {
			err = fmt.Errorf("%w: %w", ErrNoLabels, err)
		}
		return fmt.Errorf("setting labels on the entry of %s: %w", t, err)
	}
	return nil
}

// Dump returns every TCP entry of the namespace's conntrack table, labels
// included; callers select by label themselves (ftpalg does not ask the
// kernel to: whether its dump filter can select by label was not tried).
// A dump walks the whole table (about 3 ms with 262144 buckets), so it is
// for start-up, not per packet.
func (c *Client) Dump() ([]Entry, error) {
	req, err := dumpRequest()
	if err != nil {
		return nil, err
	}
	var entries []Entry
	err = c.roundTrip(req, func(m netlink.Message) error {
		e, err := decodeEntry(m)
		switch {
		case err == errNotTCP:
			return nil
		case err != nil:
			return err
		}
		entries = append(entries, e)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("dumping conntrack table: %w", err)
	}
	return entries, nil
}

// WatchHandler receives what Watch reports. Its functions are called from
// Watch's goroutine, one at a time, in the order the kernel sent the
// events; a slow handler lets the socket buffer fill, which the kernel
// reports as an overrun.
type WatchHandler struct {
	// NewFlow is called for each conntrack NEW event of a TCP connection.
	NewFlow func(NewFlow)
	// Destroyed, if set, is called for each conntrack DESTROY event of a
	// TCP connection, and Watch joins the DESTROY group for it (see
	// SubscribeDestroy). The kernel sends one when the entry leaves the
	// table: at once when it is deleted (conntrack -D, a flush, a SYN
	// reopening a closed connection's tuples, which kills the old entry
	// first), but for an entry that timed out (a closed connection after
	// its TIME_WAIT or CLOSE timeout) only when conntrack's garbage
	// collector, or a lookup or dump that meets it, reaps it: up to about
	// a minute after the timeout (the collector's longest interval).
	// Which entries are reported is the event filter's choice
	// (FilterEvents: only those of control ports).
	//
	// A DESTROY event lost in an overrun is never reported: it shows as
	// a call of Overrun. A consumer that keeps state per entry reconciles
	// then with a Dump: an entry it holds that the dump lacks, or holds
	// with another ID, has ended.
	Destroyed func(Destroyed)
	// Overrun, if set, is called when the kernel dropped events because
	// the event socket's buffer was full (ENOBUFS). total counts overruns
	// since the Client was opened. Events were lost: a consumer waiting
	// for a particular one must not rely on it arriving.
	Overrun func(total uint64)
}

// Overruns returns the number of event overruns (ENOBUFS) seen by Watch
// since the Client was opened.
func (c *Client) Overruns() uint64 { return c.overruns.Load() }

// Subscribe joins the conntrack NEW event group now, so that a Watch
// started later reports every event from this moment on: the kernel queues
// them in the event socket (up to its buffer; beyond, Watch reports an
// overrun). A daemon subscribes before it lets a packet through that may
// open a connection it must see, and starts Watch once it is ready to
// handle what it reports. Subscribing twice is harmless.
func (c *Client) Subscribe() error {
	return c.join(&c.subscribed, netfilter.GroupCTNew, "NEW")
}

// SubscribeDestroy joins the conntrack DESTROY event group now, as
// Subscribe does the NEW group, on the same socket: a Watch started later
// reports both kinds in the order the kernel sent them. The Watch must
// have a Destroyed handler. Subscribing twice is harmless.
func (c *Client) SubscribeDestroy() error {
	return c.join(&c.destroying, netfilter.GroupCTDestroy, "DESTROY")
}

func (c *Client) join(joined *atomic.Bool, g netfilter.NetlinkGroup, name string) error {
	if joined.Load() {
		return nil
	}
	if err := c.events.JoinGroup(uint32(g)); err != nil {
		return fmt.Errorf("joining conntrack %s event group: %w", name, err)
	}
	joined.Store(true)
	return nil
}

// leave leaves an event group joined by join, if it was.
func (c *Client) leave(joined *atomic.Bool, g netfilter.NetlinkGroup, name string) {
	if !joined.Swap(false) {
		return
	}
	if err := c.events.LeaveGroup(uint32(g)); err != nil && !errors.Is(err, unix.EBADF) {
		c.log.Debug("ctnetlink: leaving event group", "group", name, "err", err)
	}
}

// FilterEvents makes the kernel drop, before they reach Watch, the NEW
// events of entries that are not TCP or whose original destination port is
// below minDstPort, and the DESTROY events of entries that are not TCP or
// whose original destination port and reply source port are both outside
// controlPorts (all of them if it is empty); see EventFilter. Call it
// before Subscribe and SubscribeDestroy: events queued before it are not
// filtered.
func (c *Client) FilterEvents(minDstPort uint16, controlPorts []uint16) error {
	prog, err := EventFilter(minDstPort, controlPorts)
	if err != nil {
		return err
	}
	if err := c.events.SetBPF(prog); err != nil {
		return fmt.Errorf("attaching the conntrack event filter: %w", err)
	}
	return nil
}

// Watch reports conntrack NEW events, and DESTROY events if h.Destroyed is
// set, of TCP connections until ctx is done (it then returns ctx.Err()),
// the Client is closed, or receiving fails. It reports the events since
// Subscribe and SubscribeDestroy, if they were called, else since it
// started. An overrun is counted, logged, reported to h.Overrun, and Watch
// carries on. One Watch at a time per Client; a second returns ErrWatching.
// When Watch returns, the Client leaves the event groups.
func (c *Client) Watch(ctx context.Context, h WatchHandler) error {
	if h.NewFlow == nil {
		return errors.New("watching conntrack events: WatchHandler.NewFlow is nil")
	}
	if !c.watching.CompareAndSwap(false, true) {
		return ErrWatching
	}
	defer c.watching.Store(false)
	// Leave the groups on every return, those joined before Watch too.
	defer c.leave(&c.destroying, netfilter.GroupCTDestroy, "DESTROY")
	defer c.leave(&c.subscribed, netfilter.GroupCTNew, "NEW")

	if h.Destroyed == nil && c.destroying.Load() {
		// Its events would be received and thrown away, and missed by
		// whoever subscribed for them.
		return errors.New("watching conntrack events: SubscribeDestroy was called but WatchHandler.Destroyed is nil")
	}
	if err := c.events.SetReadDeadline(time.Time{}); err != nil {
		return fmt.Errorf("watching conntrack events: %w", err)
	}
	if err := c.Subscribe(); err != nil {
		return err
	}
	if h.Destroyed != nil {
		if err := c.SubscribeDestroy(); err != nil {
			return err
		}
	}
	// Receive blocks in the runtime poller; a past deadline wakes it.
	stop := context.AfterFunc(ctx, func() { _ = c.events.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()

	for {
		msgs, err := c.events.Receive()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, unix.ENOBUFS) {
				n := c.overruns.Add(1)
				c.log.Warn("ctnetlink: conntrack events lost, socket buffer overrun", "overruns", n)
				if h.Overrun != nil {
					h.Overrun(n)
				}
				continue
			}
			if errors.Is(err, os.ErrClosed) || errors.Is(err, unix.EBADF) {
				return fmt.Errorf("watching conntrack events: client closed: %w", err)
			}
			return fmt.Errorf("receiving conntrack events: %w", err)
		}
		for _, m := range msgs {
			kind, e, err := decodeEvent(m)
			if err != nil {
				c.log.Warn("ctnetlink: skipping undecodable event", "err", err)
				continue
			}
			switch kind {
			case eventNew:
				h.NewFlow(e)
			case eventDestroy:
				if h.Destroyed != nil {
					h.Destroyed(e)
				}
			}
		}
	}
}
