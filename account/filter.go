package account

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"

	"maunium.net/go/mautrix"
)

// ValidateFilter checks the body of POST /_matrix/client/v3/user/{userId}/filter
// against the spec's Filter schema (definitions/sync_filter.yaml and the
// EventFilter and RoomEventFilter it references) and returns it compacted,
// ready to store.
//
// Only the fields the schema defines are checked; unknown fields are kept and
// ignored, as the spec asks, so filters written for newer spec versions or
// with vendor extensions still upload. Room and user IDs are checked for
// their sigil only, which is what the schema's pattern asks.
//
// Two places are laxer than the schema, so that clients in the field keep
// working: a field whose value is null counts as absent (typed decoders in
// Go and Rust clients and servers treat it so), and limit may be 0 (the
// schema text says "greater than 0", but Synapse accepts 0 and some clients
// send it to skip the timeline on an initial sync).
//
// Errors are mautrix.RespError: M_NOT_JSON when the body is not a JSON
// object (or not JSON, or not UTF-8), M_BAD_JSON naming the field path when a
// field has the wrong type or value. A returned filter is valid UTF-8 JSON
// whose known fields all decode into their spec types, limit into an int64.
func ValidateFilter(raw []byte) (json.RawMessage, error) {
	if !utf8.Valid(raw) {
		return nil, mautrix.MNotJSON.WithMessage("filter is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber() // keep limit's literal, so 1.5 and 1e400 are not rounded into integers
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return nil, mautrix.MNotJSON.WithMessage("filter is not valid JSON")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, mautrix.MNotJSON.WithMessage("filter is not valid JSON: data after the object")
	}
	top, ok := doc.(map[string]any)
	if !ok {
		return nil, mautrix.MNotJSON.WithMessage("filter must be a JSON object")
	}
	if err := checkSyncFilter(top); err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if err := json.Compact(&out, raw); err != nil {
		// Unreachable: the decoder accepted the same bytes.
		return nil, fmt.Errorf("compacting filter: %w", err)
	}
	return json.RawMessage(out.Bytes()), nil
}

// filterError is the M_BAD_JSON error for the field at path.
func filterError(path, format string, args ...any) error {
	return mautrix.MBadJSON.WithMessage(path + " " + fmt.Sprintf(format, args...))
}

// checkSyncFilter checks the top-level Filter object. Fields are checked in a
// fixed order so that a filter with several faults always reports the same one.
func checkSyncFilter(f map[string]any) error {
	if err := filterStrings(f, "", "event_fields", 0, ""); err != nil {
		return err
	}
	if v, ok := filterField(f, "event_format"); ok {
		if s, isString := v.(string); !isString || (s != "client" && s != "federation") {
			return filterError("event_format", `must be "client" or "federation"`)
		}
	}
	for _, name := range []string{"presence", "account_data"} {
		sub, err := filterObject(f, "", name)
		if err != nil {
			return err
		}
		if sub != nil {
			if err := checkEventFilter(sub, name); err != nil {
				return err
			}
		}
	}
	room, err := filterObject(f, "", "room")
	if err != nil || room == nil {
		return err
	}
	return checkRoomFilter(room, "room")
}

// checkRoomFilter checks a RoomFilter (inline in sync_filter.yaml).
func checkRoomFilter(f map[string]any, path string) error {
	if err := filterStrings(f, path, "not_rooms", '!', "a room ID"); err != nil {
		return err
	}
	if err := filterStrings(f, path, "rooms", '!', "a room ID"); err != nil {
		return err
	}
	if err := filterBool(f, path, "include_leave"); err != nil {
		return err
	}
	for _, name := range []string{"ephemeral", "state", "timeline", "account_data"} {
		sub, err := filterObject(f, path, name)
		if err != nil {
			return err
		}
		if sub != nil {
			if err := checkRoomEventFilter(sub, filterPath(path, name)); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkRoomEventFilter checks a RoomEventFilter: an EventFilter plus room
// lists and flags.
func checkRoomEventFilter(f map[string]any, path string) error {
	if err := checkEventFilter(f, path); err != nil {
		return err
	}
	if err := filterStrings(f, path, "not_rooms", '!', "a room ID"); err != nil {
		return err
	}
	if err := filterStrings(f, path, "rooms", '!', "a room ID"); err != nil {
		return err
	}
	for _, name := range []string{"contains_url", "include_redundant_members", "lazy_load_members", "unread_thread_notifications"} {
		if err := filterBool(f, path, name); err != nil {
			return err
		}
	}
	return nil
}

// checkEventFilter checks an EventFilter.
func checkEventFilter(f map[string]any, path string) error {
	if err := filterLimit(f, path); err != nil {
		return err
	}
	if err := filterStrings(f, path, "not_senders", '@', "a user ID"); err != nil {
		return err
	}
	if err := filterStrings(f, path, "senders", '@', "a user ID"); err != nil {
		return err
	}
	if err := filterStrings(f, path, "not_types", 0, ""); err != nil {
		return err
	}
	return filterStrings(f, path, "types", 0, "")
}

// filterField returns f[name] unless it is missing or null.
func filterField(f map[string]any, name string) (any, bool) {
	v, ok := f[name]
	return v, ok && v != nil
}

func filterPath(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// filterObject returns f[name] as an object, or nil when absent.
func filterObject(f map[string]any, path, name string) (map[string]any, error) {
	v, ok := filterField(f, name)
	if !ok {
		return nil, nil
	}
	obj, isObj := v.(map[string]any)
	if !isObj {
		return nil, filterError(filterPath(path, name), "must be an object")
	}
	return obj, nil
}

func filterBool(f map[string]any, path, name string) error {
	if v, ok := filterField(f, name); ok {
		if _, isBool := v.(bool); !isBool {
			return filterError(filterPath(path, name), "must be a boolean")
		}
	}
	return nil
}

// filterStrings checks that f[name] is an array of strings; when sigil is not
// 0, each must start with it (the schema's "^!" or "^@" pattern).
func filterStrings(f map[string]any, path, name string, sigil byte, what string) error {
	v, ok := filterField(f, name)
	if !ok {
		return nil
	}
	p := filterPath(path, name)
	arr, isArr := v.([]any)
	if !isArr {
		return filterError(p, "must be an array of strings")
	}
	for i, item := range arr {
		s, isString := item.(string)
		if !isString {
			return filterError(fmt.Sprintf("%s[%d]", p, i), "must be a string")
		}
		if sigil != 0 && (s == "" || s[0] != sigil) {
			return filterError(fmt.Sprintf("%s[%d]", p, i), "must be %s starting with %c", what, sigil)
		}
	}
	return nil
}

// filterLimit checks that limit is a non-negative integer that fits an int64.
// Integer means an integer literal: 10.0 and 1e2 are refused, since Go (and
// so syncapi) will not decode them into an int.
func filterLimit(f map[string]any, path string) error {
	v, ok := filterField(f, "limit")
	if !ok {
		return nil
	}
	p := filterPath(path, "limit")
	num, isNum := v.(json.Number)
	if !isNum || strings.ContainsAny(string(num), ".eE") {
		return filterError(p, "must be an integer")
	}
	n, err := strconv.ParseInt(string(num), 10, 64)
	switch {
	case err != nil && strings.HasPrefix(string(num), "-"):
		return filterError(p, "must not be negative")
	case err != nil:
		return filterError(p, "is too large")
	case n < 0:
		return filterError(p, "must not be negative")
	}
	return nil
}
