import * as fs from "node:fs";
import { FormatError, ReadError } from "../errors.js";
import type { ByteSource } from "../io/byte-source.js";

/** Error codes that mean the storage failed, not that the user named a bad file: running again may work. */
const STORAGE_FAILURES: ReadonlySet<string> = new Set(["EIO", "ENXIO", "ESTALE", "ETIMEDOUT", "ENOMEM", "EAGAIN", "EBUSY"]);

/** A failed open or read, classified: the disk failing is an I/O error, anything else the input's. */
export function readFailure(name: string, what: string, e: unknown): FormatError | ReadError {
  const code = e && typeof e === "object" && "code" in e ? String((e as { code: unknown }).code) : "";
  const detail = `${what}: ${describeIoError(e)}`;
  return STORAGE_FAILURES.has(code) ? new ReadError(`${name}: ${detail}`) : new FormatError(name, detail);
}

/** A local file read by positional reads, synchronously where the caller prefers it. */
export class FileSource implements ByteSource {
  private fd: number | undefined;
  readonly size: number;

  /**
   * Opens without blocking (a FIFO posing as a shard must not hang the tool) and insists on a regular file.
   */
  constructor(
    readonly path: string,
    readonly name = path,
  ) {
    let fd: number;
    try {
      fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    } catch (e) {
      throw readFailure(name, "cannot open", e);
    }
    try {
      const st = fs.fstatSync(fd);
      if (!st.isFile()) throw new FormatError(name, `is not a regular file (${fileKind(st)})`);
      this.size = st.size;
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
    this.fd = fd;
  }

  private handle(): number {
    if (this.fd === undefined) throw new Error(`${this.name}: read after close`);
    return this.fd;
  }

  private ended(position: number, missing: number): FormatError {
    return new FormatError(this.name, `file ended at byte ${position}, expected ${missing} more`);
  }

  readSync(buf: Uint8Array, position: number): void {
    const fd = this.handle();
    let done = 0;
    while (done < buf.byteLength) {
      let n: number;
      try {
        n = fs.readSync(fd, buf, done, buf.byteLength - done, position + done);
      } catch (e) {
        throw readFailure(this.name, `read failed at byte ${position + done}`, e);
      }
      if (n === 0) throw this.ended(position + done, buf.byteLength - done);
      done += n;
    }
  }

  read(buf: Uint8Array, position: number): Promise<void> {
    const fd = this.handle();
    return new Promise((resolve, reject) => {
      const step = (done: number): void => {
        if (done >= buf.byteLength) {
          resolve();
          return;
        }
        fs.read(fd, buf, done, buf.byteLength - done, position + done, (err, n) => {
          if (err) reject(readFailure(this.name, `read failed at byte ${position + done}`, err));
          else if (n === 0) reject(this.ended(position + done, buf.byteLength - done));
          else step(done + n);
        });
      };
      step(0);
    });
  }

  close(): void {
    if (this.fd !== undefined) {
      fs.closeSync(this.fd);
      this.fd = undefined;
    }
  }
}

export function fileKind(st: fs.Stats): string {
  if (st.isDirectory()) return "a directory";
  if (st.isFIFO()) return "a FIFO";
  if (st.isSocket()) return "a socket";
  if (st.isCharacterDevice()) return "a character device";
  if (st.isBlockDevice()) return "a block device";
  if (st.isSymbolicLink()) return "a symbolic link";
  return "not a regular file";
}

export function describeIoError(e: unknown): string {
  if (e && typeof e === "object" && "code" in e) {
    const code = String((e as { code: unknown }).code);
    const known: Record<string, string> = {
      ENOENT: "no such file",
      EACCES: "permission denied",
      EPERM: "operation not permitted",
      EISDIR: "is a directory",
      ENOTDIR: "a parent is not a directory",
      ENOSPC: "no space left on device",
      EDQUOT: "disk quota exceeded",
      EIO: "I/O error",
      EROFS: "read-only file system",
      EMFILE: "too many open files",
      ELOOP: "too many levels of symbolic links",
      ENAMETOOLONG: "file name too long",
    };
    return `${known[code] ?? String((e as { message?: unknown }).message ?? code)} (${code})`;
  }
  return e instanceof Error ? e.message : String(e);
}
