package e2e

import (
	"bytes"
	"context"
	"fmt"
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
	transport := &http.Transport{MaxIdleConnsPerHost: 64}
	hc := &http.Client{Transport: transport}
	var txn atomic.Int64
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
					wg.Go(func() {
						for {
							i := int(next.Add(1)) - 1
							if i >= n {
								return
							}
							roomID := rooms[(w+i)%spread]
							u := fmt.Sprintf("%s/_matrix/client/v3/rooms/%s/send/m.room.message/b%d", srv.URL, url.PathEscape(string(roomID)), txn.Add(1))
							req, _ := http.NewRequest("PUT", u, bytes.NewReader([]byte(`{"msgtype":"m.text","body":"benchmark message"}`)))
							req.Header.Set("Authorization", "Bearer "+token)
							t0 := time.Now()
							res, err := hc.Do(req)
							if err != nil {
								b.Error(err)
								return
							}
							res.Body.Close()
							lat[i] = time.Since(t0)
							if res.StatusCode != 200 {
								b.Errorf("status %d", res.StatusCode)
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
				weftEnd, pgEnd := processCPU(b, pid)
				b.ReportMetric(float64((weftEnd-weftStart).Microseconds())/float64(n), "weft-cpu-us/event")
				b.ReportMetric(float64((pgEnd-pgStart).Microseconds())/float64(n), "pg-cpu-us/event")
				b.ReportMetric(float64((ownCPU(b)-clientStart).Microseconds())/float64(n), "client-cpu-us/event")
			})
		}
	}
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
