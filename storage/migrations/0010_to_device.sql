-- Send-to-device messages waiting for their device. A message is written
-- once per target device with the stream position of the request that sent
-- it (one position per request: a request addresses each device at most
-- once), read by /sync in position order, and deleted when the device
-- syncs with a token at or past it. Messages go with their device.
--
-- seq numbers a device's messages 1, 2, 3... in position order, starting
-- again at 1 when none is waiting. Messages only ever go oldest first (a
-- sync's acknowledgement, the backlog bound), so the waiting ones are
-- always a run of consecutive seq: newest seq - oldest seq + 1 counts
-- them from two index probes, without a scan.
CREATE TABLE to_device_messages (
    user_id    text NOT NULL,
    device_id  text NOT NULL,
    stream_pos bigint NOT NULL,
    seq        bigint NOT NULL,
    sender     text NOT NULL,
    type       text NOT NULL,
    content    json NOT NULL,              -- json, not jsonb: relayed byte for byte
    PRIMARY KEY (user_id, device_id, stream_pos),
    FOREIGN KEY (user_id, device_id) REFERENCES devices ON DELETE CASCADE
);

-- Transaction IDs of PUT /sendToDevice, per sending device: a retry sends
-- nothing again. Pruned after a day (a retry comes within seconds).
CREATE TABLE to_device_txns (
    user_id    text NOT NULL,
    device_id  text NOT NULL,
    txn_id     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, device_id, txn_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices ON DELETE CASCADE
);
CREATE INDEX to_device_txns_age ON to_device_txns (user_id, device_id, created_at);
