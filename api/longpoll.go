package api

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/weftchat/weft/syncapi"
)

// Parking idle long-polls.
//
// net/http serves each connection on a goroutine with a read and a write
// buffer, and keeps a second goroutine reading in the background while a
// handler runs: about 40 KiB of stacks and buffers per waiting /sync. A
// server with thousands of idle clients would spend most of its memory on
// that. So a /sync with nothing to answer takes the connection from
// net/http (Hijack), leaves the request registered with the notifier and
// returns: no goroutine, no buffer is held while it waits. When the
// long-poll answers, a goroutine writes the HTTP/1.1 response on the raw
// connection and hands the connection back to the HTTP server through
// Listener, whose Accept returns it like a new client connection, so
// keep-alive carries on.
//
// Only HTTP/1.x connections on a Listener park; HTTP/2 streams and servers
// built without one wait the ordinary way. While parked, a client that
// goes away is noticed only when the answer is written (at the latest when
// its timeout passes).

// Listener wraps the server's listener so parked long-polls can hand their
// connections back for the next request on them.
type Listener struct {
	net.Listener
	back     chan net.Conn
	accepted chan accepted
	closed   chan struct{}
	once     sync.Once
	// parked counts long-polls whose connection is off the HTTP server's
	// books: shutdown waits for their answers.
	parked sync.WaitGroup
	// idle are the connections of answered long-polls waiting for their
	// client's next request: Close closes them, as the HTTP server closes
	// its idle connections when it shuts down.
	idleMu sync.Mutex
	idle   map[net.Conn]struct{}
}

type accepted struct {
	c   net.Conn
	err error
}

// NewListener wraps l. Serve the HTTP server on the result, and pass it
// in Options.Listener.
func NewListener(l net.Listener) *Listener {
	ln := &Listener{Listener: l, back: make(chan net.Conn), accepted: make(chan accepted), closed: make(chan struct{}), idle: map[net.Conn]struct{}{}}
	go ln.acceptLoop()
	return ln
}

func (l *Listener) acceptLoop() {
	for {
		c, err := l.Listener.Accept()
		select {
		case l.accepted <- accepted{c, err}:
		case <-l.closed:
			if c != nil {
				_ = c.Close()
			}
			return
		}
		if errors.Is(err, net.ErrClosed) {
			return
		}
	}
}

// Accept returns new client connections and connections handed back by
// answered long-polls.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.back:
		return c, nil
	case a := <-l.accepted:
		return a.c, a.err
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close stops accepting; connections handed back afterwards are closed.
func (l *Listener) Close() error {
	var err error
	l.once.Do(func() {
		l.idleMu.Lock()
		close(l.closed)
		for c := range l.idle {
			_ = c.Close()
		}
		l.idleMu.Unlock()
		err = l.Listener.Close()
	})
	return err
}

// trackIdle records c as waiting for its next request, reporting false
// once the listener is closed (then c must be closed).
func (l *Listener) trackIdle(c net.Conn) bool {
	l.idleMu.Lock()
	defer l.idleMu.Unlock()
	select {
	case <-l.closed:
		return false
	default:
	}
	l.idle[c] = struct{}{}
	return true
}

func (l *Listener) untrackIdle(c net.Conn) {
	l.idleMu.Lock()
	delete(l.idle, c)
	l.idleMu.Unlock()
}

// handBack gives c to the HTTP server for its next request, reporting
// false once the server stopped accepting.
func (l *Listener) handBack(c net.Conn) bool {
	select {
	case l.back <- c:
		return true
	case <-l.closed:
		return false
	}
}

// WaitParked waits until every parked long-poll has written its answer,
// or ctx ends. Shutdown calls it after the sync service answered them.
func (l *Listener) WaitParked(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		l.parked.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// canPark reports whether this request's connection may be parked.
func (s *server) canPark(r *http.Request) bool {
	return s.opts.Listener != nil && r.ProtoMajor == 1 && detachOf(r) != nil
}

// parkedWriteTimeout bounds writing an answer to a parked connection: a
// client that stopped reading must not hold a goroutine.
const parkedWriteTimeout = 30 * time.Second

// park takes the connection from net/http and answers p on it when p
// answers. It reports false, leaving the connection alone, when the
// connection cannot be taken.
func (s *server) park(w http.ResponseWriter, r *http.Request, p *syncapi.Pending) bool {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return false
	}
	// The server's deadlines belong to the request just read.
	_ = conn.SetDeadline(time.Time{})
	if n := brw.Reader.Buffered(); n > 0 {
		// The client already sent its next request (pipelining).
		buf, _ := brw.Reader.Peek(n)
		conn = withPrefix(conn, buf)
	}
	// Keep as little of r as possible: its context holds the router's
	// pooled state, its headers the access token. A parked request keeps
	// its id, method and path (for logs) and nothing else.
	pr := parkedRequest{
		id: RequestID(r.Context()), method: r.Method, path: r.URL.Path,
		keepAlive: !r.Close && r.ProtoAtLeast(1, 1),
	}
	d := detachOf(r)
	d.detach()
	ln := s.opts.Listener
	ln.parked.Add(1)
	p.Then(func(resp *syncapi.Response, err error) {
		// This runs on a sync worker: encode here, and leave what can
		// block on the client (writing, waiting for its next request) to
		// a goroutine of its own, whose stack stays shallow.
		buf, out, status, n := s.renderParked(pr, resp, err)
		d.complete(status, n)
		go func() {
			_ = conn.SetWriteDeadline(time.Now().Add(parkedWriteTimeout))
			_, werr := conn.Write(out)
			_ = conn.SetWriteDeadline(time.Time{})
			putAnswerBuf(buf)
			// Answered: shutdown waits for no client's next request.
			ln.parked.Done()
			if werr != nil || !pr.keepAlive || !ln.trackIdle(conn) {
				_ = conn.Close()
				return
			}
			c := awaitNextRequest(conn)
			ln.untrackIdle(conn)
			if c == nil || !ln.handBack(c) {
				_ = conn.Close()
			}
		}()
	})
	return true
}

// parkedIdleTimeout is how long a connection whose long-poll answered
// waits for the client's next request.
const parkedIdleTimeout = 5 * time.Minute

// awaitNextRequest waits until the client sends its next request on conn
// (long-polling clients do at once) and returns conn with what was read.
// net/http starts its header timeout the moment it accepts a connection;
// waiting for the first byte here gives a handed-back connection the idle
// wait a kept-alive one gets. nil means the client closed or went quiet.
func awaitNextRequest(conn net.Conn) net.Conn {
	if pc, ok := conn.(*prefixedConn); ok && len(pc.prefix) > 0 {
		return conn // a pipelined request is already here
	}
	_ = conn.SetReadDeadline(time.Now().Add(parkedIdleTimeout))
	defer conn.SetReadDeadline(time.Time{})
	buf, n := readWhenReady(conn)
	if buf == nil {
		return nil
	}
	defer requestBufs.Put(buf)
	if n <= 0 {
		return nil
	}
	return withPrefix(conn, (*buf)[:n])
}

// readWhenReady reads what the client sent, usually the whole request, so
// the HTTP server parses it without a read of its own. It waits for the
// client without holding a buffer (thousands of clients may be between
// two requests at once) and returns one from requestBufs with what was
// read in its first n bytes; nil or n <= 0: the client closed, failed or
// timed out.
func readWhenReady(conn net.Conn) (buf *[]byte, n int) {
	inner := conn
	if pc, ok := conn.(*prefixedConn); ok {
		inner = pc.Conn
	}
	sc, ok := inner.(syscall.Conn)
	if !ok {
		// No access to readiness: wait on a one-byte read, still
		// without a buffer.
		var one [1]byte
		if n, _ = conn.Read(one[:]); n <= 0 {
			return nil, 0
		}
		buf = requestBufs.Get().(*[]byte)
		return buf, copy(*buf, one[:n])
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, 0
	}
	err = raw.Read(func(fd uintptr) bool {
		buf = requestBufs.Get().(*[]byte)
		var rerr error
		for {
			n, rerr = syscall.Read(int(fd), *buf)
			if rerr != syscall.EINTR {
				break
			}
		}
		if rerr == syscall.EAGAIN {
			// Nothing yet: give the buffer back and wait for the
			// socket to become readable.
			requestBufs.Put(buf)
			buf = nil
			return false
		}
		return true
	})
	if err != nil && buf != nil {
		requestBufs.Put(buf)
		return nil, 0
	}
	return buf, n
}

// requestBufs are awaitNextRequest's read buffers: the size of the HTTP
// server's own.
var requestBufs = sync.Pool{New: func() any { b := make([]byte, 4096); return &b }}

// parkedRequest is what a parked request keeps of its *http.Request.
type parkedRequest struct {
	id, method, path string
	keepAlive        bool
}

// renderParked encodes the HTTP/1.1 response of a parked request, with the
// headers the middleware gives every response, into out, which is in buf
// (from answerBufs: give it back with putAnswerBuf once out is written).
func (s *server) renderParked(pr parkedRequest, resp *syncapi.Response, err error) (buf *[]byte, out []byte, status int, bodyLen int64) {
	buf = answerBufs.Get().(*[]byte)
	// The body goes after room for the headers, which are written in
	// front of it once its length is known: one buffer, no copy of the
	// body.
	b := (*buf)[:answerHeadroom]
	var h http.Header
	if err == nil {
		// The common case, without http.Header's map and sorting: a
		// thousand devices woken by one message each get one of these.
		status = http.StatusOK
		b = resp.AppendJSON(b)
	} else {
		rec := &bufferedResponse{header: http.Header{}}
		r := (&http.Request{Method: pr.method, URL: &url.URL{Path: pr.path}}).
			WithContext(context.WithValue(context.Background(), requestIDKey, pr.id))
		s.respond(rec, r, resp, err)
		status, h = cmp.Or(rec.status, http.StatusOK), rec.header
		b = append(b, rec.body.Bytes()...)
		for _, k := range []string{"Content-Length", "Date", "Connection", "X-Request-Id"} {
			h.Del(k)
		}
		for k := range corsHeaders {
			h.Del(k)
		}
	}
	*buf = b
	body := b[answerHeadroom:]

	var hdrArr [answerHeadroom]byte
	hdr := hdrArr[:0]
	hdr = append(hdr, "HTTP/1.1 "...)
	hdr = strconv.AppendInt(hdr, int64(status), 10)
	hdr = append(hdr, ' ')
	hdr = append(hdr, http.StatusText(status)...)
	hdr = append(hdr, "\r\n"...)
	hdr = append(hdr, parkedHeaders...)
	if h == nil {
		hdr = append(hdr, "Content-Type: application/json\r\n"...)
	} else {
		var hb bytes.Buffer
		_ = h.Write(&hb)
		hdr = append(hdr, hb.Bytes()...)
	}
	hdr = append(hdr, "X-Request-Id: "...)
	hdr = append(hdr, pr.id...) // ours: hex digits (requestID)
	hdr = append(hdr, "\r\nContent-Length: "...)
	hdr = strconv.AppendInt(hdr, int64(len(body)), 10)
	hdr = append(hdr, "\r\nDate: "...)
	hdr = time.Now().UTC().AppendFormat(hdr, http.TimeFormat)
	hdr = append(hdr, "\r\n"...)
	if !pr.keepAlive {
		hdr = append(hdr, "Connection: close\r\n"...)
	}
	hdr = append(hdr, "\r\n"...)
	if len(hdr) <= answerHeadroom {
		start := answerHeadroom - len(hdr)
		copy(b[start:], hdr)
		return buf, b[start:], status, int64(len(body))
	}
	// Headers longer than the room left (an error with many headers).
	return buf, append(hdr[:len(hdr):len(hdr)], body...), status, int64(len(body))
}

// answerHeadroom is the room for the headers in front of a parked answer's
// body: ours take about 400 bytes.
const answerHeadroom = 1024

// answerBufs hold parked answers while they are written.
var answerBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// putAnswerBuf returns buf to answerBufs, unless a large answer grew it.
func putAnswerBuf(buf *[]byte) {
	if cap(*buf) <= 64<<10 {
		*buf = (*buf)[:0]
		answerBufs.Put(buf)
	}
}

// parkedHeaders are the CORS headers of every response (setCORS), written
// once.
var parkedHeaders = func() []byte {
	var b bytes.Buffer
	_ = corsHeaders.Write(&b)
	return b.Bytes()
}()

// bufferedResponse collects a response in memory.
type bufferedResponse struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header { return b.header }

func (b *bufferedResponse) WriteHeader(status int) {
	if b.status == 0 {
		b.status = status
	}
}

func (b *bufferedResponse) Write(p []byte) (int, error) {
	b.WriteHeader(http.StatusOK)
	return b.body.Write(p)
}

// prefixedConn replays bytes already read from the client.
type prefixedConn struct {
	net.Conn
	prefix []byte
	// remote is the client's address, formatted once: the HTTP server
	// formats it for every connection it accepts, so for every request
	// of a connection that parks.
	remote remoteAddr
}

// remoteAddr is a net.Addr with its String computed once.
type remoteAddr struct {
	net.Addr
	s string
}

func (a remoteAddr) String() string { return a.s }

// withPrefix returns conn reading b first. A connection parks again and
// again: it is wrapped once, never a wrapper in a wrapper.
func withPrefix(conn net.Conn, b []byte) net.Conn {
	if pc, ok := conn.(*prefixedConn); ok {
		// b was read before whatever of the old prefix is left.
		pc.prefix = append(bytes.Clone(b), pc.prefix...)
		return pc
	}
	addr := conn.RemoteAddr()
	pc := &prefixedConn{Conn: conn, prefix: bytes.Clone(b)}
	if addr != nil {
		pc.remote = remoteAddr{addr, addr.String()}
	}
	return pc
}

func (c *prefixedConn) RemoteAddr() net.Addr {
	if c.remote.Addr == nil {
		return c.Conn.RemoteAddr()
	}
	return c.remote
}

func (c *prefixedConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		if len(c.prefix) == 0 {
			c.prefix = nil // let the replayed bytes go while the connection waits
		}
		return n, nil
	}
	return c.Conn.Read(p)
}

// detached lets a handler finish its request after returning: the access
// log and the metrics, which run when the handler returns, register what
// to do with the real status instead.
type detached struct {
	mu       sync.Mutex
	isOn     bool
	done     bool
	status   int
	bytes    int64
	finishes []func(status int, bytes int64)
}

const detachKey ctxKey = iota + 200

func detachOf(r *http.Request) *detached {
	d, _ := r.Context().Value(detachKey).(*detached)
	return d
}

func (d *detached) detach() {
	d.mu.Lock()
	d.isOn = true
	d.mu.Unlock()
}

// finish runs fn with the request's final status now, or when the
// detached request completes. It reports false if the request was not
// detached (the caller finishes itself).
func (d *detached) finish(fn func(status int, bytes int64)) bool {
	if d == nil {
		return false
	}
	d.mu.Lock()
	if !d.isOn {
		d.mu.Unlock()
		return false
	}
	if !d.done {
		d.finishes = append(d.finishes, fn)
		d.mu.Unlock()
		return true
	}
	status, n := d.status, d.bytes
	d.mu.Unlock()
	fn(status, n)
	return true
}

func (d *detached) complete(status int, n int64) {
	d.mu.Lock()
	d.done, d.status, d.bytes = true, status, n
	fns := d.finishes
	d.finishes = nil
	d.mu.Unlock()
	for _, fn := range fns {
		fn(status, n)
	}
}
