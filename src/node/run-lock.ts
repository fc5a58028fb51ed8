import * as fs from "node:fs";
import * as os from "node:os";
import { InputError, LockHeldError, WriteError } from "../errors.js";
import { describeIoError } from "./file-source.js";
import { isAlive } from "./output-folder.js";

/**
 * A lock file that processes on several machines sharing a filesystem can rely on. It names its owner's
 * host and pid and carries a heartbeat its owner bumps every few seconds: an owner on this machine is
 * alive while its pid is; one on another machine while its heartbeat moves. A lock whose owner is gone (a
 * SIGKILLed part, a lost node) is taken over, so a failed part can be rerun anywhere.
 */

interface Owner {
  readonly host: string;
  readonly pid: number;
  readonly beat: number;
}

/** How long another machine's heartbeat may stand still before its lock counts as abandoned, by default. */
export const DEFAULT_STALE_MS = 10_000;

const host = os.hostname();

function readOwner(file: string): Owner | undefined {
  try {
    const v = JSON.parse(fs.readFileSync(file, "utf8")) as Partial<Owner>;
    return typeof v.host === "string" && Number.isSafeInteger(v.pid) && Number.isSafeInteger(v.beat) ? (v as Owner) : undefined;
  } catch {
    return undefined;
  }
}

/** The owner of `file` when it is alive (waiting up to `staleMs` to see a heartbeat from another machine). */
export async function liveOwner(file: string, staleMs = DEFAULT_STALE_MS): Promise<Owner | undefined> {
  const owner = readOwner(file);
  // Locks are created whole (see `acquire`): one that does not parse is garbage, or already gone.
  if (!owner) return undefined;
  if (owner.host === host) return owner.pid !== process.pid && isAlive(owner.pid) ? owner : undefined;
  const until = Date.now() + staleMs;
  while (Date.now() < until) {
    await new Promise((r) => setTimeout(r, Math.min(500, staleMs / 4)));
    const now = readOwner(file);
    if (!now) return undefined;
    if (now.beat !== owner.beat || now.pid !== owner.pid || now.host !== owner.host) return now;
  }
  return undefined;
}

export function describeOwner(o: Owner): string {
  return o.host === host ? `pid ${o.pid}` : `pid ${o.pid} on ${o.host}`;
}

/** A temporary file name no other process, on this machine or another, can pick. */
function scratchName(file: string, what: string): string {
  return `${file}.${host}.${process.pid}.${Math.floor(Math.random() * 0x1_0000_0000).toString(16)}.${what}`;
}

function sameOwner(a: Owner | undefined, b: Owner | undefined): boolean {
  return a !== undefined && b !== undefined && a.host === b.host && a.pid === b.pid && a.beat === b.beat;
}

export class RunLock {
  private beat = 0;
  private timer: NodeJS.Timeout | undefined;
  private released = false;
  /** Set when the heartbeat found the lock no longer ours (taken over while this process stood still). */
  private lost = false;

  private constructor(readonly file: string) {}

  private content(): string {
    return `${JSON.stringify({ host, pid: process.pid, beat: this.beat })}\n`;
  }

  /**
   * Take the lock, or fail naming its live owner. `what` says in the message what it guards. An abandoned
   * lock is taken over (and `onStale` told).
   */
  static async acquire(file: string, what: string, options: { staleMs?: number; onStale?: (owner: string) => void } = {}): Promise<RunLock> {
    const lock = new RunLock(file);
    for (let attempt = 0; attempt < 2; attempt++) {
      // Written whole under another name, then linked into place: the lock never exists without its owner
      // in it, and link(2) fails if it exists, on NFS too.
      const tmp = scratchName(file, "new");
      try {
        fs.writeFileSync(tmp, lock.content());
        fs.linkSync(tmp, file);
        lock.startHeartbeat(options.staleMs ?? DEFAULT_STALE_MS);
        return lock;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw new WriteError(`${file}: cannot create the lock file: ${describeIoError(e)}`);
      } finally {
        fs.rmSync(tmp, { force: true });
      }
      const owner = await liveOwner(file, options.staleMs);
      const held = (o: Owner): LockHeldError => new LockHeldError(`${what} is being written by ${describeOwner(o)}; wait for it, or stop it and run again`);
      if (owner) throw held(owner);
      // Taken over by moving it aside first, and dropped only if what moved is the lock judged stale: a
      // competitor may have taken it over and put a lock of its own in its place meanwhile.
      const stale = readOwner(file);
      const aside = scratchName(file, "stale");
      try {
        fs.renameSync(file, aside);
      } catch {
        continue; // Gone already; try again.
      }
      const moved = readOwner(aside);
      if (moved && stale && !sameOwner(moved, stale)) {
        try {
          fs.linkSync(aside, file);
        } catch {
          // Another process holds the name now; both will find out at their next heartbeat.
        }
        fs.rmSync(aside, { force: true });
        throw held(moved);
      }
      fs.rmSync(aside, { force: true });
      if (stale) options.onStale?.(describeOwner(stale));
    }
    throw new InputError(`${what}: could not take the lock ${file}`);
  }

  /**
   * Bump the heartbeat by replacing the file whole (a rename), so a reader never sees half of it, but only
   * while the file is still this process's: an owner that stood still long enough to be taken over (a
   * stopped process, a stalled mount) must not overwrite its successor's lock.
   */
  private startHeartbeat(staleMs: number): void {
    const every = Math.max(50, Math.floor(staleMs / 5));
    this.timer = setInterval(() => {
      const current = readOwner(this.file);
      if (!current || current.host !== host || current.pid !== process.pid) {
        this.lost = true;
        clearInterval(this.timer);
        return;
      }
      this.beat++;
      const tmp = scratchName(this.file, "tmp");
      try {
        fs.writeFileSync(tmp, this.content());
        fs.renameSync(tmp, this.file);
      } catch {
        // A missed beat only makes the lock look idle for a moment.
      } finally {
        fs.rmSync(tmp, { force: true });
      }
    }, every);
    this.timer.unref();
  }

  /** Refuse to go on when the lock was taken over (see the heartbeat): what it guards is someone else's now. */
  assertHeld(what: string): void {
    const current = readOwner(this.file);
    if (this.lost || !current || current.host !== host || current.pid !== process.pid) {
      this.lost = true;
      throw new LockHeldError(`${what}: this process stood still so long that its lock was taken over${current ? ` by ${describeOwner(current)}` : ""}; its work is left to that one`);
    }
  }

  /** Give the lock up, if it is still this process's. Safe to call more than once. */
  release(): void {
    if (this.released) return;
    this.released = true;
    if (this.timer) clearInterval(this.timer);
    const owner = readOwner(this.file);
    if (owner && owner.host === host && owner.pid === process.pid) fs.rmSync(this.file, { force: true });
  }
}
