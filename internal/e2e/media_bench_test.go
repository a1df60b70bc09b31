package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"
)

// The media benchmarks drive the real binary over HTTP on the embedded
// PostgreSQL (durable), with the benchmark's clients on the same machine;
// each starts its own server (benchServer: default media configuration,
// 100 MiB upload limit, the default precomputed thumbnail sizes):
//
//	GOTOOLCHAIN=auto go test -run '^$' -bench 'MediaUpload|MediaDownload' -benchtime 5x -count 3 ./internal/e2e/
//	GOTOOLCHAIN=auto go test -run '^$' -bench 'MediaThumbnail' -benchtime 100x -count 3 ./internal/e2e/
//	GOTOOLCHAIN=auto go test -run '^$' -bench 'MediaConcurrent' -benchtime 2x -count 3 ./internal/e2e/
//
// Server memory is read from /proc/<pid>/status (VmRSS), sampled every
// rssSampleEvery while the requests run; "rss-growth" is the peak over the
// RSS of the idle server just before the first timed request, so memory
// kept from one iteration to the next counts too. server-cpu-ms/op is the
// weft process's own CPU time (user and system; PostgreSQL's is not in
// it) per op: on a shared machine it varies less than the wall clock.

// mediaBenchSize is the large file of the upload and download benchmarks.
const mediaBenchSize = 50 << 20

// rssSampleEvery is the RSS sampling period: short against a 50 MiB
// transfer (hundreds of milliseconds), so a buffered file could not
// come and go between two samples.
const rssSampleEvery = 2 * time.Millisecond

// readRSS reads the resident set size of a process, in KiB.
func readRSS(pid int) (int64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// serverCPU is the CPU time (user and system) a process has used so far.
// /proc counts it in USER_HZ ticks, which Linux fixes at 100 per second for
// user space: a 10 ms resolution, so per-op figures need many ops or long
// ones.
func serverCPU(pid int) (time.Duration, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; the fields after its
	// closing parenthesis are fixed: utime and stime are the 12th and
	// 13th of them.
	_, rest, ok := strings.Cut(string(raw), ") ")
	fields := strings.Fields(rest)
	if !ok || len(fields) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format %q", pid, raw)
	}
	var ticks int64
	for _, f := range fields[11:13] {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

// cpuMeter reports the server's CPU time per op as server-cpu-ms/op.
type cpuMeter struct {
	pid   int
	start time.Duration
}

func meterCPU(b *testing.B, srv *Server) cpuMeter {
	pid := srv.cmd.Process.Pid
	start, err := serverCPU(pid)
	if err != nil {
		b.Fatal(err)
	}
	return cpuMeter{pid: pid, start: start}
}

func (m cpuMeter) report(b *testing.B, ops int) {
	end, err := serverCPU(m.pid)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64((end-m.start).Microseconds())/1000/float64(ops), "server-cpu-ms/op")
}

// rssWatch samples a process's RSS on its own goroutine and keeps the peak.
type rssWatch struct {
	pid  int
	stop chan struct{}
	done chan struct{}
	peak int64 // KiB; written by the sampler until done is closed
	err  error
}

func watchRSS(pid int) *rssWatch {
	w := &rssWatch{pid: pid, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(rssSampleEvery)
		defer t.Stop()
		for {
			kib, err := readRSS(pid)
			if err != nil {
				w.err = err
				return
			}
			w.peak = max(w.peak, kib)
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
		}
	}()
	return w
}

// Stop ends the sampling (after one last sample) and returns the peak RSS
// in KiB.
func (w *rssWatch) Stop(b *testing.B) int64 {
	close(w.stop)
	<-w.done
	if w.err != nil {
		b.Fatalf("sampling the server's RSS: %v", w.err)
	}
	return w.peak
}

// idleRSS is the server's RSS once it has settled after set-up, in KiB.
func idleRSS(b *testing.B, srv *Server) int64 {
	time.Sleep(time.Second)
	kib, err := readRSS(srv.cmd.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}
	return kib
}

// mediaBenchClient is an HTTP client for the benchmarks: enough idle
// connections for 100 concurrent downloads, no transparent gzip (the
// server sends none; the client would only add a header).
func mediaBenchClient() *http.Client {
	return &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 128, DisableCompression: true}}
}

// benchUpload POSTs body (of length bytes, streamed from the reader) to
// /_matrix/media/v3/upload and returns the mxc URI.
func benchUpload(hc *http.Client, srv *Server, token string, body io.Reader, length int64, contentType string) (id.ContentURI, error) {
	req, err := http.NewRequest("POST", srv.URL+"/_matrix/media/v3/upload?filename=bench.bin", body)
	if err != nil {
		return id.ContentURI{}, err
	}
	req.ContentLength = length
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		return id.ContentURI{}, fmt.Errorf("upload: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return id.ContentURI{}, fmt.Errorf("upload: reading the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return id.ContentURI{}, fmt.Errorf("upload: %d %s", resp.StatusCode, raw)
	}
	var out struct {
		ContentURI id.ContentURI `json:"content_uri"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return id.ContentURI{}, fmt.Errorf("upload answered %s: %w", raw, err)
	}
	return out.ContentURI, nil
}

// benchDownloadURL is uri's authenticated download URL.
func benchDownloadURL(srv *Server, uri id.ContentURI) string {
	return srv.URL + "/_matrix/client/v1/media/download/" + uri.Homeserver + "/" + uri.FileID
}

// benchGet starts an authenticated GET and fails on any status but 200.
func benchGet(hc *http.Client, rawURL, token string) (*http.Response, error) {
	req, err := http.NewRequest("GET", rawURL, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: %d %s", rawURL, resp.StatusCode, body)
	}
	return resp, nil
}

// discard is io.Discard without its ReadFrom, so io.CopyBuffer reads with
// the caller's buffer (256 KiB) rather than io.Discard's 8 KiB one: fewer
// system calls on the client, which shares the CPUs with the server.
type discard struct{ io.Writer }

// benchDownload reads an authenticated download to the end and returns the
// number of bytes and, if hash is set, their SHA-256.
func benchDownload(hc *http.Client, rawURL, token string, buf []byte, hash bool) (int64, []byte, error) {
	resp, err := benchGet(hc, rawURL, token)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var w io.Writer = discard{io.Discard}
	h := sha256.New()
	if hash {
		w = h
	}
	n, err := io.CopyBuffer(w, resp.Body, buf)
	if err != nil {
		return n, nil, fmt.Errorf("GET %s: after %d bytes: %w", rawURL, n, err)
	}
	if hash {
		return n, h.Sum(nil), nil
	}
	return n, nil, nil
}

// randomContent is n bytes from a seeded generator (the same every run).
func randomContent(n int) []byte {
	out := make([]byte, n)
	_, _ = rand.NewChaCha8([32]byte{'w', 'e', 'f', 't'}).Read(out)
	return out
}

// uniqueBody is content with seq in its first 8 bytes: a different
// SHA-256 for every upload (no deduplication), from one pre-generated
// buffer, so the client spends no CPU making random bytes while timed.
func uniqueBody(content []byte, seq uint64) io.Reader {
	var head [8]byte
	binary.BigEndian.PutUint64(head[:], seq)
	return io.MultiReader(bytes.NewReader(head[:]), bytes.NewReader(content[len(head):]))
}

// uploadBenchFile uploads a 50 MiB random file once, for the download
// benchmarks, and returns its URI and SHA-256.
func uploadBenchFile(b *testing.B, srv *Server, token string) (id.ContentURI, []byte) {
	content := randomContent(mediaBenchSize)
	uri, err := benchUpload(mediaBenchClient(), srv, token, bytes.NewReader(content), int64(len(content)), "application/octet-stream")
	if err != nil {
		b.Fatal(err)
	}
	sum := sha256.Sum256(content)
	return uri, sum[:]
}

// BenchmarkMediaUpload50MB measures POST /_matrix/media/v3/upload of a
// 50 MiB body of random bytes (a different file every time), streamed by
// the client with its Content-Length, until the server answers (content
// fsynced, renamed into place and its row committed). MB/s is the body's
// throughput; rss-growth-MiB is the server's peak RSS over its idle RSS.
func BenchmarkMediaUpload50MB(b *testing.B) {
	srv := benchServer(b)
	token := benchUsers(b, srv, "upload", 1)[0].AccessToken
	hc := mediaBenchClient()
	content := randomContent(mediaBenchSize)
	pid := srv.cmd.Process.Pid
	idle := idleRSS(b, srv)
	w := watchRSS(pid)
	cpu := meterCPU(b, srv)
	b.SetBytes(mediaBenchSize)
	var seq uint64
	var last id.ContentURI
	for b.Loop() {
		seq++
		uri, err := benchUpload(hc, srv, token, uniqueBody(content, seq), mediaBenchSize, "application/octet-stream")
		if err != nil {
			b.Fatal(err)
		}
		last = uri
	}
	cpu.report(b, int(seq))
	peak := w.Stop(b)
	b.ReportMetric(float64(peak-idle)/1024, "rss-growth-MiB")
	b.ReportMetric(float64(idle)/1024, "idle-rss-MiB")

	// The last upload holds what was sent.
	n, sum, err := benchDownload(hc, benchDownloadURL(srv, last), token, make([]byte, 256<<10), true)
	if err != nil {
		b.Fatal(err)
	}
	want := sha256.New()
	_, _ = io.Copy(want, uniqueBody(content, seq))
	if n != mediaBenchSize || !bytes.Equal(sum, want.Sum(nil)) {
		b.Fatalf("the last upload reads back as %d bytes with a different SHA-256", n)
	}
}

// BenchmarkMediaDownload50MB measures one client's authenticated
// GET /_matrix/client/v1/media/download of a 50 MiB file, read to the end.
// The file was just uploaded, so it is in the page cache: this is the
// server's serving path, not the disk.
func BenchmarkMediaDownload50MB(b *testing.B) {
	srv := benchServer(b)
	token := benchUsers(b, srv, "download", 1)[0].AccessToken
	uri, sum := uploadBenchFile(b, srv, token)
	hc := mediaBenchClient()
	buf := make([]byte, 256<<10)
	rawURL := benchDownloadURL(srv, uri)
	if n, got, err := benchDownload(hc, rawURL, token, buf, true); err != nil || n != mediaBenchSize || !bytes.Equal(got, sum) {
		b.Fatalf("download: %d bytes, SHA-256 matches: %t, %v", n, bytes.Equal(got, sum), err)
	}
	idle := idleRSS(b, srv)
	w := watchRSS(srv.cmd.Process.Pid)
	cpu := meterCPU(b, srv)
	b.SetBytes(mediaBenchSize)
	ops := 0
	for b.Loop() {
		ops++
		n, _, err := benchDownload(hc, rawURL, token, buf, false)
		if err != nil {
			b.Fatal(err)
		}
		if n != mediaBenchSize {
			b.Fatalf("downloaded %d bytes, want %d", n, mediaBenchSize)
		}
	}
	cpu.report(b, ops)
	peak := w.Stop(b)
	b.ReportMetric(float64(peak-idle)/1024, "rss-growth-MiB")
}

// BenchmarkMediaConcurrentDownloads measures 100 clients downloading the
// same 50 MiB file at once. One op is the 100 downloads; MB/s is their
// aggregate throughput. Every client reads its first 64 KiB and waits
// until all 100 have, so all 100 responses are being served together:
// none can have finished, as the kernel's socket buffers of a connection
// (on Linux by default at most 4 MiB to send and 6-32 MiB to receive)
// cannot hold the rest of the 50 MiB. Then each reads on at full speed,
// in 64 KiB reads, taking seconds, so they stay in flight together. It reports the server's peak RSS over its
// idle RSS while serving them, that growth per download, and the Go heap
// in use and goroutines at the moment all 100 were in flight.
func BenchmarkMediaConcurrentDownloads(b *testing.B) {
	const clients = 100
	srv := benchServer(b)
	token := benchUsers(b, srv, "concurrent", 1)[0].AccessToken
	uri, _ := uploadBenchFile(b, srv, token)
	hc := mediaBenchClient()
	rawURL := benchDownloadURL(srv, uri)
	// Open the 100 connections first, so the op measures serving, not
	// TCP set-up.
	parallel(b, clients, func(int) error {
		resp, err := benchGet(hc, srv.URL+"/_matrix/client/v1/media/config", token)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.Body.Close()
	})
	heapIdle := metric(b, srv, "go_memstats_heap_inuse_bytes")
	idle := idleRSS(b, srv)
	w := watchRSS(srv.cmd.Process.Pid)
	cpu := meterCPU(b, srv)
	b.SetBytes(clients * mediaBenchSize)
	var heapAll, goroutinesAll float64
	ops := 0
	for b.Loop() {
		ops++
		var arrived sync.WaitGroup
		arrived.Add(clients)
		release := make(chan struct{})
		var done sync.WaitGroup
		var failed atomic.Int32
		errs := make(chan error, clients)
		for range clients {
			done.Go(func() {
				arrivedOnce := sync.OnceFunc(arrived.Done)
				defer arrivedOnce()
				err := func() error {
					resp, err := benchGet(hc, rawURL, token)
					if err != nil {
						return err
					}
					defer resp.Body.Close()
					buf := make([]byte, 64<<10)
					n, err := io.ReadFull(resp.Body, buf)
					if err != nil {
						return fmt.Errorf("first 64 KiB: %w", err)
					}
					arrivedOnce()
					<-release
					total := int64(n)
					for {
						n, err := resp.Body.Read(buf)
						total += int64(n)
						if errors.Is(err, io.EOF) {
							break
						}
						if err != nil {
							return fmt.Errorf("after %d bytes: %w", total, err)
						}
					}
					if total != mediaBenchSize {
						return fmt.Errorf("downloaded %d bytes, want %d", total, mediaBenchSize)
					}
					return nil
				}()
				if err != nil {
					failed.Add(1)
					errs <- err
				}
			})
		}
		arrived.Wait()
		if failed.Load() == 0 {
			// All 100 are in flight: their responses have started and
			// none has finished.
			heapAll = max(heapAll, metric(b, srv, "go_memstats_heap_inuse_bytes"))
			goroutinesAll = max(goroutinesAll, metric(b, srv, "go_goroutines"))
		}
		close(release)
		done.Wait()
		close(errs)
		for err := range errs {
			b.Fatalf("%d of %d downloads failed; the first: %v", failed.Load(), clients, err)
		}
	}
	cpu.report(b, ops)
	peak := w.Stop(b)
	b.ReportMetric(float64(peak-idle)/1024, "rss-growth-MiB")
	b.ReportMetric(float64(peak-idle)/clients, "rss-growth-KiB/download")
	b.ReportMetric((heapAll-heapIdle)/(1<<20), "heap-growth-MiB")
	b.ReportMetric(goroutinesAll, "goroutines")
}

// benchPhoto is a stand-in for a photograph: overlapping waves of colour,
// a few hard-edged rectangles and per-pixel noise, so neither the
// encoders nor the decoders meet an unrealistically easy image.
func benchPhoto(w, h int) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	rng := rand.New(rand.NewPCG(6, 1920))
	edge := func(x, y int) (uint8, bool) {
		switch {
		case x > w/8 && x < w/3 && y > h/5 && y < h/2:
			return 30, true
		case x > w/2 && x < 3*w/4 && y > 3*h/5 && y < 4*h/5:
			return 220, true
		}
		return 0, false
	}
	for y := range h {
		for x := range w {
			u, v := float64(x)/float64(w), float64(y)/float64(h)
			c := [3]float64{
				120 + 90*math.Sin(7*u+3*v),
				130 + 80*math.Cos(5*v-2*u*v),
				110 + 100*math.Sin(4*(u+v)+1),
			}
			if e, ok := edge(x, y); ok {
				c = [3]float64{float64(e), float64(255 - e), 128}
			}
			noise := float64(rng.IntN(21) - 10)
			var px [3]uint8
			for i := range c {
				px[i] = uint8(max(0, min(255, c[i]+noise)))
			}
			img.SetRGBA(x, y, color.RGBA{px[0], px[1], px[2], 255})
		}
	}
	return img
}

type thumbnailSource struct {
	format, contentType string
	data                []byte
}

// thumbnailSources are 1920x1080 images in each format we thumbnail: JPEG
// (quality 85), PNG and GIF (256 colours, dithered) encoded here, WebP
// from media/thumbnail/testdata (Go has no WebP encoder).
func thumbnailSources(b *testing.B) []thumbnailSource {
	photo := benchPhoto(1920, 1080)
	var jpg, pngData, gifData bytes.Buffer
	if err := jpeg.Encode(&jpg, photo, &jpeg.Options{Quality: 85}); err != nil {
		b.Fatal(err)
	}
	if err := png.Encode(&pngData, photo); err != nil {
		b.Fatal(err)
	}
	if err := gif.Encode(&gifData, photo, &gif.Options{NumColors: 256}); err != nil {
		b.Fatal(err)
	}
	webp, err := os.ReadFile(filepath.Join("..", "..", "media", "thumbnail", "testdata", "photo_1920x1080.webp"))
	if err != nil {
		b.Fatal(err)
	}
	return []thumbnailSource{
		{"jpeg", "image/jpeg", jpg.Bytes()},
		{"png", "image/png", pngData.Bytes()},
		{"gif", "image/gif", gifData.Bytes()},
		{"webp", "image/webp", webp},
	}
}

// benchThumbnailURL is the authenticated thumbnail URL of uri.
func benchThumbnailURL(srv *Server, uri id.ContentURI, w, h int, method string) string {
	q := url.Values{"width": {strconv.Itoa(w)}, "height": {strconv.Itoa(h)}, "method": {method}}
	return srv.URL + "/_matrix/client/v1/media/thumbnail/" + uri.Homeserver + "/" + uri.FileID + "?" + q.Encode()
}

// benchThumbnail fetches a thumbnail and returns its bytes.
func benchThumbnail(hc *http.Client, rawURL, token string) ([]byte, error) {
	resp, err := benchGet(hc, rawURL, token)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", rawURL, err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "image/jpeg" && ct != "image/png" {
		return nil, fmt.Errorf("GET %s: Content-Type %q", rawURL, ct)
	}
	return body, nil
}

// BenchmarkMediaThumbnail measures GET /_matrix/client/v1/media/thumbnail
// of a 1920x1080 source in each format, one request at a time:
//
//   - precomputed: 320x240 scale, one of the default precomputed sizes,
//     made after the upload and served from storage (a database lookup
//     and a file of about 5 KB);
//   - on-demand: a crop of about 200x150 (the box changes every request,
//     200..296 x 150..238), larger than every precomputed crop size (the
//     largest is 96x96), so the server decodes the source, resizes and
//     encodes for each request and keeps nothing. The size changing
//     defeats any cache a later version might add.
//
// Every source's precomputed sizes are all stored before timing starts,
// so no background thumbnailing competes with the requests.
func BenchmarkMediaThumbnail(b *testing.B) {
	srv := benchServer(b)
	token := benchUsers(b, srv, "thumb", 1)[0].AccessToken
	hc := mediaBenchClient()
	type source struct {
		format string
		uri    id.ContentURI
	}
	var sources []source
	for _, s := range thumbnailSources(b) {
		uri, err := benchUpload(hc, srv, token, bytes.NewReader(s.data), int64(len(s.data)), s.contentType)
		if err != nil {
			b.Fatal(err)
		}
		b.Logf("%s source: %d bytes", s.format, len(s.data))
		sources = append(sources, source{s.format, uri})
	}
	// A request for a size the background worker has not stored yet
	// waits for it (or makes it): once every size answers, all are stored.
	defaults := []struct {
		w, h   int
		method string
	}{{32, 32, "crop"}, {96, 96, "crop"}, {320, 240, "scale"}, {640, 480, "scale"}, {800, 600, "scale"}}
	for _, s := range sources {
		for _, d := range defaults {
			if _, err := benchThumbnail(hc, benchThumbnailURL(srv, s.uri, d.w, d.h, d.method), token); err != nil {
				b.Fatal(err)
			}
		}
	}
	time.Sleep(time.Second)

	for _, s := range sources {
		b.Run(s.format, func(b *testing.B) {
			b.Run("precomputed", func(b *testing.B) {
				rawURL := benchThumbnailURL(srv, s.uri, 320, 240, "scale")
				wantThumbnail(b, hc, rawURL, token, 320, 180)
				cpu := meterCPU(b, srv)
				ops := 0
				for b.Loop() {
					ops++
					if _, err := benchThumbnail(hc, rawURL, token); err != nil {
						b.Fatal(err)
					}
				}
				cpu.report(b, ops)
			})
			b.Run("on-demand", func(b *testing.B) {
				wantThumbnail(b, hc, benchThumbnailURL(srv, s.uri, 200, 150, "crop"), token, 200, 150)
				cpu := meterCPU(b, srv)
				i := 0
				for b.Loop() {
					i++
					rawURL := benchThumbnailURL(srv, s.uri, 200+i%97, 150+i%89, "crop")
					if _, err := benchThumbnail(hc, rawURL, token); err != nil {
						b.Fatal(err)
					}
				}
				cpu.report(b, i)
			})
		})
	}
}

// wantThumbnail fetches a thumbnail and fails unless it decodes to w x h.
func wantThumbnail(b *testing.B, hc *http.Client, rawURL, token string, w, h int) {
	body, err := benchThumbnail(hc, rawURL, token)
	if err != nil {
		b.Fatal(err)
	}
	img, _, err := image.Decode(bytes.NewReader(body))
	if err != nil {
		b.Fatalf("GET %s: the thumbnail does not decode: %v", rawURL, err)
	}
	if got := img.Bounds().Size(); got.X != w || got.Y != h {
		b.Fatalf("GET %s: a %dx%d thumbnail, want %dx%d", rawURL, got.X, got.Y, w, h)
	}
	b.Logf("a %dx%d thumbnail of %d bytes", w, h, len(body))
}
