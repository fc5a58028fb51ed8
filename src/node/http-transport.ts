import * as net from "node:net";
import * as tls from "node:tls";
import type { Fetch, HttpBody, HttpBodyReader, HttpRequest, HttpResponse } from "../io/http-client.js";

/**
 * GET requests over plain sockets for the HTTP sources, in place of `fetch` or `node:http`: HTTP/1.1 with
 * keep-alive, read with `onread` into one buffer per connection, so a gigabyte of response bodies
 * allocates nothing per packet. Through `node:http` every 64 KB read was a new Buffer: profiling a 1 GB
 * conversion from a loopback server, the garbage collector alone took 0.86 s of the main thread, and
 * copying out of those buffers another 0.7 s. A body's bytes are handed on as views of the connection's
 * buffer, valid until the reader asks for more: each read goes into a part of the buffer no view still
 * waiting to be read lies in (see `region`). Pausing the socket is not enough for that: over TLS, the
 * records already decrypted keep arriving after a pause.
 *
 * Only what the sources need: GET, Content-Length, chunked or read-to-close bodies, no redirects followed
 * (the HTTP client follows them itself), TLS through `node:tls` with ALPN pinned to HTTP/1.1.
 */

/** Bytes one socket read may deliver: large reads mean few callbacks per gigabyte. */
const READ_BUFFER = 512 * 1024;
/** A connection's buffer: two reads' worth, so one can land while the views of the other are read. */
const CONNECTION_BUFFER = 2 * READ_BUFFER;
/** The least room worth giving a read (a TLS record is at most 16 kB); with less free, a spill buffer. */
const MIN_READ = 16 * 1024;
/** A body the caller does not want that is at most this much longer is read to its end, keeping the connection. */
const DRAIN_LIMIT = 64 * 1024;
/** A chunked body's trailer line longer than this is not a server we can talk to. */
const MAX_TRAILER_LINE = 8 * 1024;
/** A response head larger than this is not a server we can talk to. */
const MAX_HEAD = 256 * 1024;
/** Idle keep-alive connections kept per origin. */
const MAX_IDLE = 32;
/** The read after a response head, while its reader is still being set up (see `nextBuffer`). */
const AWAITING_READER = 256;
/** Reads while a head is awaited: most heads fit, and little of a body comes in with one. */
const HEAD_READ = 16 * 1024;
/**
 * Where what still arrives on a failed connection goes (the rest of a TLS batch): bytes no one reads.
 * Shared, as nothing is ever read from it.
 */
const DISCARD = Buffer.allocUnsafe(MIN_READ);

function connectionError(message: string, code = "ECONNRESET"): Error {
  return Object.assign(new Error(message), { code });
}

class Headers {
  constructor(private readonly map: ReadonlyMap<string, string>) {}

  get(name: string): string | null {
    return this.map.get(name.toLowerCase()) ?? null;
  }
}

type Framing = { kind: "length"; remaining: number } | { kind: "chunked" } | { kind: "close" };

interface Head {
  readonly status: number;
  readonly statusText: string;
  readonly headers: Map<string, string>;
  readonly framing: Framing;
  readonly keepAlive: boolean;
}

const CRLFCRLF = Buffer.from("\r\n\r\n");

function parseHead(text: string): Head {
  const lines = text.split("\r\n");
  const m = /^HTTP\/1\.([01]) (\d{3})(?: (.*))?$/.exec(lines[0] ?? "");
  if (!m) throw connectionError(`not an HTTP/1.x response: ${JSON.stringify((lines[0] ?? "").slice(0, 60))}`, "EPROTO");
  const headers = new Map<string, string>();
  for (const line of lines.slice(1)) {
    if (line === "") continue;
    const colon = line.indexOf(":");
    if (colon <= 0) throw connectionError(`malformed response header ${JSON.stringify(line.slice(0, 60))}`, "EPROTO");
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    const previous = headers.get(name);
    headers.set(name, previous === undefined ? value : `${previous}, ${value}`);
  }
  const status = Number(m[2]);
  const connection = (headers.get("connection") ?? "").toLowerCase();
  const keepAlive = m[1] === "1" ? !connection.includes("close") : connection.includes("keep-alive");
  const te = (headers.get("transfer-encoding") ?? "").toLowerCase();
  const length = headers.get("content-length");
  let framing: Framing;
  if (status === 204 || status === 304 || (status >= 100 && status < 200)) framing = { kind: "length", remaining: 0 };
  else if (te.includes("chunked")) framing = { kind: "chunked" };
  else if (length !== undefined) {
    if (!/^\d+$/.test(length) || !Number.isSafeInteger(Number(length))) throw connectionError(`bad Content-Length ${JSON.stringify(length)}`, "EPROTO");
    framing = { kind: "length", remaining: Number(length) };
  } else framing = { kind: "close" };
  return { status, statusText: m[3] ?? "", headers, framing, keepAlive: keepAlive && framing.kind !== "close" };
}

/** One keep-alive connection, serving one request at a time. */
class Connection {
  private readonly buffer = Buffer.allocUnsafe(CONNECTION_BUFFER);
  /** The memory of the read in progress, as `nextBuffer` gave it. */
  private given: Uint8Array = this.buffer.subarray(0, HEAD_READ);
  /** Where in `buffer` the next read goes when views still wait before it. */
  private writeAt = 0;
  /** The view last handed to a reader: valid, so not to be written over, until it asks for the next. */
  private handedOut: Uint8Array | undefined;
  /** The caller gave up on the body, which is short enough to read to its end and keep the connection. */
  private draining = false;
  /** Bytes of a response head split across reads. */
  private head: Buffer[] = [];
  private headBytes = 0;
  private response: Head | undefined;
  /** Waiting for the head of the current response. */
  private headWaiter: { resolve: (h: Head) => void; reject: (e: unknown) => void } | undefined;
  /** Body bytes received and not yet handed on: views of `buffer`, in order. */
  private readonly ready: Uint8Array[] = [];
  private bodyWaiter: { resolve: (r: { done: false; value: Uint8Array } | { done: true }) => void; reject: (e: unknown) => void } | undefined;
  private bodyDone = false;
  private failure: unknown;
  /** Chunked framing: bytes left in the current chunk, or the text of a size line being read. */
  private chunkLeft = 0;
  private chunkLine = "";
  private chunkState: "size" | "data" | "data-end" | "trailer" = "size";
  private trailerLine = "";
  private paused = false;
  private released = false;
  readonly socket: net.Socket;

  constructor(
    readonly origin: string,
    url: URL,
    private readonly onIdle: (c: Connection) => void,
    onClosed: (c: Connection) => void,
  ) {
    const port = Number(url.port || (url.protocol === "https:" ? 443 : 80));
    // An IPv6 literal is bracketed in a URL, and not in what a socket connects to.
    const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
    // Node asks for the buffer of each next read as the last one is handed over: a body being read
    // straight into place gets its destination, anything else the connection's own buffer.
    const onread = { buffer: (): Uint8Array => this.nextBuffer(), callback: (n: number): boolean => (this.givenDirect ? this.landed(n) : this.received(n)) };
    this.socket =
      url.protocol === "https:"
        ? tls.connect({ host, port, ...(net.isIP(host) ? {} : { servername: host }), ALPNProtocols: ["http/1.1"], onread } as tls.ConnectionOptions)
        : net.connect({ host, port, onread } as net.NetConnectOpts);
    this.socket.setNoDelay(true);
    this.socket.on("error", (e) => this.fail(e));
    this.socket.on("end", () => this.ended());
    this.socket.on("close", () => {
      this.fail(connectionError("the connection closed before the response ended"));
      onClosed(this);
    });
  }

  /** A body being read straight into its destination (`readInto`), and how far it has got. */
  private direct:
    | {
        readonly target: (offset: number) => Uint8Array;
        readonly landed: (offset: number, n: number) => void;
        readonly resolve: () => void;
        readonly reject: (e: unknown) => void;
      }
    | undefined;
  /** Body bytes handed on so far (as views or straight into place). */
  private bodyOffset = 0;

  /** Whether the buffer of the read in progress is a body's destination rather than the own buffer. */
  private givenDirect = false;

  /**
   * The buffer for the next socket read, asked for as the previous read is handed over: a body being
   * read into place gets its destination. Right after a head, before its reader has had a chance to
   * ask for that, only a sliver of the own buffer, so nearly all of the body lands in place.
   */
  private nextBuffer(): Uint8Array {
    this.givenDirect = false;
    this.given = this.chooseBuffer();
    return this.given;
  }

  private chooseBuffer(): Uint8Array {
    if (this.failure !== undefined) return DISCARD;
    // Idle, or waiting for a head: small reads, so a body does not arrive with its head in the own buffer.
    if (this.released || !this.response) return this.region(HEAD_READ);
    const framing = this.response.framing;
    if (framing.kind === "length" && framing.remaining > 0 && !this.bodyDone) {
      if (this.direct && this.ready.length === 0) {
        let view: Uint8Array;
        try {
          view = this.direct.target(this.bodyOffset);
        } catch (e) {
          // Thrown into Node's read callback, this would end the process.
          this.fail(e);
          return DISCARD;
        }
        this.givenDirect = true;
        return view.byteLength > framing.remaining ? view.subarray(0, framing.remaining) : view;
      }
      if (this.headJustRead) {
        this.headJustRead = false;
        return this.region(AWAITING_READER);
      }
    }
    return this.region(READ_BUFFER);
  }

  /**
   * Up to `want` bytes of the own buffer that no view still to be read (nor the one a reader holds) lies
   * in, or, when too little of it is free, a spill buffer of its own. Views are read in the order they
   * were received, so the ones waiting fill one stretch of the buffer, from the oldest's start to
   * `writeAt`, wrapping around its end; what is free lies on either side.
   */
  private region(want: number): Uint8Array {
    const oldest = this.oldestView();
    let from: number;
    let to: number;
    if (oldest === undefined) [from, to] = [0, CONNECTION_BUFFER];
    else if (oldest < this.writeAt) {
      if (CONNECTION_BUFFER - this.writeAt >= MIN_READ) [from, to] = [this.writeAt, CONNECTION_BUFFER];
      else [from, to] = [0, oldest];
    } else [from, to] = [this.writeAt, oldest];
    if (to - from < Math.min(want, MIN_READ)) return Buffer.allocUnsafe(Math.max(want, MIN_READ));
    return this.buffer.subarray(from, Math.min(to, from + want));
  }

  /** Where in the own buffer the oldest view still to be read starts (views of spill buffers aside). */
  private oldestView(): number | undefined {
    const own = this.buffer.buffer;
    const start = (v: Uint8Array | undefined): number | undefined => (v && v.buffer === own && v.byteLength > 0 ? v.byteOffset - this.buffer.byteOffset : undefined);
    const held = start(this.handedOut);
    if (held !== undefined) return held;
    for (const v of this.ready) {
      const at = start(v);
      if (at !== undefined) return at;
    }
    return undefined;
  }

  /** The last read ended a response head: its reader has not been set up yet. */
  private headJustRead = false;

  /** `n` body bytes arrived straight in the destination `nextBuffer` gave. */
  private landed(n: number): boolean {
    // A failed connection's last read still lands where it was sent (Node cannot take a buffer back):
    // the right bytes of this body at their place, in memory its reader was already told is not filled.
    if (this.failure !== undefined) return false;
    const framing = this.response?.framing;
    const direct = this.direct;
    if (!direct || framing?.kind !== "length") {
      this.fail(new Error("internal: bytes read into place with no body expecting them"));
      return false;
    }
    const at = this.bodyOffset;
    framing.remaining -= n;
    this.bodyOffset += n;
    try {
      direct.landed(at, n);
    } catch (e) {
      this.fail(e);
      return false;
    }
    if (framing.remaining === 0) {
      this.finishBody();
      this.endDirect();
    }
    return true;
  }

  /** Copy body bytes already received (views of the own buffer) into the direct destination. */
  private drainIntoDirect(): void {
    const { target, landed } = this.direct!;
    this.copyInto(this.ready.splice(0), target, landed);
  }

  /** Copy `views`, the body's next bytes, into the memory `target` gives for them. */
  private copyInto(views: readonly Uint8Array[], target: (offset: number) => Uint8Array, landed: (offset: number, n: number) => void): void {
    for (const view of views) {
      let done = 0;
      while (done < view.byteLength) {
        const at = this.bodyOffset;
        const into = target(at);
        const n = Math.min(into.byteLength, view.byteLength - done);
        into.set(view.subarray(done, done + n));
        this.bodyOffset += n;
        landed(at, n);
        done += n;
      }
    }
  }

  private failDirect(e: unknown): void {
    const d = this.direct;
    this.direct = undefined;
    d?.reject(e);
  }

  private endDirect(): void {
    const direct = this.direct;
    this.direct = undefined;
    direct?.resolve();
    this.release();
  }

  /**
   * Read the rest of the body straight into `target`'s memory (see HttpBodyReader.readInto). Bodies not
   * framed by a length take the copying path.
   */
  async readInto(target: (offset: number) => Uint8Array, landed: (offset: number, n: number) => void): Promise<void> {
    if (this.response?.framing.kind !== "length") {
      try {
        for (let r = await this.read(); !r.done; r = await this.read()) this.copyInto([r.value], target, landed);
        return;
      } catch (e) {
        // A destination that refuses the bytes (more than was asked for) leaves the rest unread.
        await this.cancel();
        throw e;
      }
    }
    if (this.bodyWaiter || this.direct) throw new Error("internal: two reads of one body at once");
    if (this.failure !== undefined && this.ready.length === 0) throw this.failure;
    const done = new Promise<void>((resolve, reject) => {
      this.direct = { target, landed, resolve, reject };
    });
    try {
      this.drainIntoDirect();
    } catch (e) {
      this.fail(e);
    }
    if (this.bodyDone) this.endDirect();
    else if (this.failure !== undefined) this.failDirect(this.failure);
    else this.resume();
    return done;
  }

  /** The request's cancellation, listened to until its response is done with. */
  private abort: { signal: AbortSignal; listener: () => void } | undefined;

  /** Counts the requests served, so a body of an earlier response cannot read a later one's bytes. */
  generation = 0;

  /** Send a request and wait for the head of its response. */
  request(path: string, host: string, headers: Record<string, string>, signal: AbortSignal): Promise<Head> {
    this.generation++;
    this.released = false;
    const listener = (): void => this.fail(Object.assign(new Error("aborted"), { name: "AbortError" }));
    signal.addEventListener("abort", listener, { once: true });
    this.abort = { signal, listener };
    this.response = undefined;
    this.head = [];
    this.headBytes = 0;
    this.bodyDone = false;
    this.bodyOffset = 0;
    this.direct = undefined;
    this.handedOut = undefined;
    this.draining = false;
    this.chunkState = "size";
    this.chunkLine = "";
    this.trailerLine = "";
    let text = `GET ${path} HTTP/1.1\r\nHost: ${host}\r\n`;
    for (const [k, v] of Object.entries(headers)) text += `${k}: ${v}\r\n`;
    text += "Connection: keep-alive\r\n\r\n";
    const head = new Promise<Head>((resolve, reject) => {
      this.headWaiter = { resolve, reject };
    });
    this.resume();
    this.socket.write(text);
    return head;
  }

  /**
   * Where the head ends in `chunk` (the index of the body's first byte), counting a CRLFCRLF split across
   * reads, however small they were.
   */
  private headEnd(chunk: Buffer): number {
    const tail = this.headTail();
    for (let k = Math.min(3, tail.byteLength); k >= 1; k--) {
      if (chunk.byteLength < 4 - k) continue;
      if (tail.subarray(tail.byteLength - k).equals(CRLFCRLF.subarray(0, k)) && chunk.subarray(0, 4 - k).equals(CRLFCRLF.subarray(k))) return 4 - k;
    }
    const i = chunk.indexOf(CRLFCRLF);
    return i < 0 ? -1 : i + 4;
  }

  /** The last (up to) three bytes of the head read so far. */
  private headTail(): Buffer {
    const parts: Buffer[] = [];
    let n = 0;
    for (let i = this.head.length - 1; i >= 0 && n < 3; i--) {
      parts.unshift(this.head[i]!);
      n += this.head[i]!.byteLength;
    }
    const all = Buffer.concat(parts);
    return all.subarray(Math.max(0, all.byteLength - 3));
  }

  /** The socket read `n` bytes into the buffer `nextBuffer` gave; returns false to pause it. */
  private received(n: number): boolean {
    // What still arrives after a failure (the rest of a TLS batch) went into DISCARD.
    if (this.failure !== undefined) return false;
    if (this.released) {
      // Nothing was asked: a server talking out of turn on an idle connection is not one to reuse.
      this.fail(connectionError("the server sent data nobody asked for", "EPROTO"));
      return false;
    }
    const chunk = Buffer.from(this.given.buffer, this.given.byteOffset, n);
    if (chunk.buffer === this.buffer.buffer) this.writeAt = chunk.byteOffset - this.buffer.byteOffset + n;
    let at = 0;
    while (!this.response) {
      const rest = chunk.subarray(at);
      const end = this.headEnd(rest);
      if (end < 0) {
        this.head.push(Buffer.from(rest));
        this.headBytes += rest.byteLength;
        if (this.headBytes > MAX_HEAD) this.fail(connectionError(`a response head of more than ${MAX_HEAD} bytes`, "EPROTO"));
        return true;
      }
      // Only the head is copied out of the buffer; the body bytes after it are handed on in place.
      const text = Buffer.concat([...this.head, rest.subarray(0, end)]).toString("latin1");
      this.head = [];
      this.headBytes = 0;
      at += end;
      let head: Head;
      try {
        head = parseHead(text.slice(0, -4));
      } catch (e) {
        this.fail(e);
        return false;
      }
      // An interim response (100 Continue, 103 Early Hints) comes before the one asked for.
      if (head.status >= 100 && head.status < 200 && head.status !== 101) continue;
      this.response = head;
      this.headJustRead = true;
      const w = this.headWaiter;
      this.headWaiter = undefined;
      w?.resolve(head);
      if (head.framing.kind === "length" && head.framing.remaining === 0) this.finishBody();
    }
    if (at < n && !this.bodyDone) this.body(chunk, at, n);
    else if (at < n) this.fail(connectionError("the server sent more than its response's length", "EPROTO"));
    if (this.failure !== undefined) return false;
    if (this.draining) {
      // The rest of a body no one wants, read only so the connection can serve the next request.
      this.ready.length = 0;
      if (this.bodyDone) this.release();
      return true;
    }
    if (this.direct) {
      // A body read into place whose bytes came into the own buffer (with its head, or before the
      // destination was known): copied over, then the socket reads on.
      try {
        this.drainIntoDirect();
      } catch (e) {
        this.fail(e);
        return false;
      }
      if (this.bodyDone) this.endDirect();
      return true;
    }
    this.deliver();
    // Paused while views wait to be read: no use reading more before they are (and over TLS, what was
    // already decrypted still comes, into a part of the buffer apart from them; see `region`).
    if (this.ready.length > 0 || this.bodyWaiter === undefined) {
      this.paused = true;
      return false;
    }
    return true;
  }

  /** Frame the body bytes in `chunk[from, to)`. */
  private body(chunk: Uint8Array, from: number, to: number): void {
    const framing = this.response!.framing;
    if (framing.kind === "close") {
      this.ready.push(chunk.subarray(from, to));
      return;
    }
    if (framing.kind === "length") {
      const take = Math.min(framing.remaining, to - from);
      if (take > 0) this.ready.push(chunk.subarray(from, from + take));
      framing.remaining -= take;
      if (from + take < to) {
        this.fail(connectionError("the server sent more than its response's length", "EPROTO"));
        return;
      }
      if (framing.remaining === 0) this.finishBody();
      return;
    }
    let i = from;
    while (i < to && !this.bodyDone) {
      if (this.chunkState === "data") {
        const take = Math.min(this.chunkLeft, to - i);
        this.ready.push(chunk.subarray(i, i + take));
        this.chunkLeft -= take;
        i += take;
        if (this.chunkLeft === 0) this.chunkState = "data-end";
        continue;
      }
      const c = chunk[i++]!;
      if (this.chunkState === "data-end") {
        if (c === 0x0a) this.chunkState = "size";
        continue;
      }
      if (this.chunkState === "trailer") {
        if (c !== 0x0a) {
          if (c !== 0x0d) this.trailerLine += String.fromCharCode(c);
          if (this.trailerLine.length > MAX_TRAILER_LINE) {
            this.fail(connectionError(`a chunked body's trailer line of more than ${MAX_TRAILER_LINE} bytes`, "EPROTO"));
            return;
          }
          continue;
        }
        if (this.trailerLine === "") this.finishBody();
        this.trailerLine = "";
        continue;
      }
      // The size line: hex digits, optional extensions after ';', then CRLF.
      if (c !== 0x0a) {
        if (c !== 0x0d) this.chunkLine += String.fromCharCode(c);
        if (this.chunkLine.length > 1024) {
          this.fail(connectionError("a chunk size line of more than 1 kB", "EPROTO"));
          return;
        }
        continue;
      }
      const size = Number.parseInt(this.chunkLine.split(";")[0]!.trim(), 16);
      this.chunkLine = "";
      if (!Number.isSafeInteger(size) || size < 0) {
        this.fail(connectionError("a malformed chunk size", "EPROTO"));
        return;
      }
      if (size === 0) this.chunkState = "trailer";
      else {
        this.chunkLeft = size;
        this.chunkState = "data";
      }
    }
  }

  private finishBody(): void {
    this.bodyDone = true;
  }

  /** Hand the next ready view (or the end) to a waiting reader. */
  private deliver(): void {
    const w = this.bodyWaiter;
    if (!w) return;
    const view = this.ready.shift();
    if (view) {
      this.bodyWaiter = undefined;
      this.handedOut = view;
      w.resolve({ done: false, value: view });
    } else if (this.bodyDone) {
      this.bodyWaiter = undefined;
      w.resolve({ done: true });
      this.release();
    } else if (this.failure !== undefined) {
      this.bodyWaiter = undefined;
      w.reject(this.failure);
    }
  }

  /** Parked in the pool: read again, so a close (or bytes nobody asked for) is seen at once. */
  idle(): void {
    this.resume();
  }

  private resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.socket.resume();
  }

  read(): Promise<{ done: false; value: Uint8Array } | { done: true }> {
    if (this.bodyWaiter) return Promise.reject(new Error("internal: two reads of one body at once"));
    // Asking for more says the view handed out last has been read: its bytes may be written over.
    this.handedOut = undefined;
    const view = this.ready.shift();
    if (view) {
      this.handedOut = view;
      return Promise.resolve({ done: false, value: view });
    }
    if (this.bodyDone) {
      this.release();
      return Promise.resolve({ done: true });
    }
    if (this.failure !== undefined) return Promise.reject(this.failure);
    const p = new Promise<{ done: false; value: Uint8Array } | { done: true }>((resolve, reject) => {
      this.bodyWaiter = { resolve, reject };
    });
    // Every view handed out so far has been read: the buffer may be filled again.
    this.resume();
    return p;
  }

  /** The body is not wanted: close the connection rather than read the rest of it. */
  async cancel(): Promise<void> {
    this.ready.length = 0;
    this.handedOut = undefined;
    if (this.bodyDone) {
      this.release();
      return;
    }
    // A short rest (a redirect's or an error's page) is read and dropped, so the connection serves on;
    // a long one costs less to close than to read.
    const framing = this.response?.framing;
    if (this.failure === undefined && !this.direct && framing?.kind === "length" && framing.remaining <= DRAIN_LIMIT) {
      this.draining = true;
      this.resume();
      return;
    }
    this.fail(connectionError("cancelled"));
    this.socket.destroy();
  }

  private unlisten(): void {
    this.abort?.signal.removeEventListener("abort", this.abort.listener);
    this.abort = undefined;
  }

  private release(): void {
    if (this.released) return;
    this.released = true;
    this.unlisten();
    if (this.response?.keepAlive && this.failure === undefined && !this.socket.destroyed) this.onIdle(this);
    else this.socket.destroy();
  }

  private ended(): void {
    if (this.response?.framing.kind === "close" && !this.bodyDone) {
      this.finishBody();
      this.deliver();
      return;
    }
    this.fail(connectionError("the connection closed before the response ended"));
  }

  fail(cause: unknown): void {
    this.unlisten();
    if (this.failure === undefined && !(this.bodyDone && this.ready.length === 0 && this.released)) this.failure = cause;
    // Whatever waits hears of the first failure (a protocol error, say), not of the close that follows it.
    const e = this.failure ?? cause;
    const h = this.headWaiter;
    this.headWaiter = undefined;
    h?.reject(e);
    if (this.bodyWaiter && this.ready.length === 0 && !this.bodyDone) {
      const w = this.bodyWaiter;
      this.bodyWaiter = undefined;
      w.reject(e);
    }
    if (this.direct && !this.bodyDone) this.failDirect(e);
    if (!this.socket.destroyed) this.socket.destroy();
  }
}

/** Idle keep-alive connections by origin. */
const idle = new Map<string, Connection[]>();

function take(origin: string): Connection | undefined {
  const list = idle.get(origin);
  while (list && list.length > 0) {
    const c = list.pop()!;
    if (!c.socket.destroyed) return c;
  }
  return undefined;
}

function park(c: Connection): void {
  const list = idle.get(c.origin) ?? [];
  if (list.length >= MAX_IDLE) {
    c.socket.destroy();
    return;
  }
  // An idle connection never keeps the process alive, and one the server closes leaves the pool (it is
  // read while idle, so its close is noticed).
  c.socket.unref();
  c.idle();
  list.push(c);
  idle.set(c.origin, list);
}

function forget(c: Connection): void {
  const list = idle.get(c.origin);
  const i = list?.indexOf(c) ?? -1;
  if (i >= 0) list!.splice(i, 1);
}

/** `fetch`, as the HTTP sources use it, over keep-alive sockets (see above). */
export const nodeFetch: Fetch = async (url: string, init: HttpRequest): Promise<HttpResponse> => {
  const u = new URL(url);
  if (u.protocol !== "http:" && u.protocol !== "https:") throw new TypeError(`unsupported URL scheme ${u.protocol}`);
  if (init.signal.aborted) throw init.signal.reason;
  const origin = `${u.protocol}//${u.host}`;
  const send = (c: Connection): Promise<Head> => {
    c.socket.ref();
    return c.request(`${u.pathname}${u.search}`, u.host, init.headers, init.signal);
  };
  const kept = take(origin);
  let connection = kept ?? new Connection(origin, u, park, forget);
  let head: Head;
  try {
    head = await send(connection);
  } catch (e) {
    // A kept-alive connection the server closed as the request went out (its idle timeout): a GET can be
    // sent again, at once and on a new connection, without counting as a failed attempt.
    const code = (e as { code?: unknown }).code;
    if (kept === undefined || init.signal.aborted || (code !== "ECONNRESET" && code !== "EPIPE")) throw e;
    connection = new Connection(origin, u, park, forget);
    head = await send(connection);
  }
  // This response's body: once the connection serves another request, it reads as ended.
  const generation = connection.generation;
  const current = (): boolean => connection.generation === generation;
  const reader: HttpBodyReader = {
    read: () => (current() ? connection.read() : Promise.resolve({ done: true })),
    readInto: (target, landed) => (current() ? connection.readInto(target, landed) : Promise.resolve()),
    cancel: () => (current() ? connection.cancel() : Promise.resolve()),
  };
  const body: HttpBody = { getReader: () => reader, cancel: reader.cancel };
  return { status: head.status, statusText: head.statusText, url, headers: new Headers(head.headers), body };
};
