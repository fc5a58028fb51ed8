import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { InputError, LockHeldError, UsageError, WriteError } from "../errors.js";
import { describeIoError } from "./file-source.js";
import { fsyncPath, fsyncTree } from "./local-output.js";
import { within } from "./paths.js";

export const TMP_TAG = ".omni-ckpt-tmp-";
const OLD_TAG = ".omni-ckpt-old-";
export const LOCK_TAG = ".omni-ckpt.lock";

export interface PrepareOptions {
  /** Replace an existing, non-empty destination. */
  readonly force?: boolean;
  /** The source folder (or folders: a merge reads two): the destination may not be one, nor lie inside one. */
  readonly source?: string | readonly string[];
  /**
   * The one place inside the source the destination may be, because nothing of the source is read from
   * there (`model/consolidated/` of a sharded training save, where NeMo Automodel's own tool writes).
   */
  readonly allowedInside?: string;
  /** Told at once about leftovers of interrupted runs that were removed or restored, or left as another machine's. */
  readonly onNote?: (note: string) => void;
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Resolve symlinks as far as the path exists, so comparisons see through them. */
function realish(p: string): string {
  const abs = path.resolve(p);
  let head = abs;
  const tail: string[] = [];
  for (;;) {
    try {
      return path.join(fs.realpathSync(head), ...tail);
    } catch {
      const parent = path.dirname(head);
      if (parent === head) return abs;
      tail.unshift(path.basename(head));
      head = parent;
    }
  }
}

/**
 * This machine as locks and temporary folders name it: its hostname, with anything a file name should not
 * hold replaced. On a shared filesystem (NFS) a pid alone says nothing: the same number may be alive on
 * one machine and dead on another.
 */
export const THIS_HOST = os.hostname().replace(/[^A-Za-z0-9._-]/g, "_") || "unknown-host";

/** The process that owns a lock or a temporary folder. */
export interface Owner {
  readonly host: string;
  readonly pid: number;
}

function describeOwner(o: Owner): string {
  return o.host === THIS_HOST ? `pid ${o.pid}` : `pid ${o.pid} on ${o.host}`;
}

function isThisProcess(o: Owner): boolean {
  return o.host === THIS_HOST && o.pid === process.pid;
}

/**
 * Whether an owner may still be running. On this machine that is whether its pid is. Another machine's
 * pid cannot be asked from here, and these locks carry no heartbeat (a conversion's main thread is not
 * kept free to beat, unlike the consolidation's `RunLock`), so another machine's owner always counts as
 * running: its lock or folder stays until that run ends or someone who knows it is gone removes it.
 */
function mayBeRunning(o: Owner): boolean {
  return o.host !== THIS_HOST || isAlive(o.pid);
}

/**
 * PID, host and a random tag (`PID-HOST-RANDOM`): unique beside a lock file even among machines, and a
 * clash only fails `mkdir`. The pid comes first, as it did before the host was added, so an older
 * omni-ckpt on this machine still reads it. Not from node:crypto, whose OpenSSL start-up alone costs a
 * conversion ~10 ms.
 */
function uniqueSuffix(): string {
  return `${process.pid}-${THIS_HOST}-${Math.floor(Math.random() * 0x1_0000_0000).toString(16).padStart(8, "0")}`;
}

/**
 * The owner a `uniqueSuffix` names, or undefined when it names none. `PID-RANDOM`, from before names
 * carried the host, is this machine's: then only one machine was expected to write a DST.
 */
export function suffixOwner(suffix: string): Owner | undefined {
  const m = /^(\d+)-(?:(.+)-)?[0-9a-f]+$/.exec(suffix);
  if (!m) return undefined;
  return { pid: Number(m[1]), host: m[2] ?? THIS_HOST };
}

/** Outputs being built in this process, for a host that must stop at once (see `abortOutputs`). */
const active = new Set<{ abort(): void }>();

/** Count an output being built elsewhere (one part of a split consolidation) among those `abortOutputs` removes. */
export function trackOutput(output: { abort(): void }): void {
  active.add(output);
}

export function untrackOutput(output: { abort(): void }): void {
  active.delete(output);
}

/**
 * Remove every output still being built in this process and return how many there were: for a command
 * line's signal handler, which must exit now rather than wait for the operations' `AbortSignal` to be
 * heard. A library call never installs such a handler itself; it cleans up when its signal aborts it.
 */
export function abortOutputs(): number {
  const n = active.size;
  for (const o of [...active]) o.abort();
  return n;
}

/**
 * A destination folder built beside its final place and renamed into it only when complete, so DST is
 * either absent, the old content, or the whole new checkpoint — never a mix. A lock file beside it keeps
 * two conversions from racing for the same DST, on one machine or several sharing the filesystem;
 * leftovers of this machine's killed runs are removed on the next, another machine's only reported.
 */
export class OutputFolder {
  /** What the preparation found worth telling (stale leftovers removed, another machine's left). */
  readonly notes: string[] = [];
  private done = false;

  private constructor(
    /** DST as the user spelled it, for messages. */
    private readonly requested: string,
    readonly dst: string,
    readonly tmp: string,
    private readonly lock: string,
    private readonly force: boolean,
    private readonly onNote?: (note: string) => void,
  ) {}

  private note(text: string): void {
    this.notes.push(text);
    this.onNote?.(text);
  }

  static prepare(dst: string, options: PrepareOptions = {}): OutputFolder {
    const target = placeDestination(dst, options);
    const parent = path.dirname(target);
    const base = path.basename(target);
    const lock = path.join(parent, `.${base}${LOCK_TAG}`);
    takeLock(lock, dst);
    const tmp = path.join(parent, `.${base}${TMP_TAG}${uniqueSuffix()}`);
    const folder = new OutputFolder(dst, target, tmp, lock, options.force ?? false, options.onNote);
    try {
      folder.removeLeftovers(parent, base);
      checkDestination(dst, target, options.force ?? false);
      fs.mkdirSync(tmp);
    } catch (e) {
      releaseLock(lock);
      if (e instanceof InputError || e instanceof WriteError) throw e;
      throw new WriteError(`${tmp}: cannot create the temporary folder: ${describeIoError(e)}`);
    }
    active.add(folder);
    return folder;
  }

  private removeLeftovers(parent: string, base: string): void {
    for (const name of fs.readdirSync(parent)) {
      for (const tag of [TMP_TAG, OLD_TAG]) {
        const prefix = `.${base}${tag}`;
        if (!name.startsWith(prefix)) continue;
        const owner = suffixOwner(name.slice(prefix.length));
        const leftover = path.join(parent, name);
        if (owner !== undefined && owner.host !== THIS_HOST) {
          // Another machine's: whether its run is still going cannot be told from here (see `mayBeRunning`).
          this.note(
            tag === TMP_TAG
              ? `left ${leftover}, the output of ${describeOwner(owner)}, which may still be writing it; if that run is gone, remove it`
              : `left ${leftover}, a checkpoint that ${describeOwner(owner)} moved aside to replace ${this.dst} (--force); if that run is gone, it is the DST it replaced: move it back or remove it`,
          );
          continue;
        }
        if (owner !== undefined && owner.pid !== process.pid && isAlive(owner.pid)) continue;
        // A run killed between moving the old DST aside and putting the new one in place: bring the old back.
        if (tag === OLD_TAG && !fs.existsSync(this.dst)) {
          fs.renameSync(leftover, this.dst);
          this.note(`restored ${this.dst} from ${leftover}, left by a --force replacement that was interrupted`);
          continue;
        }
        fs.rmSync(leftover, { recursive: true, force: true });
        this.note(`removed ${leftover}, left by an interrupted run`);
      }
    }
  }

  /**
   * Put the finished folder in place: sync it and every folder in it, move an old DST aside (with
   * --force), rename, sync the parent, then delete the old copy.
   */
  commit(): void {
    moveIntoPlace(this.tmp, this.dst, this.force, (text) => this.note(text));
    this.finish();
  }

  /**
   * After a failure: remove what this run created and return the error to report. A write error names the
   * destination the user asked for, not the temporary folder that is gone.
   */
  fail(e: unknown): unknown {
    this.abort();
    return e instanceof WriteError ? new WriteError(e.message.split(this.tmp).join(this.requested)) : e;
  }

  /** Remove everything this run created. Safe to call more than once, and from a signal handler. */
  abort(): void {
    if (this.done) return;
    try {
      fs.rmSync(this.tmp, { recursive: true, force: true });
    } catch {
      // The folder keeps its telling name; the next run removes it.
    }
    this.finish();
  }

  private finish(): void {
    this.done = true;
    releaseLock(this.lock);
    active.delete(this);
  }
}

/**
 * Check where a destination may go (not the source, not inside it but where `allowedInside` says, not a
 * folder holding the source when `--force` would replace it) and create its parent. Returns DST with
 * symlinks resolved.
 */
export function placeDestination(dst: string, options: Pick<PrepareOptions, "source" | "allowedInside" | "force">): string {
  const target = realish(dst);
  // The one place inside a source a DST may be, compared by its folder and name: a link by that name
  // (`model/consolidated` → `.hf_metadata`) leads somewhere else in the source, and is not that place.
  const named = (p: string): string => path.join(realish(path.dirname(path.resolve(p))), path.basename(path.resolve(p)));
  const isLink = (p: string): boolean => {
    try {
      return fs.lstatSync(p).isSymbolicLink();
    } catch {
      return false;
    }
  };
  const allowed = options.allowedInside !== undefined && named(dst) === named(options.allowedInside) && !isLink(named(dst));
  for (const source of options.source === undefined ? [] : typeof options.source === "string" ? [options.source] : options.source) {
    const src = realish(source);
    if (within(target, src) && !allowed) {
      throw new UsageError(`destination ${dst} is ${target === src ? "the source itself" : "inside the source folder"}; choose another`);
    }
    if (options.force && within(src, target)) {
      throw new UsageError(`--force would replace ${dst}, which contains the source ${source}`);
    }
    // A source's files may live elsewhere (a cache snapshot's links into blobs/, --follow-symlinks):
    // replacing the folder that holds them would destroy the source as surely as replacing it.
    if (options.force) {
      const links = linkedFrom(src);
      if (links === undefined) {
        throw new UsageError(`--force: ${source} holds more than ${LINK_SCAN_LIMIT} entries, too many to check that ${dst} holds none of the files its links lead to; remove ${dst} yourself`);
      }
      const held = links.find((real) => within(real, target));
      if (held !== undefined) throw new UsageError(`--force would replace ${dst}, which holds ${held}, a file of the source ${source}`);
    }
  }
  const parent = path.dirname(target);
  try {
    fs.mkdirSync(parent, { recursive: true });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    // A file where a folder must be is the user's path, not a failing disk.
    if (code === "EEXIST" || code === "ENOTDIR") throw new InputError(`${parent}: cannot create the destination's parent folder: ${describeIoError(e)}`);
    throw new WriteError(`${parent}: cannot create the destination's parent folder: ${describeIoError(e)}`);
  }
  return target;
}

/**
 * How many entries of a source folder are looked at for links: a release holds a few dozen, a training
 * checkpoint folder a few per rank (model/ and optim/ shards), so this covers tens of thousands of ranks.
 */
const LINK_SCAN_LIMIT = 200_000;

/**
 * Where the symlinks in a source folder (and its subfolders) really lead: files and folders it reads.
 * Undefined when the folder holds more entries than are looked at.
 */
function linkedFrom(dir: string): string[] | undefined {
  const out: string[] = [];
  let seen = 0;
  const walk = (at: string): boolean => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(at, { withFileTypes: true });
    } catch {
      return true;
    }
    for (const e of entries) {
      if (++seen > LINK_SCAN_LIMIT) return false;
      const full = path.join(at, e.name);
      if (e.isSymbolicLink()) {
        try {
          out.push(fs.realpathSync(full));
        } catch {
          // A broken link leads nowhere a DST could hold.
        }
      } else if (e.isDirectory() && !walk(full)) return false;
    }
    return true;
  };
  return walk(dir) ? out : undefined;
}

/**
 * Put a finished folder in place: sync it and every folder in it, move an old DST aside (with `force`),
 * rename, sync the parent, then delete the old copy. `note` hears what went wrong after the new folder is in place.
 */
export function moveIntoPlace(tmp: string, dst: string, force: boolean, note: (text: string) => void): void {
  const parent = path.dirname(dst);
  let old: string | undefined;
  try {
    fsyncTree(tmp);
    if (fs.existsSync(dst)) {
      const st = fs.lstatSync(dst);
      if (st.isDirectory() && fs.readdirSync(dst).length === 0) fs.rmdirSync(dst);
      else if (force) {
        old = path.join(parent, `.${path.basename(dst)}${OLD_TAG}${uniqueSuffix()}`);
        fs.renameSync(dst, old);
      } else throw new InputError(`${dst} appeared while converting; pass --force to replace it`);
    }
    fs.renameSync(tmp, dst);
  } catch (e) {
    if (old !== undefined && !fs.existsSync(dst)) fs.renameSync(old, dst);
    if (e instanceof InputError) throw e;
    throw new WriteError(`${dst}: cannot move the finished checkpoint into place: ${describeIoError(e)}`);
  }
  // The new checkpoint is in place: from here on a failure is worth telling, not a failed conversion.
  try {
    fsyncPath(parent);
  } catch (e) {
    note(`${dst} is in place, but syncing ${parent} failed (${describeIoError(e)}); run sync before relying on it`);
  }
  if (old !== undefined) {
    try {
      fs.rmSync(old, { recursive: true, force: true });
    } catch (e) {
      note(`${dst} is in place, but the checkpoint it replaced could not be removed from ${old} (${describeIoError(e)})`);
    }
  }
}

export function checkDestination(dst: string, target: string, force: boolean): void {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(target);
  } catch {
    return;
  }
  const empty = st.isDirectory() && fs.readdirSync(target).length === 0;
  if (!empty && !force) {
    throw new InputError(`${dst} already exists and is not empty; pass --force to replace it`);
  }
}

/**
 * The owner a lock file names (`{"host":…,"pid":…}`), or undefined when it names none (unreadable,
 * vanished, empty, garbage). A lock holding a bare pid, from before locks named the host, is this machine's.
 */
export function lockOwner(file: string): Owner | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8").trim();
  } catch {
    return undefined;
  }
  const positive = (n: unknown): n is number => Number.isSafeInteger(n) && (n as number) > 0;
  if (/^\d+$/.test(text)) return positive(Number(text)) ? { host: THIS_HOST, pid: Number(text) } : undefined;
  try {
    const v = JSON.parse(text) as { host?: unknown; pid?: unknown } | null;
    return v !== null && typeof v.host === "string" && v.host !== "" && positive(v.pid) ? { host: v.host, pid: v.pid } : undefined;
  } catch {
    return undefined;
  }
}

function sameOwner(a: Owner | undefined, b: Owner | undefined): boolean {
  return a !== undefined && b !== undefined && a.host === b.host && a.pid === b.pid;
}

/**
 * Create `lock` naming this process and machine, or return false if it exists. The file is written whole
 * under another name and linked into place (link(2) fails if the lock exists, on NFS too), so a lock is
 * never seen without its owner.
 */
function createLock(lock: string): boolean {
  const tmp = `${lock}.${uniqueSuffix()}.new`;
  try {
    fs.writeFileSync(tmp, `${JSON.stringify({ host: THIS_HOST, pid: process.pid })}\n`, { flag: "wx", mode: 0o644 });
    fs.linkSync(tmp, lock);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw new WriteError(`${lock}: cannot create the lock file: ${describeIoError(e)}`);
  } finally {
    fs.rmSync(tmp, { force: true });
  }
}

/** The refusal of a DST whose lock `owner` holds; another machine's lock also says how to clear it. */
function lockBusy(dst: string, lock: string, owner: Owner): LockHeldError {
  const text = `${dst} is being written by another omni-ckpt process (${describeOwner(owner)}); wait for it or choose another destination`;
  if (owner.host === THIS_HOST) return new LockHeldError(text);
  return new LockHeldError(`${text}. If that run is gone, remove ${lock}: another machine's lock is never taken over, as whether its run is alive cannot be seen from here`);
}

/**
 * Fail as `takeLock` would if another process that may be running holds the lock beside DST, without
 * taking it (a consolidation run checks no single-process conversion is writing its DST).
 */
export function assertNotLocked(lock: string, dst: string): void {
  const owner = lockOwner(lock);
  if (owner !== undefined && !isThisProcess(owner) && mayBeRunning(owner)) throw lockBusy(dst, lock, owner);
}

/**
 * Take the lock beside a destination, or fail at once if a process that may be running holds it. A lock
 * of this machine whose process is gone is stale: it is first moved aside and only dropped if what was
 * moved is still that stale lock (another process may have replaced it meanwhile, which then gets it
 * back). Another machine's lock is never stale (see `mayBeRunning`); `--force` does not override it
 * either, since it is passed routinely to replace an old DST and must not also break into a live run.
 */
export function takeLock(lock: string, dst: string): void {
  for (let attempt = 0; attempt < 3; attempt++) {
    if (createLock(lock)) return;
    const owner = lockOwner(lock);
    // This process's own lock is as live as any: a second conversion to the same DST waits its turn.
    if (owner !== undefined && mayBeRunning(owner)) throw lockBusy(dst, lock, owner);
    const aside = `${lock}.${uniqueSuffix()}.stale`;
    try {
      fs.renameSync(lock, aside);
    } catch {
      continue; // Gone already: another process cleared it; try again.
    }
    const moved = lockOwner(aside);
    if (moved !== undefined && !sameOwner(moved, owner) && mayBeRunning(moved)) {
      // Not the stale lock looked at but a live process's new one: put it back and leave it to it.
      try {
        fs.linkSync(aside, lock);
      } catch {
        // Someone took the name meanwhile; the live owner will find its lock gone and stop at commit.
      }
      fs.rmSync(aside, { force: true });
      throw lockBusy(dst, lock, moved);
    }
    fs.rmSync(aside, { force: true });
  }
  throw new InputError(`${dst}: could not take the lock ${lock}`);
}

export function releaseLock(lock: string): void {
  const owner = lockOwner(lock);
  if (owner !== undefined && isThisProcess(owner)) fs.rmSync(lock, { force: true });
}
