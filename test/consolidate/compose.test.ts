import { describe, expect, it } from "vitest";
import type { AssembledTensor } from "../../src/consolidate/assemble.js";
import { composePiece } from "../../src/consolidate/compose.js";
import type { SavedPiece } from "../../src/consolidate/save.js";
import { ConversionError } from "../../src/errors.js";
import { transfer } from "../../src/tensor/transfer.js";
import { type View, contiguous, reshape, select, slice, transpose } from "../../src/tensor/view.js";
import { seededRandom } from "../helpers/fixtures.js";

/** A tensor of `shape` (F32, element i holds i) cut into a grid of saved pieces, each with its own bytes. */
function savedTensor(shape: number[], cuts: number[][]): { tensor: AssembledTensor; data: Map<string, Uint8Array>; full: Uint8Array } {
  const total = shape.reduce((a, b) => a * b, 1);
  const full = new Uint8Array(new Float32Array(Array.from({ length: total }, (_, i) => i)).buffer);
  const strides = contiguous(shape).strides;
  let boxes: { offset: number[]; shape: number[] }[] = [{ offset: [], shape: [] }];
  shape.forEach((_, d) => {
    const next: typeof boxes = [];
    for (const b of boxes) for (let k = 0; k + 1 < cuts[d]!.length; k++) next.push({ offset: [...b.offset, cuts[d]![k]!], shape: [...b.shape, cuts[d]![k + 1]! - cuts[d]![k]!] });
    boxes = next;
  });
  const data = new Map<string, Uint8Array>();
  const pieces: SavedPiece[] = boxes.map((b, i) => {
    const key = `${i + 1}/t`;
    const bytes = new Uint8Array(b.shape.reduce((a, c) => a * c, 1) * 4);
    let offset = 0;
    b.offset.forEach((o, d) => (offset += o * strides[d]!));
    transfer(full, "F32", { offset, shape: b.shape, strides }, bytes, "F32", contiguous(b.shape));
    data.set(key, bytes);
    const entry = { name: "t", dtype: "F32" as const, shape: b.shape, begin: 0, end: bytes.byteLength };
    return { key, rank: undefined as never, entry, offset: b.offset };
  });
  return { tensor: { name: "t", dtype: "F32", shape, pieces, fileIndex: 1 }, data, full };
}

/** The view read directly from the whole tensor, and the same view put together from the saved pieces. */
function both(view: View, shape: number[], cuts: number[][]): { direct: Uint8Array; composed: Uint8Array; pieces: number } {
  const { tensor, data, full } = savedTensor(shape, cuts);
  const n = view.shape.reduce((a, b) => a * b, 1);
  const dst = contiguous(view.shape);
  const direct = new Uint8Array(n * 4);
  transfer(full, "F32", view, direct, "F32", dst);
  const composed = new Uint8Array(n * 4).fill(0xff);
  const pieces = composePiece({ src: "t", srcView: view, dstView: dst }, tensor, "F32", (p) => p.key, "out");
  for (const p of pieces) transfer(data.get(p.src)!, "F32", p.srcView, composed, "F32", p.dstView);
  return { direct, composed, pieces: pieces.length };
}

describe("composePiece: a view of a consolidated tensor read from its saved pieces", () => {
  it("a transposed expert matrix from two column pieces: two contiguous halves of the output", () => {
    const shape = [12, 16];
    const view = transpose(contiguous(shape), 0, 1);
    const r = both(view, shape, [[0, 12], [0, 8, 16]]);
    expect(r.pieces).toBe(2);
    expect(r.composed).toEqual(r.direct);
  });

  it("a reshape that merges axes ([E, r, H] as [E·r, H]) split across row pieces of E", () => {
    const shape = [4, 3, 5];
    const view = reshape(contiguous(shape), [12, 5]);
    const r = both(view, shape, [[0, 1, 3, 4], [0, 3], [0, 5]]);
    expect(r.composed).toEqual(r.direct);
  });

  it("agrees with reading the whole tensor, for random views over random pieces", () => {
    const rnd = seededRandom(99);
    for (let trial = 0; trial < 300; trial++) {
      const rank = 1 + rnd.int(3);
      const shape = Array.from({ length: rank }, () => 1 + rnd.int(5));
      const cuts = shape.map((n) => [...new Set([0, n, rnd.int(n + 1), rnd.int(n + 1)])].sort((a, b) => a - b));
      let v = contiguous(shape);
      // A slice across a merged axis's boundary is no box of the tensor (refused, see below): merged views
      // are only transposed and selected from.
      const merged = rank >= 2 && rnd.int(3) === 0;
      if (merged) v = reshape(v, [shape[0]! * shape[1]!, ...shape.slice(2)]);
      for (let op = 0; op < 3; op++) {
        const dims = v.shape.length;
        const choice = rnd.int(merged ? 2 : 3);
        if (choice === 0 && dims >= 2) v = transpose(v, rnd.int(dims), rnd.int(dims));
        else if (choice === 1 && dims >= 2) {
          const d = rnd.int(dims);
          if (v.shape[d]! > 0) v = select(v, d, rnd.int(v.shape[d]!));
        } else if (dims >= 1 && !merged) {
          const d = rnd.int(dims);
          const a = rnd.int(v.shape[d]! + 1);
          const b = a + rnd.int(v.shape[d]! - a + 1);
          v = slice(v, d, a, b);
        }
      }
      const r = both(v, shape, cuts);
      expect(r.composed, `shape ${JSON.stringify(shape)} view ${JSON.stringify(v)} cuts ${JSON.stringify(cuts)}`).toEqual(r.direct);
    }
  });

  it("refuses a view that does not map onto the tensor's axes instead of guessing", () => {
    const across = slice(reshape(contiguous([2, 4]), [8]), 0, 3, 8);
    expect(() => both(across, [2, 4], [[0, 1, 2], [0, 4]])).toThrow("through a view that does not map onto its axes (shape [5], strides [1])");
    const { tensor } = savedTensor([8], [[0, 4, 8]]);
    const everyOther: View = { offset: 0, shape: [4], strides: [2] };
    expect(() => composePiece({ src: "t", srcView: everyOther, dstView: contiguous([4]) }, tensor, "F32", (p) => p.key, "out")).toThrow(ConversionError);
    expect(() => composePiece({ src: "t", srcView: everyOther, dstView: contiguous([4]) }, tensor, "F32", (p) => p.key, "out")).toThrow(
      'out: reads "t" through a view that does not map onto its axes (shape [4], strides [2]); it cannot be split by the rank files\' pieces',
    );
  });
});
