import * as fs from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import * as path from "node:path";

/**
 * A static file server on 127.0.0.1 for the HTTP bench, run as a process of its own so its work is not
 * counted against the converter's: single byte ranges, ETags from size and mtime, keep-alive. Prints
 * its port on stdout, and its CPU seconds on stderr when it is told to stop (SIGTERM).
 *
 *   node dist/bench/http-server.js ROOT [PORT]
 */

const root = path.resolve(process.argv[2] ?? ".");
const PIECE = 1024 * 1024;

/** Files stay open, as a static server's open-file cache keeps them (the bench's files do not change). */
const open = new Map<string, { fd: number; st: fs.Stats }>();

function lookup(file: string): { fd: number; st: fs.Stats } | undefined {
  let f = open.get(file);
  if (!f) {
    if (!file.startsWith(root + path.sep)) return undefined;
    try {
      const st = fs.statSync(file);
      if (!st.isFile()) return undefined;
      f = { fd: fs.openSync(file, "r"), st };
    } catch {
      return undefined;
    }
    open.set(file, f);
  }
  return f;
}

const server = http.createServer((req, res) => {
  const rel = decodeURIComponent((req.url ?? "/").split("?")[0]!).replace(/^\/+/, "");
  const found = lookup(path.resolve(root, rel));
  if (!found) {
    res.writeHead(404);
    res.end();
    return;
  }
  const { fd, st } = found;
  const size = st.size;
  const headers: Record<string, string | number> = { etag: `"${size.toString(16)}-${Math.round(st.mtimeMs).toString(16)}"`, "accept-ranges": "bytes" };
  let start = 0;
  let end = size;
  let status = 200;
  const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "");
  if (m) {
    start = Number(m[1]);
    end = m[2] === "" ? size : Math.min(size, Number(m[2]) + 1);
    if (start >= size) {
      res.writeHead(416, { ...headers, "content-range": `bytes */${size}` });
      res.end();
      return;
    }
    status = 206;
    headers["content-range"] = `bytes ${start}-${end - 1}/${size}`;
  }
  headers["content-length"] = end - start;
  res.writeHead(status, headers);
  let at = start;
  const step = (): void => {
    while (at < end) {
      const n = Math.min(PIECE, end - at);
      const buf = Buffer.allocUnsafe(n);
      fs.readSync(fd, buf, 0, n, at);
      at += n;
      if (!res.write(buf)) {
        res.once("drain", step);
        return;
      }
    }
    res.end();
  };
  step();
});
server.keepAliveTimeout = 60_000;
server.listen(Number(process.argv[3] ?? 0), "127.0.0.1", () => process.stdout.write(`${(server.address() as AddressInfo).port}\n`));
process.on("SIGTERM", () => {
  const u = process.cpuUsage();
  process.stderr.write(`server_cpu_s=${((u.user + u.system) / 1e6).toFixed(2)}\n`);
  process.exit(0);
});
