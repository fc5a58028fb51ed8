import { castInto } from "./cast.js";
import { copyView } from "./copy.js";
import { type DType, itemSize } from "./dtype.js";
import { type View, extent, rebase } from "./view.js";

/** Reusable scratch memory for casts, so a stream of pieces does not allocate per piece. */
export class Scratch {
  private buffers: ArrayBuffer[] = [new ArrayBuffer(0), new ArrayBuffer(0)];

  /** An 8-byte-aligned buffer of at least `size` bytes; slot 0 and 1 may be held at the same time. */
  get(slot: 0 | 1, size: number): Uint8Array {
    let b = this.buffers[slot]!;
    if (b.byteLength < size) {
      b = new ArrayBuffer(Math.max(size, Math.ceil(b.byteLength * 1.5)));
      this.buffers[slot] = b;
    }
    return new Uint8Array(b, 0, size);
  }
}

const shared = new Scratch();

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
): void {
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
