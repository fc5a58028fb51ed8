import * as fs from "node:fs";
import * as path from "node:path";
import { InputError, UsageError, WriteError } from "../errors.js";
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
  /** Told at once about leftovers of interrupted runs that were removed or restored. */
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
 * PID plus a random tag: unique enough beside a lock file, and a clash only fails `mkdir`. Not from
 * node:crypto, whose OpenSSL start-up alone costs a conversion ~10 ms.
 */
function uniqueSuffix(): string {
  return `${process.pid}-${Math.floor(Math.random() * 0x1_0000_0000).toString(16).padStart(8, "0")}`;
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
 * two conversions from racing for the same DST; leftovers of killed runs are removed on the next.
 */
export class OutputFolder {
  /** What the preparation found worth telling (stale leftovers removed). */
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
        const pid = Number(name.slice(prefix.length).split("-")[0]);
        if (Number.isInteger(pid) && pid !== process.pid && isAlive(pid)) continue;
        const leftover = path.join(parent, name);
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
  const allowed = options.allowedInside !== undefined && target === realish(options.allowedInside);
  for (const source of options.source === undefined ? [] : typeof options.source === "string" ? [options.source] : options.source) {
    const src = realish(source);
    if (within(target, src) && !allowed) {
      throw new UsageError(`destination ${dst} is ${target === src ? "the source itself" : "inside the source folder"}; choose another`);
    }
    if (options.force && within(src, target)) {
      throw new UsageError(`--force would replace ${dst}, which contains the source ${source}`);
    }
  }
  const parent = path.dirname(target);
  try {
    fs.mkdirSync(parent, { recursive: true });
  } catch (e) {
    throw new WriteError(`${parent}: cannot create the destination's parent folder: ${describeIoError(e)}`);
  }
  return target;
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

/** The pid a lock file names, or undefined when it names none (unreadable, vanished, empty, garbage). */
export function lockOwner(file: string): number | undefined {
  try {
    const text = fs.readFileSync(file, "utf8").trim();
    const pid = Number(text);
    return /^\d+$/.test(text) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Create `lock` holding this process's pid, or return false if it exists. The file is written whole
 * under another name and linked into place, so a lock is never seen without its pid.
 */
function createLock(lock: string): boolean {
  const tmp = `${lock}.${uniqueSuffix()}.new`;
  try {
    fs.writeFileSync(tmp, `${process.pid}\n`, { flag: "wx", mode: 0o644 });
    fs.linkSync(tmp, lock);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw new WriteError(`${lock}: cannot create the lock file: ${describeIoError(e)}`);
  } finally {
    fs.rmSync(tmp, { force: true });
  }
}

/**
 * Take the lock beside a destination, or fail at once if a live process holds it. A lock whose process
 * is gone is stale: it is first moved aside and only dropped if what was moved is still that stale lock
 * (another process may have replaced it meanwhile, which then gets it back).
 */
export function takeLock(lock: string, dst: string): void {
  const busy = (pid: number): InputError =>
    new InputError(`${dst} is being written by another omni-ckpt process (pid ${pid}); wait for it or choose another destination`);
  for (let attempt = 0; attempt < 3; attempt++) {
    if (createLock(lock)) return;
    const owner = lockOwner(lock);
    // This process's own lock is as live as any: a second conversion to the same DST waits its turn.
    if (owner !== undefined && isAlive(owner)) throw busy(owner);
    const aside = `${lock}.${uniqueSuffix()}.stale`;
    try {
      fs.renameSync(lock, aside);
    } catch {
      continue; // Gone already: another process cleared it; try again.
    }
    const moved = lockOwner(aside);
    if (moved !== undefined && moved !== owner && isAlive(moved)) {
      // Not the stale lock looked at but a live process's new one: put it back and leave it to it.
      try {
        fs.linkSync(aside, lock);
      } catch {
        // Someone took the name meanwhile; the live owner will find its lock gone and stop at commit.
      }
      fs.rmSync(aside, { force: true });
      throw busy(moved);
    }
    fs.rmSync(aside, { force: true });
  }
  throw new InputError(`${dst}: could not take the lock ${lock}`);
}

export function releaseLock(lock: string): void {
  if (lockOwner(lock) === process.pid) fs.rmSync(lock, { force: true });
}
