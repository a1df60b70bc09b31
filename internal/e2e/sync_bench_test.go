package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tidwall/gjson"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// The /sync benchmarks run the real binary on the embedded PostgreSQL
// (durable), with the benchmark's clients on the same machine:
//
//	GOTOOLCHAIN=auto go test -run '^$' -bench 'Sync' -benchtime 20x ./internal/e2e/

func benchServer(b *testing.B) *Server { return benchServerAt(b, "") }

// benchServerAt starts the benchmark server on dataDir ("" = a new one);
// the embedded database lives there, so a restart keeps the data.
func benchServerAt(b *testing.B, dataDir string) *Server {
	return Start(b, Options{DataDir: dataDir, Env: map[string]string{
		"WEFT_DATABASE_URL": "", "WEFT_REGISTRATION_MODE": "open", "WEFT_PASSWORDS_BCRYPT_COST": "4",
		"WEFT_RATE_LIMITS_ENABLED": "false", "WEFT_LOG_LEVEL": "warn",
	}})
}

// benchUsers registers n users, 16 at a time.
func benchUsers(b *testing.B, srv *Server, prefix string, n int) []*mautrix.Client {
	out := make([]*mautrix.Client, n)
	parallel(b, n, func(i int) error {
		cli := srv.Client()
		resp, err := cli.RegisterDummy(context.Background(), &mautrix.ReqRegister[any]{Username: fmt.Sprintf("%s%d", prefix, i), Password: "bench-password"})
		if err != nil {
			return err
		}
		cli.SetCredentials(resp.UserID, resp.AccessToken)
		cli.DeviceID = resp.DeviceID
		out[i] = cli
		return nil
	})
	return out
}

// parallel runs f(0..n-1) on 16 workers and fails b on the first error.
func parallel(b *testing.B, n int, f func(i int) error) {
	b.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
}

// syncGet is a raw GET /sync: the body and the next_batch in it.
func syncGet(hc *http.Client, base, token string, q url.Values) ([]byte, string, error) {
	req, err := http.NewRequest("GET", base+"/_matrix/client/v3/sync?"+q.Encode(), nil)
	if err != nil {
		return nil, "", err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, "", err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, "", fmt.Errorf("sync: %d %s", resp.StatusCode, body)
	}
	return body, gjson.GetBytes(body, "next_batch").Str, nil
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(int(float64(len(sorted))*p), len(sorted)-1)]
}

// BenchmarkSyncFanout measures how long after PUT /send returns each of
// 1,000 long-polling devices (100 users x 10 devices, all in one room)
// receives the event. One op is one message delivered to all of them.
func BenchmarkSyncFanout(b *testing.B) {
	const users, devicesPerUser = 100, 10
	srv := benchServer(b)
	ctx := context.Background()
	clients := benchUsers(b, srv, "fan", users)
	roomResp, err := clients[0].CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
	if err != nil {
		b.Fatal(err)
	}
	roomID := roomResp.RoomID
	parallel(b, users-1, func(i int) error { _, err := clients[i+1].JoinRoomByID(ctx, roomID); return err })
	b.Logf("%d users joined", users)
	// Every user's other devices.
	tokens := make([]string, users*devicesPerUser)
	parallel(b, len(tokens), func(i int) error {
		u := clients[i/devicesPerUser]
		if i%devicesPerUser == 0 {
			tokens[i] = u.AccessToken
			return nil
		}
		cli := srv.Client()
		resp, err := cli.Login(ctx, &mautrix.ReqLogin{Type: mautrix.AuthTypePassword,
			Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: u.UserID.Localpart()}, Password: "bench-password"})
		if err != nil {
			return err
		}
		tokens[i] = resp.AccessToken
		return nil
	})

	b.Logf("%d devices logged in", len(tokens))
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2 * len(tokens)}}
	filter := `{"room":{"timeline":{"limit":20}},"presence":{"types":[]}}`
	// received[m][d] is when device d got message m.
	n := b.N
	received := make([][]time.Time, n)
	for m := range received {
		received[m] = make([]time.Time, len(tokens))
	}
	remaining := make([]atomic.Int64, n)
	allIn := make([]chan struct{}, n)
	for m := range n {
		remaining[m].Store(int64(len(tokens)))
		allIn[m] = make(chan struct{})
	}
	stop := make(chan struct{})
	var ready sync.WaitGroup
	var devices sync.WaitGroup
	for d, tok := range tokens {
		ready.Add(1)
		devices.Go(func() {
			_, since, err := syncGet(hc, srv.URL, tok, url.Values{"filter": {filter}, "timeout": {"0"}})
			ready.Done()
			if err != nil {
				b.Error(err)
				return
			}
			next := 0
			for {
				select {
				case <-stop:
					return
				default:
				}
				body, nb, err := syncGet(hc, srv.URL, tok, url.Values{"filter": {filter}, "timeout": {"30000"}, "since": {since}})
				now := time.Now()
				if err != nil {
					select {
					case <-stop:
					default:
						b.Error(err)
					}
					return
				}
				since = nb
				for next < n && bytes.Contains(body, []byte(`"fanout-`+strconv.Itoa(next)+`"`)) {
					received[next][d] = now
					if remaining[next].Add(-1) == 0 {
						close(allIn[next])
					}
					next++
				}
			}
		})
	}
	ready.Wait()
	b.Logf("%d devices synced", len(tokens))
	time.Sleep(500 * time.Millisecond) // let every device start its long-poll
	sender := clients[0]
	sent := make([]time.Time, n)
	if f := os.Getenv("WEFT_BENCH_MARK"); f != "" && n > 1 {
		_ = os.WriteFile(f, []byte(strconv.Itoa(srv.cmd.Process.Pid)), 0o644)
	}
	b.ResetTimer()
	// The server's CPU per message (all 1,000 deliveries and the send):
	// steadier than latency on a shared machine.
	cpu := meterCPU(b, srv)
	for m := range n {
		if _, err := sender.SendText(ctx, roomID, "fanout-"+strconv.Itoa(m)); err != nil {
			b.Fatal(err)
		}
		sent[m] = time.Now()
		select {
		case <-allIn[m]:
		case <-time.After(60 * time.Second):
			b.Fatalf("message %d reached only %d of %d devices", m, int64(len(tokens))-remaining[m].Load(), len(tokens))
		}
	}
	b.StopTimer()
	cpu.report(b, n)
	close(stop)
	// The devices' long-polls end with the server.
	var lat []time.Duration
	for m := range n {
		for _, at := range received[m] {
			lat = append(lat, max(at.Sub(sent[m]), 0))
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(percentile(lat, 0.50).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(percentile(lat, 0.99).Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
}

// rssKiB reads the resident set size of a process.
func rssKiB(b *testing.B, pid int) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

// waitingLongPolls reads the server's weft_sync_long_polls gauge.
func waitingLongPolls(b *testing.B, srv *Server) int {
	return int(metric(b, srv, "weft_sync_long_polls"))
}

// metric reads one unlabelled value from the server's /metrics.
func metric(b *testing.B, srv *Server, name string) float64 {
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	b.Fatalf("no %s in /metrics", name)
	return 0
}

// BenchmarkSyncIdleLongPolls measures the server's memory per idle
// long-poll: RSS with 10,000 /sync requests waiting (100 users, 100 each,
// each in two rooms) minus RSS before, measured after the set-up's
// garbage is collected (about two and a half minutes).
func BenchmarkSyncIdleLongPolls(b *testing.B) {
	const users, perUser = 100, 100
	srv := benchServer(b)
	ctx := context.Background()
	clients := benchUsers(b, srv, "idle", users)
	var rooms []id.RoomID
	for range 2 {
		r, err := clients[0].CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat"})
		if err != nil {
			b.Fatal(err)
		}
		rooms = append(rooms, r.RoomID)
	}
	parallel(b, (users-1)*len(rooms), func(i int) error {
		_, err := clients[1+i/len(rooms)].JoinRoomByID(ctx, rooms[i%len(rooms)])
		return err
	})
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: users * perUser}}
	since := make([]string, users)
	parallel(b, users, func(i int) error {
		var err error
		_, since[i], err = syncGet(hc, srv.URL, clients[i].AccessToken, url.Values{"timeout": {"0"}})
		return err
	})
	pid := srv.cmd.Process.Pid
	for b.Loop() {
		time.Sleep(2 * time.Second) // settle after set-up
		before := rssKiB(b, pid)
		heapBefore, stackBefore := metric(b, srv, "go_memstats_heap_inuse_bytes"), metric(b, srv, "go_memstats_stack_inuse_bytes")
		var wg sync.WaitGroup
		var stop atomic.Bool
		for i := range users * perUser {
			u := i % users
			wg.Go(func() {
				// Poll until idle: answers for what others did before
				// (their presence going online) come first.
				tok := since[u]
				for !stop.Load() {
					_, next, err := syncGet(hc, srv.URL, clients[u].AccessToken, url.Values{"timeout": {"300000"}, "since": {tok}})
					if err != nil {
						if !stop.Load() {
							b.Errorf("long-poll of user %d: %v", u, err)
						}
						return
					}
					tok = next
				}
			})
		}
		deadline := time.Now().Add(2 * time.Minute)
		for waitingLongPolls(b, srv) < users*perUser {
			if time.Now().After(deadline) {
				b.Fatalf("only %d long-polls registered", waitingLongPolls(b, srv))
			}
			time.Sleep(200 * time.Millisecond)
		}
		// Measure the steady state: the garbage of setting the polls up
		// goes with the runtime's periodic forced GC (every two minutes)
		// and the scavenger returning freed memory to the system.
		time.Sleep(130 * time.Second)
		after := rssKiB(b, pid)
		polls := float64(users * perUser)
		b.ReportMetric((metric(b, srv, "go_memstats_heap_inuse_bytes")-heapBefore)/1024/polls, "heap-KiB/long-poll")
		b.ReportMetric((metric(b, srv, "go_memstats_stack_inuse_bytes")-stackBefore)/1024/polls, "stack-KiB/long-poll")
		b.ReportMetric(float64(after-before)/float64(users*perUser), "KiB/long-poll")
		b.ReportMetric(float64(after)/1024, "rss-MiB")
		// Wake them all: one message in each room ends every poll.
		stop.Store(true)
		for _, r := range rooms {
			if _, err := clients[0].SendText(ctx, r, "wake"); err != nil {
				b.Fatal(err)
			}
		}
		wg.Wait()
	}
}

// syncUser builds the initial-sync scene: a user in 100 rooms, each with
// 20 members and 50 messages from two of them.
func syncUser(b *testing.B, srv *Server) *mautrix.Client {
	const roomsN, members, messages = 100, 20, 50
	ctx := context.Background()
	clients := benchUsers(b, srv, "init", members)
	rooms := make([]id.RoomID, roomsN)
	parallel(b, roomsN, func(i int) error {
		r, err := clients[i%members].CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "public_chat", Name: fmt.Sprintf("Room %d", i)})
		if err != nil {
			return err
		}
		rooms[i] = r.RoomID
		return nil
	})
	parallel(b, roomsN*members, func(i int) error {
		r, u := i/members, i%members
		if u == r%members {
			return nil // the creator
		}
		_, err := clients[u].JoinRoomByID(ctx, rooms[r])
		return err
	})
	parallel(b, roomsN*messages, func(i int) error {
		r := i / messages
		_, err := clients[(r+i%2)%members].SendText(ctx, rooms[r], fmt.Sprintf("message %d", i))
		return err
	})
	return clients[members-1]
}

// BenchmarkSyncInitial is a first /sync (no token) for a user in 100
// rooms with 20 members and 50 messages each, timeline limit 10, with and
// without lazy-loaded members. warm repeats it (the shared caches hold the
// rooms, as when many users of the same rooms sync); cold restarts the
// server before each sync (nothing cached: a user's first sync). Cold runs
// last: each restart belongs to its sub-benchmark.
func BenchmarkSyncInitial(b *testing.B) {
	srv := benchServer(b)
	user := syncUser(b, srv)
	hc := &http.Client{}
	for _, cold := range []bool{false, true} {
		for _, lazy := range []bool{false, true} {
			name := fmt.Sprintf("cold=%t/lazy=%t", cold, lazy)
			b.Run(name, func(b *testing.B) {
				filter := fmt.Sprintf(`{"room":{"timeline":{"limit":10},"state":{"lazy_load_members":%t}}}`, lazy)
				var size int
				for b.Loop() {
					if cold {
						b.StopTimer()
						srv.Stop()
						srv = benchServerAt(b, srv.DataDir)
						b.StartTimer()
					}
					body, _, err := syncGet(hc, srv.URL, user.AccessToken, url.Values{"filter": {filter}})
					if err != nil {
						b.Fatal(err)
					}
					if n := len(gjson.GetBytes(body, "rooms.join").Map()); n != 100 {
						b.Fatalf("initial sync has %d joined rooms, want 100", n)
					}
					size = len(body)
				}
				b.ReportMetric(float64(size)/1024, "KiB/response")
			})
		}
	}
}

// BenchmarkSyncIncrementalNoChange is an incremental /sync with timeout 0
// when nothing changed, for the same user in 100 rooms.
func BenchmarkSyncIncrementalNoChange(b *testing.B) {
	srv := benchServer(b)
	user := syncUser(b, srv)
	hc := &http.Client{}
	_, since, err := syncGet(hc, srv.URL, user.AccessToken, url.Values{"timeout": {"0"}})
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		body, next, err := syncGet(hc, srv.URL, user.AccessToken, url.Values{"timeout": {"0"}, "since": {since}})
		if err != nil {
			b.Fatal(err)
		}
		if gjson.GetBytes(body, "rooms").Exists() {
			b.Fatalf("nothing changed but the response has rooms: %s", body)
		}
		since = next
	}
}
