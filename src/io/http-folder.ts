import { AbortError, FormatError, InputError } from "../errors.js";
import type { ByteSource } from "./byte-source.js";
import { type EntryStat, type Folder, type FolderEntry, checkRelative, entriesIn, foldersOf } from "./folder.js";
import { discard, readBounded, redactUrl, statusFailure } from "./http-client.js";
import { HttpSource, type RemoteFile, type RemoteOptions, RemoteReader } from "./http-source.js";
import { type RepoRef, isCommitHash, parseRepoId } from "./repo-id.js";

/** A folder-relative name as a URL path: each segment percent-encoded, the slashes kept. */
function encodePath(rel: string): string {
  return rel.split("/").map(encodeURIComponent).join("/");
}

/**
 * A request every caller shares (a file's first response, a repo's listing), made with the signal of the
 * caller that started it: a caller whose own signal still stands, finding it aborted by another's, asks
 * again with its own.
 */
async function shared<T>(request: () => Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  for (;;) {
    try {
      return await request();
    } catch (e) {
      if (!(e instanceof AbortError) || signal?.aborted) throw e;
    }
  }
}

/** What every folder over HTTP shares: files opened by a ranged GET, each probed once. */
abstract class RemoteFolder implements Folder {
  abstract readonly name: string;
  protected readonly reader: RemoteReader;
  private readonly probes = new Map<string, Promise<RemoteFile | undefined>>();

  constructor(options: RemoteOptions) {
    this.reader = new RemoteReader(options);
  }

  abstract describe(rel: string): string;
  abstract list(rel: string, signal?: AbortSignal): Promise<readonly FolderEntry[] | undefined>;
  /** The URL of a file. */
  protected abstract url(rel: string, signal: AbortSignal | undefined): Promise<string>;

  /** The first response for a file, asked for once: `stat` then `open` of it cost one request. */
  protected probe(rel: string, signal: AbortSignal | undefined): Promise<RemoteFile | undefined> {
    const key = checkRelative(rel, this.name);
    return shared(() => {
      let p = this.probes.get(key);
      if (!p) {
        const started = this.url(key, signal).then((url) => this.reader.probe(url, this.describe(key), signal));
        this.probes.set(key, started);
        // A failure is not remembered: asking again asks the server again.
        started.catch(() => {
          if (this.probes.get(key) === started) this.probes.delete(key);
        });
        p = started;
      }
      return p;
    }, signal);
  }

  async stat(rel: string, signal?: AbortSignal): Promise<EntryStat | undefined> {
    const file = await this.probe(rel, signal);
    return file ? { kind: "file", size: file.size } : undefined;
  }

  async open(rel: string, signal?: AbortSignal): Promise<ByteSource> {
    const file = await this.probe(rel, signal);
    if (!file) throw new FormatError(this.describe(rel), "cannot open: not found (HTTP 404)");
    return new HttpSource(this.reader, file);
  }
}

/** Check a URL the user gave: http or https, no credentials in it. */
function parseUrl(spec: string): URL {
  let u: URL;
  try {
    u = new URL(spec);
  } catch {
    throw new InputError(`${spec}: not a valid URL`);
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") throw new InputError(`${spec}: not an http(s) URL`);
  if (u.username || u.password) throw new InputError(`${redactUrl(u)}: a URL may not carry a user name or password; for the Hugging Face Hub pass a token instead`);
  u.hash = "";
  return u;
}

/**
 * A checkpoint folder behind a plain URL (`https://host/path/ckpt`, with or without a trailing slash):
 * config.json, the index and the shards are resolved inside it. A query (a signed or SAS token valid for
 * the whole folder) is kept on every file's URL and elided in messages. Such a folder cannot be listed.
 */
export class HttpFolder extends RemoteFolder {
  readonly name: string;
  private readonly base: URL;

  constructor(url: string, options: RemoteOptions = {}) {
    super(options);
    const u = parseUrl(url);
    if (!u.pathname.endsWith("/")) u.pathname += "/";
    this.base = u;
    this.name = redactUrl(u).replace(/\/(\?…)?$/, "$1");
  }

  private fileUrl(rel: string): URL {
    const u = new URL(encodePath(rel), this.base);
    u.search = this.base.search;
    return u;
  }

  describe(rel: string): string {
    return redactUrl(this.fileUrl(rel));
  }

  protected async url(rel: string): Promise<string> {
    return this.fileUrl(rel).href;
  }

  async list(): Promise<undefined> {
    return undefined;
  }
}

/** What the Hub's model API says about a revision. */
interface RepoListing {
  /** The commit the revision resolved to, which every file is then read at. */
  readonly commit: string;
  readonly files: ReadonlySet<string>;
  readonly folders: ReadonlySet<string>;
}

const MAX_LISTING_BYTES = 64 * 1024 * 1024;

/**
 * A model repo on the Hugging Face Hub (or a mirror): `hf://ORG/NAME[@REV]`. Its files are listed by
 * `GET {endpoint}/api/models/ORG/NAME/revision/REV` (`siblings`) and read from
 * `{endpoint}/ORG/NAME/resolve/COMMIT/FILE`, at the commit that listing resolved REV to, so a push during
 * a conversion cannot mix two revisions. The Hub redirects large files to a CDN; the token goes to the
 * endpoint only.
 */
export class HubFolder extends RemoteFolder {
  readonly name: string;
  private listing: Promise<RepoListing> | undefined;
  private readonly endpoint: string;

  constructor(
    readonly ref: RepoRef,
    options: RemoteOptions & { readonly name?: string } = {},
  ) {
    super(options);
    this.endpoint = this.reader.client.endpoint;
    this.name = options.name ?? `hf://${ref.repo}@${ref.revision}`;
  }

  describe(rel: string): string {
    return `${this.name}/${rel}`;
  }

  private apiUrl(): string {
    return `${this.endpoint}/api/models/${this.ref.repo}/revision/${encodeURIComponent(this.ref.revision)}`;
  }

  /** The revision's files, asked for once. */
  private files(signal: AbortSignal | undefined): Promise<RepoListing> {
    return shared(() => {
      if (!this.listing) {
        const started = this.fetchListing(signal);
        this.listing = started;
        started.catch(() => {
          if (this.listing === started) this.listing = undefined;
        });
      }
      return this.listing;
    }, signal);
  }

  private async fetchListing(signal: AbortSignal | undefined): Promise<RepoListing> {
    const url = this.apiUrl();
    const client = this.reader.client;
    const text = await client.retrying(this.name, signal, async (attempt) => {
      const got = await client.get(url, this.name, undefined, attempt, "application/json");
      const r = got.response;
      if (r.status === 404) {
        discard(r);
        throw new InputError(`${this.name}: no such model or revision on ${this.endpoint} (HTTP 404 from ${redactUrl(url)})`);
      }
      if (r.status !== 200) {
        discard(r);
        throw statusFailure(this.name, r, true);
      }
      return new TextDecoder().decode(await readBounded(r, MAX_LISTING_BYTES, this.name, attempt, new URL(got.url)));
    });
    const bad = (what: string): FormatError => new FormatError(redactUrl(url), `is not a model listing: ${what}`);
    let info: unknown;
    try {
      info = JSON.parse(text);
    } catch {
      throw bad("not JSON");
    }
    if (info === null || typeof info !== "object" || Array.isArray(info)) throw bad("not a JSON object");
    const { sha, siblings } = info as { sha?: unknown; siblings?: unknown };
    if (!Array.isArray(siblings)) throw bad("no siblings list");
    const files = new Set<string>();
    for (const s of siblings) {
      const name = (s as { rfilename?: unknown } | null)?.rfilename;
      if (typeof name !== "string") throw bad("a sibling without rfilename");
      files.add(checkRelative(name, redactUrl(url)));
    }
    const commit = typeof sha === "string" && isCommitHash(sha) ? sha : this.ref.revision;
    return { commit, files, folders: foldersOf(files) };
  }

  protected async url(rel: string, signal: AbortSignal | undefined): Promise<string> {
    const { commit } = await this.files(signal);
    return `${this.endpoint}/${this.ref.repo}/resolve/${encodeURIComponent(commit)}/${encodePath(rel)}`;
  }

  async list(rel: string, signal?: AbortSignal): Promise<FolderEntry[]> {
    const { files, folders } = await this.files(signal);
    if (!folders.has(rel)) throw new InputError(`${this.describe(rel)}: no such folder in the repo`);
    return entriesIn(files, rel);
  }

  override async stat(rel: string, signal?: AbortSignal): Promise<EntryStat | undefined> {
    const key = checkRelative(rel, this.name);
    const { files, folders } = await this.files(signal);
    if (folders.has(key)) return { kind: "folder", size: 0 };
    return files.has(key) ? super.stat(key, signal) : undefined;
  }

  override async open(rel: string, signal?: AbortSignal): Promise<ByteSource> {
    const key = checkRelative(rel, this.name);
    const { files } = await this.files(signal);
    if (!files.has(key)) throw new FormatError(this.describe(key), "cannot open: not among the repo's files");
    return super.open(key, signal);
  }
}

/** Whether a checkpoint is named by URL: `http://`, `https://` or `hf://`. */
export function isRemoteSpec(spec: string): boolean {
  return /^(https?|hf):\/\//i.test(spec);
}

/** A checkpoint named by URL: a folder, or (a URL ending in `.safetensors`) a single file. */
export type RemoteSpec = { readonly name: string } & ({ readonly folder: Folder } | { readonly openFile: (signal?: AbortSignal) => Promise<ByteSource> });

/**
 * Open what an `http(s)://` or `hf://ORG/NAME[@REV]` spec names. Nothing is requested yet: the first
 * request is made when the checkpoint is opened.
 */
export function remoteSource(spec: string, options: RemoteOptions = {}): RemoteSpec {
  if (/^hf:\/\//i.test(spec)) {
    const id = spec.slice("hf://".length).replace(/\/+$/, "");
    const ref = parseRepoId(id);
    if (!ref) throw new InputError(`${spec}: not a Hugging Face model; expected hf://ORG/NAME or hf://ORG/NAME@REVISION`);
    const folder = new HubFolder(ref, { ...options, name: `hf://${id}` });
    return { name: folder.name, folder };
  }
  const u = parseUrl(spec);
  if (u.pathname.endsWith(".safetensors")) {
    const slash = u.pathname.lastIndexOf("/");
    const file = decodeURIComponent(u.pathname.slice(slash + 1));
    const parent = new URL(u.href);
    parent.pathname = u.pathname.slice(0, slash + 1);
    const folder = new HttpFolder(parent.href, options);
    return { name: folder.describe(file), openFile: (signal) => folder.open(file, signal) };
  }
  const folder = new HttpFolder(u.href, options);
  return { name: folder.name, folder };
}
