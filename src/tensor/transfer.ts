import type { PieceScale } from "../adapters/plan.js";
import { isFloat8 } from "../quant/float8.js";
import { dequantizeToBf16 } from "../quant/dequantize.js";
import { castInto } from "./cast.js";
import { copyView } from "./copy.js";
import { type DType, itemSize } from "./dtype.js";
import { type View, extent, rebase } from "./view.js";

/** Where scratch memory comes from: 8-byte-aligned buffers, given back when outgrown. */
export interface ScratchMemory {
  acquire(size: number): Uint8Array;
  release(buf: Uint8Array): void;
}

/**
 * Reusable scratch memory for casts, so a stream of pieces does not allocate per piece. Given the
 * conversion's buffer pool, a cast's output lies in the SIMD kernels' arena and its transpose runs there
 * too (with plain memory it took the JavaScript path: 1.9 s of a 4.8 s `--dtype f32` bench conversion).
 */
export class Scratch {
  private readonly buffers: (Uint8Array | undefined)[] = [undefined, undefined];

  constructor(private readonly memory?: ScratchMemory) {}

  /** An 8-byte-aligned buffer of at least `size` bytes; slot 0 and 1 may be held at the same time. */
  get(slot: 0 | 1, size: number): Uint8Array {
    let b = this.buffers[slot];
    if (b === undefined || b.byteLength < size) {
      const want = Math.max(size, Math.ceil((b?.byteLength ?? 0) * 1.5));
      if (b !== undefined) this.memory?.release(b);
      b = this.memory ? this.memory.acquire(want) : new Uint8Array(want);
      this.buffers[slot] = b;
    }
    return b.subarray(0, size);
  }

  /** Give the buffers back to where they came from. */
  release(): void {
    for (const [i, b] of this.buffers.entries()) {
      if (b !== undefined) this.memory?.release(b);
      this.buffers[i] = undefined;
    }
  }
}

const shared = new Scratch();

/** A quantized input's scales, applied while it is transferred (see `Piece.scale`). */
export interface Scaling {
  readonly scale: PieceScale;
  /** The scale tensor's values in float32. */
  readonly values: Float32Array;
  /** Flat element index, within the quantized tensor, of element 0 of the `src` buffer. */
  readonly origin: number;
}

/**
 * Move the elements of `srcView` over `src` (of `srcDType`) to `dstView` over `dst` (of `dstDType`),
 * casting on the way when the dtypes differ. Views count elements of their own buffer's dtype.
 */
export function transfer(
  src: Uint8Array,
  srcDType: DType,
  srcView: View,
  dst: Uint8Array,
  dstDType: DType,
  dstView: View,
  scratch: Scratch = shared,
  scaling?: Scaling,
): void {
  if (scaling) {
    transferScaled(src, srcDType, srcView, dst, dstDType, dstView, scratch, scaling);
    return;
  }
  if (srcDType === dstDType) {
    copyView(src, dst, itemSize(srcDType), srcView, dstView);
    return;
  }
  const { start, end } = extent(srcView);
  const count = end - start;
  const inSize = itemSize(srcDType);
  let region = src.subarray(start * inSize, end * inSize);
  if (region.byteOffset % inSize !== 0) {
    const aligned = scratch.get(1, region.byteLength);
    aligned.set(region);
    region = aligned;
  }
  const cast = scratch.get(0, count * itemSize(dstDType));
  castInto(region, srcDType, cast, dstDType, count);
  copyView(cast, dst, itemSize(dstDType), rebase(srcView, start), dstView);
}

/** Dequantize the region the view reads into bfloat16, then cast that to the output's dtype and place it. */
function transferScaled(
  src: Uint8Array,
  srcDType: DType,
  srcView: View,
  dst: Uint8Array,
  dstDType: DType,
  dstView: View,
  scratch: Scratch,
  scaling: Scaling,
): void {
  if (!isFloat8(srcDType)) throw new TypeError(`internal: a scaled input must hold float8 codes, not ${srcDType}`);
  const { start, end } = extent(srcView);
  const count = end - start;
  const asBf16 = scratch.get(dstDType === "BF16" ? 0 : 1, count * 2);
  const bits = new Uint16Array(asBf16.buffer, asBf16.byteOffset, count);
  dequantizeToBf16(src.subarray(start, end), srcDType, bits, count, scaling.origin + start, scaling.scale, scaling.values);
  let values = asBf16;
  if (dstDType !== "BF16") {
    values = scratch.get(0, count * itemSize(dstDType));
    castInto(asBf16, "BF16", values, dstDType, count);
  }
  copyView(values, dst, itemSize(dstDType), rebase(srcView, start), dstView);
}
