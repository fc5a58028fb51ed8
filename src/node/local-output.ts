import * as fs from "node:fs";
import * as path from "node:path";
import { WriteError } from "../errors.js";
import type { Folder } from "../io/folder.js";
import type { OutputStore, WritableFile } from "../io/output.js";
import { describeIoError } from "./file-source.js";
import { LocalFolder } from "./local-folder.js";
import { writeThreadFor } from "./write-thread.js";

/** Bytes after which a file starts syncing in the background. */
const EARLY_SYNC_BYTES = 64 * 1024 * 1024;

/**
 * A new local file written at known positions. Writes to it run one at a time, buffers of the kernels'
 * arena through the writer thread; every 64 MB a sync starts in the background so the final one has only
 * the tail left.
 */
export class LocalFile implements WritableFile {
  private fd: number | undefined;
  /** Bytes written since the last early sync started, and that sync while it runs. */
  private unsynced = 0;
  private earlySync: Promise<void> | undefined;
  private earlySyncError: unknown;
  /** The last write queued: writes to one file run one at a time (see `write`). */
  private lastWrite: Promise<void> = Promise.resolve();

  constructor(
    readonly path: string,
    readonly name = path,
  ) {
    try {
      this.fd = fs.openSync(path, "wx", 0o644);
    } catch (e) {
      throw new WriteError(`${name}: cannot create: ${describeIoError(e)}`);
    }
  }

  private handle(): number {
    if (this.fd === undefined) throw new Error(`${this.name}: write after close`);
    return this.fd;
  }

  private wrote(length: number): void {
    this.unsynced += length;
    if (this.unsynced >= EARLY_SYNC_BYTES && !this.earlySync) this.startEarlySync();
  }

  /**
   * Flush what is written so far while later data is still being produced, so the disk works in parallel
   * with the conversion and the final sync only has the tail left to do.
   */
  private startEarlySync(): void {
    const fd = this.fd;
    if (fd === undefined) return;
    this.unsynced = 0;
    this.earlySync = new Promise((resolve) => {
      fs.fdatasync(fd, (err) => {
        if (err) this.earlySyncError ??= err;
        this.earlySync = undefined;
        resolve();
      });
    });
  }

  writeSync(position: number, bytes: Uint8Array): void {
    const fd = this.handle();
    let done = 0;
    while (done < bytes.byteLength) {
      try {
        done += fs.writeSync(fd, bytes, done, bytes.byteLength - done, position + done);
      } catch (e) {
        throw new WriteError(`${this.name}: write failed: ${describeIoError(e)}`);
      }
    }
    this.wrote(bytes.byteLength);
  }

  /**
   * Write `bytes` at `position`, after any write still running on this file. ext4 takes the inode's lock for
   * each buffered write, so a second concurrent write to the same file only spins on that lock and burns a
   * core (profiled: 12% of a conversion's CPU time); queued, it costs nothing.
   */
  write(position: number, bytes: Uint8Array): Promise<void> {
    const fd = this.handle(); // A write after close fails now, not when its turn comes.
    const failed = (e: unknown): never => {
      throw new WriteError(`${this.name}: write failed: ${describeIoError(e)}`);
    };
    const thread = writeThreadFor(bytes.buffer);
    if (thread) {
      // The thread writes in the order asked, one at a time: no need to wait for the previous write here.
      const result = thread.write(fd, bytes, position).then(() => this.wrote(bytes.byteLength), failed);
      this.lastWrite = Promise.all([this.lastWrite, result.catch(() => undefined)]).then(() => undefined);
      return result;
    }
    const run = (): Promise<void> =>
      new Promise((resolve, reject) => {
        const step = (done: number): void => {
          if (done >= bytes.byteLength) {
            this.wrote(bytes.byteLength);
            resolve();
            return;
          }
          fs.write(fd, bytes, done, bytes.byteLength - done, position + done, (err, n) => {
            if (err) reject(new WriteError(`${this.name}: write failed: ${describeIoError(err)}`));
            else step(done + n);
          });
        };
        step(0);
      });
    const result = this.lastWrite.then(run, run);
    this.lastWrite = result.catch(() => undefined);
    return result;
  }

  /** Make the file durable and close it. */
  finish(): Promise<void> {
    const fd = this.handle();
    this.fd = undefined;
    return this.idle().then(
      () =>
        new Promise((resolve, reject) => {
          fs.fdatasync(fd, (err) => {
            fs.close(fd, (closeErr) => {
              const e = this.earlySyncError ?? err ?? closeErr;
              if (e) reject(new WriteError(`${this.name}: sync to disk failed: ${describeIoError(e)}`));
              else resolve();
            });
          });
        }),
    );
  }

  /** Close without syncing, after a failure; the caller removes the file. */
  abandon(): void {
    const fd = this.fd;
    if (fd === undefined) return;
    this.fd = undefined;
    const close = (): void => {
      try {
        fs.closeSync(fd);
      } catch {
        // Already failing: the original error is the one to report.
      }
    };
    // Never close a descriptor a write or an early sync is still using: the number could be reused meanwhile.
    void this.idle().then(close);
  }

  /** Settles once no queued write and no early sync uses the descriptor (neither ever rejects). */
  private idle(): Promise<void> {
    // Last write first: its completion may be what starts an early sync.
    return this.lastWrite.then(() => this.earlySync);
  }
}

/** Write a small file and sync it before returning. */
export function writeFileDurably(file: string, content: string | Uint8Array, name = file): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(file, "wx", 0o644);
    fs.writeFileSync(fd, content);
    fs.fsyncSync(fd);
  } catch (e) {
    throw new WriteError(`${name}: write failed: ${describeIoError(e)}`);
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/** Sync a file or folder (its entries) to disk. */
export function fsyncPath(p: string): void {
  const fd = fs.openSync(p, "r");
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Sync every folder under `root`, then `root` itself. A folder's entries (the files and folders it names)
 * are durable only once that folder is synced, and syncing `root` says nothing of its sub-folders: without
 * this, a power loss after the rename into place could leave DST with files missing from a sub-folder.
 * Children go before their parents, so a folder is synced only once all it holds is. `sync` is the
 * syncing itself (a test counts the folders visited).
 */
export function fsyncTree(root: string, sync: (dir: string) => void = fsyncPath): void {
  for (const entry of fs.readdirSync(root, { withFileTypes: true })) {
    // Dirent types come from the entry itself: a symlink to a folder is not followed out of the output.
    if (entry.isDirectory()) fsyncTree(path.join(root, entry.name), sync);
  }
  sync(root);
}

/**
 * Confirm a finished file on disk: its size, and a fresh read of its first bytes (a shard's header) compared
 * byte for byte with those written. The header was built by our own encoder, so re-parsing it would only
 * prove the encoder again (at ~15 µs per tensor); what can go wrong here is the disk or the file system, and
 * any change to the bytes shows.
 */
export function checkFileOnDisk(file: string, expectedSize: number, head: Uint8Array, name = file): void {
  let size: number;
  const back = new Uint8Array(head.byteLength);
  try {
    const fd = fs.openSync(file, "r");
    try {
      size = fs.fstatSync(fd).size;
      let done = 0;
      while (done < back.byteLength) {
        const n = fs.readSync(fd, back, done, back.byteLength - done, done);
        if (n === 0) break;
        done += n;
      }
    } finally {
      fs.closeSync(fd);
    }
  } catch (e) {
    throw new WriteError(`${name}: cannot be read back after writing: ${describeIoError(e)}`);
  }
  if (size !== expectedSize) throw new WriteError(`${name}: is ${size} bytes after writing, expected ${expectedSize}`);
  if (!Buffer.from(back.buffer).equals(head)) throw new WriteError(`${name}: its header does not read back as written`);
}

/**
 * Files written into a local folder (a conversion's temporary folder). Files of another local folder are
 * copied by the kernel, not through our memory.
 */
export class LocalOutput implements OutputStore {
  constructor(
    readonly dir: string,
    readonly name = dir,
  ) {}

  private full(rel: string): string {
    return path.join(this.dir, ...rel.split("/"));
  }

  describe(rel: string): string {
    return path.join(this.name, rel);
  }

  async create(rel: string): Promise<LocalFile> {
    return new LocalFile(this.full(rel), this.describe(rel));
  }

  async writeFile(rel: string, bytes: Uint8Array): Promise<void> {
    writeFileDurably(this.full(rel), bytes, this.describe(rel));
  }

  async mkdir(rel: string): Promise<void> {
    try {
      fs.mkdirSync(this.full(rel));
    } catch (e) {
      throw new WriteError(`${this.describe(rel)}: cannot create the folder: ${describeIoError(e)}`);
    }
  }

  async check(rel: string, size: number, head: Uint8Array): Promise<void> {
    checkFileOnDisk(this.full(rel), size, head, this.describe(rel));
  }

  /** Copy a file of a local folder with the kernel's own copy (a reflink where the file system has them). */
  async copyFrom(folder: Folder, rel: string): Promise<boolean> {
    if (!(folder instanceof LocalFolder)) return false;
    const to = this.full(rel);
    const from = folder.describe(rel);
    try {
      fs.copyFileSync(from, to, fs.constants.COPYFILE_EXCL);
      fsyncPath(to);
    } catch (e) {
      throw new WriteError(`${this.describe(rel)}: copy from ${from} failed: ${describeIoError(e)}`);
    }
    return true;
  }
}
