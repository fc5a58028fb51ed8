/**
 * The kernels a delta is computed with: `matmul` writes `scale · L·R` (float32) into `out`, `add` adds n
 * float32 deltas into weights of `dtype`. Byte views whose first byte is element [0][0]; strides count
 * elements. The main thread passes the wrappers of `tensor/wasm/matmul.ts`; a helper thread, its own.
 */
export interface DeltaKernels {
  matmul(l: Uint8Array, ls: number, r: Uint8Array, rs: number, out: Uint8Array, os: number, rows: number, cols: number, rank: number, scale: number): void;
  add(dtype: "BF16" | "F16" | "F32", w: Uint8Array, d: Uint8Array, n: number): void;
}

/**
 * Add the delta of elements [g0, g1) (row-major) of a `? × cols` weight whose bytes are `w`:
 * `w[g] += (scale · left[row]·right[:, col])`, left [rows, rank] and right [rank, cols] float32, `tile` a
 * float32 scratch of `tileElements`. A range may start and end mid-row: partial rows are done on their own,
 * whole rows a tile at a time. Self-contained (it refers to nothing but its arguments), so a helper thread
 * runs this very function from its source text.
 */
export function applyDeltaRange(
  k: DeltaKernels,
  left: Uint8Array,
  right: Uint8Array,
  tile: Uint8Array,
  tileElements: number,
  w: Uint8Array,
  g0: number,
  g1: number,
  cols: number,
  rank: number,
  scale: number,
  dtype: "BF16" | "F16" | "F32",
): void {
  const item = dtype === "F32" ? 4 : 2;
  let g = g0;
  let at = 0;
  while (g < g1) {
    const row = Math.floor(g / cols);
    const c0 = g % cols;
    let rows: number;
    let c1: number;
    if (c0 !== 0 || g1 - g < cols || cols > tileElements) {
      // Part of one row: where the range starts or ends mid-row, or a row wider than a tile.
      rows = 1;
      c1 = Math.min(cols, c0 + (g1 - g), c0 + tileElements);
    } else {
      rows = Math.min(Math.floor((g1 - g) / cols), Math.max(1, Math.floor(tileElements / cols)));
      c1 = cols;
    }
    const width = c1 - c0;
    const n = rows * width;
    k.matmul(left.subarray(row * rank * 4), rank, right.subarray(c0 * 4), cols, tile, width, rows, width, rank, scale);
    k.add(dtype, w.subarray(at * item, (at + n) * item), tile, n);
    g += n;
    at += n;
  }
}
