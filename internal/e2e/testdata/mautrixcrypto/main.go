// Command mautrixcrypto is the second, independent end-to-end encryption
// client of weft's E2EE test (TestE2EEClients, internal/e2e/e2ee_test.go):
// mautrix-go's crypto (crypto/cryptohelper over an OlmMachine) built with
// the goolm tag, mautrix's pure-Go Olm and Megolm, and CGO_ENABLED=0, so it
// needs neither libolm nor a C compiler. Without the tag mautrix links
// libolm through cgo, which is why this is its own program and its own Go
// module (testdata: `go test ./...` and weft's go.mod never see it) rather
// than part of the e2e test binary. The test builds it with
//
//	CGO_ENABLED=0 go build -tags goolm -o <bin> .
//
// and internal/e2e/testdata/jssdk/e2ee.mjs runs it beside the matrix-js-sdk
// clients. It logs in nothing itself: it is given an existing device's
// access token, uploads that device's keys (cryptohelper.Init), syncs, and
// keeps its crypto state in memory for its lifetime.
//
// Environment: MAUTRIX_BASE_URL, MAUTRIX_USER_ID, MAUTRIX_TOKEN,
// MAUTRIX_DEVICE_ID; MAUTRIX_DEBUG=1 for mautrix's debug log.
//
// Protocol: one JSON object per line. On start it prints
// {"ready":true,"device_id":...,"ed25519":...,"curve25519":...}; then it
// reads commands on stdin, one at a time, and answers each with one line
// {"ok":true,...} or {"ok":false,"error":"..."}:
//
//	{"cmd":"join","room":R,"timeout_ms":N}   join R and wait until its sync shows R encrypted
//	{"cmd":"wait","room":R,"body":B,"timeout_ms":N}
//	    wait for an m.room.message with body B in R that arrived encrypted and
//	    was decrypted; answers event_id and sender
//	{"cmd":"send","room":R,"body":B}         send an m.text message (encrypted, as R is); answers event_id
//	{"cmd":"devices","user":U}               the devices of U this machine knows; answers device_ids
//
// End of stdin stops the sync loop and exits 0. Logs go to stderr.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/cryptohelper"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

type command struct {
	Cmd       string `json:"cmd"`
	Room      string `json:"room"`
	Body      string `json:"body"`
	User      string `json:"user"`
	TimeoutMS int    `json:"timeout_ms"`
}

// message is an m.room.message the syncer dispatched.
type message struct {
	RoomID    id.RoomID
	EventID   id.EventID
	Sender    id.UserID
	Body      string
	Decrypted bool
}

// inbox records every message seen since start, so a "wait" issued after
// the message arrived still finds it.
type inbox struct {
	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every add
	msgs    []message
}

func (in *inbox) add(m message) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.msgs = append(in.msgs, m)
	close(in.changed)
	in.changed = make(chan struct{})
}

func (in *inbox) find(room id.RoomID, body string) (message, bool, chan struct{}) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, m := range in.msgs {
		if m.RoomID == room && m.Body == body {
			return m, true, in.changed
		}
	}
	return message{}, false, in.changed
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "mautrixcrypto:", err)
		os.Exit(1)
	}
}

func env(name string) (string, error) {
	v := os.Getenv(name)
	if v == "" {
		return "", fmt.Errorf("environment variable %s is not set", name)
	}
	return v, nil
}

func run() error {
	var cfg [4]string
	for i, name := range []string{"MAUTRIX_BASE_URL", "MAUTRIX_USER_ID", "MAUTRIX_TOKEN", "MAUTRIX_DEVICE_ID"} {
		v, err := env(name)
		if err != nil {
			return err
		}
		cfg[i] = v
	}
	level := zerolog.InfoLevel
	if os.Getenv("MAUTRIX_DEBUG") == "1" {
		level = zerolog.DebugLevel
	}
	log := zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, NoColor: true, TimeFormat: "15:04:05.000"}).
		Level(level).With().Timestamp().Logger()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	cli, err := mautrix.NewClient(cfg[0], id.UserID(cfg[1]), cfg[2])
	if err != nil {
		return fmt.Errorf("creating the client: %w", err)
	}
	cli.DeviceID = id.DeviceID(cfg[3])
	cli.Log = log
	cli.StateStore = mautrix.NewMemoryStateStore()
	syncer := cli.Syncer.(*mautrix.DefaultSyncer)
	// The state store (room encryption, members) is what the crypto
	// machine encrypts for; with a caller-provided crypto store the helper
	// does not feed it itself.
	syncer.OnEvent(cli.StateStoreSyncHandler)

	// The pickle key only protects the in-memory store; a fresh random one
	// per run is enough.
	pickleKey := make([]byte, 32)
	if _, err := rand.Read(pickleKey); err != nil {
		return err
	}
	helper, err := cryptohelper.NewCryptoHelper(cli, pickleKey, crypto.NewMemoryStore(nil))
	if err != nil {
		return fmt.Errorf("creating the crypto helper: %w", err)
	}
	helper.DecryptErrorCallback = func(evt *event.Event, err error) {
		log.Warn().Err(err).Stringer("event_id", evt.ID).Stringer("room_id", evt.RoomID).Msg("decryption failed")
	}
	// Init uploads this device's identity and one-time keys
	// (/keys/upload) after checking the server has none for it
	// (/keys/query).
	if err := helper.Init(ctx); err != nil {
		return fmt.Errorf("initialising crypto (keys upload and query): %w", err)
	}
	cli.Crypto = helper
	mach := helper.Machine()

	in := &inbox{changed: make(chan struct{})}
	syncer.OnEventType(event.EventMessage, func(_ context.Context, evt *event.Event) {
		m := message{RoomID: evt.RoomID, EventID: evt.ID, Sender: evt.Sender, Decrypted: evt.Mautrix.WasEncrypted}
		if mc := evt.Content.AsMessage(); mc != nil {
			m.Body = mc.Body
		}
		in.add(m)
	})

	syncDone := make(chan error, 1)
	go func() { syncDone <- cli.SyncWithContext(ctx) }()

	out := json.NewEncoder(os.Stdout)
	own := mach.OwnIdentity()
	if err := out.Encode(map[string]any{
		"ready": true, "device_id": own.DeviceID, "ed25519": own.SigningKey, "curve25519": own.IdentityKey,
	}); err != nil {
		return err
	}

	lines := bufio.NewScanner(os.Stdin)
	lines.Buffer(make([]byte, 64*1024), 1<<20)
	for lines.Scan() {
		var c command
		var reply map[string]any
		if err := json.Unmarshal(lines.Bytes(), &c); err != nil {
			reply = map[string]any{"ok": false, "error": fmt.Sprintf("bad command %q: %v", lines.Text(), err)}
		} else {
			select {
			case err := <-syncDone:
				return fmt.Errorf("the sync loop stopped: %w", err)
			default:
			}
			reply, err = handle(ctx, cli, mach, in, c)
			if err != nil {
				reply = map[string]any{"ok": false, "error": err.Error()}
			} else {
				reply["ok"] = true
			}
		}
		if err := out.Encode(reply); err != nil {
			return err
		}
	}
	if err := lines.Err(); err != nil {
		return fmt.Errorf("reading commands: %w", err)
	}
	cancel()
	select {
	case err := <-syncDone:
		if err != nil && !errors.Is(err, context.Canceled) {
			return fmt.Errorf("the sync loop: %w", err)
		}
	case <-time.After(10 * time.Second):
		return errors.New("the sync loop did not stop within 10 s")
	}
	return nil
}

func timeoutOf(c command) time.Duration {
	if c.TimeoutMS <= 0 {
		return 20 * time.Second
	}
	return time.Duration(c.TimeoutMS) * time.Millisecond
}

func handle(ctx context.Context, cli *mautrix.Client, mach *crypto.OlmMachine, in *inbox, c command) (map[string]any, error) {
	room := id.RoomID(c.Room)
	switch c.Cmd {
	case "join":
		if _, err := cli.JoinRoomByID(ctx, room); err != nil {
			return nil, fmt.Errorf("joining %s: %w", room, err)
		}
		// The join answers before the sync loop has the room's state; the
		// machine can only encrypt once the state store knows the room is
		// encrypted and who is in it.
		deadline := time.Now().Add(timeoutOf(c))
		for {
			enc, err := cli.StateStore.IsEncrypted(ctx, room)
			if err != nil {
				return nil, err
			}
			member, err := cli.StateStore.GetMember(ctx, room, cli.UserID)
			if err != nil {
				return nil, err
			}
			if enc && member.Membership == event.MembershipJoin {
				return map[string]any{}, nil
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("after %s the sync loop shows %s as encrypted=%v with own membership %q", timeoutOf(c), room, enc, member.Membership)
			}
			time.Sleep(50 * time.Millisecond)
		}
	case "wait":
		deadline := time.After(timeoutOf(c))
		for {
			m, ok, changed := in.find(room, c.Body)
			if ok {
				if !m.Decrypted {
					return nil, fmt.Errorf("message %s with body %q arrived unencrypted", m.EventID, c.Body)
				}
				return map[string]any{"event_id": m.EventID, "sender": m.Sender}, nil
			}
			select {
			case <-changed:
			case <-deadline:
				return nil, fmt.Errorf("no decrypted message with body %q in %s after %s", c.Body, room, timeoutOf(c))
			}
		}
	case "send":
		enc, err := cli.StateStore.IsEncrypted(ctx, room)
		if err != nil {
			return nil, err
		}
		if !enc {
			// SendMessageEvent would send plaintext: refuse instead.
			return nil, fmt.Errorf("%s is not known as encrypted; join it first", room)
		}
		resp, err := cli.SendMessageEvent(ctx, room, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: c.Body})
		if err != nil {
			return nil, fmt.Errorf("sending to %s: %w", room, err)
		}
		return map[string]any{"event_id": resp.EventID}, nil
	case "devices":
		devices, err := mach.CryptoStore.GetDevices(ctx, id.UserID(c.User))
		if err != nil {
			return nil, fmt.Errorf("devices of %s: %w", c.User, err)
		}
		ids := make([]string, 0, len(devices))
		for d, dev := range devices {
			if !dev.Deleted {
				ids = append(ids, string(d))
			}
		}
		slices.Sort(ids)
		return map[string]any{"device_ids": ids}, nil
	}
	return nil, fmt.Errorf("unknown command %q", c.Cmd)
}
