import * as fs from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import * as path from "node:path";

/**
 * Loopback HTTP servers for the HTTP source tests: a folder served with single-range support, ETags and
 * Last-Modified, every request logged with the bytes of body it was sent, and a hook to inject faults
 * (a request answered differently, a connection dropped part-way, Range ignored). Never listens beyond
 * 127.0.0.1.
 */

export interface Served {
  /** Which server answered ("origin", "cdn", …). */
  readonly server: string;
  readonly method: string;
  readonly url: string;
  readonly range: string | undefined;
  readonly authorization: string | undefined;
  status: number;
  /** Body bytes written. */
  bytes: number;
}

export interface ServeOptions {
  /** Answer 200 with the whole file whatever the Range header says. */
  readonly ignoreRange?: boolean;
  /** Destroy the connection after this many body bytes. */
  readonly dropAfter?: number;
  /** Bytes appended past what was asked for (a server that sends too much). */
  readonly extra?: number;
  /** Send no Content-Length (the body goes chunked). */
  readonly chunked?: boolean;
  /** Replace or add response headers. */
  readonly headers?: Readonly<Record<string, string>>;
  /** Send neither ETag nor Last-Modified: a server that gives its files no identity. */
  readonly withoutIdentity?: boolean;
}

export type Handler = (req: http.IncomingMessage, res: http.ServerResponse, served: Served) => void;

export interface LoopbackServer {
  readonly url: string;
  readonly port: number;
  readonly log: Served[];
  close(): Promise<void>;
}

/** Serve `handler` on 127.0.0.1, logging every request. */
export async function startServer(name: string, handler: Handler, host = "127.0.0.1"): Promise<LoopbackServer> {
  const log: Served[] = [];
  const server = http.createServer((req, res) => {
    const served: Served = {
      server: name,
      method: req.method ?? "GET",
      url: req.url ?? "/",
      range: req.headers.range,
      authorization: req.headers.authorization,
      status: 0,
      bytes: 0,
    };
    log.push(served);
    res.on("finish", () => {
      served.status = res.statusCode;
    });
    try {
      handler(req, res, served);
    } catch (e) {
      res.statusCode = 500;
      res.end(String(e));
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://${host}:${port}`,
    port,
    log,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** The ETag a file is served with: its size and modification time, as many static servers make it. */
export function etagOf(st: fs.Stats): string {
  return `"${st.size.toString(16)}-${Math.round(st.mtimeMs * 1000).toString(16)}"`;
}

/** Answer a GET for a local file with Range support (`bytes=A-B` and `bytes=A-`), counting body bytes. */
export function serveFile(file: string, req: http.IncomingMessage, res: http.ServerResponse, served: Served, options: ServeOptions = {}): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
    if (!st.isFile()) throw new Error("not a file");
  } catch {
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not found");
    return;
  }
  const size = st.size;
  const identity: Record<string, string> = options.withoutIdentity ? {} : { etag: etagOf(st), "last-modified": st.mtime.toUTCString() };
  const headers: Record<string, string> = { ...identity, "accept-ranges": "bytes", "content-type": "application/octet-stream" };
  let start = 0;
  let end = size;
  let status = 200;
  const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "");
  if (m && !options.ignoreRange) {
    start = Number(m[1]);
    end = m[2] === "" ? size : Math.min(size, Number(m[2]) + 1);
    if (start >= size) {
      res.writeHead(416, { ...headers, "content-range": `bytes */${size}`, ...options.headers });
      res.end();
      return;
    }
    status = 206;
    headers["content-range"] = `bytes ${start}-${end - 1}/${size}`;
  }
  const extra = options.extra ?? 0;
  if (!options.chunked) headers["content-length"] = String(end - start + extra);
  res.writeHead(status, { ...headers, ...options.headers });
  if (req.method === "HEAD") {
    res.end();
    return;
  }
  const fd = fs.openSync(file, "r");
  let at = start;
  let sent = 0;
  const limit = options.dropAfter;
  const step = (): void => {
    while (at < end) {
      let n = Math.min(256 * 1024, end - at);
      if (limit !== undefined) n = Math.min(n, limit - sent);
      if (n <= 0) {
        fs.closeSync(fd);
        res.flushHeaders();
        // Let what was written go out, then cut the connection mid-body.
        setTimeout(() => res.socket?.destroy(), 5);
        return;
      }
      const buf = Buffer.allocUnsafe(n);
      fs.readSync(fd, buf, 0, n, at);
      at += n;
      sent += n;
      served.bytes += n;
      if (!res.write(buf)) {
        res.once("drain", step);
        return;
      }
    }
    fs.closeSync(fd);
    if (extra > 0) {
      served.bytes += extra;
      res.write(Buffer.alloc(extra));
    }
    res.end();
  };
  step();
}

/** The local file a request path names under `root`, or undefined when it climbs out. */
export function fileUnder(root: string, urlPath: string): string | undefined {
  const rel = decodeURIComponent(urlPath.split("?")[0]!).replace(/^\/+/, "");
  const file = path.resolve(root, rel);
  return file.startsWith(path.resolve(root) + path.sep) ? file : undefined;
}

/**
 * A folder served under `/`, with `fault` deciding per request (by its 0-based number among requests
 * for the same path) whether to answer it some other way.
 */
export function folderHandler(root: string, fault?: (req: http.IncomingMessage, served: Served, nth: number) => ServeOptions | "drop" | number | undefined): Handler {
  const seen = new Map<string, number>();
  return (req, res, served) => {
    const p = (req.url ?? "/").split("?")[0]!;
    const nth = seen.get(p) ?? 0;
    seen.set(p, nth + 1);
    const f = fault?.(req, served, nth);
    if (f === "drop") {
      req.socket.destroy();
      return;
    }
    if (typeof f === "number") {
      res.writeHead(f, f === 429 ? { "retry-after": "0" } : {});
      res.end(`injected ${f}`);
      return;
    }
    const file = fileUnder(root, p);
    if (!file) {
      res.writeHead(404);
      res.end();
      return;
    }
    serveFile(file, req, res, served, f ?? {});
  };
}

/** Total body bytes a set of servers sent. */
export function bytesServed(...logs: Served[][]): number {
  return logs.flat().reduce((n, s) => n + s.bytes, 0);
}

export interface FakeHub {
  /** The endpoint (as HF_ENDPOINT): the API and `/resolve/` on 127.0.0.1. */
  readonly endpoint: string;
  /** The CDN large files are redirected to, on `localhost`: another host. */
  readonly cdn: LoopbackServer;
  readonly hub: LoopbackServer;
  readonly log: () => Served[];
  close(): Promise<void>;
}

/**
 * The Hugging Face Hub as far as omni-ckpt uses it, on loopback: the model API listing a folder's files
 * at a commit, `/resolve/` answering small (`.json`) files with a relative 307 into the Hub's own
 * `/api/resolve-cache/`, and everything else with a 302 to a CDN on another host (with `X-Linked-Etag` /
 * `X-Linked-Size`, the CDN's own ETag being different), as the real Hub does. `repos` maps
 * `ORG/NAME` to a local folder; `revisions` maps a revision name to the commit it resolves to.
 */
export async function startFakeHub(
  repos: Readonly<Record<string, string>>,
  options: { commit?: string; fault?: (req: http.IncomingMessage, served: Served, nth: number) => ServeOptions | "drop" | number | undefined } = {},
): Promise<FakeHub> {
  const commit = options.commit ?? "0123456789abcdef0123456789abcdef01234567";
  const cdnFiles = new Map<string, string>();
  const cdn = await startServer(
    "cdn",
    (req, res, served) => {
      const file = cdnFiles.get((req.url ?? "").split("?")[0]!);
      if (!file) {
        res.writeHead(404);
        res.end();
        return;
      }
      const st = fs.statSync(file);
      const nth = 0;
      const f = options.fault?.(req, served, nth);
      if (typeof f === "number") {
        res.writeHead(f);
        res.end();
        return;
      }
      // The CDN's ETag is its own, not the Hub's.
      serveFile(file, req, res, served, { ...(f !== "drop" ? f : {}), headers: { etag: `"cdn-${etagOf(st).slice(1, -1)}"`, ...(f !== "drop" ? f?.headers : {}) } });
    },
    "localhost",
  );
  const files = (root: string, rel = ""): string[] =>
    fs
      .readdirSync(path.join(root, rel), { withFileTypes: true })
      .flatMap((d) => (d.isDirectory() ? files(root, path.posix.join(rel, d.name)) : [path.posix.join(rel, d.name)]))
      .sort();
  const hub = await startServer("hub", (req, res, served) => {
    const url = new URL(req.url ?? "/", "http://hub");
    const api = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(url.pathname);
    if (api) {
      const root = repos[api[1]!];
      if (!root) {
        res.writeHead(404, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: "Repository not found" }));
        return;
      }
      const body = JSON.stringify({ id: api[1], sha: commit, revision: decodeURIComponent(api[2]!), siblings: files(root).map((rfilename) => ({ rfilename })) });
      served.bytes += body.length;
      res.writeHead(200, { "content-type": "application/json" });
      res.end(body);
      return;
    }
    const cache = /^\/api\/resolve-cache\/models\/([^/]+\/[^/]+)\/([0-9a-f]{40})\/(.+)$/.exec(url.pathname);
    if (cache) {
      const file = fileUnder(repos[cache[1]!] ?? "/nonexistent", `/${cache[3]}`);
      if (!file) {
        res.writeHead(404);
        res.end();
        return;
      }
      serveFile(file, req, res, served);
      return;
    }
    const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
    const root = resolve ? repos[resolve[1]!] : undefined;
    const file = resolve && root ? fileUnder(root, `/${resolve[3]}`) : undefined;
    if (!resolve || !file || !fs.existsSync(file)) {
      res.writeHead(404, { "x-error-code": "EntryNotFound" });
      res.end();
      return;
    }
    const st = fs.statSync(file);
    const f = options.fault?.(req, served, 0);
    if (typeof f === "number") {
      res.writeHead(f, f === 429 || f === 503 ? { "retry-after": "0" } : {});
      res.end();
      return;
    }
    if (file.endsWith(".json")) {
      res.writeHead(307, { location: `/api/resolve-cache/models/${resolve[1]}/${commit}/${resolve[3]}?etag=${encodeURIComponent(etagOf(st))}`, "x-repo-commit": commit, etag: etagOf(st) });
      res.end();
      return;
    }
    const blob = `/blobs/${resolve[1]}/${resolve[3]}`;
    cdnFiles.set(blob, file);
    res.writeHead(302, {
      location: `${cdn.url}${blob}?X-Amz-Signature=secret&Expires=9999999999`,
      "x-repo-commit": commit,
      "x-linked-etag": etagOf(st),
      "x-linked-size": String(st.size),
    });
    res.end();
  });
  return {
    endpoint: hub.url,
    cdn,
    hub,
    log: () => [...hub.log, ...cdn.log],
    close: async () => {
      await Promise.all([hub.close(), cdn.close()]);
    },
  };
}
