import { AbortError, InputError, ReadError } from "../errors.js";
import { type ByteSource, pastTheEnd } from "./byte-source.js";
import { type Attempt, type ByteRange, type Fetched, HttpClient, type HttpResponse, type HttpOptions, Transient, discard, normalizeEtag, readBounded, statusFailure } from "./http-client.js";

/**
 * Files read over HTTP by byte ranges only. Opening a file asks for its first bytes (enough for most
 * safetensors headers, which the header read then finds in memory), and learns its size and identity
 * (ETag, or the Hub's `X-Linked-Etag`) from that response; every later response must show the same
 * size and identity, or the file changed under us. Reads are queued per folder, a few requests in
 * flight at once, and reads of adjacent bytes waiting in the queue go out as one request.
 */

export interface RemoteOptions extends HttpOptions {
  /** Bytes asked for when a file is opened: the header of most safetensors files. Default 128 KiB. */
  readonly headBytes?: number;
  /** Requests in flight at once for one folder. Default 8. */
  readonly connections?: number;
  /** The largest request adjacent reads are coalesced into. Default 16 MiB. */
  readonly maxRequestBytes?: number;
  /** Bytes of reads a stream keeps in flight over these files (`ByteSource.readAhead`). Default 8 MiB. */
  readonly readAhead?: number;
  /**
   * Told, in one line, what is worth knowing about the files but is no error: a server that gives a file
   * no identity (neither ETag nor Last-Modified), so that a replacement of the same size during the run
   * would go unnoticed.
   */
  readonly onNote?: (note: string) => void;
}

/** A file on a server as its first response described it. */
export interface RemoteFile {
  /** The file's own URL, before any redirect. */
  readonly url: string;
  /** How it is named in messages (its URL without query, or its `hf://` name). */
  readonly name: string;
  readonly size: number;
  /** Its first bytes, from the response that opened it. */
  readonly head: Uint8Array;
  /** Where reads go: where the redirects ended (a CDN's signed URL) until it stops answering. */
  location: string;
  /** The Hub's `X-Linked-Etag` from the redirect, which stays the same whichever CDN URL it hands out. */
  readonly linkedEtag: string | undefined;
  /** The ETag of the responses at `location`. */
  etag: string | undefined;
  /** Last-Modified, the only identity a server without ETags gives. */
  lastModified: string | undefined;
}

const MAX_HEAD = 16 * 1024 * 1024;

/**
 * Where a request's bytes go: copied in by `deliver`, or, when the transport reads straight into memory,
 * into the view `target(at)` gives for position `at`, with `landed` told what arrived.
 */
interface RangeSink {
  deliver(bytes: Uint8Array, at: number): void;
  target?(at: number): Uint8Array;
  landed?(at: number, n: number): void;
}

interface PendingRead {
  readonly file: RemoteFile;
  readonly into: Uint8Array;
  readonly position: number;
  readonly end: number;
  readonly signal: AbortSignal | undefined;
  readonly resolve: () => void;
  readonly reject: (e: unknown) => void;
  settled: boolean;
}

/** `bytes START-END/TOTAL` (TOTAL may be a star), or a star and TOTAL alone on a 416. */
function contentRange(value: string | null): { start?: number; end?: number; total?: number } | undefined {
  if (value === null) return undefined;
  const m = /^\s*bytes\s+(?:(\d+)-(\d+)|\*)\/(\d+|\*)\s*$/i.exec(value);
  if (!m) return undefined;
  // A size past 2^53 cannot be a real file, and would not survive arithmetic.
  if ([m[1], m[2], m[3]].some((x) => x !== undefined && x !== "*" && !Number.isSafeInteger(Number(x)))) return undefined;
  return {
    ...(m[1] !== undefined ? { start: Number(m[1]), end: Number(m[2]) + 1 } : {}),
    ...(m[3] !== "*" ? { total: Number(m[3]) } : {}),
  };
}

function ignoresRange(name: string): InputError {
  return new InputError(`${name}: the server ignores Range requests (HTTP 200 instead of 206 Partial Content); checkpoints are read only by byte ranges, so this server cannot serve one`);
}

/** Last-Modified, an empty one counting as none. */
function lastModifiedOf(response: HttpResponse): string | undefined {
  return response.headers.get("last-modified")?.trim() || undefined;
}

function checkEncoding(name: string, response: HttpResponse): void {
  const enc = response.headers.get("content-encoding");
  if (enc !== null && enc.trim() !== "" && enc.trim().toLowerCase() !== "identity") {
    discard(response);
    throw new InputError(`${name}: the server compressed a byte range (Content-Encoding: ${enc}), so its bytes are not the file's`);
  }
}

/** The queue, the requests and the files' identities for one folder's files. */
export class RemoteReader {
  readonly client: HttpClient;
  readonly headBytes: number;
  readonly readAhead: number;
  private readonly connections: number;
  private readonly maxRequest: number;
  private queue: PendingRead[] = [];
  private active = 0;
  private scheduled = false;
  private readonly onNote: ((note: string) => void) | undefined;
  /** Whether a file without identity was noted: once per folder, whose files one server mostly serves alike. */
  private notedNoIdentity = false;

  constructor(options: RemoteOptions = {}) {
    this.client = new HttpClient(options);
    this.onNote = options.onNote;
    this.headBytes = Math.min(MAX_HEAD, Math.max(8, options.headBytes ?? 128 * 1024));
    this.connections = Math.max(1, options.connections ?? 8);
    this.maxRequest = Math.max(1, options.maxRequestBytes ?? 16 * 1024 * 1024);
    this.readAhead = Math.max(0, options.readAhead ?? 8 * 1024 * 1024);
  }

  /**
   * Open a file: one ranged GET of its first bytes, which gives its size and identity too. Undefined
   * when the server has no such file (404/410). A server that answers 200 with the whole file is fine
   * for a file no longer than what was asked; for a longer one it ignores Range, and is refused.
   */
  probe(url: string, name: string, signal?: AbortSignal): Promise<RemoteFile | undefined> {
    const range = { start: 0, end: this.headBytes };
    return this.client.retrying(name, signal, async (attempt) => {
      const got = await this.client.get(url, name, range, attempt);
      const r = got.response;
      if (r.status === 404 || r.status === 410) {
        discard(r);
        return undefined;
      }
      if (r.status === 416) {
        discard(r);
        const cr = contentRange(r.headers.get("content-range"));
        if (cr?.total === 0) return this.file(url, name, got, 0, new Uint8Array(0));
        throw new InputError(`${name}: the server refused the range ${range.start}-${range.end - 1} (HTTP 416) without saying the file is empty`);
      }
      if (r.status !== 200 && r.status !== 206) {
        discard(r);
        throw statusFailure(name, r, this.client.isEndpoint(got.url));
      }
      checkEncoding(name, r);
      const length = r.headers.get("content-length");
      if (r.status === 200) {
        // The whole file: acceptable only when it is no longer than the range asked for.
        if (length !== null && !(Number(length) <= range.end)) {
          discard(r);
          throw ignoresRange(name);
        }
        const bytes = await readBounded(r, range.end, name, attempt, new URL(got.url), () => ignoresRange(name));
        if (length !== null && bytes.byteLength !== Number(length)) throw new Transient(`the response ended after ${bytes.byteLength} of ${length} bytes`);
        return this.file(url, name, got, bytes.byteLength, bytes);
      }
      const cr = contentRange(r.headers.get("content-range"));
      if (cr?.start !== 0 || cr.end === undefined || cr.total === undefined || cr.end > range.end || cr.end > cr.total || (cr.end < range.end && cr.end !== cr.total)) {
        discard(r);
        throw new InputError(`${name}: the server answered bytes 0-${range.end - 1} with Content-Range ${JSON.stringify(r.headers.get("content-range"))}`);
      }
      if (length !== null && Number(length) !== cr.end) {
        discard(r);
        throw new InputError(`${name}: Content-Length ${length} disagrees with Content-Range ${r.headers.get("content-range")}`);
      }
      if (got.linkedSize !== undefined && got.linkedSize !== cr.total) {
        discard(r);
        throw new ReadError(`${name}: the Hub says it is ${got.linkedSize} bytes but its download is ${cr.total}; run again`);
      }
      return this.file(url, name, got, cr.total, await this.body(r, cr.end, name, attempt, got.url));
    });
  }

  private file(url: string, name: string, got: Fetched, size: number, head: Uint8Array): RemoteFile {
    const file: RemoteFile = {
      url,
      name,
      size,
      head,
      location: got.url,
      linkedEtag: got.linkedEtag,
      etag: normalizeEtag(got.response.headers.get("etag")),
      lastModified: lastModifiedOf(got.response),
    };
    if (file.linkedEtag === undefined && file.etag === undefined && file.lastModified === undefined && !this.notedNoIdentity) {
      // Only the size is left to compare between responses (see `same`): said, not refused, as such servers are common.
      this.notedNoIdentity = true;
      this.onNote?.(`${name}: the server sends no ETag or Last-Modified, so a file replaced on it during this run by one of the same size would go unnoticed`);
    }
    return file;
  }

  /** A body of exactly `length` bytes, read whole. */
  private async body(r: HttpResponse, length: number, name: string, attempt: Attempt, url: string): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    let at = 0;
    await this.stream(r, name, attempt, url, length, (bytes) => {
      out.set(bytes, at);
      at += bytes.byteLength;
    });
    return out;
  }

  /**
   * Read a body, handing each piece on as it arrives. More bytes than `length` is the server's error;
   * fewer (the connection dropped) is worth a retry, from where it stopped.
   */
  private async stream(
    r: HttpResponse,
    name: string,
    attempt: Attempt,
    url: string,
    length: number,
    take: (bytes: Uint8Array) => void,
    reader = r.body?.getReader(),
  ): Promise<void> {
    let got = 0;
    if (reader) {
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          attempt.touch();
          if (got + value.byteLength > length) {
            reader.cancel().catch(() => undefined);
            throw new InputError(`${name}: the server sent more than the ${length} bytes asked for`);
          }
          got += value.byteLength;
          take(value);
        }
      } catch (e) {
        throw attempt.failure(e, name, new URL(url));
      }
    }
    if (got < length) throw new Transient(`the response ended after ${got} of ${length} bytes`);
  }

  /** The same file as when it was opened, judged by this response; also moves reads to a new location. */
  private same(file: RemoteFile, got: Fetched, total: number | undefined): void {
    const changed = (what: string): ReadError => new ReadError(`${file.name}: changed while being read (${what}); run again to read it as it is now`);
    if (total !== undefined && total !== file.size) throw changed(`${file.size} bytes, now ${total}`);
    const etag = normalizeEtag(got.response.headers.get("etag"));
    if (got.linkedEtag !== undefined || file.linkedEtag !== undefined) {
      // Redirected by the Hub: its linked ETag is the file's identity; the CDN's own may differ per URL.
      if (got.linkedEtag !== undefined && got.linkedEtag !== file.linkedEtag) throw changed(`ETag ${JSON.stringify(file.linkedEtag ?? "")}, now ${JSON.stringify(got.linkedEtag)}`);
      if (got.linkedEtag === undefined && file.etag !== undefined && etag !== undefined && etag !== file.etag) throw changed(`ETag ${JSON.stringify(file.etag)}, now ${JSON.stringify(etag)}`);
    } else if (file.etag !== undefined || etag !== undefined) {
      if (etag !== file.etag) throw changed(`ETag ${JSON.stringify(file.etag ?? "")}, now ${JSON.stringify(etag ?? "")}`);
    } else {
      const modified = lastModifiedOf(got.response);
      if (modified !== file.lastModified) throw changed(`Last-Modified ${file.lastModified ?? "none"}, now ${modified ?? "none"}`);
    }
    if (got.url !== file.location) {
      file.location = got.url;
      file.etag = etag;
    }
  }

  /**
   * Bytes [start, end) of a file, in one request (resumed where it stopped if the connection drops),
   * each piece handed to `deliver` with its position as it arrives, in order.
   */
  async fetchRange(file: RemoteFile, range: ByteRange, signal: AbortSignal | undefined, sink: RangeSink): Promise<void> {
    let pos = range.start;
    await this.client.retrying(file.name, signal, async (attempt) => {
      const url = file.location;
      const want = { start: pos, end: range.end };
      const got = await this.client.get(url, file.name, want, attempt);
      const r = got.response;
      if (r.status === 206) {
        checkEncoding(file.name, r);
        const header = r.headers.get("content-range");
        const cr = contentRange(header);
        if (cr?.start !== want.start || cr.end !== want.end) {
          discard(r);
          throw new InputError(`${file.name}: the server answered bytes ${want.start}-${want.end - 1} with Content-Range ${JSON.stringify(header)}`);
        }
        try {
          this.same(file, got, cr.total);
        } catch (e) {
          discard(r);
          throw e;
        }
        const length = r.headers.get("content-length");
        if (length !== null && Number(length) !== want.end - want.start) {
          discard(r);
          throw new InputError(`${file.name}: Content-Length ${length} disagrees with Content-Range ${header}`);
        }
        const reader = r.body?.getReader();
        const readInto = reader?.readInto?.bind(reader);
        if (readInto && sink.target) {
          // Straight into the reads' memory; `pos` follows what landed, so a retry resumes there.
          const start = pos;
          const length = want.end - want.start;
          try {
            await readInto(
              (offset) => {
                if (offset >= length) throw new InputError(`${file.name}: the server sent more than the ${length} bytes asked for`);
                return sink.target!(start + offset).subarray(0, length - offset);
              },
              (offset, n) => {
                attempt.touch();
                sink.landed!(start + offset, n);
                pos = start + offset + n;
              },
            );
          } catch (e) {
            throw attempt.failure(e, file.name, new URL(got.url));
          }
          if (pos < want.end) throw new Transient(`the response ended after ${pos - want.start} of ${length} bytes`);
          return;
        }
        await this.stream(
          r,
          file.name,
          attempt,
          got.url,
          want.end - want.start,
          (bytes) => {
            sink.deliver(bytes, pos);
            pos += bytes.byteLength;
          },
          reader,
        );
        return;
      }
      discard(r);
      if (r.status === 200) throw ignoresRange(file.name);
      if ([401, 403, 404, 410].includes(r.status) && url !== file.url) {
        // A signed redirect target expires: ask the file's own URL again (its identity is checked then).
        file.location = file.url;
        throw new Transient(`its download URL stopped answering (HTTP ${r.status})`);
      }
      if (r.status === 404 || r.status === 410) throw new ReadError(`${file.name}: disappeared while being read (HTTP ${r.status}); run again`);
      if (r.status === 416) throw new ReadError(`${file.name}: changed while being read (bytes ${want.start}-${want.end - 1} are no longer in it); run again`);
      throw statusFailure(file.name, r, this.client.isEndpoint(got.url));
    });
  }

  /** Queue a read; reads queued together are coalesced where adjacent. */
  read(file: RemoteFile, into: Uint8Array, position: number, signal?: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ file, into, position, end: position + into.byteLength, signal, resolve, reject, settled: false });
      if (!this.scheduled) {
        this.scheduled = true;
        queueMicrotask(() => {
          this.scheduled = false;
          this.pump();
        });
      }
    });
  }

  /**
   * Start requests while connections are free, the oldest read first, each taking along every queued
   * read of the same file (and signal) whose bytes touch or overlap its span, up to the request limit.
   */
  private pump(): void {
    while (this.active < this.connections && this.queue.length > 0) {
      const first = this.queue.shift()!;
      if (first.signal?.aborted) {
        first.reject(new AbortError(first.signal.reason));
        continue;
      }
      const group = [first];
      let start = first.position;
      let end = first.end;
      const others = this.queue.filter((r) => r.file === first.file && r.signal === first.signal).sort((a, b) => a.position - b.position);
      const taken = new Set<PendingRead>();
      for (let grew = true; grew; ) {
        grew = false;
        for (const r of others) {
          if (taken.has(r) || r.position > end || r.end < start) continue;
          const lo = Math.min(start, r.position);
          const hi = Math.max(end, r.end);
          if (hi - lo > this.maxRequest) continue;
          taken.add(r);
          group.push(r);
          start = lo;
          end = hi;
          grew = true;
        }
      }
      if (taken.size > 0) this.queue = this.queue.filter((r) => !taken.has(r));
      this.active++;
      void this.run(first.file, group, { start, end }, first.signal).finally(() => {
        this.active--;
        this.pump();
      });
    }
  }

  /** One request serving a group of reads; each read is settled as soon as its last byte is in. */
  private async run(file: RemoteFile, group: PendingRead[], range: ByteRange, signal: AbortSignal | undefined): Promise<void> {
    group.sort((a, b) => a.position - b.position || a.end - b.end);
    let first = 0;
    /** Copy bytes at `at` into every read they belong to, but `except` (which holds them already). */
    const spread = (bytes: Uint8Array, at: number, except?: PendingRead): void => {
      const stop = at + bytes.byteLength;
      for (let i = first; i < group.length; i++) {
        const r = group[i]!;
        if (r.position >= stop) break;
        const lo = Math.max(at, r.position);
        const hi = Math.min(stop, r.end);
        if (hi > lo && r !== except) r.into.set(bytes.subarray(lo - at, hi - at), lo - r.position);
      }
      settle(stop);
    };
    /** The read bytes at `at` are read straight into: the first not yet complete that holds them. */
    let holder: PendingRead | undefined;
    const sink: RangeSink = {
      deliver: (bytes, at) => spread(bytes, at),
      target: (at) => {
        holder = undefined;
        for (let i = first; i < group.length && !holder; i++) if (group[i]!.position <= at && at < group[i]!.end) holder = group[i]!;
        if (!holder) throw new Error(`internal: no read holds byte ${at}`);
        return holder.into.subarray(at - holder.position);
      },
      landed: (at, n) => {
        const r = holder!;
        spread(r.into.subarray(at - r.position, at - r.position + n), at, r);
      },
    };
    // Bytes arrive in order, so a read whose end has been reached is complete; those that end the
    // request wait for its end, so a body running on past the range fails at least one of them.
    const settle = (stop: number): void => {
      for (let i = first; i < group.length; i++) {
        const r = group[i]!;
        if (r.position >= stop) break;
        if (!r.settled && r.end <= stop && r.end < range.end) {
          r.settled = true;
          r.resolve();
        }
      }
      while (first < group.length && (group[first]!.settled || group[first]!.end <= stop)) first++;
    };
    try {
      await this.fetchRange(file, range, signal, sink);
      for (const r of group) {
        if (!r.settled) {
          r.settled = true;
          r.resolve();
        }
      }
    } catch (e) {
      for (const r of group) {
        if (!r.settled) {
          r.settled = true;
          r.reject(e);
        }
      }
    }
  }
}

/** A file over HTTP as a byte source: reads within its first bytes come from memory, the rest by range. */
export class HttpSource implements ByteSource {
  private closed = false;

  constructor(
    private readonly reader: RemoteReader,
    readonly file: RemoteFile,
  ) {}

  get name(): string {
    return this.file.name;
  }

  get size(): number {
    return this.file.size;
  }

  get readAhead(): number {
    return this.reader.readAhead;
  }

  async read(into: Uint8Array, position: number, signal?: AbortSignal): Promise<void> {
    if (this.closed) throw new Error(`internal: ${this.name}: read after close`);
    const length = into.byteLength;
    if (!(position >= 0) || position + length > this.size) throw pastTheEnd(this.name, length, position, this.size);
    if (length === 0) return;
    const head = this.file.head;
    if (position < head.byteLength) {
      const n = Math.min(length, head.byteLength - position);
      into.set(head.subarray(position, position + n));
      if (n === length) return;
      return this.reader.read(this.file, into.subarray(n), position + n, signal);
    }
    return this.reader.read(this.file, into, position, signal);
  }

  close(): void {
    this.closed = true;
  }
}
