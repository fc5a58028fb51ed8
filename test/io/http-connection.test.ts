import * as fs from "node:fs";
import * as https from "node:https";
import * as net from "node:net";
import * as path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { AbortError, InputError, exitCodeOf } from "../../src/errors.js";
import type { Fetch } from "../../src/io/http-client.js";
import { HttpFolder, HubFolder } from "../../src/io/http-folder.js";
import type { RemoteOptions } from "../../src/io/http-source.js";
import { nodeFetch } from "../../src/node/http-transport.js";
import { openSource } from "../../src/node/sources.js";
import { Checkpoint } from "../../src/safetensors/checkpoint.js";
import { repoRoot } from "../helpers/fixtures.js";

/**
 * How the HTTP client treats a failed connection: a network failure is retried, but one that would only
 * fail the same way again (a response that is not HTTP, a certificate nobody trusts) is refused at once as
 * the user's to fix, after one request; and a caller's abort stops the opening of remote files, their
 * retries included. The servers here are raw sockets on 127.0.0.1 that answer exactly
 * the bytes a test gives, so the transport meets what a broken server really sends.
 */

interface RawServer {
  readonly url: string;
  /** Request heads received, in order. */
  readonly requests: string[];
  close(): Promise<void>;
}

const servers: { close(): Promise<void> }[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

/** A TCP server on loopback calling `reply` for each request head (its 0-based number among all requests). */
async function rawServer(reply: (socket: net.Socket, request: string, nth: number) => void): Promise<RawServer> {
  const requests: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => undefined);
    let pending = "";
    socket.on("data", (d) => {
      pending += d.toString("latin1");
      for (let end = pending.indexOf("\r\n\r\n"); end >= 0; end = pending.indexOf("\r\n\r\n")) {
        const request = pending.slice(0, end);
        pending = pending.slice(end + 4);
        requests.push(request);
        reply(socket, request, requests.length - 1);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const raw: RawServer = {
    url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
  servers.push(raw);
  return raw;
}

/** Retries without waiting; the waits asked for are recorded. */
function options(waits: number[], fetch?: Fetch): RemoteOptions {
  return { ...(fetch ? { fetch } : {}), retry: { attempts: 6, sleep: async (ms) => void waits.push(ms) } };
}

const transports: [string, Fetch | undefined][] = [
  ["the Node transport", nodeFetch],
  ["the built-in fetch", undefined],
];

describe("connection failures no retry mends", () => {
  it.each(transports)("a response that is not HTTP is refused after one request, naming the URL (exit 2), over %s", async (_, fetch) => {
    const server = await rawServer((socket) => socket.write("SSH-2.0-OpenSSH_9.6\r\n\r\n"));
    const waits: number[] = [];
    const e = await new HttpFolder(`${server.url}/ckpt`, options(waits, fetch)).open("model.safetensors").catch((x: unknown) => x);
    expect(e).toBeInstanceOf(InputError);
    expect(exitCodeOf(e)).toBe(2);
    const host = server.url.slice("http://".length);
    expect((e as Error).message).toMatch(new RegExp(`^${server.url}/ckpt/model\\.safetensors: invalid HTTP response from ${host.replace(/\./g, "\\.")} \\((EPROTO|HPE_[A-Z_]+)\\): .+$`));
    expect(server.requests).toHaveLength(1);
    expect(waits).toEqual([]);
  });

  it("a body longer than its Content-Length, or a bad Content-Length, is refused after one request (exit 2)", async () => {
    const overlong = await rawServer((socket) => socket.write("HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\nContent-Range: bytes 0-4/5\r\n\r\nhello, and more"));
    const waits: number[] = [];
    const e = await new HttpFolder(`${overlong.url}/ckpt`, options(waits, nodeFetch)).open("model.safetensors").catch((x: unknown) => x);
    expect(e).toBeInstanceOf(InputError);
    expect((e as Error).message).toBe(`${overlong.url}/ckpt/model.safetensors: invalid HTTP response from ${overlong.url.slice(7)} (EPROTO): the server sent more than its response's length`);
    expect(overlong.requests).toHaveLength(1);

    const badLength = await rawServer((socket) => socket.write("HTTP/1.1 206 Partial Content\r\nContent-Length: five\r\nContent-Range: bytes 0-4/5\r\n\r\nhello"));
    const e2 = await new HttpFolder(`${badLength.url}/ckpt`, options(waits, nodeFetch)).open("model.safetensors").catch((x: unknown) => x);
    expect(e2).toBeInstanceOf(InputError);
    expect((e2 as Error).message).toBe(`${badLength.url}/ckpt/model.safetensors: invalid HTTP response from ${badLength.url.slice(7)} (EPROTO): bad Content-Length "five"`);
    expect(badLength.requests).toHaveLength(1);
    expect(waits).toEqual([]);
  });

  it.each(transports)("a TLS certificate nobody trusts is refused after one connection, naming the URL (exit 2), over %s", async (_, fetch) => {
    const dir = path.join(repoRoot, "test/fixtures/tls");
    let connections = 0;
    // The test certificate is its own issuer and trusted by nothing here, as a misconfigured server's would be.
    const server = https.createServer({ key: fs.readFileSync(path.join(dir, "key.pem")), cert: fs.readFileSync(path.join(dir, "cert.pem")) }, (_req, res) => res.end());
    server.on("connection", () => connections++);
    server.on("tlsClientError", () => undefined);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    servers.push({
      close: () =>
        new Promise<void>((resolve) => {
          server.closeAllConnections();
          server.close(() => resolve());
        }),
    });
    const host = `localhost:${(server.address() as net.AddressInfo).port}`;
    const waits: number[] = [];
    const e = await new HttpFolder(`https://${host}/ckpt`, options(waits, fetch)).open("model.safetensors").catch((x: unknown) => x);
    expect(e).toBeInstanceOf(InputError);
    expect(exitCodeOf(e)).toBe(2);
    expect((e as Error).message).toBe(`https://${host}/ckpt/model.safetensors: the TLS certificate of ${host} is not trusted (DEPTH_ZERO_SELF_SIGNED_CERT): self-signed certificate`);
    expect(connections).toBe(1);
    expect(waits).toEqual([]);
  });

  it("https:// to a server that does not speak TLS is refused after one connection, with a hint", async () => {
    let connections = 0;
    // A plain HTTP server answers a TLS client hello (which never ends in a blank line) as garbage.
    const plain = net.createServer((socket) => {
      connections++;
      socket.on("error", () => undefined);
      socket.once("data", () => socket.end("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"));
    });
    await new Promise<void>((resolve) => plain.listen(0, "127.0.0.1", resolve));
    servers.push({ close: () => new Promise<void>((resolve) => plain.close(() => resolve())) });
    const host = `127.0.0.1:${(plain.address() as net.AddressInfo).port}`;
    const waits: number[] = [];
    const e = await new HttpFolder(`https://${host}/ckpt`, options(waits, nodeFetch)).open("model.safetensors").catch((x: unknown) => x);
    expect(e).toBeInstanceOf(InputError);
    expect((e as Error).message).toMatch(new RegExp(`^https://${host.replace(/\./g, "\\.")}/ckpt/model\\.safetensors: TLS with ${host.replace(/\./g, "\\.")} failed \\((EPROTO|ERR_SSL_WRONG_VERSION_NUMBER)\\): .*wrong version number.*; is it a plain http:// server\\?$`));
    expect((e as Error).message).not.toContain("\n");
    expect(connections).toBe(1);
    expect(waits).toEqual([]);
  });
});

describe("connection failures worth a retry", () => {
  it("a reset on the first try is tried again at once, without a wait or counting as an attempt", async () => {
    const body = "hello";
    // The first request's connection is reset, as a pooled keep-alive connection the server closed is.
    const server = await rawServer((socket, _request, nth) => {
      if (nth === 0) {
        socket.resetAndDestroy();
        return;
      }
      socket.write(`HTTP/1.1 206 Partial Content\r\nContent-Length: ${body.length}\r\nContent-Range: bytes 0-4/5\r\nETag: "e"\r\n\r\n${body}`);
    });
    const waits: number[] = [];
    const source = await new HttpFolder(`${server.url}/ckpt`, options(waits, nodeFetch)).open("model.safetensors");
    const bytes = new Uint8Array(5);
    await source.read(bytes, 0);
    expect(new TextDecoder().decode(bytes)).toBe(body);
    expect(server.requests).toHaveLength(2);
    expect(waits).toEqual([]);
  });

  it("a body cut short on the first try is retried after the usual wait, not at once", async () => {
    // Head and part of the body, then the connection ends: a failure of the response, not of a stale connection.
    const server = await rawServer((socket, _request, nth) => {
      const head = 'HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\nContent-Range: bytes 0-4/5\r\nETag: "e"\r\n\r\n';
      if (nth === 0) socket.end(`${head}he`);
      else socket.write(`${head}hello`);
    });
    const waits: number[] = [];
    const source = await new HttpFolder(`${server.url}/ckpt`, options(waits, nodeFetch)).open("model.safetensors");
    expect(source.size).toBe(5);
    expect(server.requests).toHaveLength(2);
    expect(waits).toEqual([500]);
  });

  it("a server that resets every connection still fails after the usual attempts, waiting between them", async () => {
    const server = await rawServer((socket) => socket.resetAndDestroy());
    const waits: number[] = [];
    const folder = new HttpFolder(`${server.url}/ckpt`, { fetch: nodeFetch, retry: { attempts: 3, sleep: async (ms) => void waits.push(ms) } });
    const e = await folder.open("model.safetensors").catch((x: unknown) => x);
    expect((e as Error).message).toBe(`${server.url}/ckpt/model.safetensors: connection reset (ECONNRESET), still after 3 attempts`);
    expect(exitCodeOf(e)).toBe(1);
    // The first reset is forgiven once; then the three attempts, with the usual back-off between them.
    expect(server.requests).toHaveLength(4);
    expect(waits).toEqual([500, 1000]);
  });
});

describe("opening remote files is cancelled by the caller's signal", () => {
  /** A server answering 503 for ever, which aborts `controller` as its first request arrives. */
  async function unavailable(controller: AbortController): Promise<RawServer> {
    return rawServer((socket) => {
      controller.abort(new Error("stop"));
      socket.write("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
    });
  }

  it("a plain URL's folder, its single file and a Hub repo stop retrying when aborted, after one request", async () => {
    const waits: number[] = [];
    const folderAbort = new AbortController();
    const folderServer = await unavailable(folderAbort);
    const e = await Checkpoint.open(new HttpFolder(`${folderServer.url}/ckpt`, options(waits, nodeFetch)), { signal: folderAbort.signal }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(AbortError);
    expect((e as Error).message).toBe("stop");
    expect(folderServer.requests).toHaveLength(1);

    const fileAbort = new AbortController();
    const fileServer = await unavailable(fileAbort);
    const e2 = await openSource(`${fileServer.url}/ckpt/model.safetensors`, { signal: fileAbort.signal, http: options(waits) }).catch((x: unknown) => x);
    expect(e2).toBeInstanceOf(AbortError);
    expect(fileServer.requests).toHaveLength(1);

    const hubAbort = new AbortController();
    const hub = await unavailable(hubAbort);
    const repo = new HubFolder({ repo: "nvidia/x", revision: "main" }, { ...options(waits, nodeFetch), endpoint: hub.url });
    const e3 = await Checkpoint.open(repo, { signal: hubAbort.signal }).catch((x: unknown) => x);
    expect(e3).toBeInstanceOf(AbortError);
    expect(hub.requests).toHaveLength(1);
    expect(hub.requests[0]).toMatch(/^GET \/api\/models\/nvidia\/x\/revision\/main /);
    expect(waits).toEqual([]);
  });

  it("a request in flight to a server that never answers is dropped at once, with the default retries", async () => {
    let arrived: () => void = () => undefined;
    const first = new Promise<void>((resolve) => (arrived = resolve));
    const silent = await rawServer(() => arrived());
    const controller = new AbortController();
    const opening = new HttpFolder(`${silent.url}/ckpt`, { fetch: nodeFetch }).open("model.safetensors", controller.signal);
    await first;
    controller.abort();
    await expect(opening).rejects.toBeInstanceOf(AbortError);
    expect(silent.requests).toHaveLength(1);
  });

  it("a caller sharing a file's first request with one that aborts asks again, with its own signal", async () => {
    let arrived: () => void = () => undefined;
    const first = new Promise<void>((resolve) => (arrived = resolve));
    // The first request is never answered; the next are.
    const server = await rawServer((socket, _request, nth) => {
      if (nth === 0) {
        arrived();
        return;
      }
      socket.write('HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\nContent-Range: bytes 0-4/5\r\nETag: "e"\r\n\r\nhello');
    });
    const folder = new HttpFolder(`${server.url}/ckpt`, { fetch: nodeFetch });
    const aborted = new AbortController();
    const stat = folder.stat("model.safetensors", aborted.signal);
    const open = folder.open("model.safetensors", new AbortController().signal);
    await first;
    aborted.abort();
    await expect(stat).rejects.toBeInstanceOf(AbortError);
    expect((await open).size).toBe(5);
    expect(server.requests).toHaveLength(2);
  });
});

describe("folders that ask no server", () => {
  it("in memory and on a local disk, an aborted signal is refused as an AbortError too", async () => {
    const { MemoryFolder } = await import("../../src/io/folder.js");
    const { LocalFolder } = await import("../../src/node/local-folder.js");
    const aborted = AbortSignal.abort(new Error("stop"));
    const memory = new MemoryFolder({ "a.bin": new Uint8Array(1) });
    const local = new LocalFolder(path.join(repoRoot, "test/fixtures/tls"));
    for (const folder of [memory, local]) {
      await expect(folder.open("a.bin", aborted)).rejects.toBeInstanceOf(AbortError);
      await expect(folder.stat("a.bin", aborted)).rejects.toBeInstanceOf(AbortError);
      await expect(folder.list("", aborted)).rejects.toBeInstanceOf(AbortError);
    }
    expect((await memory.open("a.bin")).size).toBe(1);
  });
});
