/**
 * Reuses byte buffers by exact size: a conversion asks for the same few sizes over and over (one expert,
 * one chunk), so recycling them keeps memory flat and spares the allocator and the garbage collector.
 */
export class BufferPool {
  private readonly free = new Map<number, Uint8Array[]>();
  private pooled = 0;
  private live = 0;
  /** Most bytes held at once (live + pooled): what the pool costs in memory. */
  peak = 0;

  constructor(private readonly maxPooledBytes = 256 * 1024 * 1024) {}

  acquire(size: number): Uint8Array {
    const list = this.free.get(size);
    const reused = list?.pop();
    this.live += size;
    if (reused) {
      this.pooled -= size;
      return reused;
    }
    this.peak = Math.max(this.peak, this.live + this.pooled);
    // An ArrayBuffer of its own keeps every buffer 8-byte aligned for the typed-array kernels.
    return new Uint8Array(new ArrayBuffer(size));
  }

  release(buf: Uint8Array): void {
    const size = buf.byteLength;
    this.live -= size;
    if (this.pooled + size > this.maxPooledBytes) return;
    const list = this.free.get(size) ?? [];
    list.push(buf);
    this.free.set(size, list);
    this.pooled += size;
  }
}
