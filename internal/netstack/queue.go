package netstack

import (
	"context"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/nested"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// outQueue is the stack's outbound frame queue, in place of gVisor's
// channel endpoint queue, which drops a frame silently when it is full
// (issue #13, item 9). Those drops were the relay's ~200 ms stalls: a
// burst that outruns the websocket writer loses the tail of a TCP window,
// SACK cannot repair a lost tail, and the sender waits for its
// retransmission timeout (200 ms at least, doubling on each repeat).
//
// While a reader is attached (SetBackpressure(true): the relay's
// websocket writer is running) a full queue makes the sending goroutine
// wait for room instead, as a kernel qdisc does: TCP slows to the pace of
// the websocket and loses nothing. Without a reader (a websocket
// reconnecting) nothing would ever make room, so a full queue drops
// again, as before; the frames held are delivered on reconnect.
//
// It sits between the NIC and the channel endpoint: outbound frames stop
// here, inbound ones pass through to the channel endpoint untouched.
type outQueue struct {
	nested.Endpoint

	limit int
	drops atomic.Uint64

	mu      sync.Mutex
	space   *sync.Cond // signalled when a frame leaves or the mode changes
	frames  []*stack.PacketBuffer
	head    int
	block   bool
	closed  bool
	waiting int           // senders waiting in WritePackets
	ready   chan struct{} // 1-buffered: a frame may be there
	done    chan struct{} // closed by close
}

func newOutQueue(child stack.LinkEndpoint, limit int) *outQueue {
	q := &outQueue{limit: limit, ready: make(chan struct{}, 1), done: make(chan struct{})}
	q.space = sync.NewCond(&q.mu)
	q.Init(child, q)
	return q
}

// WritePackets implements stack.LinkEndpoint. It takes a reference to each
// packet it queues.
func (q *outQueue) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 0
	for _, pkt := range pkts.AsSlice() {
		for q.len() >= q.limit && q.block && !q.closed {
			q.waiting++
			q.space.Wait()
			q.waiting--
		}
		if q.closed {
			if n == 0 {
				return 0, &tcpip.ErrClosedForSend{}
			}
			return n, nil
		}
		if q.len() >= q.limit {
			// gVisor counts a short write as sent; TCP repairs it.
			q.drops.Add(uint64(pkts.Len() - n))
			return n, nil
		}
		q.frames = append(q.frames, pkt.IncRef())
		n++
	}
	select {
	case q.ready <- struct{}{}:
	default:
	}
	return n, nil
}

func (q *outQueue) len() int { return len(q.frames) - q.head }

// read returns the oldest frame, waiting for one until ctx ends or the
// queue closes (nil then). The caller owns the reference.
func (q *outQueue) read(ctx context.Context) *stack.PacketBuffer {
	for {
		q.mu.Lock()
		if q.len() > 0 {
			pkt := q.frames[q.head]
			q.frames[q.head] = nil
			q.head++
			if q.head == len(q.frames) {
				// Empty: reuse the array from its start.
				q.frames, q.head = q.frames[:0], 0
			} else {
				// Wake another reader, if any.
				select {
				case q.ready <- struct{}{}:
				default:
				}
			}
			if q.waiting > 0 {
				q.space.Signal()
			}
			q.mu.Unlock()
			return pkt
		}
		closed := q.closed
		q.mu.Unlock()
		if closed {
			return nil
		}
		select {
		case <-q.ready:
		case <-q.done:
		case <-ctx.Done():
			return nil
		}
	}
}

// queued returns the number of frames waiting.
func (q *outQueue) queued() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.len()
}

// setBackpressure switches between waiting for room and dropping.
func (q *outQueue) setBackpressure(on bool) {
	q.mu.Lock()
	q.block = on
	q.mu.Unlock()
	q.space.Broadcast()
}

// close releases the queued frames and wakes everyone; later writes fail.
func (q *outQueue) close() {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return
	}
	q.closed = true
	for _, p := range q.frames[q.head:] {
		p.DecRef()
	}
	q.frames, q.head = nil, 0
	close(q.done)
	q.mu.Unlock()
	q.space.Broadcast()
}
