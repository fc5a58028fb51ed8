import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AbortError, FormatError, InputError, ReadError, exitCodeOf } from "../../src/errors.js";
import { HttpFolder, HubFolder, remoteSource } from "../../src/io/http-folder.js";
import type { RemoteOptions } from "../../src/io/http-source.js";
import { Checkpoint } from "../../src/safetensors/checkpoint.js";
import { convertCheckpoint } from "../../src/node/convert.js";
import { diffCheckpoints, inspectCheckpoint, verifyCheckpoint } from "../../src/node/checks.js";
import { synthesize } from "../../src/node/synth.js";
import { planConversion, planInput } from "../../src/convert/planner.js";
import { tempDir } from "../helpers/cli.js";
import { type LoopbackServer, type Served, type ServeOptions, bytesServed, folderHandler, startFakeHub, startServer } from "../helpers/http-server.js";

const work = tempDir("omni-ckpt-http-");
/** `small`, in several shards, so a conversion reads across files. */
const small = path.join(work, "small");
/** `small` converted to native locally: what every conversion over HTTP must equal. */
const localNative = path.join(work, "local-native");

/** Retries without waiting; the waits asked for are recorded. */
function fastRetries(waits: number[] = []): RemoteOptions {
  return { retry: { attempts: 4, sleep: async (ms) => void waits.push(ms) } };
}

/** Every file of a folder, name → bytes. */
function filesOf(dir: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (const name of fs.readdirSync(dir).sort()) out.set(name, fs.readFileSync(path.join(dir, name)));
  return out;
}

/**
 * The output of a conversion over HTTP is the local one, file for file: all of them from a listed folder
 * (hf://), config.json and the weights from a plain URL.
 */
function expectSameAsLocal(dst: string, local = localNative, listed = false): void {
  const got = filesOf(dst);
  const want = filesOf(local);
  const copied = (f: string): boolean => listed || f.endsWith(".safetensors") || f.endsWith(".index.json") || f === "config.json";
  expect([...got.keys()].sort()).toEqual([...want.keys()].filter(copied).sort());
  for (const [name, bytes] of got) expect(bytes.equals(want.get(name)!), name).toBe(true);
}

let server: LoopbackServer;
/** The fault of the current test, if any (one server for the file, each test sets its own). */
let fault: ((req: import("node:http").IncomingMessage, served: Served, nth: number) => ServeOptions | "drop" | number | undefined) | undefined;

beforeAll(async () => {
  // Scaled so a conversion takes several chunks (progress, read-ahead and coalescing have work to do).
  await synthesize(small, { preset: "small", scale: 3, maxShardSize: 1_000_000 });
  await convertCheckpoint({ src: small, dst: localNative, to: "native" });
  server = await startServer("origin", folderHandler(work, (req, served, nth) => fault?.(req, served, nth)));
});

afterAll(async () => {
  await server?.close();
  fs.rmSync(work, { recursive: true, force: true });
});

let n = 0;
const out = (): string => path.join(work, `out-${++n}`);

/** Requests for each path counted from the test's start: `nth(url)` is 0 for the first. */
function counter(): (url: string | undefined) => number {
  const seen = new Map<string, number>();
  return (url) => {
    const key = (url ?? "").split("?")[0]!;
    const k = seen.get(key) ?? 0;
    seen.set(key, k + 1);
    return k;
  };
}

describe("checkpoints over HTTP", () => {
  it("converts from a folder URL, with or without a trailing slash, byte for byte as from local files", async () => {
    fault = undefined;
    const shards = fs.readdirSync(small).filter((f) => f.endsWith(".safetensors")).length;
    expect(shards).toBeGreaterThan(1);
    for (const url of [`${server.url}/small`, `${server.url}/small/`]) {
      const dst = out();
      const summary = await convertCheckpoint({ src: url, dst, to: "native", http: fastRetries() });
      expectSameAsLocal(dst);
      expect(summary.auxListed).toBe(false);
      expect(summary.auxFiles).toEqual(["config.json"]);
    }
    // And back: native over HTTP to HF equals the local conversion back.
    const localHf = out();
    await convertCheckpoint({ src: localNative, dst: localHf, to: "hf" });
    const dst = out();
    await convertCheckpoint({ src: `${server.url}/local-native`, dst, to: "hf", http: fastRetries() });
    expectSameAsLocal(dst, localHf);
  });

  it("fetches only byte ranges, headers first, and coalesces adjacent reads", async () => {
    fault = undefined;
    const from = server.log.length;
    await convertCheckpoint({ src: `${server.url}/small`, dst: out(), to: "native", http: fastRetries() });
    const requests = server.log.slice(from);
    expect(requests.every((r) => r.range !== undefined && /^bytes=\d+-\d+$/.test(r.range))).toBe(true);
    // Every byte of the input is read (a full conversion), and nothing twice beyond the header probes.
    const input = fs.readdirSync(small).filter((f) => f.endsWith(".safetensors") || f.endsWith(".json"));
    const inputBytes = input.reduce((s, f) => s + fs.statSync(path.join(small, f)).size, 0);
    const tensorFiles = fs.readdirSync(small).filter((f) => f.endsWith(".safetensors"));
    const tensors = (await inspectCheckpoint(small)).tensors;
    expect(bytesServed(requests)).toBeLessThanOrEqual(inputBytes + tensorFiles.length * 128 * 1024);
    // Far fewer requests than the tensors read: adjacent reads went out together.
    expect(requests.length).toBeLessThan(tensors / 2);
  });

  it("inspects the real model's shapes over plain HTTP and hf:// in at most two requests per shard, plus config and index", async () => {
    const real = path.join(work, "real");
    await synthesize(real, { preset: "nano-omni-30b", sparse: true });
    const shards = fs.readdirSync(real).filter((f) => f.endsWith(".safetensors")).length;
    const local = await inspectCheckpoint(real);

    fault = undefined;
    const from = server.log.length;
    const viaUrl = await inspectCheckpoint(`${server.url}/real`, { http: fastRetries() });
    const requests = server.log.slice(from);
    expect({ ...viaUrl, location: "" }).toEqual({ ...local, location: "" });
    const perShard = new Map<string, number>();
    for (const r of requests) perShard.set(r.url, (perShard.get(r.url) ?? 0) + 1);
    const shardRequests = [...perShard].filter(([u]) => u.endsWith(".safetensors") && !u.endsWith("/model.safetensors"));
    expect(shardRequests).toHaveLength(shards);
    expect(shardRequests.every(([, k]) => k <= 2)).toBe(true);
    // config.json once; the index (longer than the first range) twice; the probe for a single-file
    // model.safetensors once (a plain URL cannot be listed).
    expect(perShard.get("/real/config.json")).toBe(1);
    expect(perShard.get("/real/model.safetensors.index.json")).toBeLessThanOrEqual(2);
    expect(perShard.get("/real/model.safetensors")).toBe(1);
    expect(requests.length).toBeLessThanOrEqual(2 * shards + 4);

    const hub = await startFakeHub({ "nvidia/real": real });
    try {
      const viaHub = await inspectCheckpoint("hf://nvidia/real", { http: { ...fastRetries(), endpoint: hub.endpoint } });
      expect({ ...viaHub, location: "" }).toEqual({ ...local, location: "" });
      const api = hub.hub.log.filter((r) => r.url.startsWith("/api/models/"));
      expect(api).toHaveLength(1);
      const cdnPerShard = new Map<string, number>();
      for (const r of hub.cdn.log) cdnPerShard.set(r.url.split("?")[0]!, (cdnPerShard.get(r.url.split("?")[0]!) ?? 0) + 1);
      expect(cdnPerShard.size).toBe(shards);
      expect([...cdnPerShard.values()].every((k) => k <= 2)).toBe(true);
      // Listed, so no probe for a model.safetensors that is not there: shards, config, index and the listing.
      expect(hub.cdn.log.length + hub.hub.log.filter((r) => r.status !== 307 && r.status !== 302).length).toBeLessThanOrEqual(2 * shards + 4);
    } finally {
      await hub.close();
    }
    fs.rmSync(real, { recursive: true, force: true });
  });

  it("verifies and diffs over HTTP as locally", async () => {
    fault = undefined;
    const verified = await verifyCheckpoint(`${server.url}/small`, { http: fastRetries() });
    expect(verified.exact).toBe(true);
    expect(verified.tensors).toBe((await inspectCheckpoint(small)).tensors);
    const diff = await diffCheckpoints(`${server.url}/local-native/`, localNative, { http: fastRetries() });
    expect(diff.identical).toBe(true);
    expect(diff.same).toBe((await inspectCheckpoint(localNative)).tensors);
    // A bare .safetensors file by URL, as inspect and diff take a local one.
    const shard = fs.readdirSync(localNative).find((f) => f.endsWith(".safetensors"))!;
    const one = await diffCheckpoints(`${server.url}/local-native/${shard}`, path.join(localNative, shard), { http: fastRetries() });
    expect(one.identical).toBe(true);
    // Which verify cannot take, and says of which file.
    const bare = await verifyCheckpoint(`${server.url}/local-native/${shard}`, { http: fastRetries() }).catch((x: unknown) => x);
    expect(bare).toBeInstanceOf(InputError);
    expect((bare as Error).message).toBe(`${server.url}/local-native/${shard}: a bare .safetensors file has no config.json; pass the checkpoint folder it belongs to`);
  });

  it("an expert-parallel rank fetches only its experts and the shared weights", async () => {
    fault = undefined;
    const ep = { rank: 1, size: 4 };
    const ckpt = await Checkpoint.open(new (await import("../../src/node/local-folder.js")).LocalFolder(small));
    let share = 0;
    try {
      const plan = planConversion(planInput(ckpt), await ckpt.readConfig(), { to: "native", ep });
      const used = new Set(plan.tensors.flatMap((t) => t.pieces.map((p) => p.src)));
      for (const name of used) {
        const t = ckpt.tensors.get(name)!;
        share += t.entry.end - t.entry.begin;
      }
      expect(share).toBeLessThan(ckpt.totalBytes * 0.8);
    } finally {
      ckpt.close();
    }
    const local = out();
    await convertCheckpoint({ src: small, dst: local, to: "native", ep });
    const from = server.log.length;
    const dst = out();
    // A first range no larger than a header, so the count is of tensor bytes.
    await convertCheckpoint({ src: `${server.url}/small`, dst, to: "native", ep, http: { ...fastRetries(), headBytes: 16 * 1024 } });
    expectSameAsLocal(dst, local);
    const requests = server.log.slice(from);
    const headers = requests.filter((r) => r.range === "bytes=0-16383").reduce((s, r) => s + r.bytes, 0);
    const data = bytesServed(requests) - headers;
    expect(data).toBeLessThanOrEqual(1.1 * share);
    expect(data).toBeGreaterThanOrEqual(share - headers);
  });

  it("retries a dropped connection, resuming where the body stopped", async () => {
    let dropped = 0;
    const cut: string[] = [];
    const count = counter();
    fault = (req) => {
      if (!req.url?.includes("00002-of")) return undefined;
      const nth = count(req.url);
      if (nth === 1 || nth === 3) {
        dropped++;
        cut.push(req.headers.range!);
        return { dropAfter: 1000 };
      }
      if (nth === 2) return "drop";
      return undefined;
    };
    const dst = out();
    const waits: number[] = [];
    await convertCheckpoint({ src: `${server.url}/small`, dst, to: "native", http: fastRetries(waits) });
    expectSameAsLocal(dst);
    expect(dropped).toBeGreaterThan(0);
    expect(waits.length).toBeGreaterThanOrEqual(2);
    // Each cut request was asked again from its 1000th byte on, not from its start.
    const asked = new Set(server.log.map((r) => r.range));
    for (const range of cut) {
      const [, a, b] = /^bytes=(\d+)-(\d+)$/.exec(range)!;
      expect(asked.has(`bytes=${Number(a) + 1000}-${b}`), range).toBe(true);
    }
    fault = undefined;
  });

  it("retries 503 and 429, waiting as Retry-After asks", async () => {
    const waits: number[] = [];
    let hits = 0;
    const count = counter();
    fault = (req) => {
      if (!req.url?.endsWith(".safetensors.index.json")) return undefined;
      const nth = count(req.url);
      hits++;
      if (nth === 0) return 503;
      if (nth === 1) return 429;
      return undefined;
    };
    // The injected 503 and 429 say Retry-After: 0; a second server asks for a real delay.
    const dst = out();
    await convertCheckpoint({ src: `${server.url}/small`, dst, to: "native", http: fastRetries(waits) });
    expectSameAsLocal(dst);
    expect(hits).toBeGreaterThanOrEqual(3);
    expect(waits.slice(0, 2)).toEqual([500, 0]);

    const slow = await startServer("slow", (req, res, served) => {
      if (served && slow.log.length === 1) {
        res.writeHead(429, { "retry-after": "7" });
        res.end();
        return;
      }
      folderHandler(work)(req, res, served);
    });
    try {
      const later: number[] = [];
      const report = await inspectCheckpoint(`${slow.url}/small`, { http: fastRetries(later) });
      expect(report.tensors).toBeGreaterThan(0);
      expect(later).toEqual([7000]);
    } finally {
      await slow.close();
    }
    fault = undefined;
  });

  it("gives up after a bounded number of tries with a ReadError naming the URL (exit 1)", async () => {
    fault = (req) => (req.url?.includes("00001-of") ? 503 : undefined);
    const waits: number[] = [];
    const dst = out();
    const e = await convertCheckpoint({ src: `${server.url}/small`, dst, to: "native", http: fastRetries(waits) }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ReadError);
    expect((e as Error).message).toMatch(new RegExp(`^${server.url}/small/model-00001-of-\\d+\\.safetensors: HTTP 503 Service Unavailable, still after 4 attempts$`));
    expect(exitCodeOf(e)).toBe(1);
    expect(waits).toHaveLength(3);
    expect(fs.existsSync(dst)).toBe(false);
    fault = undefined;
  });

  it("refuses a file that changes while it is read (ETag or size), naming it", async () => {
    const copy = path.join(work, "changing");
    fs.cpSync(small, copy, { recursive: true });
    const shard = fs.readdirSync(copy).filter((f) => f.endsWith(".safetensors")).sort()[0]!;
    let replaced = false;
    const count = counter();
    fault = (req) => {
      if (req.url === `/changing/${shard}` && count(req.url) === 1 && !replaced) {
        // Same size, new content: only the ETag tells.
        const file = path.join(copy, shard);
        const bytes = fs.readFileSync(file);
        bytes.writeUInt8(bytes.readUInt8(bytes.length - 1) ^ 1, bytes.length - 1);
        fs.writeFileSync(file, bytes);
        fs.utimesSync(file, new Date(), new Date(Date.now() + 5000));
        replaced = true;
      }
      return undefined;
    };
    const dst = out();
    const e = await convertCheckpoint({ src: `${server.url}/changing`, dst, to: "native", http: fastRetries() }).catch((x: unknown) => x);
    expect(replaced).toBe(true);
    expect(e).toBeInstanceOf(ReadError);
    expect((e as Error).message).toMatch(new RegExp(`^${server.url}/changing/${shard}: changed while being read \\(ETag ".+", now ".+"\\); run again to read it as it is now$`));
    expect(fs.existsSync(dst)).toBe(false);

    // A server without ETags: the size is what changes.
    fault = (req) => (req.url === `/changing/${shard}` ? { headers: { etag: "", "last-modified": "" } } : undefined);
    const noEtag = new HttpFolder(`${server.url}/changing`, fastRetries());
    const source = await noEtag.open(shard);
    fs.appendFileSync(path.join(copy, shard), Buffer.alloc(10));
    const e2 = await source.read(new Uint8Array(1000), source.size - 1000).catch((x: unknown) => x);
    expect((e2 as Error).message).toMatch(new RegExp(`^${server.url}/changing/${shard}: changed while being read \\(\\d+ bytes, now \\d+\\)`));
    fault = undefined;
  });

  it("notes, once per folder, a server that gives its files neither ETag nor Last-Modified", async () => {
    fault = (req) => (req.url?.startsWith("/small/") ? { withoutIdentity: true } : undefined);
    const notes: string[] = [];
    const report = await inspectCheckpoint(`${server.url}/small`, { http: fastRetries(), onNote: (n) => notes.push(n) });
    expect(report.tensors).toBeGreaterThan(0);
    expect(notes).toEqual([
      `${server.url}/small/model.safetensors.index.json: the server sends no ETag or Last-Modified, so a file replaced on it during this run by one of the same size would go unnoticed`,
    ]);
    // The folder's own option, and a note for each folder.
    const own: string[] = [];
    const folder = new HttpFolder(`${server.url}/small`, { ...fastRetries(), onNote: (n) => own.push(n) });
    await folder.open("config.json");
    await folder.open("model.safetensors.index.json");
    expect(own).toEqual([`${server.url}/small/config.json: the server sends no ETag or Last-Modified, so a file replaced on it during this run by one of the same size would go unnoticed`]);
    // A server that sends them: nothing to say.
    fault = undefined;
    const none: string[] = [];
    await inspectCheckpoint(`${server.url}/small`, { http: fastRetries(), onNote: (n) => none.push(n) });
    expect(none).toEqual([]);
  });

  it("refuses a server that ignores Range, or sends more than asked, naming the URL (exit 2)", async () => {
    fault = (req) => (req.url?.endsWith(".safetensors") ? { ignoreRange: true } : undefined);
    const e = await inspectCheckpoint(`${server.url}/small`, { http: fastRetries() }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(InputError);
    expect((e as Error).message).toMatch(new RegExp(`^${server.url}/small/model-00001-of-\\d+\\.safetensors: the server ignores Range requests \\(HTTP 200 instead of 206 Partial Content\\)`));
    expect(exitCodeOf(e)).toBe(2);
    // The same with the body chunked (no Content-Length to tell): refused once it runs past the range.
    fault = (req) => (req.url?.endsWith(".safetensors") ? { ignoreRange: true, chunked: true } : undefined);
    const chunked = await inspectCheckpoint(`${server.url}/small`, { http: fastRetries() }).catch((x: unknown) => x);
    expect((chunked as Error).message).toMatch(new RegExp(`^${server.url}/small/model-00001-of-\\d+\\.safetensors: the server ignores Range requests`));

    let opened = false;
    const count = counter();
    fault = (req) => {
      if (!req.url?.includes("00001-of")) return undefined;
      const nth = count(req.url);
      if (nth > 0) opened = true;
      return nth > 0 ? { extra: 100 } : undefined;
    };
    const e2 = await convertCheckpoint({ src: `${server.url}/small`, dst: out(), to: "native", http: fastRetries() }).catch((x: unknown) => x);
    expect(opened).toBe(true);
    expect(e2).toBeInstanceOf(InputError);
    expect((e2 as Error).message).toMatch(/: Content-Length \d+ disagrees with Content-Range bytes \d+-\d+\/\d+$/);

    // The same without a Content-Length: the body itself runs past the range.
    const more = counter();
    fault = (req) => (req.url?.includes("00001-of") && more(req.url) > 0 ? { extra: 100, chunked: true } : undefined);
    const e3 = await convertCheckpoint({ src: `${server.url}/small`, dst: out(), to: "native", http: fastRetries() }).catch((x: unknown) => x);
    expect(e3).toBeInstanceOf(InputError);
    expect((e3 as Error).message).toMatch(new RegExp(`^${server.url}/small/model-00001-of-\\d+\\.safetensors: the server sent more than the \\d+ bytes asked for$`));
    fault = undefined;
  });

  it("takes a whole small file from a server that ignores Range, and an empty file from a 416", async () => {
    const odd = path.join(work, "odd");
    fs.mkdirSync(odd, { recursive: true });
    fs.writeFileSync(path.join(odd, "small.bin"), Buffer.from("0123456789"));
    fs.writeFileSync(path.join(odd, "empty.bin"), Buffer.alloc(0));
    fs.writeFileSync(path.join(odd, "name with space#1.bin"), Buffer.from("abc"));
    fault = (req) => (req.url === "/odd/small.bin" ? { ignoreRange: true, chunked: true } : undefined);
    const folder = new HttpFolder(`${server.url}/odd/`, fastRetries());
    const small = await folder.open("small.bin");
    const bytes = new Uint8Array(4);
    await small.read(bytes, 3);
    expect(new TextDecoder().decode(bytes)).toBe("3456");
    expect(await folder.stat("empty.bin")).toEqual({ kind: "file", size: 0 });
    const spaced = await folder.open("name with space#1.bin");
    expect(spaced.size).toBe(3);
    expect(folder.describe("name with space#1.bin")).toBe(`${server.url}/odd/name%20with%20space%231.bin`);
    expect(await folder.stat("missing.bin")).toBeUndefined();
    await expect(folder.open("missing.bin")).rejects.toThrow(`${server.url}/odd/missing.bin: cannot open: not found (HTTP 404)`);
    await expect(small.read(new Uint8Array(4), 8)).rejects.toThrow(`${server.url}/odd/small.bin: read of 4 bytes at 8 is past the end (10 bytes)`);
    fault = undefined;
  });

  it("a short body that keeps coming short is a ReadError after the retries", async () => {
    const count = counter();
    fault = (req) => (req.url?.includes("00001-of") && count(req.url) > 0 ? { dropAfter: 100 } : undefined);
    const e = await convertCheckpoint({ src: `${server.url}/small`, dst: out(), to: "native", http: fastRetries() }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ReadError);
    expect((e as Error).message).toMatch(/00001-of-\d+\.safetensors: (the response ended after \d+ of \d+ bytes|connection closed by the server \(UND_ERR_SOCKET\)|connection reset \(ECONNRESET\)), still after 4 attempts$/);
    fault = undefined;
  });

  it("a missing folder or shard is the user's input (exit 2), naming what is missing", async () => {
    fault = undefined;
    const e = await inspectCheckpoint(`${server.url}/nothing-here`, { http: fastRetries() }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(InputError);
    expect((e as Error).message).toBe(`${server.url}/nothing-here: no model.safetensors or model.safetensors.index.json in this folder`);

    const broken = path.join(work, "broken");
    fs.cpSync(small, broken, { recursive: true });
    const shard = fs.readdirSync(broken).filter((f) => f.endsWith(".safetensors")).sort()[1]!;
    fs.rmSync(path.join(broken, shard));
    const e2 = await inspectCheckpoint(`${server.url}/broken`, { http: fastRetries() }).catch((x: unknown) => x);
    expect(e2).toBeInstanceOf(FormatError);
    expect((e2 as Error).message).toBe(`${server.url}/broken/model.safetensors.index.json: names shard "${shard}", which cannot be opened: no such file (ENOENT)`);
    expect(exitCodeOf(e2)).toBe(2);
  });

  it("stops on abort and leaves no output", async () => {
    const controller = new AbortController();
    fault = (req) => {
      if (req.url?.includes("00002-of")) controller.abort(new Error("stop"));
      return undefined;
    };
    const dst = out();
    const e = await convertCheckpoint({ src: `${server.url}/small`, dst, to: "native", signal: controller.signal, http: fastRetries() }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(AbortError);
    expect((e as Error).message).toBe("stop");
    expect(fs.existsSync(dst)).toBe(false);
    expect(fs.readdirSync(work).filter((f) => f.includes("omni-ckpt-tmp"))).toEqual([]);
    fault = undefined;
  });

  it("reports progress over HTTP as for local files", async () => {
    fault = undefined;
    let last = [0, 0];
    let calls = 0;
    const summary = await convertCheckpoint({
      src: `${server.url}/small`,
      dst: out(),
      to: "native",
      http: fastRetries(),
      onProgress: (bytes, tensors) => {
        calls++;
        expect(bytes).toBeGreaterThanOrEqual(last[0]!);
        last = [bytes, tensors];
      },
    });
    expect(calls).toBeGreaterThan(1);
    expect(last).toEqual([summary.bytesOut, summary.tensorsOut]);
  });
});

describe("hf:// sources", () => {
  it("lists the revision through the model API and reads each file at the commit it resolved to", async () => {
    const hub = await startFakeHub({ "nvidia/small": small });
    try {
      const dst = out();
      const summary = await convertCheckpoint({ src: "hf://nvidia/small@refs/pr/1", dst, to: "native", http: { ...fastRetries(), endpoint: hub.endpoint } });
      // Listed: every other file of the repo is copied, as from a local folder.
      expectSameAsLocal(dst, localNative, true);
      expect(summary.auxListed).toBe(true);
      expect(summary.auxFiles.length).toBeGreaterThan(1);
      const urls = hub.hub.log.map((r) => r.url);
      expect(urls[0]).toBe("/api/models/nvidia/small/revision/refs%2Fpr%2F1");
      expect(urls.filter((u) => u.includes("/resolve/")).every((u) => u.startsWith("/nvidia/small/resolve/0123456789abcdef0123456789abcdef01234567/"))).toBe(true);
      // Large files came from the CDN, small ones from the Hub's own cache route.
      expect(hub.cdn.log.some((r) => r.url.startsWith("/blobs/nvidia/small/model-"))).toBe(true);
      expect(urls.some((u) => u.startsWith("/api/resolve-cache/models/nvidia/small/"))).toBe(true);
    } finally {
      await hub.close();
    }
  });

  it("sends the token to the endpoint's host only, never to the CDN it redirects to", async () => {
    const hub = await startFakeHub({ "nvidia/small": small });
    try {
      await convertCheckpoint({ src: "hf://nvidia/small", dst: out(), to: "native", http: { ...fastRetries(), endpoint: `${hub.endpoint}/`, token: " hf_secret\n" } });
      const toHub = hub.hub.log;
      expect(toHub.length).toBeGreaterThan(3);
      expect(toHub.every((r) => r.authorization === "Bearer hf_secret")).toBe(true);
      expect(hub.cdn.log.length).toBeGreaterThan(0);
      expect(hub.cdn.log.every((r) => r.authorization === undefined)).toBe(true);
      // A plain URL on another host gets no token either.
      const from = server.log.length;
      await inspectCheckpoint(`${server.url.replace("127.0.0.1", "localhost")}/small`, { http: { ...fastRetries(), endpoint: hub.endpoint, token: "hf_secret" } });
      expect(server.log.slice(from).every((r) => r.authorization === undefined)).toBe(true);
    } finally {
      await hub.close();
    }
  });

  it("re-asks the Hub when the CDN's signed URL stops answering, and notices a changed linked ETag", async () => {
    const expired = new Set<string>();
    const hub = await startFakeHub(
      { "nvidia/small": small },
      {
        fault: (req, served) => {
          const blob = (req.url ?? "").split("?")[0]!;
          if (served.server === "cdn" && req.headers.range !== "bytes=0-131071" && !expired.has(blob)) {
            expired.add(blob);
            return 403;
          }
          return undefined;
        },
      },
    );
    try {
      const dst = out();
      await convertCheckpoint({ src: "hf://nvidia/small", dst, to: "native", http: { ...fastRetries(), endpoint: hub.endpoint } });
      expectSameAsLocal(dst, localNative, true);
      expect(expired.size).toBe(fs.readdirSync(small).filter((f) => f.endsWith(".safetensors")).length);
    } finally {
      await hub.close();
    }

    // The file changed on the Hub meanwhile: the fresh redirect's X-Linked-Etag says so.
    const copy = path.join(work, "hub-changing");
    fs.cpSync(small, copy, { recursive: true });
    let touched = false;
    const changing = await startFakeHub(
      { "nvidia/changing": copy },
      {
        fault: (req, served) => {
          if (served.server === "cdn" && req.headers.range !== "bytes=0-131071" && !touched) {
            touched = true;
            const file = path.join(copy, path.basename((req.url ?? "").split("?")[0]!));
            fs.utimesSync(file, new Date(), new Date(Date.now() + 10_000));
            return 403;
          }
          return undefined;
        },
      },
    );
    try {
      const e = await convertCheckpoint({ src: "hf://nvidia/changing", dst: out(), to: "native", http: { ...fastRetries(), endpoint: changing.endpoint } }).catch((x: unknown) => x);
      expect(touched).toBe(true);
      expect(e).toBeInstanceOf(ReadError);
      expect((e as Error).message).toMatch(/^hf:\/\/nvidia\/changing\/model-\d+-of-\d+\.safetensors: changed while being read \(ETag ".+", now ".+"\); run again to read it as it is now$/);
    } finally {
      await changing.close();
    }
  });

  it("access denied is the user's to fix (exit 2), with a token hint only from the Hub endpoint", async () => {
    fault = (req) => (req.url?.startsWith("/small/") ? 403 : undefined);
    const e = await inspectCheckpoint(`${server.url}/small`, { http: fastRetries() }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(InputError);
    expect((e as Error).message).toBe(`${server.url}/small/model.safetensors.index.json: access denied (HTTP 403 Forbidden)`);
    fault = undefined;
    const hub = await startFakeHub({ "nvidia/gated": small }, { fault: (_req, served) => (served.server === "hub" ? 401 : undefined) });
    try {
      const g = await inspectCheckpoint("hf://nvidia/gated", { http: { ...fastRetries(), endpoint: hub.endpoint } }).catch((x: unknown) => x);
      expect(g).toBeInstanceOf(InputError);
      expect((g as Error).message).toBe("hf://nvidia/gated/model.safetensors.index.json: access denied (HTTP 401 Unauthorized); a private or gated repo needs a token that may read it (HF_TOKEN)");
      expect(exitCodeOf(g)).toBe(2);
    } finally {
      await hub.close();
    }
  });

  it("names an unknown repo or revision, and a hostile listing", async () => {
    const hub = await startFakeHub({});
    try {
      const e = await inspectCheckpoint("hf://nvidia/missing@v1", { http: { ...fastRetries(), endpoint: hub.endpoint } }).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(InputError);
      expect((e as Error).message).toBe(`hf://nvidia/missing@v1: no such model or revision on ${hub.endpoint} (HTTP 404 from ${hub.endpoint}/api/models/nvidia/missing/revision/v1)`);
      expect(() => remoteSource("hf://not-a-repo")).toThrow("hf://not-a-repo: not a Hugging Face model; expected hf://ORG/NAME or hf://ORG/NAME@REVISION");
    } finally {
      await hub.close();
    }
    const evil = await startServer("evil", (_req, res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ sha: "x", siblings: [{ rfilename: "../../etc/passwd" }] }));
    });
    try {
      const folder = new HubFolder({ repo: "a/b", revision: "main" }, { ...fastRetries(), endpoint: evil.url });
      await expect(folder.list("")).rejects.toThrow(`${evil.url}/api/models/a/b/revision/main: names file "../../etc/passwd", which lies outside the folder`);
    } finally {
      await evil.close();
    }
  });
});
