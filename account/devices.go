package account

import (
	"context"
	"errors"
	"fmt"
	"time"

	"maunium.net/go/mautrix/id"
)

// Devices lists the user's devices.
func (s *Service) Devices(ctx context.Context, userID id.UserID) ([]Device, error) {
	ds, err := s.store.Devices(ctx, userID)
	if err != nil {
		return nil, fmt.Errorf("listing devices: %w", err)
	}
	return ds, nil
}

// Device returns one of the user's devices.
func (s *Service) Device(ctx context.Context, userID id.UserID, deviceID id.DeviceID) (*Device, error) {
	d, err := s.store.Device(ctx, userID, deviceID)
	if errors.Is(err, ErrNotFound) {
		return nil, errNotFound("Unknown device")
	}
	if err != nil {
		return nil, fmt.Errorf("loading device: %w", err)
	}
	return d, nil
}

// RenameDevice sets a device's display name.
func (s *Service) RenameDevice(ctx context.Context, userID id.UserID, deviceID id.DeviceID, name string) error {
	if len(name) > 1000 {
		return errInvalidParam("display_name is too long")
	}
	err := s.store.RenameDevice(ctx, userID, deviceID, name)
	if errors.Is(err, ErrNotFound) {
		return errNotFound("Unknown device")
	}
	if err != nil {
		return err
	}
	// The name is in /keys/query (unsigned.device_display_name).
	s.deviceListChanged(ctx, userID)
	return nil
}

// DeleteDevices deletes devices; their access tokens stop working at once,
// and their end-to-end keys go with them (a device-list change others see).
// Unknown device IDs are ignored, as the spec's bulk deletion implies.
func (s *Service) DeleteDevices(ctx context.Context, userID id.UserID, deviceIDs []id.DeviceID) error {
	var err error
	if ks, ok := s.store.(KeyStore); ok {
		err = ks.DeleteDevicesWithKeys(ctx, userID, deviceIDs)
	} else {
		err = s.store.DeleteDevices(ctx, userID, deviceIDs)
	}
	if err != nil {
		return fmt.Errorf("deleting devices: %w", err)
	}
	for _, d := range deviceIDs {
		s.cache.dropDevice(userID, d)
	}
	return nil
}

// DeleteDevicesWithAuth is DELETE /devices/{id} and POST /delete_devices:
// user-interactive auth first, then deletion.
func (s *Service) DeleteDevicesWithAuth(ctx context.Context, userID id.UserID, deviceIDs []id.DeviceID, auth []byte) error {
	if err := s.AuthorizeUser(ctx, "delete_devices", userID, auth); err != nil {
		return err
	}
	return s.DeleteDevices(ctx, userID, deviceIDs)
}

// lastSeenEvery bounds how often a device's last-seen time is written.
const lastSeenEvery = 5 * time.Minute

// TouchDevice records the device's last activity, at most every few minutes.
func (s *Service) TouchDevice(ctx context.Context, r *Requester, ip string) {
	if !s.cache.shouldTouch(r.UserID, r.DeviceID, s.now()) {
		return
	}
	if err := s.store.TouchDevice(ctx, r.UserID, r.DeviceID, ip, s.now()); err != nil {
		s.log.Warn("recording device last seen", "err", err)
	}
}
