package account

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"encoding/json/jsontext"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/canonicaljson"
	"maunium.net/go/mautrix/id"
)

// End-to-end encryption keys: device identity keys, one-time and fallback
// keys, cross-signing keys and the signatures users add to them. The server
// never holds a private key. It checks what it can check (that a device's
// keys are signed by the device, cross-signing keys by the master key, and
// every added signature by a key allowed to make it), then stores and hands
// out exactly what was uploaded: objects are kept as canonical JSON, which is
// what signatures cover, so clients verify them unchanged.

// ErrDeviceKeysChanged is returned by KeyStore.UploadKeys when the device
// already has identity keys different from the uploaded ones.
var ErrDeviceKeysChanged = errors.New("device identity keys differ from the stored ones")

// ErrOneTimeKeyReused is returned (wrapped as "<key ID>: ...") by
// KeyStore.UploadKeys when a one-time key ID is stored with other content.
var ErrOneTimeKeyReused = errors.New("this one-time key ID was uploaded before with other content")

// ErrCrossSigningChanged is returned by KeyStore.UploadCrossSigningKeys when
// the user's master key is no longer the one the upload was checked against.
var ErrCrossSigningChanged = errors.New("cross-signing keys changed meanwhile")

// DeviceKeysUpload is a device's identity keys to store.
type DeviceKeysUpload struct {
	// JSON is the device_keys object as canonical JSON, without "unsigned".
	JSON json.RawMessage
	// Identity is the canonical JSON of its "keys" map: once stored, the
	// device may upload it again but never change it.
	Identity string
}

// OneTimeKeyUpload is one one-time or fallback key.
type OneTimeKeyUpload struct {
	KeyID     id.KeyID // "<algorithm>:<id>"
	Algorithm id.KeyAlgorithm
	JSON      json.RawMessage // canonical
}

// KeyUpload is what one POST /keys/upload stores.
type KeyUpload struct {
	Device   *DeviceKeysUpload // nil: unchanged
	OneTime  []OneTimeKeyUpload
	Fallback []OneTimeKeyUpload // at most one per algorithm
}

// Signatures are signatures added to a stored key after its upload: signer
// user → signer key ID → unpadded base64 signature.
type Signatures map[id.UserID]map[string]string

// StoredDeviceKeys is a device's stored identity keys.
type StoredDeviceKeys struct {
	UserID      id.UserID
	DeviceID    id.DeviceID
	DisplayName string
	JSON        json.RawMessage // canonical, as uploaded minus "unsigned"
	Extra       Signatures
}

// StoredCrossSigningKey is one of a user's cross-signing keys.
type StoredCrossSigningKey struct {
	UserID    id.UserID
	Usage     id.CrossSigningUsage
	PublicKey string // unpadded base64
	JSON      json.RawMessage
	Extra     Signatures
}

// CrossSigningKey is a cross-signing key to store.
type CrossSigningKey struct {
	Usage     id.CrossSigningUsage
	PublicKey string
	JSON      json.RawMessage // canonical
}

// CrossSigningUpdate replaces some of a user's cross-signing keys.
type CrossSigningUpdate struct {
	Keys []CrossSigningKey
	// Delete are usages whose keys go (signed by a master key being replaced).
	Delete []id.CrossSigningUsage
	// ExpectMaster is the master public key the update was checked against
	// ("" for none); if the stored one differs, nothing is written.
	ExpectMaster string
}

// KeyClaim asks for one key of a device.
type KeyClaim struct {
	UserID    id.UserID
	DeviceID  id.DeviceID
	Algorithm id.KeyAlgorithm
}

// ClaimedKey is a key handed out by a claim.
type ClaimedKey struct {
	UserID   id.UserID
	DeviceID id.DeviceID
	KeyID    id.KeyID
	JSON     json.RawMessage
	Fallback bool
}

// KeySignature is a verified signature to add to a stored key.
type KeySignature struct {
	TargetUser id.UserID
	// TargetDevice is the signed device, or "" when the target is
	// TargetUser's master key.
	TargetDevice id.DeviceID
	// Expect is the stored JSON the signature was verified against: if the
	// key was replaced meanwhile, the signature is not added.
	Expect      json.RawMessage
	Signer      id.UserID
	SignerKeyID string // "ed25519:<device ID or public key>"
	Signature   string
}

// KeyStore keeps end-to-end encryption keys. *storage.Accounts implements
// it; the service finds it by type assertion on its Store. Every method is
// one transaction; those that change what /keys/query shows record a
// device-list change of the user in it.
type KeyStore interface {
	// UploadKeys stores up for the device and returns its one-time key
	// counts afterwards. New or changed device keys record a device-list
	// change. ErrDeviceKeysChanged, ErrOneTimeKeyReused: nothing written.
	// ErrNotFound: the device does not exist (any more).
	UploadKeys(ctx context.Context, user id.UserID, device id.DeviceID, up KeyUpload) (map[id.KeyAlgorithm]int, error)
	// OneTimeKeyCounts counts the device's unclaimed one-time keys per
	// algorithm and lists the algorithms of its unused fallback keys.
	OneTimeKeyCounts(ctx context.Context, user id.UserID, device id.DeviceID) (map[id.KeyAlgorithm]int, []id.KeyAlgorithm, error)
	// DeviceKeys returns the stored device keys of the query's users: the
	// listed devices, or all of them for an empty list.
	DeviceKeys(ctx context.Context, query map[id.UserID][]id.DeviceID) ([]StoredDeviceKeys, error)
	// CrossSigningKeys returns the users' cross-signing keys.
	CrossSigningKeys(ctx context.Context, users []id.UserID) ([]StoredCrossSigningKey, error)
	// ClaimKeys hands out one key per claim: the device's oldest one-time
	// key of the algorithm, each at most once however many claims race,
	// or else its fallback key, which is marked used and stays. Claims
	// that find neither are left out.
	ClaimKeys(ctx context.Context, claims []KeyClaim) ([]ClaimedKey, error)
	// UploadCrossSigningKeys applies u (ErrCrossSigningChanged: nothing
	// written). A replaced or deleted key loses the signatures added to
	// it, and a replaced self-signing key's signatures on devices go.
	UploadCrossSigningKeys(ctx context.Context, user id.UserID, u CrossSigningUpdate) error
	// AddSignatures adds the signatures whose target is still as expected
	// and reports, per signature, whether it was added.
	AddSignatures(ctx context.Context, sigs []KeySignature) ([]bool, error)
	// DeleteDevicesWithKeys deletes devices, their tokens and keys, and
	// records a device-list change if any of them had device keys.
	DeleteDevicesWithKeys(ctx context.Context, user id.UserID, devices []id.DeviceID) error
	// RecordDeviceListChange records a device-list change of user.
	RecordDeviceListChange(ctx context.Context, user id.UserID) error
}

// Limits on what one request may carry, beyond the body size limit.
const (
	maxKeyIDLen        = 255
	maxQueryUsers      = 1000
	maxClaims          = 1000
	maxSignatureUpload = 1000
)

func errInvalidSignature(msg string) mautrix.RespError {
	return mautrix.RespError{ErrCode: "M_INVALID_SIGNATURE", Err: msg}
}

func (s *Service) keyStore() (KeyStore, error) {
	ks, ok := s.store.(KeyStore)
	if !ok {
		return nil, mautrix.MUnrecognized.WithMessage("End-to-end encryption keys are not supported by this store")
	}
	return ks, nil
}

// UploadKeysRequest is the body of POST /keys/upload.
type UploadKeysRequest struct {
	DeviceKeys   json.RawMessage            `json:"device_keys"`
	OneTimeKeys  map[string]json.RawMessage `json:"one_time_keys"`
	FallbackKeys map[string]json.RawMessage `json:"fallback_keys"`
}

// UploadKeys is POST /keys/upload: the requester's device publishes its
// identity keys (checked to be its own and signed by its ed25519 key),
// one-time keys and fallback keys. It returns the device's one-time key
// counts afterwards.
func (s *Service) UploadKeys(ctx context.Context, r *Requester, req UploadKeysRequest) (map[id.KeyAlgorithm]int, error) {
	ks, err := s.keyStore()
	if err != nil {
		return nil, err
	}
	var up KeyUpload
	var signing ed25519.PublicKey
	if !isNull(req.DeviceKeys) {
		dk, key, err := checkDeviceKeys(req.DeviceKeys, r.UserID, r.DeviceID)
		if err != nil {
			return nil, err
		}
		up.Device, signing = dk, key
	}
	if signing == nil && len(req.OneTimeKeys)+len(req.FallbackKeys) > 0 {
		stored, err := ks.DeviceKeys(ctx, map[id.UserID][]id.DeviceID{r.UserID: {r.DeviceID}})
		if err != nil {
			return nil, fmt.Errorf("loading the device's keys: %w", err)
		}
		if len(stored) == 1 {
			if signing, err = deviceSigningKey(stored[0].JSON, r.DeviceID); err != nil {
				return nil, fmt.Errorf("stored device keys of %s %s: %w", r.UserID, r.DeviceID, err)
			}
		}
	}
	// Map order is random: sorting makes the stored upload order (and so
	// the claim order) and the first error reported deterministic.
	for _, keyID := range slices.Sorted(maps.Keys(req.OneTimeKeys)) {
		k, err := checkOneTimeKey("one_time_keys", keyID, req.OneTimeKeys[keyID], r.UserID, r.DeviceID, signing)
		if err != nil {
			return nil, err
		}
		up.OneTime = append(up.OneTime, k)
	}
	for _, keyID := range slices.Sorted(maps.Keys(req.FallbackKeys)) {
		k, err := checkOneTimeKey("fallback_keys", keyID, req.FallbackKeys[keyID], r.UserID, r.DeviceID, signing)
		if err != nil {
			return nil, err
		}
		for _, prev := range up.Fallback {
			if prev.Algorithm == k.Algorithm {
				return nil, errInvalidParam("fallback_keys may hold only one key per algorithm")
			}
		}
		up.Fallback = append(up.Fallback, k)
	}
	counts, err := ks.UploadKeys(ctx, r.UserID, r.DeviceID, up)
	// Also on failure: part of it may have been stored.
	s.keyCounts.invalidate(deviceRef{r.UserID, r.DeviceID})
	switch {
	case errors.Is(err, ErrDeviceKeysChanged):
		return nil, errInvalidParam("This device already has other identity keys; log in as a new device to use new keys")
	case errors.Is(err, ErrOneTimeKeyReused):
		return nil, errInvalidParam(err.Error())
	case errors.Is(err, ErrNotFound):
		return nil, errNotFound("Unknown device")
	case err != nil:
		return nil, fmt.Errorf("storing keys of %s %s: %w", r.UserID, r.DeviceID, err)
	}
	return withSignedCurveCount(counts), nil
}

// withSignedCurveCount lists signed_curve25519 even at zero: clients that
// do not know the spec's "absent means zero" would otherwise never
// replenish their keys.
func withSignedCurveCount(counts map[id.KeyAlgorithm]int) map[id.KeyAlgorithm]int {
	if counts == nil {
		counts = map[id.KeyAlgorithm]int{}
	}
	if _, ok := counts[id.KeyAlgorithmSignedCurve25519]; !ok {
		counts[id.KeyAlgorithmSignedCurve25519] = 0
	}
	return counts
}

// OneTimeKeyCounts is what /sync reports to a device about its keys: its
// unclaimed one-time keys per algorithm (signed_curve25519 always listed)
// and the algorithms of its unused fallback keys (never nil).
func (s *Service) OneTimeKeyCounts(ctx context.Context, user id.UserID, device id.DeviceID) (map[id.KeyAlgorithm]int, []id.KeyAlgorithm, error) {
	ref := deviceRef{user, device}
	e, ok, gen := s.keyCounts.get(ref, s.now())
	if ok {
		return e.counts, e.fallback, nil
	}
	ks, err := s.keyStore()
	if err != nil {
		return nil, nil, err
	}
	counts, fallback, err := ks.OneTimeKeyCounts(ctx, user, device)
	if err != nil {
		return nil, nil, fmt.Errorf("counting one-time keys of %s %s: %w", user, device, err)
	}
	if fallback == nil {
		fallback = []id.KeyAlgorithm{}
	}
	e = keyCountEntry{counts: withSignedCurveCount(counts), fallback: fallback, at: s.now()}
	s.keyCounts.put(ref, gen, e)
	return e.counts, e.fallback, nil
}

// checkDeviceKeys validates a device_keys object for user's device and
// returns what to store and the device's ed25519 key.
func checkDeviceKeys(raw json.RawMessage, user id.UserID, device id.DeviceID) (*DeviceKeysUpload, ed25519.PublicKey, error) {
	obj, err := jsonObject(raw)
	if err != nil {
		return nil, nil, errBadJSON("device_keys must be a JSON object")
	}
	var dk mautrix.DeviceKeys
	if err := json.Unmarshal(raw, &dk); err != nil {
		return nil, nil, errBadJSON("device_keys has the wrong shape: " + err.Error())
	}
	for _, f := range []string{"user_id", "device_id", "algorithms", "keys", "signatures"} {
		if isNull(obj[f]) {
			return nil, nil, errBadJSON("device_keys is missing " + f)
		}
	}
	if dk.UserID != user {
		return nil, nil, errInvalidParam("device_keys.user_id is not the user of the access token")
	}
	if dk.DeviceID != device {
		return nil, nil, errInvalidParam("device_keys.device_id is not the device of the access token")
	}
	if len(dk.Algorithms) == 0 {
		return nil, nil, errBadJSON("device_keys.algorithms is empty")
	}
	key, err := deviceSigningKey(raw, device)
	if err != nil {
		return nil, nil, errBadJSON(err.Error())
	}
	if err := verifySigned(obj, user, "ed25519:"+string(device), key); err != nil {
		return nil, nil, err
	}
	delete(obj, "unsigned")
	canon, err := canonical(obj)
	if err != nil {
		return nil, nil, errBadJSON("device_keys is not canonical JSON: " + err.Error())
	}
	identity, err := canonical(obj["keys"])
	if err != nil {
		return nil, nil, errBadJSON("device_keys.keys is not canonical JSON: " + err.Error())
	}
	return &DeviceKeysUpload{JSON: canon, Identity: string(identity)}, key, nil
}

// deviceSigningKey is the ed25519 key of a device_keys object.
func deviceSigningKey(raw json.RawMessage, device id.DeviceID) (ed25519.PublicKey, error) {
	var dk struct {
		Keys map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(raw, &dk); err != nil {
		return nil, fmt.Errorf("device keys: %w", err)
	}
	name := "ed25519:" + string(device)
	k, ok := dk.Keys[name]
	if !ok {
		return nil, fmt.Errorf("device_keys.keys has no %s key", name)
	}
	return decodeEd25519(k)
}

// checkOneTimeKey validates one one-time or fallback key. A key object must
// carry a valid signature by the device's ed25519 key when that key is
// known (with none uploaded, claimers check the signature themselves).
func checkOneTimeKey(field, keyID string, raw json.RawMessage, user id.UserID, device id.DeviceID, signing ed25519.PublicKey) (OneTimeKeyUpload, error) {
	alg, name := id.KeyID(keyID).Parse()
	if alg == "" || name == "" {
		return OneTimeKeyUpload{}, errBadJSON(fmt.Sprintf("%s: key ID %q is not <algorithm>:<key ID>", field, keyID))
	}
	if len(keyID) > maxKeyIDLen {
		return OneTimeKeyUpload{}, errInvalidParam(field + ": key ID is too long")
	}
	raw = bytes.TrimSpace(raw)
	var canon json.RawMessage
	switch {
	case len(raw) > 0 && raw[0] == '"':
		var key string
		if err := json.Unmarshal(raw, &key); err != nil || key == "" {
			return OneTimeKeyUpload{}, errBadJSON(fmt.Sprintf("%s.%s is not a key", field, keyID))
		}
		canon, _ = json.Marshal(key)
	case len(raw) > 0 && raw[0] == '{':
		obj, err := jsonObject(raw)
		if err != nil {
			return OneTimeKeyUpload{}, errBadJSON(fmt.Sprintf("%s.%s must be a JSON object", field, keyID))
		}
		var key string
		if err := json.Unmarshal(obj["key"], &key); err != nil || key == "" {
			return OneTimeKeyUpload{}, errBadJSON(fmt.Sprintf("%s.%s has no key", field, keyID))
		}
		if signing != nil {
			if err := verifySigned(obj, user, "ed25519:"+string(device), signing); err != nil {
				var re mautrix.RespError
				if errors.As(err, &re) {
					re.Err = fmt.Sprintf("%s.%s: %s", field, keyID, re.Err)
					return OneTimeKeyUpload{}, re
				}
				return OneTimeKeyUpload{}, err
			}
		}
		if canon, err = canonical(obj); err != nil {
			return OneTimeKeyUpload{}, errBadJSON(fmt.Sprintf("%s.%s is not canonical JSON: %v", field, keyID, err))
		}
	default:
		return OneTimeKeyUpload{}, errBadJSON(fmt.Sprintf("%s.%s must be a string or a key object", field, keyID))
	}
	return OneTimeKeyUpload{KeyID: id.KeyID(keyID), Algorithm: alg, JSON: canon}, nil
}

// KeysQueryResponse is the answer of POST /keys/query. Keys are raw JSON:
// they go out exactly as uploaded, unknown fields included, or their
// signatures would no longer verify.
type KeysQueryResponse struct {
	Failures        map[string]any                                `json:"failures"`
	DeviceKeys      map[id.UserID]map[id.DeviceID]json.RawMessage `json:"device_keys"`
	MasterKeys      map[id.UserID]json.RawMessage                 `json:"master_keys"`
	SelfSigningKeys map[id.UserID]json.RawMessage                 `json:"self_signing_keys"`
	UserSigningKeys map[id.UserID]json.RawMessage                 `json:"user_signing_keys"`
}

// remoteFailure is what failures holds for a server: until federation
// exists no other server can be asked.
var remoteFailure = map[string]any{"status": 503, "message": "This server does not federate yet"}

// QueryKeys is POST /keys/query: the device keys of the listed devices (all
// of a user's for an empty list) with each device's display name, every
// queried user's master and self-signing keys, and the requester's own
// user-signing key. Signatures added by others are shown only to their
// signer. Users of other servers are listed in failures.
func (s *Service) QueryKeys(ctx context.Context, r *Requester, query map[id.UserID][]id.DeviceID) (*KeysQueryResponse, error) {
	ks, err := s.keyStore()
	if err != nil {
		return nil, err
	}
	if len(query) > maxQueryUsers {
		return nil, errInvalidParam(fmt.Sprintf("At most %d users can be queried at once", maxQueryUsers))
	}
	resp := &KeysQueryResponse{
		Failures:        map[string]any{},
		DeviceKeys:      map[id.UserID]map[id.DeviceID]json.RawMessage{},
		MasterKeys:      map[id.UserID]json.RawMessage{},
		SelfSigningKeys: map[id.UserID]json.RawMessage{},
		UserSigningKeys: map[id.UserID]json.RawMessage{},
	}
	local := map[id.UserID][]id.DeviceID{}
	for user, devices := range query {
		_, server, err := user.Parse()
		if err != nil {
			continue // not a user ID: nobody to find
		}
		if server != s.cfg.ServerName {
			resp.Failures[server] = remoteFailure
			continue
		}
		local[user] = devices
		resp.DeviceKeys[user] = map[id.DeviceID]json.RawMessage{}
	}
	if len(local) == 0 {
		return resp, nil
	}
	devices, err := ks.DeviceKeys(ctx, local)
	if err != nil {
		return nil, fmt.Errorf("loading device keys: %w", err)
	}
	for _, d := range devices {
		// The spec adds unsigned to every device; the name when there is one.
		unsigned := map[string]any{}
		if d.DisplayName != "" {
			unsigned["device_display_name"] = d.DisplayName
		}
		out, err := withSignatures(d.JSON, visibleSignatures(d.Extra, d.UserID, r.UserID), unsigned)
		if err != nil {
			return nil, fmt.Errorf("device keys of %s %s: %w", d.UserID, d.DeviceID, err)
		}
		resp.DeviceKeys[d.UserID][d.DeviceID] = out
	}
	xs, err := ks.CrossSigningKeys(ctx, slices.Collect(maps.Keys(local)))
	if err != nil {
		return nil, fmt.Errorf("loading cross-signing keys: %w", err)
	}
	for _, k := range xs {
		var into map[id.UserID]json.RawMessage
		switch k.Usage {
		case id.XSUsageMaster:
			into = resp.MasterKeys
		case id.XSUsageSelfSigning:
			into = resp.SelfSigningKeys
		case id.XSUsageUserSigning:
			if k.UserID != r.UserID {
				continue // only its owner may see a user-signing key
			}
			into = resp.UserSigningKeys
		default:
			continue
		}
		out, err := withSignatures(k.JSON, visibleSignatures(k.Extra, k.UserID, r.UserID), nil)
		if err != nil {
			return nil, fmt.Errorf("%s key of %s: %w", k.Usage, k.UserID, err)
		}
		into[k.UserID] = out
	}
	return resp, nil
}

// visibleSignatures are the added signatures a viewer may see on owner's
// key: the owner's own (their devices, their self-signing key) and the
// viewer's (their user-signing key); a third user's verification of owner
// is that user's business.
func visibleSignatures(extra Signatures, owner, viewer id.UserID) Signatures {
	out := Signatures{}
	for signer, sigs := range extra {
		if (signer == owner || signer == viewer) && len(sigs) > 0 {
			out[signer] = sigs
		}
	}
	return out
}

// withSignatures returns stored with extra merged into its signatures and
// unsigned set (nil: none).
func withSignatures(stored json.RawMessage, extra Signatures, unsigned map[string]any) (json.RawMessage, error) {
	if len(extra) == 0 && unsigned == nil {
		return stored, nil
	}
	obj, err := jsonObject(stored)
	if err != nil {
		return nil, err
	}
	if len(extra) > 0 {
		sigs := Signatures{}
		if !isNull(obj["signatures"]) {
			if err := json.Unmarshal(obj["signatures"], &sigs); err != nil {
				return nil, fmt.Errorf("stored signatures: %w", err)
			}
		}
		for signer, m := range extra {
			if sigs[signer] == nil {
				sigs[signer] = map[string]string{}
			}
			maps.Copy(sigs[signer], m)
		}
		if obj["signatures"], err = json.Marshal(sigs); err != nil {
			return nil, err
		}
	}
	if unsigned != nil {
		if obj["unsigned"], err = json.Marshal(unsigned); err != nil {
			return nil, err
		}
	}
	return json.Marshal(obj)
}

// KeysClaimResponse is the answer of POST /keys/claim.
type KeysClaimResponse struct {
	Failures    map[string]any                                             `json:"failures"`
	OneTimeKeys map[id.UserID]map[id.DeviceID]map[id.KeyID]json.RawMessage `json:"one_time_keys"`
}

// ClaimKeys is POST /keys/claim: one key per requested device, a one-time
// key while any is left (each handed out once), else the device's fallback
// key. Devices with neither are left out; other servers are in failures.
func (s *Service) ClaimKeys(ctx context.Context, r *Requester, req map[id.UserID]map[id.DeviceID]id.KeyAlgorithm) (*KeysClaimResponse, error) {
	ks, err := s.keyStore()
	if err != nil {
		return nil, err
	}
	resp := &KeysClaimResponse{Failures: map[string]any{}, OneTimeKeys: map[id.UserID]map[id.DeviceID]map[id.KeyID]json.RawMessage{}}
	var claims []KeyClaim
	for user, devices := range req {
		_, server, err := user.Parse()
		if err != nil {
			continue
		}
		if server != s.cfg.ServerName {
			resp.Failures[server] = remoteFailure
			continue
		}
		for device, alg := range devices {
			if alg == "" {
				return nil, errBadJSON(fmt.Sprintf("one_time_keys.%s.%s: no algorithm", user, device))
			}
			claims = append(claims, KeyClaim{UserID: user, DeviceID: device, Algorithm: alg})
		}
	}
	if len(claims) > maxClaims {
		return nil, errInvalidParam(fmt.Sprintf("At most %d keys can be claimed at once", maxClaims))
	}
	if len(claims) == 0 {
		return resp, nil
	}
	got, err := ks.ClaimKeys(ctx, claims)
	for _, c := range claims {
		s.keyCounts.invalidate(deviceRef{c.UserID, c.DeviceID})
	}
	if err != nil {
		return nil, fmt.Errorf("claiming keys: %w", err)
	}
	for _, k := range got {
		if resp.OneTimeKeys[k.UserID] == nil {
			resp.OneTimeKeys[k.UserID] = map[id.DeviceID]map[id.KeyID]json.RawMessage{}
		}
		resp.OneTimeKeys[k.UserID][k.DeviceID] = map[id.KeyID]json.RawMessage{k.KeyID: k.JSON}
	}
	return resp, nil
}

// CrossSigningUploadRequest is the body of POST /keys/device_signing/upload
// without its auth.
type CrossSigningUploadRequest struct {
	Master      json.RawMessage `json:"master_key"`
	SelfSigning json.RawMessage `json:"self_signing_key"`
	UserSigning json.RawMessage `json:"user_signing_key"`
}

// parsedCrossSigningKey is an uploaded cross-signing key after checks.
type parsedCrossSigningKey struct {
	CrossSigningKey
	obj map[string]json.RawMessage
	key ed25519.PublicKey
}

// UploadCrossSigningKeys is POST /keys/device_signing/upload. The
// self-signing and user-signing keys must be signed by the master key (the
// uploaded one, else the stored one). User-interactive auth is needed to
// replace keys, not for the first upload nor for uploading the same keys
// again (a retry after a lost response).
func (s *Service) UploadCrossSigningKeys(ctx context.Context, r *Requester, req CrossSigningUploadRequest, auth json.RawMessage) error {
	ks, err := s.keyStore()
	if err != nil {
		return err
	}
	var upload []parsedCrossSigningKey
	for _, f := range []struct {
		raw   json.RawMessage
		usage id.CrossSigningUsage
		field string
	}{{req.Master, id.XSUsageMaster, "master_key"}, {req.SelfSigning, id.XSUsageSelfSigning, "self_signing_key"}, {req.UserSigning, id.XSUsageUserSigning, "user_signing_key"}} {
		if isNull(f.raw) {
			continue
		}
		k, err := checkCrossSigningKey(f.raw, f.field, f.usage, r.UserID)
		if err != nil {
			return err
		}
		upload = append(upload, k)
	}
	if len(upload) == 0 {
		return nil
	}
	// Two rounds at most: a first upload skips UIA only while the user
	// has no master key; if one appeared meanwhile (a concurrent first
	// upload), the store refuses and the second round asks for UIA.
	for range 2 {
		err := s.uploadCrossSigning(ctx, ks, r, upload, auth)
		if !errors.Is(err, ErrCrossSigningChanged) {
			return err
		}
	}
	return errForbidden("Cross-signing keys changed during the upload; try again")
}

func (s *Service) uploadCrossSigning(ctx context.Context, ks KeyStore, r *Requester, upload []parsedCrossSigningKey, auth json.RawMessage) error {
	storedList, err := ks.CrossSigningKeys(ctx, []id.UserID{r.UserID})
	if err != nil {
		return fmt.Errorf("loading cross-signing keys: %w", err)
	}
	stored := map[id.CrossSigningUsage]StoredCrossSigningKey{}
	for _, k := range storedList {
		stored[k.Usage] = k
	}
	var master ed25519.PublicKey
	var masterPub string
	uploadsMaster := false
	for _, k := range upload {
		if k.Usage == id.XSUsageMaster {
			master, masterPub, uploadsMaster = k.key, k.PublicKey, true
		}
	}
	if !uploadsMaster {
		m, ok := stored[id.XSUsageMaster]
		if !ok {
			return errMissingParam("No master signing key: upload master_key first or with the other keys")
		}
		if master, err = decodeEd25519(m.PublicKey); err != nil {
			return fmt.Errorf("stored master key of %s: %w", r.UserID, err)
		}
		masterPub = m.PublicKey
	}
	for _, k := range upload {
		if k.Usage == id.XSUsageMaster {
			continue
		}
		if err := verifySigned(k.obj, r.UserID, "ed25519:"+masterPub, master); err != nil {
			var re mautrix.RespError
			if errors.As(err, &re) {
				re.Err = string(k.Usage) + " key: " + re.Err
				return re
			}
			return err
		}
	}
	devices, err := s.store.Devices(ctx, r.UserID)
	if err != nil {
		return fmt.Errorf("listing devices: %w", err)
	}
	for _, k := range upload {
		for _, d := range devices {
			if string(d.DeviceID) == k.PublicKey {
				// Device IDs and cross-signing public keys share one namespace
				// in verification: they must never collide.
				return errForbidden("Key ID in use")
			}
		}
	}
	changed := false
	for _, k := range upload {
		if old, ok := stored[k.Usage]; !ok || !bytes.Equal(old.JSON, k.JSON) {
			changed = true
		}
	}
	if !changed {
		return nil
	}
	if _, hasMaster := stored[id.XSUsageMaster]; hasMaster {
		if err := s.AuthorizeUser(ctx, "device_signing_upload", r.UserID, auth); err != nil {
			return err
		}
	}
	u := CrossSigningUpdate{ExpectMaster: stored[id.XSUsageMaster].PublicKey}
	for _, k := range upload {
		u.Keys = append(u.Keys, k.CrossSigningKey)
	}
	if uploadsMaster && masterPub != stored[id.XSUsageMaster].PublicKey {
		// The stored keys not replaced now were signed by the old master.
		for _, usage := range []id.CrossSigningUsage{id.XSUsageSelfSigning, id.XSUsageUserSigning} {
			_, has := stored[usage]
			if has && !slices.ContainsFunc(upload, func(k parsedCrossSigningKey) bool { return k.Usage == usage }) {
				u.Delete = append(u.Delete, usage)
			}
		}
	}
	if err := ks.UploadCrossSigningKeys(ctx, r.UserID, u); err != nil {
		if errors.Is(err, ErrCrossSigningChanged) {
			return err
		}
		return fmt.Errorf("storing cross-signing keys of %s: %w", r.UserID, err)
	}
	return nil
}

// checkCrossSigningKey validates one uploaded cross-signing key.
func checkCrossSigningKey(raw json.RawMessage, field string, usage id.CrossSigningUsage, user id.UserID) (parsedCrossSigningKey, error) {
	obj, err := jsonObject(raw)
	if err != nil {
		return parsedCrossSigningKey{}, errBadJSON(field + " must be a JSON object")
	}
	var k mautrix.CrossSigningKeys
	if err := json.Unmarshal(raw, &k); err != nil {
		return parsedCrossSigningKey{}, errBadJSON(field + " has the wrong shape: " + err.Error())
	}
	for _, f := range []string{"user_id", "usage", "keys"} {
		if isNull(obj[f]) {
			return parsedCrossSigningKey{}, errBadJSON(field + " is missing " + f)
		}
	}
	if k.UserID != user {
		return parsedCrossSigningKey{}, errForbidden(field + ".user_id is not the user of the access token")
	}
	if !slices.Contains(k.Usage, usage) {
		return parsedCrossSigningKey{}, errInvalidParam(fmt.Sprintf("%s.usage must contain %q", field, usage))
	}
	if len(k.Keys) != 1 {
		return parsedCrossSigningKey{}, errInvalidParam(field + ".keys must hold exactly one key")
	}
	var pub string
	for keyID, value := range k.Keys {
		alg, name := keyID.Parse()
		if alg != id.KeyAlgorithmEd25519 || name != string(value) {
			return parsedCrossSigningKey{}, errInvalidParam(field + ".keys must be {\"ed25519:<public key>\": \"<public key>\"}")
		}
		pub = name
	}
	key, err := decodeEd25519(pub)
	if err != nil {
		return parsedCrossSigningKey{}, errInvalidParam(field + ": " + err.Error())
	}
	if !isNull(obj["signatures"]) {
		var sigs Signatures
		if err := json.Unmarshal(obj["signatures"], &sigs); err != nil {
			return parsedCrossSigningKey{}, errBadJSON(field + ".signatures has the wrong shape")
		}
	}
	canon, err := canonical(obj)
	if err != nil {
		return parsedCrossSigningKey{}, errBadJSON(field + " is not canonical JSON: " + err.Error())
	}
	return parsedCrossSigningKey{CrossSigningKey: CrossSigningKey{Usage: usage, PublicKey: pub, JSON: canon}, obj: obj, key: key}, nil
}

// SignatureFailures are the per-key errors of POST /keys/signatures/upload.
type SignatureFailures map[id.UserID]map[string]*mautrix.RespError

func (f SignatureFailures) add(user id.UserID, keyID string, err *mautrix.RespError) {
	if f[user] == nil {
		f[user] = map[string]*mautrix.RespError{}
	}
	f[user][keyID] = err
}

// respErr is err, built by this package's error helpers, as a Matrix error.
func respErr(err error) *mautrix.RespError {
	var re mautrix.RespError
	if !errors.As(err, &re) {
		re = mautrix.MUnknown.WithMessage(err.Error())
	}
	return &re
}

// UploadSignatures is POST /keys/signatures/upload: the requester adds
// signatures to their own device keys (by their self-signing key), to their
// own master key (by one of their devices) and to other users' master keys
// (by their user-signing key). Each signed object must be the stored key;
// signatures already on it are ignored. What fails is reported per key.
func (s *Service) UploadSignatures(ctx context.Context, r *Requester, req map[id.UserID]map[string]json.RawMessage) (SignatureFailures, error) {
	ks, err := s.keyStore()
	if err != nil {
		return nil, err
	}
	failures := SignatureFailures{}
	n := 0
	for _, m := range req {
		n += len(m)
	}
	if n > maxSignatureUpload {
		return nil, errInvalidParam(fmt.Sprintf("At most %d keys can be signed at once", maxSignatureUpload))
	}
	if n == 0 {
		return failures, nil
	}
	users := slices.Collect(maps.Keys(req))
	if !slices.Contains(users, r.UserID) {
		users = append(users, r.UserID) // the requester's own signing keys
	}
	xsList, err := ks.CrossSigningKeys(ctx, users)
	if err != nil {
		return nil, fmt.Errorf("loading cross-signing keys: %w", err)
	}
	xs := map[id.UserID]map[id.CrossSigningUsage]StoredCrossSigningKey{}
	for _, k := range xsList {
		if xs[k.UserID] == nil {
			xs[k.UserID] = map[id.CrossSigningUsage]StoredCrossSigningKey{}
		}
		xs[k.UserID][k.Usage] = k
	}
	// The requester's own devices: targets, and signers of their master key.
	myDevices := map[id.DeviceID]StoredDeviceKeys{}
	if len(req[r.UserID]) > 0 {
		list, err := ks.DeviceKeys(ctx, map[id.UserID][]id.DeviceID{r.UserID: nil})
		if err != nil {
			return nil, fmt.Errorf("loading device keys: %w", err)
		}
		for _, d := range list {
			myDevices[d.DeviceID] = d
		}
	}
	var sigs []KeySignature
	var sigTargets [][2]string
	for _, user := range slices.Sorted(maps.Keys(req)) {
		for _, keyID := range slices.Sorted(maps.Keys(req[user])) {
			got, rerr := s.checkSignedKey(r.UserID, user, keyID, req[user][keyID], xs, myDevices)
			if rerr != nil {
				failures.add(user, keyID, rerr)
				continue
			}
			for range got {
				sigTargets = append(sigTargets, [2]string{string(user), keyID})
			}
			sigs = append(sigs, got...)
		}
	}
	if len(sigs) == 0 {
		return failures, nil
	}
	added, err := ks.AddSignatures(ctx, sigs)
	if err != nil {
		return nil, fmt.Errorf("storing signatures: %w", err)
	}
	for i, ok := range added {
		if !ok {
			failures.add(id.UserID(sigTargets[i][0]), sigTargets[i][1], respErr(errInvalidParam("The key was replaced meanwhile")))
		}
	}
	return failures, nil
}

// checkSignedKey checks one signed object of a signatures upload by signer
// and returns the new signatures on it.
func (s *Service) checkSignedKey(signer, user id.UserID, keyID string, raw json.RawMessage,
	xs map[id.UserID]map[id.CrossSigningUsage]StoredCrossSigningKey, myDevices map[id.DeviceID]StoredDeviceKeys) ([]KeySignature, *mautrix.RespError) {
	fail := func(e error) ([]KeySignature, *mautrix.RespError) { return nil, respErr(e) }
	obj, err := jsonObject(raw)
	if err != nil {
		return fail(errBadJSON("The signed key must be a JSON object"))
	}
	if !s.isLocal(user) {
		return fail(errNotFound("Keys of users on other servers cannot be signed yet"))
	}
	// What is signed, and which keys may sign it.
	var stored json.RawMessage
	var extra Signatures
	var target id.DeviceID
	signers := map[string]ed25519.PublicKey{}
	noSigner := ""
	master, hasMaster := xs[user][id.XSUsageMaster]
	switch {
	case hasMaster && keyID == master.PublicKey:
		stored, extra = master.JSON, master.Extra
		if user == signer {
			for d, dk := range myDevices {
				if k, err := deviceSigningKey(dk.JSON, d); err == nil {
					signers["ed25519:"+string(d)] = k
				}
			}
			noSigner = "Your master key can be signed by your devices' keys"
		} else {
			noSigner = "Another user's master key can only be signed by your user-signing key"
			if usk, ok := xs[signer][id.XSUsageUserSigning]; ok {
				if k, err := decodeEd25519(usk.PublicKey); err == nil {
					signers["ed25519:"+usk.PublicKey] = k
				}
			}
		}
	case user != signer:
		return fail(errInvalidParam("Only another user's master key can be signed"))
	default:
		dk, ok := myDevices[id.DeviceID(keyID)]
		if !ok {
			return fail(errNotFound("Unknown key"))
		}
		stored, extra, target = dk.JSON, dk.Extra, dk.DeviceID
		noSigner = "Your devices can only be signed by your self-signing key"
		if ssk, ok := xs[signer][id.XSUsageSelfSigning]; ok {
			if k, err := decodeEd25519(ssk.PublicKey); err == nil {
				signers["ed25519:"+ssk.PublicKey] = k
			}
		}
	}
	storedObj, err := jsonObject(stored)
	if err != nil {
		return fail(mautrix.MUnknown.WithMessage("Stored key is not a JSON object"))
	}
	if same, err := sameSignedContent(obj, storedObj); err != nil {
		return fail(errBadJSON("The signed key is not canonical JSON: " + err.Error()))
	} else if !same {
		return fail(errInvalidParam("The signed object is not the stored key"))
	}
	var all Signatures
	if err := json.Unmarshal(obj["signatures"], &all); err != nil {
		return fail(errBadJSON("signatures has the wrong shape"))
	}
	var storedSigs Signatures
	_ = json.Unmarshal(storedObj["signatures"], &storedSigs)
	msg, err := signedContent(obj)
	if err != nil {
		return fail(errBadJSON("The signed key is not canonical JSON: " + err.Error()))
	}
	var out []KeySignature
	known := false
	for _, sigKeyID := range slices.Sorted(maps.Keys(all[signer])) {
		sig := all[signer][sigKeyID]
		key, ok := signers[sigKeyID]
		if !ok {
			continue // signatures that prove nothing here (the device's own)
		}
		if storedSigs[signer][sigKeyID] == sig || extra[signer][sigKeyID] == sig {
			known = true // already there: a retried upload changes nothing
			continue
		}
		raw, err := decodeBase64(sig)
		if err != nil || !ed25519.Verify(key, msg, raw) {
			return fail(errInvalidSignature("Invalid signature by " + sigKeyID))
		}
		out = append(out, KeySignature{TargetUser: user, TargetDevice: target, Expect: stored,
			Signer: signer, SignerKeyID: sigKeyID, Signature: sig})
	}
	if len(out) == 0 && !known {
		return fail(errInvalidSignature("No signature by a key that may sign this key. " + noSigner))
	}
	return out, nil
}

// sameSignedContent reports whether a and b are the same object apart from
// their signatures and unsigned data.
func sameSignedContent(a, b map[string]json.RawMessage) (bool, error) {
	ca, err := signedContent(a)
	if err != nil {
		return false, err
	}
	cb, err := signedContent(b)
	if err != nil {
		return false, err
	}
	return bytes.Equal(ca, cb), nil
}

// signedContent is the canonical JSON that obj's signatures cover: obj
// without "signatures" and "unsigned" (the spec's "Signing JSON").
func signedContent(obj map[string]json.RawMessage) ([]byte, error) {
	c := make(map[string]json.RawMessage, len(obj))
	for k, v := range obj {
		if k != "signatures" && k != "unsigned" {
			c[k] = v
		}
	}
	return canonical(c)
}

// verifySigned checks obj's signature by user's key keyID.
func verifySigned(obj map[string]json.RawMessage, user id.UserID, keyID string, key ed25519.PublicKey) error {
	var sigs Signatures
	if !isNull(obj["signatures"]) {
		if err := json.Unmarshal(obj["signatures"], &sigs); err != nil {
			return errBadJSON("signatures must map user IDs to key IDs to signatures")
		}
	}
	sig, ok := sigs[user][keyID]
	if !ok {
		return errInvalidSignature("Not signed by " + keyID)
	}
	raw, err := decodeBase64(sig)
	if err != nil {
		return errInvalidSignature("Signature by " + keyID + " is not base64")
	}
	msg, err := signedContent(obj)
	if err != nil {
		return errBadJSON("Not canonical JSON: " + err.Error())
	}
	if !ed25519.Verify(key, msg, raw) {
		return errInvalidSignature("Invalid signature by " + keyID)
	}
	return nil
}

// canonical encodes v as canonical JSON (sorted keys, no insignificant
// whitespace, integers only).
func canonical(v any) (json.RawMessage, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	out := jsontext.Value(b)
	if err := canonicaljson.Canonicalize(&out); err != nil {
		return nil, err
	}
	return json.RawMessage(out), nil
}

func jsonObject(raw json.RawMessage) (map[string]json.RawMessage, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, err
	}
	if obj == nil {
		return nil, errors.New("null is not an object")
	}
	return obj, nil
}

func isNull(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || string(raw) == "null"
}

// decodeBase64 decodes unpadded base64, as keys and signatures are sent;
// padded input is accepted too.
func decodeBase64(s string) ([]byte, error) {
	return base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
}

func decodeEd25519(s string) (ed25519.PublicKey, error) {
	b, err := decodeBase64(s)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%q is not an unpadded base64 ed25519 public key", s)
	}
	return ed25519.PublicKey(b), nil
}

// deviceListChanged records a device-list change of user after a change
// made in its own transaction elsewhere; a failure is logged, not returned:
// the change itself is done.
func (s *Service) deviceListChanged(ctx context.Context, user id.UserID) {
	ks, err := s.keyStore()
	if err != nil {
		return
	}
	if err := ks.RecordDeviceListChange(ctx, user); err != nil {
		s.log.Warn("recording a device-list change", "user_id", user, "err", err)
	}
}
