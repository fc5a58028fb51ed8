import type { Tensor } from "../tensor/tensor.js";
import {
  PREFIX_LENGTH,
  type SafetensorsHeader,
  type TensorEntry,
  parseHeader,
  readHeaderLength,
} from "./header.js";
import { type ByteSource, FileSource, MemorySource } from "./source.js";

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

  static fromSource(source: ByteSource): SafetensorsFile {
    const prefix = new Uint8Array(PREFIX_LENGTH);
    if (source.size >= PREFIX_LENGTH) source.readSync(prefix, 0);
    const len = readHeaderLength(prefix, source.size, source.name);
    const headerBytes = new Uint8Array(len);
    source.readSync(headerBytes, PREFIX_LENGTH);
    return new SafetensorsFile(source, parseHeader(headerBytes, source.size - PREFIX_LENGTH - len, source.name));
  }

  static open(path: string, name = path): SafetensorsFile {
    const source = new FileSource(path, name);
    try {
      return SafetensorsFile.fromSource(source);
    } catch (e) {
      source.close();
      throw e;
    }
  }

  static fromBytes(bytes: Uint8Array, name = "<memory>"): SafetensorsFile {
    return SafetensorsFile.fromSource(new MemorySource(bytes, name));
  }

  /** Absolute file position of a tensor's first byte. */
  position(entry: TensorEntry): number {
    return this.header.dataStart + entry.begin;
  }

  /** Read `buf.byteLength` bytes of a tensor starting `offset` bytes into its data. */
  readRangeSync(entry: TensorEntry, offset: number, buf: Uint8Array): void {
    if (offset < 0 || offset + buf.byteLength > entry.end - entry.begin) {
      throw new RangeError(`read of ${buf.byteLength} bytes at ${offset} is outside tensor ${entry.name}`);
    }
    this.source.readSync(buf, this.position(entry) + offset);
  }

  readRange(entry: TensorEntry, offset: number, buf: Uint8Array): Promise<void> {
    if (offset < 0 || offset + buf.byteLength > entry.end - entry.begin) {
      throw new RangeError(`read of ${buf.byteLength} bytes at ${offset} is outside tensor ${entry.name}`);
    }
    return this.source.read(buf, this.position(entry) + offset);
  }

  /** Whole tensor into fresh memory: for tests and small tensors, never for whole checkpoints. */
  readTensor(name: string): Tensor {
    const entry = this.tensors.get(name);
    if (!entry) throw new RangeError(`${this.name}: no tensor ${JSON.stringify(name)}`);
    const data = new Uint8Array(entry.end - entry.begin);
    this.readRangeSync(entry, 0, data);
    return { dtype: entry.dtype, shape: entry.shape, data };
  }

  close(): void {
    this.source.close();
  }
}
