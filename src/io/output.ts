import { WriteError } from "../errors.js";
import { type Folder, checkRelative } from "./folder.js";

/**
 * One file being written at known positions. Writes may be issued before earlier ones are done; an
 * implementation may queue them (a local disk does: see `node/local-output.ts`).
 */
export interface WritableFile {
  readonly name: string;
  /** Write all of `bytes` at `position`; settles once they are stored. */
  write(position: number, bytes: Uint8Array): Promise<void>;
  /** The same write, done before returning, where the storage can. */
  writeSync?(position: number, bytes: Uint8Array): void;
  /** Make the file durable and close it. */
  finish(): Promise<void>;
  /** Close without making it durable, after a failure; the caller removes what was written. */
  abandon(): void;
}

/**
 * Where an output checkpoint is built: a folder of new files. Local outputs build it in a temporary folder
 * renamed into place when complete (`node/output-folder.ts`); a memory output just keeps the bytes.
 */
export interface OutputStore {
  /** How the output is named in messages. */
  readonly name: string;
  describe(rel: string): string;
  /** Create a file that does not exist yet, `size` bytes long when finished. */
  create(rel: string, size: number): Promise<WritableFile>;
  /** A small file, written whole and made durable. */
  writeFile(rel: string, bytes: Uint8Array): Promise<void>;
  mkdir(rel: string): Promise<void>;
  /**
   * Confirm a finished file as it reads back from the storage: its size, and its first bytes (the header)
   * compared byte for byte with those written. Storage that cannot be read back leaves this out.
   */
  check?(rel: string, size: number, head: Uint8Array): Promise<void>;
  /**
   * Copy `rel` of `folder` to the same name here, when this store can do it better than by reads and
   * writes (a local disk copying a local file); false when it cannot, and the caller copies.
   */
  copyFrom?(folder: Folder, rel: string): Promise<boolean>;
}

/** An output held in memory: for tests, and for a browser that hands the files on itself. */
export class MemoryOutput implements OutputStore {
  readonly files = new Map<string, Uint8Array>();
  readonly folders = new Set<string>();

  constructor(readonly name = "<memory output>") {}

  describe(rel: string): string {
    return `${this.name}/${rel}`;
  }

  private claim(rel: string): string {
    const key = checkRelative(rel, this.name);
    if (this.files.has(key)) throw new WriteError(`${this.describe(key)}: cannot create: file exists`);
    return key;
  }

  async create(rel: string, size: number): Promise<WritableFile> {
    const key = this.claim(rel);
    const bytes = new Uint8Array(size);
    this.files.set(key, bytes);
    const name = this.describe(key);
    const write = (position: number, data: Uint8Array): void => {
      if (position < 0 || position + data.byteLength > size) throw new RangeError(`${name}: write of ${data.byteLength} bytes at ${position} is past its ${size} bytes`);
      bytes.set(data, position);
    };
    return {
      name,
      writeSync: write,
      write: async (position, data) => write(position, data),
      finish: async () => undefined,
      abandon: () => {
        this.files.delete(key);
      },
    };
  }

  async writeFile(rel: string, bytes: Uint8Array): Promise<void> {
    this.files.set(this.claim(rel), bytes.slice());
  }

  async mkdir(rel: string): Promise<void> {
    this.folders.add(checkRelative(rel, this.name));
  }
}
