import * as net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { HttpResponse } from "../../src/io/http-client.js";
import { nodeFetch } from "../../src/node/http-transport.js";

/**
 * The Node transport speaks HTTP/1.1 itself over sockets (src/node/http-transport.ts): these tests talk to
 * it from a raw TCP server that writes responses exactly as given, a byte at a time where it matters, so
 * the framing cases a real server's packets can produce are all met.
 */

type Reply = (socket: net.Socket, request: string) => void;
let reply: Reply = () => undefined;
const connections: net.Socket[] = [];
let server: net.Server;
let base: string;

beforeAll(async () => {
  server = net.createServer((socket) => {
    connections.push(socket);
    let pending = "";
    socket.on("data", (d) => {
      pending += d.toString("latin1");
      const end = pending.indexOf("\r\n\r\n");
      if (end < 0) return;
      const request = pending.slice(0, end);
      pending = pending.slice(end + 4);
      reply(socket, request);
    });
    socket.on("error", () => undefined);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  base = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
});
afterAll(() => {
  for (const s of connections) s.destroy();
  server.close();
});

const get = (path: string, signal = new AbortController().signal): Promise<HttpResponse> => nodeFetch(`${base}${path}`, { headers: { range: "bytes=0-" }, redirect: "manual", signal });

async function text(r: HttpResponse): Promise<string> {
  const reader = r.body!.getReader();
  let out = "";
  for (;;) {
    const next = await reader.read();
    if (next.done) return out;
    out += Buffer.from(next.value).toString("latin1");
  }
}

/** Write `bytes` to the socket one byte per write, each after the last has gone out. */
async function trickle(socket: net.Socket, bytes: string): Promise<void> {
  for (const c of bytes) {
    await new Promise<void>((resolve) => socket.write(c, "latin1", () => resolve()));
    await new Promise((r) => setTimeout(r, 1));
  }
}

describe("the Node HTTP transport", () => {
  it("sends the request's headers and reads a length-framed body, keeping the connection for the next", async () => {
    const seen: string[] = [];
    reply = (socket, request) => {
      seen.push(request);
      socket.write(`HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\nContent-Range: bytes 0-4/5\r\nETag: "x"\r\n\r\nhello`);
    };
    const before = connections.length;
    const a = await get("/a");
    expect([a.status, a.statusText, a.headers.get("ETag"), a.headers.get("content-range")]).toEqual([206, "Partial Content", '"x"', "bytes 0-4/5"]);
    expect(await text(a)).toBe("hello");
    const b = await get("/b?sig=1");
    expect(await text(b)).toBe("hello");
    expect(connections.length - before).toBe(1);
    expect(seen.at(-2)).toMatch(/^GET \/a HTTP\/1\.1\r\nHost: 127\.0\.0\.1:\d+\r\nrange: bytes=0-\r\nConnection: keep-alive$/);
    expect(seen.at(-1)).toMatch(/^GET \/b\?sig=1 HTTP\/1\.1\r\n/);
  });

  it("finds a head split anywhere across packets, the blank line included", async () => {
    reply = (socket) => void trickle(socket, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
    const r = await get("/split");
    expect(r.status).toBe(200);
    expect(await text(r)).toBe("abc");
  });

  it("reads chunked bodies (extensions and trailers too) and bodies that end with the connection", async () => {
    reply = (socket) => void trickle(socket, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nWiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\n");
    expect(await text(await get("/chunked"))).toBe("Wikipedia");
    reply = (socket) => socket.end("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end");
    expect(await text(await get("/close"))).toBe("to the end");
  });

  it("reads a large body straight into place, telling where each part landed", async () => {
    const size = 3_000_001;
    const body = Buffer.alloc(size);
    for (let i = 0; i < size; i++) body[i] = (i * 7 + 3) & 0xff;
    reply = (socket) => {
      socket.write(`HTTP/1.1 206 Partial Content\r\nContent-Length: ${size}\r\n\r\n`);
      // In pieces of odd sizes, so packets end anywhere.
      for (let at = 0; at < size; at += 65_521) socket.write(body.subarray(at, Math.min(size, at + 65_521)));
    };
    const r = await get("/big");
    const into = new Uint8Array(size);
    const landed: [number, number][] = [];
    await r.body!.getReader().readInto!(
      (offset) => into.subarray(offset),
      (offset, n) => landed.push([offset, n]),
    );
    expect(Buffer.from(into).equals(body)).toBe(true);
    let next = 0;
    for (const [offset, n] of landed) {
      expect(offset).toBe(next);
      next += n;
    }
    expect(next).toBe(size);
    expect(landed.length).toBeGreaterThan(3);
  });

  it("fails a body that ends early or runs past its length, and closes that connection", async () => {
    reply = (socket) => socket.end("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort");
    await expect(text(await get("/short"))).rejects.toThrow("the connection closed before the response ended");
    reply = (socket) => socket.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabcdef");
    await expect(text(await get("/long"))).rejects.toMatchObject({ code: "EPROTO", message: "the server sent more than its response's length" });
    reply = (socket) => socket.write("SSH-2.0-nope\r\n\r\n");
    await expect(get("/not-http")).rejects.toMatchObject({ code: "EPROTO" });
  });

  it("an abort fails the request in flight, and a body of an earlier response reads as ended", async () => {
    reply = () => undefined; // never answers
    const controller = new AbortController();
    const pending = get("/hang", controller.signal);
    setTimeout(() => controller.abort(), 20);
    await expect(pending).rejects.toMatchObject({ name: "AbortError" });

    reply = (socket) => socket.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    const first = await get("/first");
    const reader = first.body!.getReader();
    expect(await text(first)).toBe("ok");
    const second = await get("/second");
    // The connection now serves the second response: the first's reader must not take its bytes.
    expect(await reader.read()).toEqual({ done: true });
    expect(await text(second)).toBe("ok");
  });

  it("skips interim responses (103 Early Hints, 100 Continue) to the one asked for, split across packets too", async () => {
    reply = (socket) => socket.write("HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
    const r = await get("/hints");
    expect(r.status).toBe(200);
    expect(await text(r)).toBe("abc");
    reply = (socket) => void trickle(socket, "HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 206 Partial Content\r\nContent-Length: 2\r\n\r\nok");
    const t = await get("/hints-trickled");
    expect(t.status).toBe(206);
    expect(await text(t)).toBe("ok");
  });

  it("a body read into place after its connection failed rejects with that failure, at once", async () => {
    // The head, the body and bytes past it in one packet: the connection fails before the reader asks.
    reply = (socket) => socket.write("HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\n\r\nhelloXYZ");
    const r = await get("/overrun");
    await new Promise((resolve) => setTimeout(resolve, 50));
    const into = new Uint8Array(5);
    await expect(r.body!.getReader().readInto!((o) => into.subarray(o), () => undefined)).rejects.toMatchObject({ code: "EPROTO", message: "the server sent more than its response's length" });
    reply = (socket) => socket.end("HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\n\r\nhello");
    const short = await get("/short-late");
    await new Promise((resolve) => setTimeout(resolve, 50));
    await expect(short.body!.getReader().readInto!((o) => into.subarray(o), () => undefined)).rejects.toThrow("the connection closed before the response ended");
  });

  it("refuses a chunked body whose trailer never ends, and a destination that takes less than the body", async () => {
    reply = (socket) => socket.write(`HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Long: ${"a".repeat(20_000)}`);
    await expect(text(await get("/trailer"))).rejects.toMatchObject({ code: "EPROTO", message: "a chunked body's trailer line of more than 8192 bytes" });
    reply = (socket) => socket.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n0\r\n\r\n");
    const r = await get("/chunked-into");
    const into = new Uint8Array(4);
    await expect(
      r.body!.getReader().readInto!(
        (o) => into.subarray(o),
        (o, n) => {
          if (o + n >= 4) throw new Error("more than asked for");
        },
      ),
    ).rejects.toThrow("more than asked for");
    // That connection was given up, and the next request is served on another.
    reply = (socket) => socket.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    expect(await text(await get("/after"))).toBe("ok");
  });

  it("a short body no one wants is read to its end to keep the connection; a long one closes it", async () => {
    reply = (socket) => socket.write(`HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 1000\r\n\r\n${"r".repeat(1000)}`);
    const before = connections.length;
    await (await get("/redirect")).body!.cancel();
    reply = (socket) => socket.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    expect(await text(await get("/next"))).toBe("ok");
    expect(connections.length).toBe(before);
    reply = (socket) => socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n${"b".repeat(1000)}`);
    await (await get("/long-unwanted")).body!.cancel();
    reply = (socket) => socket.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    expect(await text(await get("/after-long"))).toBe("ok");
    expect(connections.length).toBe(before + 1);
  });

  it("sends a request once more, on a new connection, when a kept-alive one turns out closed", async () => {
    let requests = 0;
    reply = (socket) => {
      requests++;
      // The second request on the first connection meets a server that closed it meanwhile.
      if (requests === 2) socket.destroy();
      else socket.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    };
    expect(await text(await get("/one"))).toBe("ok");
    const before = connections.length;
    expect(await text(await get("/two"))).toBe("ok");
    expect([requests, connections.length - before]).toEqual([3, 1]);
  });
});

describe("the Node HTTP transport over IPv6", () => {
  it("connects to a bracketed IPv6 literal", async (context) => {
    const v6 = net.createServer((socket) => {
      socket.on("data", () => socket.write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nv6"));
      socket.on("error", () => undefined);
    });
    const listening = await new Promise<boolean>((resolve) => {
      v6.once("error", () => resolve(false));
      v6.listen(0, "::1", () => resolve(true));
    });
    // A machine without IPv6 on its loopback has nothing to test this against.
    if (!listening) return context.skip();
    try {
      const r = await nodeFetch(`http://[::1]:${(v6.address() as net.AddressInfo).port}/x`, { headers: {}, redirect: "manual", signal: new AbortController().signal });
      expect(await text(r)).toBe("v6");
    } finally {
      v6.close();
    }
  });
});

/** An HTTPS server on loopback with the test certificate, trusted while `run` runs. */
async function withTlsServer(handler: (res: import("node:http").ServerResponse) => void, run: (url: string) => Promise<void>): Promise<void> {
  const https = await import("node:https");
  const fs = await import("node:fs");
  const path = await import("node:path");
  const { repoRoot } = await import("../helpers/fixtures.js");
  const dir = path.join(repoRoot, "test/fixtures/tls");
  const tlsServer = https.createServer({ key: fs.readFileSync(path.join(dir, "key.pem")), cert: fs.readFileSync(path.join(dir, "cert.pem")) }, (_req, res) => handler(res));
  await new Promise<void>((resolve) => tlsServer.listen(0, "127.0.0.1", resolve));
  // The test certificate is its own issuer: trusted for this test only.
  const before = process.env["NODE_TLS_REJECT_UNAUTHORIZED"];
  process.env["NODE_TLS_REJECT_UNAUTHORIZED"] = "0";
  try {
    await run(`https://localhost:${(tlsServer.address() as net.AddressInfo).port}/x`);
  } finally {
    if (before === undefined) delete process.env["NODE_TLS_REJECT_UNAUTHORIZED"];
    else process.env["NODE_TLS_REJECT_UNAUTHORIZED"] = before;
    tlsServer.close();
  }
}

function pattern(size: number, seed: number): Buffer {
  const body = Buffer.alloc(size);
  for (let i = 0; i < size; i++) body[i] = (i * seed + (i >> 11)) & 0xff;
  return body;
}

const turn = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 0));

describe("the Node HTTP transport over TLS", () => {
  it("reads bodies, by view and straight into place, from an HTTPS server (a self-signed test certificate)", async () => {
    const body = pattern(2_000_003, 13);
    const send = (res: import("node:http").ServerResponse): void => {
      res.writeHead(206, { "content-length": body.length, "content-range": `bytes 0-${body.length - 1}/${body.length}` });
      res.end(body);
    };
    await withTlsServer(send, async (url) => {
      const viewed = await nodeFetch(url, { headers: {}, redirect: "manual", signal: new AbortController().signal });
      expect(Buffer.from(await text(viewed), "latin1").equals(body)).toBe(true);
      const direct = await nodeFetch(url, { headers: {}, redirect: "manual", signal: new AbortController().signal });
      const into = new Uint8Array(body.length);
      await direct.body!.getReader().readInto!((o) => into.subarray(o), () => undefined);
      expect(Buffer.from(into).equals(body)).toBe(true);
    });
  });

  // Pausing a TLS socket does not stop the records it has already decrypted: they must land apart from
  // the views still being read.
  it("keeps every view intact until the next read, however long its reader takes", async () => {
    const body = pattern(6_000_011, 29);
    await withTlsServer(
      (res) => {
        res.writeHead(200, { "content-length": body.length });
        res.end(body);
      },
      async (url) => {
        const r = await nodeFetch(url, { headers: {}, redirect: "manual", signal: new AbortController().signal });
        const reader = r.body!.getReader();
        let at = 0;
        let views = 0;
        for (;;) {
          const next = await reader.read();
          if (next.done) break;
          const copy = Buffer.from(next.value);
          expect(copy.equals(body.subarray(at, at + copy.byteLength))).toBe(true);
          // Every few views, the reader lets the event loop run before it is done with the view.
          if (views++ % 3 === 0) await turn();
          expect(Buffer.from(next.value).equals(copy)).toBe(true);
          at += copy.byteLength;
        }
        expect(at).toBe(body.length);
      },
    );
  });

  it("reads into place when the reader comes a turn after the head", async () => {
    const body = pattern(3_000_017, 31);
    await withTlsServer(
      (res) => {
        res.writeHead(206, { "content-length": body.length });
        res.end(body);
      },
      async (url) => {
        for (let k = 0; k < 3; k++) {
          const r = await nodeFetch(url, { headers: {}, redirect: "manual", signal: new AbortController().signal });
          await turn();
          const into = new Uint8Array(body.length);
          await r.body!.getReader().readInto!((o) => into.subarray(o), () => undefined);
          expect(Buffer.from(into).equals(body)).toBe(true);
        }
      },
    );
  });
});
