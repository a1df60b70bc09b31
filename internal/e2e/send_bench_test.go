package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// BenchmarkSend measures PUT /rooms/{id}/send through the real binary on the
// embedded PostgreSQL (durable: fsync and synchronous_commit on), into one
// room and spread over 16 rooms, with 1 and 16 concurrent clients. It
// reports events/s, the p50/p99 latency of a send, and the CPU time per
// event of the server, of its PostgreSQL (every process under it; a 10 ms
// resolution per process, so runs need thousands of sends) and of the
// benchmark's own clients, which share the machine. The CPU figures move
// less than the rate on a shared machine.
//
//	GOTOOLCHAIN=auto go test -run '^$' -bench Send -benchtime 2000x ./internal/e2e/
func BenchmarkSend(b *testing.B) {
	srv := Start(b, Options{Env: map[string]string{
		// Empty: the embedded cluster. WEFT_BENCH_DATABASE_URL points the
		// benchmark at another PostgreSQL (an empty database), for
		// example one across a network.
		"WEFT_DATABASE_URL": os.Getenv("WEFT_BENCH_DATABASE_URL"), "WEFT_REGISTRATION_MODE": "open", "WEFT_PASSWORDS_BCRYPT_COST": "4",
		"WEFT_RATE_LIMITS_ENABLED": "false", "WEFT_LOG_LEVEL": "warn",
	}})
	ctx := context.Background()
	cli := srv.Client()
	resp, err := cli.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: "bench", Password: "bench-password"})
	if err != nil {
		b.Fatal(err)
	}
	token := resp.AccessToken
	cli.SetCredentials(resp.UserID, token)
	rooms := make([]id.RoomID, 16)
	for i := range rooms {
		r, err := cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat"})
		if err != nil {
			b.Fatal(err)
		}
		rooms[i] = r.RoomID
	}
	var txn atomic.Int64
	body := []byte(`{"msgtype":"m.text","body":"benchmark message"}`)
	for _, spread := range []int{1, 16} {
		for _, conc := range []int{1, 16} {
			b.Run(fmt.Sprintf("rooms=%d/clients=%d", spread, conc), func(b *testing.B) {
				n := b.N
				lat := make([]time.Duration, n)
				var next atomic.Int64
				var wg sync.WaitGroup
				pid := srv.cmd.Process.Pid
				weftStart, pgStart := processCPU(b, pid)
				clientStart := ownCPU(b)
				start := time.Now()
				for w := range conc {
					c, err := dialSender(srv.Addr, token)
					if err != nil {
						b.Fatal(err)
					}
					defer c.Close()
					wg.Go(func() {
						for {
							i := int(next.Add(1)) - 1
							if i >= n {
								return
							}
							roomID := rooms[(w+i)%spread]
							t0 := time.Now()
							status, err := c.send(roomID, fmt.Sprintf("b%d", txn.Add(1)), body)
							if err != nil {
								b.Error(err)
								return
							}
							lat[i] = time.Since(t0)
							if status != 200 {
								b.Errorf("status %d", status)
								return
							}
						}
					})
				}
				wg.Wait()
				elapsed := time.Since(start)
				sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
				b.ReportMetric(float64(n)/elapsed.Seconds(), "events/s")
				b.ReportMetric(float64(lat[n/2].Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(lat[n*99/100].Microseconds())/1000, "p99-ms")
				b.ReportMetric(float64(lat[n-1].Microseconds())/1000, "max-ms")
				weftEnd, pgEnd := processCPU(b, pid)
				b.ReportMetric(float64((weftEnd-weftStart).Microseconds())/float64(n), "weft-cpu-us/event")
				b.ReportMetric(float64((pgEnd-pgStart).Microseconds())/float64(n), "pg-cpu-us/event")
				b.ReportMetric(float64((ownCPU(b)-clientStart).Microseconds())/float64(n), "client-cpu-us/event")
			})
		}
	}
}

// sender is one benchmark client: a keep-alive HTTP/1.1 connection that
// writes each PUT /send itself and reads the answer with net/http's
// parser. net/http's client costs several times as much CPU per request
// (a goroutine hand-off each way, header maps), and the benchmark's
// clients share the machine with the server they measure.
type sender struct {
	conn  net.Conn
	r     *bufio.Reader
	w     *bufio.Writer
	host  string
	token string
}

func dialSender(addr, token string) (*sender, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &sender{conn: conn, r: bufio.NewReader(conn), w: bufio.NewWriter(conn), host: addr, token: token}, nil
}

func (c *sender) Close() error { return c.conn.Close() }

// send sends one message event and returns the answer's status.
func (c *sender) send(roomID id.RoomID, txnID string, body []byte) (int, error) {
	fmt.Fprintf(c.w, "PUT /_matrix/client/v3/rooms/%s/send/m.room.message/%s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n",
		url.PathEscape(string(roomID)), txnID, c.host, c.token, len(body))
	c.w.Write(body)
	if err := c.w.Flush(); err != nil {
		return 0, err
	}
	res, err := http.ReadResponse(c.r, nil)
	if err != nil {
		return 0, err
	}
	// Read to the end: the next answer follows on the same connection.
	_, err = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res.StatusCode, err
}

// ownCPU is the CPU time used so far by this process: the benchmark's
// clients, which share the machine with the server.
func ownCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// processCPU is the CPU time used so far by the process pid and, apart,
// by all the processes under it (the embedded PostgreSQL's postmaster and
// backends; a backend that exited is no longer counted).
func processCPU(b *testing.B, pid int) (self, children time.Duration) {
	b.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		b.Fatal(err)
	}
	parent := map[int]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue // gone meanwhile
		}
		_, rest, ok := strings.Cut(string(raw), ") ")
		if f := strings.Fields(rest); ok && len(f) > 1 {
			parent[p], _ = strconv.Atoi(f[1])
		}
	}
	under := func(p int) bool {
		for p = parent[p]; p > 1; p = parent[p] {
			if p == pid {
				return true
			}
		}
		return false
	}
	if self, err = serverCPU(pid); err != nil {
		b.Fatal(err)
	}
	for p := range parent {
		if under(p) {
			if t, err := serverCPU(p); err == nil {
				children += t
			}
		}
	}
	return self, children
}
