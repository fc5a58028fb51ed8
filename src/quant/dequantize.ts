import type { PieceScale } from "../adapters/plan.js";
import { castInto, f32BitsToBf16 } from "../tensor/cast.js";
import { type DType, itemSize } from "../tensor/dtype.js";
import { dequantE4m3InArena, inArena } from "../tensor/wasm/kernels.js";
import { type Float8, float8Values } from "./float8.js";

/**
 * Dequantization of FP8 codes into bfloat16, bit-identical to PyTorch's
 * `(w.to(torch.float32) * scale).to(torch.bfloat16)`: the code's exact float32 value times its scale in one
 * float32 multiply, then one round to nearest even. A JavaScript number holds the exact product of two
 * float32 values (48 significant bits), so storing it into a Float32Array is that one IEEE multiply; the
 * SIMD kernel (`dequant_e4m3_bf16` in kernels.wat) does the same four lanes at a time.
 */

/**
 * A scale tensor's values in float32. A bf16 or f16 scale is widened exactly, as PyTorch promotes it when
 * a float32 weight is multiplied by it.
 */
export function scaleValues(bytes: Uint8Array, dtype: DType): Float32Array {
  const count = bytes.byteLength / itemSize(dtype);
  const out = new Float32Array(count);
  const src = bytes.byteOffset % itemSize(dtype) === 0 ? bytes : bytes.slice();
  castInto(src, dtype, new Uint8Array(out.buffer), "F32", count);
  return out;
}

/** Products are formed this many at a time in float32 before they are rounded to bfloat16. */
const RUN = 4096;
const products = new Float32Array(RUN);
const productBits = new Uint32Array(products.buffer);

/** out[outAt + k] = bf16(f32(codes[at + k]) × s) for k in [0, n). */
function scaleRun(codes: Uint8Array, format: Float8, at: number, n: number, out: Uint16Array, outAt: number, s: number): void {
  let done = 0;
  if (format === "F8_E4M3" && inArena(codes.buffer) && inArena(out.buffer)) {
    done = dequantE4m3InArena(codes.byteOffset + at, out.byteOffset + outAt * 2, n, s);
  }
  const values = float8Values(format);
  for (; done < n; done += RUN) {
    const m = Math.min(RUN, n - done);
    const from = at + done;
    for (let i = 0; i < m; i++) products[i] = values[codes[from + i]!]! * s;
    const to = outAt + done;
    for (let i = 0; i < m; i++) out[to + i] = f32BitsToBf16(productBits[i]!);
  }
}

/**
 * Dequantize `count` codes into bfloat16 bits: `codes[k]` is element `first + k` of the quantized tensor
 * (flat, row-major), and its scale is found from that index. Runs of elements sharing a scale (the whole
 * tensor, a row, a block's part of a row) are converted together.
 */
export function dequantizeToBf16(
  codes: Uint8Array,
  format: Float8,
  out: Uint16Array,
  count: number,
  first: number,
  scale: PieceScale,
  values: Float32Array,
): void {
  if (count === 0) return;
  if (scale.layout === "tensor") {
    scaleRun(codes, format, 0, count, out, 0, values[0]!);
    return;
  }
  const cols = scale.cols;
  const [blockRows, blockCols] = scale.block ?? [1, cols];
  const scaleCols = scale.layout === "row" ? 1 : Math.ceil(cols / blockCols);
  const end = first + count;
  let f = first;
  while (f < end) {
    const row = Math.floor(f / cols);
    const col = f - row * cols;
    let runEnd: number;
    let s: number;
    if (scale.layout === "row") {
      runEnd = (row + 1) * cols;
      s = values[row]!;
    } else {
      const bc = Math.floor(col / blockCols);
      runEnd = row * cols + Math.min((bc + 1) * blockCols, cols);
      s = values[Math.floor(row / blockRows) * scaleCols + bc]!;
    }
    const n = Math.min(runEnd, end) - f;
    scaleRun(codes, format, f - first, n, out, f - first, s);
    f += n;
  }
}
