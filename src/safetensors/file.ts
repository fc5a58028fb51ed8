import { type ByteSource, MemorySource } from "../io/byte-source.js";
import type { Tensor } from "../tensor/tensor.js";
import { PREFIX_LENGTH, type SafetensorsHeader, type TensorEntry, parseHeader, readHeaderLength } from "./header.js";

/**
 * One safetensors file: its validated header, and tensor bytes read on demand by offset. Opening reads the
 * 8-byte prefix and the header only.
 */
export class SafetensorsFile {
  readonly tensors: ReadonlyMap<string, TensorEntry>;

  private constructor(
    readonly source: ByteSource,
    readonly header: SafetensorsHeader,
  ) {
    this.tensors = new Map(header.entries.map((e) => [e.name, e]));
  }

  get name(): string {
    return this.source.name;
  }

  /**
   * Read and validate the header of a source: two reads, the length prefix and the header it gives. The
   * file owns the source from here on: a source that is not a valid file is closed before the error goes on.
   */
  static async open(source: ByteSource, signal?: AbortSignal): Promise<SafetensorsFile> {
    try {
      const prefix = new Uint8Array(PREFIX_LENGTH);
      if (source.size >= PREFIX_LENGTH) await source.read(prefix, 0, signal);
      const len = readHeaderLength(prefix, source.size, source.name);
      const headerBytes = new Uint8Array(len);
      await source.read(headerBytes, PREFIX_LENGTH, signal);
      return new SafetensorsFile(source, parseHeader(headerBytes, source.size - PREFIX_LENGTH - len, source.name));
    } catch (e) {
      source.close();
      throw e;
    }
  }

  /** The same from a source that reads synchronously (memory, local files). */
  static openSync(source: ByteSource): SafetensorsFile {
    try {
      if (!source.readSync) throw new Error(`internal: ${source.name} cannot be read synchronously`);
      const prefix = new Uint8Array(PREFIX_LENGTH);
      if (source.size >= PREFIX_LENGTH) source.readSync(prefix, 0);
      const len = readHeaderLength(prefix, source.size, source.name);
      const headerBytes = new Uint8Array(len);
      source.readSync(headerBytes, PREFIX_LENGTH);
      return new SafetensorsFile(source, parseHeader(headerBytes, source.size - PREFIX_LENGTH - len, source.name));
    } catch (e) {
      source.close();
      throw e;
    }
  }

  static fromBytes(bytes: Uint8Array, name = "<memory>"): SafetensorsFile {
    return SafetensorsFile.openSync(new MemorySource(bytes, name));
  }

  /** Absolute file position of a tensor's first byte. */
  position(entry: TensorEntry): number {
    return this.header.dataStart + entry.begin;
  }

  private check(entry: TensorEntry, offset: number, length: number): void {
    if (offset < 0 || offset + length > entry.end - entry.begin) {
      throw new RangeError(`${this.name}: read of ${length} bytes at ${offset} is outside tensor ${JSON.stringify(entry.name)}`);
    }
  }

  /** Read `buf.byteLength` bytes of a tensor starting `offset` bytes into its data. */
  readRange(entry: TensorEntry, offset: number, buf: Uint8Array, signal?: AbortSignal): Promise<void> {
    this.check(entry, offset, buf.byteLength);
    return this.source.read(buf, this.position(entry) + offset, signal);
  }

  /** The same, done before returning; only for sources that read synchronously. */
  readRangeSync(entry: TensorEntry, offset: number, buf: Uint8Array): void {
    this.check(entry, offset, buf.byteLength);
    if (!this.source.readSync) throw new Error(`internal: ${this.name} cannot be read synchronously`);
    this.source.readSync(buf, this.position(entry) + offset);
  }

  /** Whether `readRangeSync` works for this file. */
  get readsSync(): boolean {
    return this.source.readSync !== undefined;
  }

  /** A tensor's bytes in place, when the source holds the file in memory. */
  viewRange(entry: TensorEntry, offset: number, length: number): Uint8Array | undefined {
    this.check(entry, offset, length);
    return this.source.view?.(this.position(entry) + offset, length);
  }

  /** Whole tensor into fresh memory: for tests and small tensors, never for whole checkpoints. */
  async readTensor(name: string): Promise<Tensor> {
    const entry = this.entry(name);
    const data = new Uint8Array(entry.end - entry.begin);
    await this.readRange(entry, 0, data);
    return { dtype: entry.dtype, shape: entry.shape, data };
  }

  /** The same, for sources that read synchronously (fixtures in memory or on a local disk). */
  readTensorSync(name: string): Tensor {
    const entry = this.entry(name);
    const data = new Uint8Array(entry.end - entry.begin);
    this.readRangeSync(entry, 0, data);
    return { dtype: entry.dtype, shape: entry.shape, data };
  }

  private entry(name: string): TensorEntry {
    const entry = this.tensors.get(name);
    if (!entry) throw new RangeError(`${this.name}: no tensor ${JSON.stringify(name)}`);
    return entry;
  }

  close(): void {
    this.source.close();
  }
}
