import type { OutputStore, WritableFile } from "../io/output.js";
import { type DeclaredTensor, DEFAULT_METADATA, type EncodedHeader, encodeHeader } from "./encode.js";

/**
 * One safetensors file whose header is fixed up front: the header is written first, then data arrives at
 * known offsets in any order and concurrently; `finish` refuses the file unless every declared byte was
 * written, then makes it durable.
 */
export class SafetensorsFileWriter {
  /** Data ranges already stored, sorted, disjoint and merged; `written` is their total length. */
  private readonly ranges: [number, number][] = [];
  private written = 0;
  private closed = false;

  private constructor(
    readonly file: WritableFile,
    readonly tensors: readonly DeclaredTensor[],
    readonly header: EncodedHeader,
  ) {}

  /** Create `rel` in `store` and write its header. */
  static async create(
    store: OutputStore,
    rel: string,
    tensors: readonly DeclaredTensor[],
    metadata: Readonly<Record<string, string>> | null = DEFAULT_METADATA,
  ): Promise<SafetensorsFileWriter> {
    const header = encodeHeader(tensors, metadata);
    const file = await store.create(rel, header.bytes.byteLength + header.dataSize);
    try {
      await file.write(0, header.bytes);
    } catch (e) {
      file.abandon();
      throw e;
    }
    return new SafetensorsFileWriter(file, tensors, header);
  }

  get name(): string {
    return this.file.name;
  }

  get size(): number {
    return this.header.bytes.byteLength + this.header.dataSize;
  }

  get dataStart(): number {
    return this.header.bytes.byteLength;
  }

  get complete(): boolean {
    return this.written === this.header.dataSize;
  }

  private checkRange(offset: number, length: number): void {
    if (this.closed) throw new Error(`${this.name}: write after close`);
    if (offset < 0 || offset + length > this.header.dataSize) {
      throw new RangeError(`${this.name}: write of ${length} bytes at data offset ${offset} is outside the declared data`);
    }
  }

  /**
   * Count `[begin, end)` as written once it is stored. Bytes written twice count once, so a repeated chunk
   * cannot hide a missing one; writes still in flight do not count, so `complete` never lets `finish` close
   * the file under them.
   */
  private record(begin: number, end: number): void {
    if (begin === end) return;
    const ranges = this.ranges;
    let lo = 0;
    let hi = ranges.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (ranges[mid]![1] < begin) lo = mid + 1;
      else hi = mid;
    }
    let b = begin;
    let e = end;
    let covered = 0;
    let j = lo;
    for (; j < ranges.length && ranges[j]![0] <= e; j++) {
      const r = ranges[j]!;
      b = Math.min(b, r[0]);
      e = Math.max(e, r[1]);
      covered += r[1] - r[0];
    }
    ranges.splice(lo, j - lo, [b, e]);
    this.written += e - b - covered;
  }

  /** Write `bytes` at `offset` within the data section. */
  async write(offset: number, bytes: Uint8Array): Promise<void> {
    this.checkRange(offset, bytes.byteLength);
    await this.file.write(this.dataStart + offset, bytes);
    this.record(offset, offset + bytes.byteLength);
  }

  /** The same, done before returning; only where the storage writes synchronously. */
  writeSync(offset: number, bytes: Uint8Array): void {
    this.checkRange(offset, bytes.byteLength);
    if (!this.file.writeSync) throw new Error(`internal: ${this.name} cannot be written synchronously`);
    this.file.writeSync(this.dataStart + offset, bytes);
    this.record(offset, offset + bytes.byteLength);
  }

  /** Make the file durable and close it; refuses a file with bytes missing. */
  finish(): Promise<void> {
    if (!this.complete) {
      return Promise.reject(new Error(`${this.name}: ${this.header.dataSize - this.written} of ${this.header.dataSize} data bytes were never written`));
    }
    this.closed = true;
    return this.file.finish();
  }

  /** Close without syncing, after a failure; the caller removes the file. */
  abandon(): void {
    if (this.closed) return;
    this.closed = true;
    this.file.abandon();
  }
}
