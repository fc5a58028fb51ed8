import { FormatError } from "../errors.js";

/**
 * Everything the format code needs from storage: a size and positional reads. Parsers never touch a file
 * system or the network, so the same code reads local files, HTTP ranges, a browser's `File` and
 * hand-built malformed bytes.
 */
export interface ByteSource {
  /** How the source is named in messages: a path or a URL. */
  readonly name: string;
  readonly size: number;
  /**
   * Fill `into` with the bytes at `position`. A short read is an error, never silently zero bytes; a read
   * past the end is a `FormatError` (the file is not what its header says).
   */
  read(into: Uint8Array, position: number, signal?: AbortSignal): Promise<void>;
  /**
   * The same read, done before returning, where the source can (local files, memory). From the page cache a
   * read is a copy that the calling thread does faster itself than by handing it to another and waiting.
   */
  readSync?(into: Uint8Array, position: number): void;
  /** The bytes in place, without a copy, when the source holds them in memory. */
  view?(position: number, length: number): Uint8Array | undefined;
  /**
   * Bytes of reads worth having in flight at once, when that is more than one chunk's: a source over a
   * network hides its latency behind them and coalesces adjacent ones. Local sources leave it out.
   */
  readonly readAhead?: number;
  close(): void;
}

/** The one message for a read the source cannot satisfy because it is too short. */
export function pastTheEnd(name: string, length: number, position: number, size: number): FormatError {
  return new FormatError(name, `read of ${length} bytes at ${position} is past the end (${size} bytes)`);
}

/** A source over bytes already in memory: fixtures, tests, a browser's `File` read whole. */
export class MemorySource implements ByteSource {
  constructor(
    private readonly bytes: Uint8Array,
    readonly name = "<memory>",
  ) {}

  get size(): number {
    return this.bytes.byteLength;
  }

  readSync(into: Uint8Array, position: number): void {
    into.set(this.slice(position, into.byteLength));
  }

  async read(into: Uint8Array, position: number): Promise<void> {
    this.readSync(into, position);
  }

  view(position: number, length: number): Uint8Array {
    return this.slice(position, length);
  }

  private slice(position: number, length: number): Uint8Array {
    if (!(position >= 0) || position + length > this.bytes.byteLength) throw pastTheEnd(this.name, length, position, this.size);
    return this.bytes.subarray(position, position + length);
  }

  close(): void {}
}
