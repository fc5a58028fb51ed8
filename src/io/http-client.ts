import { AbortError, InputError, ReadError } from "../errors.js";

/**
 * GET requests as checkpoints over HTTP need them, on WHATWG `fetch` alone (browsers and Node 20 alike):
 * redirects followed by hand, so a bearer token goes to the Hub endpoint's own origin and never to a CDN
 * it redirects to, and the Hub's `X-Linked-Etag` / `X-Linked-Size` are read off the redirect itself;
 * transient failures (a dropped connection, a stall, 408/429/5xx) retried a bounded number of times with
 * backoff, honouring `Retry-After`; everything else classified by whose fault it is.
 */

/** What is used of a response: a `fetch` Response has it, and so does a lighter transport's. */
export interface HttpResponse {
  readonly status: number;
  readonly statusText: string;
  /** "opaqueredirect" in a browser asked not to follow a redirect. */
  readonly type?: string;
  readonly url: string;
  readonly headers: { get(name: string): string | null };
  readonly body: HttpBody | null;
}

export interface HttpBody {
  getReader(): HttpBodyReader;
  cancel(reason?: unknown): Promise<void>;
}

export interface HttpBodyReader {
  /**
   * The next bytes of the body. They may be a view of the transport's own buffer, valid only until the
   * next `read` (the Node transport reuses one buffer per connection): copy what must be kept.
   */
  read(): Promise<{ done: false; value: Uint8Array } | { done: true; value?: Uint8Array }>;
  /**
   * Read the rest of the body straight into place, where the transport can (a length-framed body over the
   * Node transport: the kernel copies each packet into its destination, and no byte passes through a
   * buffer of ours). `target(offset)` gives the memory for the body's bytes from `offset` on; `landed`
   * says how many arrived there. Resolves when the body has ended; without this method, `read` it is.
   */
  readInto?(target: (offset: number) => Uint8Array, landed: (offset: number, n: number) => void): Promise<void>;
  cancel(reason?: unknown): Promise<void>;
}

export interface HttpRequest {
  readonly headers: Record<string, string>;
  readonly redirect: "manual" | "follow";
  readonly signal: AbortSignal;
}

/**
 * How requests are sent: the platform's `fetch` by default; a caller may pass another (tests, proxies,
 * or the Node entry's own HTTP/1.1 client over sockets, `nodeFetch` in src/node/http-transport.ts, which
 * costs less per request and per byte).
 */
export type Fetch = (url: string, init: HttpRequest) => Promise<HttpResponse>;

/** The public Hugging Face Hub, when no endpoint is given (`HF_ENDPOINT` on the command line). */
export const DEFAULT_ENDPOINT = "https://huggingface.co";

export interface RetryOptions {
  /** Tries in all, the first included. Default 6. */
  readonly attempts?: number;
  /** The wait before the first retry, doubled for each one after. Default 500 ms. */
  readonly baseDelayMs?: number;
  /** The longest wait between tries. Default 8 s. */
  readonly maxDelayMs?: number;
  /** The longest a server's `Retry-After` is honoured. Default 60 s. */
  readonly maxRetryAfterMs?: number;
  /** How a wait is done; tests pass one that records instead of sleeping. */
  readonly sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
}

export interface HttpOptions {
  readonly fetch?: Fetch;
  /** The Hugging Face endpoint, e.g. a mirror. Default https://huggingface.co. */
  readonly endpoint?: string;
  /** A bearer token, sent to the endpoint's origin only: never to another host, redirects included. */
  readonly token?: string;
  readonly retry?: RetryOptions;
  /** A request that receives nothing for this long is dropped and tried again. Default 60 s. */
  readonly stallTimeoutMs?: number;
}

/** Bytes [start, end) of a file. */
export interface ByteRange {
  readonly start: number;
  readonly end: number;
}

/** A failure worth trying again. Inside this module and its callers only; what escapes is a `ReadError`. */
export class Transient extends Error {
  constructor(
    message: string,
    /** How long the server asked us to wait (`Retry-After`), when it did. */
    readonly retryAfterMs?: number,
    /** The connection's error code, for a connection failure. */
    readonly code?: string,
    /** Whether it failed before any response came (sending the request, or waiting for its head). */
    readonly unanswered = false,
  ) {
    super(message);
  }
}

const MAX_REDIRECTS = 10;

/** A URL as it may appear in messages: no credentials, and a query (a signature, a SAS token) elided. */
export function redactUrl(url: string | URL): string {
  const u = typeof url === "string" ? new URL(url) : url;
  return `${u.protocol}//${u.host}${u.pathname}${u.search ? "?…" : ""}`;
}

/** The ETag as a cache names its blob: weak marker and quotes removed. */
export function normalizeEtag(etag: string | null | undefined): string | undefined {
  if (etag === null || etag === undefined || etag === "") return undefined;
  return etag.replace(/^W\//, "").replace(/^"(.*)"$/, "$1");
}

/** `Retry-After` as a delay: seconds, or an HTTP date. */
export function retryAfterMs(value: string | null): number | undefined {
  if (value === null) return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

/**
 * Connection failures worth another try, by code, with how they are worded: the network or the server
 * dropped out for now. Only these are retried: any other code (a TLS certificate, a response that is not
 * HTTP, a host that does not exist) fails the same way every time, so it ends the request at once.
 */
const TRANSIENT_CODES: Readonly<Record<string, string>> = {
  ECONNRESET: "connection reset",
  ECONNREFUSED: "connection refused",
  ECONNABORTED: "connection aborted",
  EPIPE: "connection broken",
  ETIMEDOUT: "connection timed out",
  EHOSTUNREACH: "host unreachable",
  EHOSTDOWN: "host down",
  ENETUNREACH: "network unreachable",
  ENETDOWN: "network down",
  ENETRESET: "connection reset by the network",
  EAI_AGAIN: "host name lookup failed for now",
  UND_ERR_SOCKET: "connection closed by the server",
  UND_ERR_CONNECT_TIMEOUT: "connection timed out",
  UND_ERR_HEADERS_TIMEOUT: "no response headers in time",
  UND_ERR_BODY_TIMEOUT: "the response stalled",
};

/** OpenSSL's verdicts on a certificate chain that does not lead to a trusted authority. */
const UNTRUSTED_CERT_CODES: ReadonlySet<string> = new Set([
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "UNABLE_TO_DECRYPT_CERT_SIGNATURE",
  "UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY",
  "CERT_SIGNATURE_FAILURE",
  "CERT_UNTRUSTED",
  "CERT_REJECTED",
  "CERT_CHAIN_TOO_LONG",
  "INVALID_CA",
  "PATH_LENGTH_EXCEEDED",
  "INVALID_PURPOSE",
]);

/** The first error code on an error or its causes (`fetch` wraps the socket's error in a TypeError), and that error's message. */
function errorCode(e: unknown): { code: string; message: string } | undefined {
  for (let x: unknown = e, depth = 0; x && typeof x === "object" && depth < 4; x = (x as { cause?: unknown }).cause, depth++) {
    const code = (x as { code?: unknown }).code;
    // One line: OpenSSL's messages may end in a newline.
    if (typeof code === "string") return { code, message: (x instanceof Error ? x.message : code).replace(/\s+/g, " ").trim() };
  }
  return undefined;
}

/**
 * What a connection failure that no retry mends says, or undefined for a code of no known kind: a
 * certificate, a TLS handshake or a protocol error is the URL's or its server's, for the user to fix.
 */
function lastingFailure(code: string, message: string, url: URL): string | undefined {
  const host = url.host;
  if (code === "ENOTFOUND") return `cannot resolve host ${url.hostname} (ENOTFOUND)`;
  // OpenSSL's "wrong version number": what answered is not speaking TLS, most often a plain HTTP port.
  const notTls = /wrong version number/i.test(message) ? "; is it a plain http:// server?" : "";
  // EPROTO from the Node transport, and from OpenSSL when TLS goes wrong; HPE_* from the parser of Node's built-in fetch.
  if (code === "EPROTO" && /SSL routines/.test(message)) return `TLS with ${host} failed (${code}): ${message}${notTls}`;
  if (code === "EPROTO" || code.startsWith("HPE_") || code === "UND_ERR_RES_CONTENT_LENGTH_MISMATCH") return `invalid HTTP response from ${host} (${code}): ${message}`;
  if (UNTRUSTED_CERT_CODES.has(code)) return `the TLS certificate of ${host} is not trusted (${code}): ${message}`;
  if (code === "CERT_HAS_EXPIRED") return `the TLS certificate of ${host} has expired (${code}): ${message}`;
  if (code === "CERT_NOT_YET_VALID") return `the TLS certificate of ${host} is not valid yet (${code}): ${message}`;
  if (code === "CERT_REVOKED") return `the TLS certificate of ${host} was revoked (${code}): ${message}`;
  if (code === "ERR_TLS_CERT_ALTNAME_INVALID") return `the TLS certificate of ${host} is for another host (${code}): ${message}`;
  if (/^(ERR_SSL_|ERR_TLS_|CERT_)|_CERT(_|$)/.test(code)) return `TLS with ${host} failed (${code}): ${message}${notTls}`;
  return undefined;
}

/** One try of a request: its own abort controller, tied to the caller's signal and to a stall timer. */
export class Attempt {
  private readonly controller = new AbortController();
  private last = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private stalled = false;
  private readonly onAbort = (): void => this.controller.abort(this.caller?.reason);

  constructor(
    private readonly caller: AbortSignal | undefined,
    private readonly stallMs: number,
  ) {
    if (caller?.aborted) this.controller.abort(caller.reason);
    else caller?.addEventListener("abort", this.onAbort, { once: true });
    this.touch();
    this.arm(stallMs);
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** Something arrived: the stall timer starts over (cheaply: the timer only checks when it fires). */
  touch(): void {
    this.last = performance.now();
  }

  private arm(ms: number): void {
    this.timer = setTimeout(() => {
      const idle = performance.now() - this.last;
      if (idle < this.stallMs) {
        this.arm(this.stallMs - idle);
        return;
      }
      this.stalled = true;
      this.controller.abort();
    }, ms);
  }

  end(): void {
    clearTimeout(this.timer);
    this.caller?.removeEventListener("abort", this.onAbort);
  }

  /**
   * What a failed `fetch` or body read means: the caller's abort, a stall or a network failure (retried),
   * or a failure that would only repeat (the user's: a bad certificate, a server that does not speak HTTP).
   */
  failure(e: unknown, name: string, url: URL, unanswered = false): Error {
    if (this.caller?.aborted) return new AbortError(this.caller.reason);
    if (this.stalled) return new Transient(`nothing received for ${Math.round(this.stallMs / 1000)} s`);
    if (e instanceof AbortError || e instanceof InputError || e instanceof ReadError || e instanceof Transient) return e;
    const found = errorCode(e);
    // A browser's fetch says only that it failed (no code, by design): a network error, so retried.
    if (found === undefined) return new Transient(`connection failed: ${e instanceof Error ? e.message : String(e)}`);
    const { code, message } = found;
    const words = TRANSIENT_CODES[code];
    if (words !== undefined) return new Transient(`${words} (${code})`, undefined, code, unanswered);
    const lasting = lastingFailure(code, message, url);
    if (lasting !== undefined) return new InputError(`${name}: ${lasting}`);
    // Of no kind known to pass (EMFILE, ENOBUFS, …): not the input's fault, but not retried either.
    return new ReadError(`${name}: connection failed (${code}): ${message}`);
  }
}

/** A response once redirects are followed, with what the redirects said about the file. */
export interface Fetched {
  readonly response: HttpResponse;
  /** Where the request ended up (a CDN's signed URL when the Hub redirected). */
  readonly url: string;
  /** `X-Linked-Etag` / `X-Linked-Size` of a redirect on the way: the Hub's identity of the file. */
  readonly linkedEtag?: string;
  readonly linkedSize?: number;
}

/** A response body we will not read: let the connection go back to the pool. */
export function discard(response: HttpResponse): void {
  response.body?.cancel().catch(() => undefined);
}

/**
 * A status that is neither success nor redirect, as an error: 408/429/5xx are retried; 401/403 are the
 * user's (access: from the Hub endpoint, a token may help); anything else is the input's (a URL that
 * does not serve a checkpoint).
 */
export function statusFailure(name: string, response: HttpResponse, fromEndpoint = false): Error {
  const s = response.status;
  const what = `HTTP ${s}${response.statusText ? ` ${response.statusText}` : ""}`;
  if (s === 408 || s === 429 || s >= 500) return new Transient(what, retryAfterMs(response.headers.get("retry-after")));
  if (s === 401 || s === 403) {
    return new InputError(`${name}: access denied (${what})${fromEndpoint ? "; a private or gated repo needs a token that may read it (HF_TOKEN)" : ""}`);
  }
  return new InputError(`${name}: ${what}`);
}

const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(new AbortError(signal.reason));
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(new AbortError(signal?.reason));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });

export class HttpClient {
  private readonly fetchImpl: Fetch;
  private readonly tokenOrigin: string | undefined;
  private readonly token: string | undefined;
  private readonly attempts: number;
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly maxRetryAfterMs: number;
  private readonly sleep: (ms: number, signal?: AbortSignal) => Promise<void>;
  readonly stallMs: number;
  readonly endpoint: string;

  constructor(options: HttpOptions = {}) {
    this.fetchImpl = options.fetch ?? ((url, init) => fetch(url, init));
    this.endpoint = checkEndpoint(options.endpoint ?? DEFAULT_ENDPOINT);
    const token = options.token?.trim();
    this.token = token ? token : undefined;
    this.tokenOrigin = this.token !== undefined ? new URL(this.endpoint).origin : undefined;
    const r = options.retry ?? {};
    this.attempts = Math.max(1, r.attempts ?? 6);
    this.baseDelayMs = r.baseDelayMs ?? 500;
    this.maxDelayMs = r.maxDelayMs ?? 8000;
    this.maxRetryAfterMs = r.maxRetryAfterMs ?? 60_000;
    this.sleep = r.sleep ?? sleep;
    this.stallMs = options.stallTimeoutMs ?? 60_000;
  }

  /** Whether `url` is on the Hub endpoint (where a token is what access takes). */
  isEndpoint(url: string): boolean {
    return new URL(url).origin === new URL(this.endpoint).origin;
  }

  /** Whether a request to `url` carries the token: only to the endpoint's own scheme, host and port. */
  sendsTokenTo(url: URL): boolean {
    return this.tokenOrigin !== undefined && url.origin === this.tokenOrigin;
  }

  private headers(url: URL, range: ByteRange | undefined, accept?: string): Record<string, string> {
    const h: Record<string, string> = { "accept-encoding": "identity" };
    if (range) h["range"] = `bytes=${range.start}-${range.end - 1}`;
    if (accept) h["accept"] = accept;
    if (this.sendsTokenTo(url)) h["authorization"] = `Bearer ${this.token}`;
    return h;
  }

  /**
   * One GET, redirects followed by hand: the token is re-decided at every hop, an https page may not
   * send us to plain http, and the first `X-Linked-Etag` / `X-Linked-Size` on the way is kept. Any final
   * status is returned; network failures and stalls throw (`Transient` when worth retrying).
   */
  async get(url: string, name: string, range: ByteRange | undefined, attempt: Attempt, accept?: string): Promise<Fetched> {
    let at = new URL(url);
    let linkedEtag: string | undefined;
    let linkedSize: number | undefined;
    for (let hop = 0; ; hop++) {
      let response: HttpResponse;
      try {
        response = await this.fetchImpl(at.href, { headers: this.headers(at, range, accept), redirect: "manual", signal: attempt.signal });
      } catch (e) {
        throw attempt.failure(e, name, at, true);
      }
      attempt.touch();
      if (response.type === "opaqueredirect") {
        // A browser hides redirects from scripts; there its own fetch follows them, and by the Fetch
        // standard drops the Authorization header when the origin changes.
        try {
          response = await this.fetchImpl(at.href, { headers: this.headers(at, range, accept), redirect: "follow", signal: attempt.signal });
        } catch (e) {
          throw attempt.failure(e, name, at, true);
        }
        return { response, url: response.url || at.href, ...linked(linkedEtag, linkedSize) };
      }
      const location = response.headers.get("location");
      if (![301, 302, 303, 307, 308].includes(response.status) || location === null) {
        return { response, url: at.href, ...linked(linkedEtag, linkedSize) };
      }
      linkedEtag ??= normalizeEtag(response.headers.get("x-linked-etag"));
      const size = response.headers.get("x-linked-size");
      if (linkedSize === undefined && size !== null && /^\d+$/.test(size.trim())) linkedSize = Number(size.trim());
      discard(response);
      if (hop >= MAX_REDIRECTS) throw new InputError(`${name}: more than ${MAX_REDIRECTS} redirects`);
      let next: URL;
      try {
        next = new URL(location, at);
      } catch {
        throw new InputError(`${name}: redirected to an invalid URL`);
      }
      if (next.protocol !== "https:" && next.protocol !== "http:") throw new InputError(`${name}: redirected to a ${next.protocol} URL, which is not HTTP`);
      if (at.protocol === "https:" && next.protocol === "http:") throw new InputError(`${name}: redirected from https to plain http (${redactUrl(next)}); refusing to downgrade`);
      at = next;
    }
  }

  /**
   * Run `body` until it succeeds, each try with a fresh `Attempt`: a `Transient` failure waits (doubling
   * from the base delay, or what `Retry-After` asked, within bounds) and tries again, up to the number of
   * attempts, then becomes a `ReadError` naming the file. Any other failure ends it at once.
   */
  async retrying<T>(name: string, signal: AbortSignal | undefined, body: (attempt: Attempt) => Promise<T>): Promise<T> {
    let resetForgiven = false;
    for (let n = 1; ; n++) {
      const attempt = new Attempt(signal, this.stallMs);
      try {
        return await body(attempt);
      } catch (e) {
        // Failures of fetch and of body reads arrive classified (see `Attempt.failure`); anything else is ours.
        if (!(e instanceof Transient)) throw signal?.aborted && !(e instanceof AbortError) ? new AbortError(signal.reason) : e;
        const failure = e;
        if (n === 1 && !resetForgiven && failure.code === "ECONNRESET" && failure.unanswered) {
          // A reset before any response on the first try is most often a pooled keep-alive connection
          // that the server closed as we reused it (a transport need not say so): tried again at once,
          // without a wait and without counting as one of the attempts. Only once, so a server that
          // resets every connection still fails after the usual number of attempts; a body cut short
          // is an ordinary failure, retried after the usual wait.
          resetForgiven = true;
          n = 0;
          continue;
        }
        if (n >= this.attempts) throw new ReadError(`${name}: ${failure.message}, still after ${this.attempts} attempts`);
        const backoff = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** (n - 1));
        await this.sleep(failure.retryAfterMs !== undefined ? Math.min(this.maxRetryAfterMs, failure.retryAfterMs) : backoff, signal);
      } finally {
        attempt.end();
      }
    }
  }
}

function linked(etag: string | undefined, size: number | undefined): { linkedEtag?: string; linkedSize?: number } {
  return { ...(etag !== undefined ? { linkedEtag: etag } : {}), ...(size !== undefined ? { linkedSize: size } : {}) };
}

/** An endpoint as `huggingface_hub` takes `HF_ENDPOINT`: an http(s) URL, its trailing slashes dropped. */
export function checkEndpoint(endpoint: string): string {
  let u: URL;
  try {
    u = new URL(endpoint);
  } catch {
    throw new InputError(`the Hugging Face endpoint ${JSON.stringify(endpoint)} is not a URL`);
  }
  if (u.protocol !== "https:" && u.protocol !== "http:") throw new InputError(`the Hugging Face endpoint ${JSON.stringify(endpoint)} is not an http(s) URL`);
  if (u.username || u.password) throw new InputError("the Hugging Face endpoint must not carry credentials in its URL; pass a token instead");
  return endpoint.replace(/\/+$/, "");
}

/** Read a whole small body, refusing one longer than `limit` bytes (a hostile or confused server). */
export async function readBounded(
  response: HttpResponse,
  limit: number,
  name: string,
  attempt: Attempt,
  url: URL,
  tooLong: () => Error = () => new InputError(`${name}: the response is more than ${limit} bytes`),
): Promise<Uint8Array> {
  const reader = response.body?.getReader();
  if (!reader) return new Uint8Array(0);
  const parts: Uint8Array[] = [];
  let n = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      attempt.touch();
      n += value.byteLength;
      if (n > limit) {
        reader.cancel().catch(() => undefined);
        throw tooLong();
      }
      // Kept past the next read, so copied (see HttpBodyReader.read).
      parts.push(value.slice());
    }
  } catch (e) {
    throw attempt.failure(e, name, url);
  }
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}
