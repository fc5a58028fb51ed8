import * as fs from "node:fs";
import { InputError } from "../errors.js";
import type { ByteSource } from "../io/byte-source.js";
import type { Folder } from "../io/folder.js";
import { isRemoteSpec, remoteSource } from "../io/http-folder.js";
import type { RemoteOptions } from "../io/http-source.js";
import { Checkpoint } from "../safetensors/checkpoint.js";
import { FileSource, describeIoError, fileKind } from "./file-source.js";
import { type Environment, cachedSnapshot, hubCacheDir, parseRepoId } from "./hf-cache.js";
import { nodeFetch } from "./http-transport.js";
import { LocalFolder } from "./local-folder.js";

export interface SourceOptions {
  /** Let local files be symlinks leading anywhere (see `LocalFolder`). */
  readonly followSymlinks?: boolean;
  /**
   * Where repo ids are looked up: `HF_HUB_CACHE`, `HF_HOME`, `XDG_CACHE_HOME` as `huggingface_hub` reads
   * them. The command line passes `process.env`; a library caller passes what it wants honoured (without
   * it, the default `~/.cache/huggingface/hub`).
   */
  readonly env?: Environment;
  /**
   * For `http(s)://` and `hf://` sources: the Hub endpoint and token (the command line passes
   * `HF_ENDPOINT` and `HF_TOKEN`; the token goes to the endpoint's host only), and, for tests or
   * proxies, the `fetch` to use, retries, and how many requests and read-ahead bytes to allow.
   */
  readonly http?: RemoteOptions;
  /**
   * Told what is worth knowing about a source but is no error (an HTTP server that gives its files no
   * identity, see `RemoteOptions.onNote`), unless `http` brings its own.
   */
  readonly onNote?: (note: string) => void;
}

/** Where a checkpoint named on the command line lives. */
export interface ResolvedSource {
  readonly folder?: Folder;
  /** A bare `.safetensors` file, which `inspect` and `diff` take. */
  readonly file?: string;
  /** The same named by URL. */
  readonly openFile?: (signal?: AbortSignal) => Promise<ByteSource>;
  /** The local folder, when there is one: an output must not be inside it. */
  readonly localDir?: string;
  /** How the user named it. */
  readonly spec: string;
  /** How reports name it, when not as the user typed it: a URL with its query (a signature) elided. */
  readonly display?: string;
}

/**
 * A checkpoint's location from how a user names it: an `http(s)://` URL of a folder (or of a
 * `.safetensors` file) or `hf://ORG/NAME[@REVISION]` on the Hub; otherwise an existing local path always
 * wins, and `ORG/NAME[@REVISION]` is a model in the local Hugging Face cache.
 */
export function resolveSource(spec: string, options: SourceOptions = {}): ResolvedSource {
  if (isRemoteSpec(spec)) {
    // Over our own HTTP/1.1 client (`nodeFetch`, src/node/http-transport.ts) unless the caller brings its
    // own fetch: less work per request and per byte than the built-in fetch.
    const remote = remoteSource(spec, { fetch: nodeFetch, ...(options.onNote ? { onNote: options.onNote } : {}), ...options.http });
    return { spec, display: remote.name, ...remote };
  }
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(spec);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== "ENOENT" && code !== "ENOTDIR") throw new InputError(`${spec}: cannot open checkpoint: ${describeIoError(e)}`);
  }
  if (st?.isFile()) return { spec, file: spec };
  if (st && !st.isDirectory()) throw new InputError(`${spec}: is ${fileKind(st)}, not a checkpoint folder or file`);
  if (st) {
    const folder = new LocalFolder(spec, options);
    return { spec, folder, localDir: spec };
  }
  const ref = parseRepoId(spec);
  if (!ref) throw new InputError(`${spec}: cannot open checkpoint: no such file or folder`);
  const snapshot = cachedSnapshot(ref, hubCacheDir(options.env ?? {}));
  const folder = new LocalFolder(snapshot, options);
  return { spec, folder, localDir: snapshot };
}

/** Open the checkpoint a user named: a folder, a URL, a cache snapshot or repo id, or a bare `.safetensors` file. */
export async function openSource(spec: string, options: SourceOptions & { signal?: AbortSignal } = {}): Promise<{ checkpoint: Checkpoint; source: ResolvedSource }> {
  const source = resolveSource(spec, options);
  if (source.file !== undefined) return { checkpoint: await Checkpoint.fromFile(new FileSource(source.file), options.signal), source };
  if (source.openFile) return { checkpoint: await Checkpoint.fromFile(await source.openFile(options.signal), options.signal), source };
  return { checkpoint: await Checkpoint.open(source.folder!, options), source };
}
