import * as fs from "node:fs";
import { FormatError } from "../errors.js";

/**
 * Everything the format code needs from storage: a size and positional reads. Parsers never touch `fs`
 * directly, so the same code reads files, in-memory fixtures and hand-built malformed bytes.
 */
export interface ByteSource {
  /** How the source is named in messages. */
  readonly name: string;
  readonly size: number;
  /** Fill `buf` from `position`; a short read is an error, never silently zero bytes. */
  readSync(buf: Uint8Array, position: number): void;
  read(buf: Uint8Array, position: number): Promise<void>;
  close(): void;
}

export class MemorySource implements ByteSource {
  constructor(
    private readonly bytes: Uint8Array,
    readonly name = "<memory>",
  ) {}

  get size(): number {
    return this.bytes.byteLength;
  }

  readSync(buf: Uint8Array, position: number): void {
    if (position < 0 || position + buf.byteLength > this.bytes.byteLength) {
      throw new FormatError(this.name, `read of ${buf.byteLength} bytes at ${position} is past the end (${this.size} bytes)`);
    }
    buf.set(this.bytes.subarray(position, position + buf.byteLength));
  }

  async read(buf: Uint8Array, position: number): Promise<void> {
    this.readSync(buf, position);
  }

  close(): void {}
}

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
      throw new FormatError(name, `cannot open: ${describeIoError(e)}`);
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

  readSync(buf: Uint8Array, position: number): void {
    const fd = this.handle();
    let done = 0;
    while (done < buf.byteLength) {
      let n: number;
      try {
        n = fs.readSync(fd, buf, done, buf.byteLength - done, position + done);
      } catch (e) {
        throw new FormatError(this.name, `read failed at byte ${position + done}: ${describeIoError(e)}`);
      }
      if (n === 0) throw new FormatError(this.name, `file ended at byte ${position + done}, expected ${buf.byteLength - done} more`);
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
          if (err) reject(new FormatError(this.name, `read failed at byte ${position + done}: ${describeIoError(err)}`));
          else if (n === 0) reject(new FormatError(this.name, `file ended at byte ${position + done}, expected ${buf.byteLength - done} more`));
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
