import { KERNELS_WASM } from "./kernels.generated.js";

/**
 * The SIMD kernels of kernels.wat: transposes, the bfloat16 widening and FP8 dequantization. They work on the module's own memory, so buffers that are to be
 * transposed this way are carved out of it (see `kernelArena`); anything else takes the JavaScript path.
 */
interface Exports {
  readonly memory: WebAssembly.Memory;
  transpose16(src: number, dst: number, rows: number, cols: number, ss: number, ds: number): void;
  transpose32(src: number, dst: number, rows: number, cols: number, ss: number, ds: number): void;
  widen_bf16(src: number, dst: number, count: number): void;
  dequant_e4m3_bf16(src: number, dst: number, count: number, scale: number): void;
  copy_rows(src: number, dst: number, len: number, rows: number, ss: number, ds: number): void;
}

let loaded: Exports | null | undefined;

/** The module's bytes from their base64 text, with what browsers and Node both have (no `Buffer`). */
function fromBase64(text: string): Uint8Array<ArrayBuffer> {
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

function load(): Exports | null {
  if (loaded !== undefined) return loaded;
  try {
    loaded = new WebAssembly.Instance(new WebAssembly.Module(fromBase64(KERNELS_WASM))).exports as unknown as Exports;
  } catch {
    // No WebAssembly SIMD here: every transpose takes the JavaScript path.
    loaded = null;
  }
  return loaded;
}

/**
 * The instance's exports, for kernels whose wrappers live in modules of their own (`matmul.ts`); null
 * where WebAssembly SIMD is unavailable.
 */
export function kernelExports(): Readonly<Record<string, unknown>> | null {
  const e = load();
  return e === null ? null : (e as unknown as Record<string, unknown>);
}

let arenaBuffer: ArrayBuffer | undefined;

/**
 * The kernels' memory, grown once to at least `bytes` and never again: growing would detach every view
 * already handed out. Undefined when WebAssembly SIMD is unavailable.
 */
export function kernelArena(bytes: number): ArrayBuffer | undefined {
  if (arenaBuffer) return arenaBuffer;
  const e = load();
  if (!e) return undefined;
  // Address space, not memory: pages cost only once touched. Where even that is refused, ask for less.
  for (let want = bytes; want >= 64 * 1024 * 1024; want /= 2) {
    const have = e.memory.buffer.byteLength;
    try {
      if (want > have) e.memory.grow(Math.ceil((want - have) / 65536));
      break;
    } catch {
      // Try half as much.
    }
  }
  arenaBuffer = e.memory.buffer;
  return arenaBuffer;
}

/** Square tiles of this many elements keep both the rows read and the rows written in cache. */
const TILE = 128;

/**
 * dst[c][r] = src[r][c] for a rows × cols source, element strides `ss` (source row) and `ds` (destination
 * row), addresses in bytes within the arena. Only the part that is whole 8×8 (or 4×4) blocks is done here;
 * returns how many source rows and columns were covered so the caller finishes the edges.
 */
export function transposeInArena(
  itemSize: 2 | 4,
  src: number,
  dst: number,
  rows: number,
  cols: number,
  ss: number,
  ds: number,
): { rows: number; cols: number } {
  const e = load()!;
  const block = itemSize === 2 ? 8 : 4;
  const r8 = rows - (rows % block);
  const c8 = cols - (cols % block);
  const kernel = itemSize === 2 ? e.transpose16 : e.transpose32;
  for (let c0 = 0; c0 < c8; c0 += TILE) {
    const cc = Math.min(TILE, c8 - c0);
    for (let r0 = 0; r0 < r8; r0 += TILE) {
      const rr = Math.min(TILE, r8 - r0);
      kernel(src + (r0 * ss + c0) * itemSize, dst + (c0 * ds + r0) * itemSize, rr, cc, ss, ds);
    }
  }
  return { rows: r8, cols: c8 };
}

export function inArena(buffer: ArrayBufferLike): boolean {
  return arenaBuffer !== undefined && buffer === arenaBuffer;
}

/**
 * bfloat16 → float32 bit patterns for both buffers in the arena (byte addresses): the whole multiple of 8
 * elements in SIMD; returns how many were done so the caller finishes the tail.
 */
export function widenBf16InArena(src: number, dst: number, count: number): number {
  const whole = count - (count % 8);
  if (whole > 0) load()!.widen_bf16(src, dst, whole);
  return whole;
}

/**
 * float8_e4m3fn codes × one float32 scale → bfloat16 bits, both buffers in the arena (byte addresses): the
 * whole multiple of 8 elements in SIMD; returns how many were done so the caller finishes the tail (and
 * does everything for a NaN or infinite scale, whose products the kernel does not round as PyTorch does).
 */
export function dequantE4m3InArena(src: number, dst: number, count: number, scale: number): number {
  if (!Number.isFinite(scale)) return 0;
  const whole = count - (count % 8);
  if (whole > 0) load()!.dequant_e4m3_bf16(src, dst, whole, scale);
  return whole;
}

/** `rows` runs of `len` bytes from `src` to `dst` (byte addresses in the arena), `ss` / `ds` bytes apart. */
export function copyRowsInArena(src: number, dst: number, len: number, rows: number, ss: number, ds: number): void {
  load()!.copy_rows(src, dst, len, rows, ss, ds);
}
