import { kernelArena } from "../tensor/wasm/kernels.js";

/**
 * Address space reserved for buffers; pages count toward memory only once they are used. Large enough for
 * `verify` to hold one of the real model's 1.28 GB grouped tensors and build its experts from it in SIMD.
 */
const ARENA_BYTES = 2 * 1024 * 1024 * 1024;
const ALIGN = 64;

/**
 * First-fit allocation with coalescing inside the SIMD kernels' memory, so chunks and read regions can be
 * transposed in place by WebAssembly. Reusing the lowest free addresses keeps the touched memory, and so
 * the process's RSS, close to what is live at once.
 */
class ArenaAllocator {
  /** Free blocks sorted by start, never adjacent (merged on release). */
  private readonly free: { start: number; size: number }[];
  private readonly used = new Map<number, number>();

  constructor(readonly buffer: ArrayBuffer) {
    this.free = [{ start: 0, size: buffer.byteLength }];
  }

  alloc(size: number): Uint8Array | undefined {
    const need = Math.max(ALIGN, Math.ceil(size / ALIGN) * ALIGN);
    const i = this.free.findIndex((b) => b.size >= need);
    if (i < 0) return undefined;
    const block = this.free[i]!;
    const start = block.start;
    if (block.size === need) this.free.splice(i, 1);
    else {
      block.start += need;
      block.size -= need;
    }
    this.used.set(start, need);
    return new Uint8Array(this.buffer, start, size);
  }

  release(buf: Uint8Array): void {
    const start = buf.byteOffset;
    const size = this.used.get(start);
    if (size === undefined) throw new Error("internal: releasing a buffer the arena did not hand out");
    this.used.delete(start);
    let lo = 0;
    let hi = this.free.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.free[mid]!.start < start) lo = mid + 1;
      else hi = mid;
    }
    const prev = this.free[lo - 1];
    const next = this.free[lo];
    if (prev && prev.start + prev.size === start) {
      prev.size += size;
      if (next && prev.start + prev.size === next.start) {
        prev.size += next.size;
        this.free.splice(lo, 1);
      }
    } else if (next && start + size === next.start) {
      next.start = start;
      next.size += size;
    } else this.free.splice(lo, 0, { start, size });
  }
}

let shared: ArenaAllocator | null | undefined;

function arena(): ArenaAllocator | null {
  if (shared === undefined) {
    const buffer = kernelArena(ARENA_BYTES);
    shared = buffer ? new ArenaAllocator(buffer) : null;
  }
  return shared;
}

/**
 * Byte buffers for a conversion: from the kernels' arena while it has room (so transposes run in SIMD),
 * otherwise ordinary memory. Every buffer is 8-byte aligned for the typed-array kernels.
 */
export class BufferPool {
  acquire(size: number): Uint8Array {
    return arena()?.alloc(size) ?? new Uint8Array(new ArrayBuffer(size));
  }

  release(buf: Uint8Array): void {
    const a = arena();
    if (a && buf.buffer === a.buffer) a.release(buf);
  }

  /** The memory buffers come from when they come from the arena (the writer thread writes straight from it). */
  get memory(): ArrayBuffer | undefined {
    return arena()?.buffer;
  }
}
