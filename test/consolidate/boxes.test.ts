import { describe, expect, it } from "vitest";
import { type Box, checkTiling, formatBox } from "../../src/consolidate/boxes.js";
import { seededRandom } from "../helpers/fixtures.js";

const box = (offset: number[], shape: number[]): Box => ({ offset, shape });

/** The naive check, element by element: how many boxes hold each element. */
function coverage(shape: number[], boxes: Box[]): number[] {
  const total = shape.reduce((a, b) => a * b, 1);
  const count = new Array<number>(total).fill(0);
  const strides = shape.map((_, d) => shape.slice(d + 1).reduce((a, b) => a * b, 1));
  for (const b of boxes) {
    const n = b.shape.reduce((a, c) => a * c, 1);
    for (let i = 0; i < n; i++) {
      let rest = i;
      let flat = 0;
      let inside = true;
      for (let d = b.shape.length - 1; d >= 0; d--) {
        const k = (rest % b.shape[d]!) + b.offset[d]!;
        rest = Math.floor(rest / b.shape[d]!);
        if (k >= shape[d]!) inside = false;
        flat += k * strides[d]!;
      }
      if (inside) count[flat]!++;
    }
  }
  return count;
}

describe("checkTiling", () => {
  it("accepts row bands, torch.chunk-style with an empty last piece at the axis's end", () => {
    expect(checkTiling([10, 4], [box([0, 0], [3, 4]), box([3, 0], [3, 4]), box([6, 0], [3, 4]), box([9, 0], [1, 4])])).toEqual([]);
    expect(checkTiling([1, 16, 8], [box([0, 0, 0], [1, 16, 8]), box([1, 0, 0], [0, 16, 8])])).toEqual([]);
  });

  it("accepts column pieces and grids in any order", () => {
    expect(checkTiling([12, 16], [box([0, 8], [12, 8]), box([0, 0], [12, 8])])).toEqual([]);
    const grid: Box[] = [];
    for (let r = 0; r < 4; r++) for (let c = 0; c < 3; c++) grid.push(box([r * 5, c * 7], [5, 7]));
    expect(checkTiling([20, 21], grid.reverse())).toEqual([]);
  });

  it("a 0-d tensor is one piece with no offsets; two of them overlap; none is a gap", () => {
    expect(checkTiling([], [box([], [])])).toEqual([]);
    expect(checkTiling([], [box([], []), box([], [])])).toEqual([{ kind: "overlap", a: 0, b: 1, region: { offset: [], shape: [] } }]);
    expect(checkTiling([], [])).toEqual([{ kind: "gap", region: { offset: [], shape: [] }, missing: 1 }]);
  });

  it("names the first gap as a box, and how many elements are in none", () => {
    const p = checkTiling([64, 16], [box([0, 0], [16, 16]), box([16, 0], [16, 16]), box([32, 0], [16, 16])]);
    expect(p).toEqual([{ kind: "gap", region: { offset: [48, 0], shape: [16, 16] }, missing: 256 }]);
    expect(formatBox(p[0]!.kind === "gap" ? p[0]!.region : box([], []))).toBe("[48:64, 0:16]");
    // A hole in the middle of a column.
    const q = checkTiling([4, 4], [box([0, 0], [4, 2]), box([0, 2], [1, 2]), box([2, 2], [2, 2])]);
    expect(q).toEqual([{ kind: "gap", region: { offset: [1, 2], shape: [1, 2] }, missing: 2 }]);
  });

  it("reports overlaps with the region both hold, and pieces outside the shape", () => {
    expect(checkTiling([8, 4], [box([0, 0], [5, 4]), box([4, 0], [4, 4])])).toEqual([{ kind: "overlap", a: 0, b: 1, region: { offset: [4, 0], shape: [1, 4] } }]);
    expect(checkTiling([8, 4], [box([0, 0], [8, 4]), box([8, 0], [1, 4])])).toEqual([{ kind: "outside", piece: 1 }]);
    // An empty piece past the end is outside too.
    expect(checkTiling([8, 4], [box([0, 0], [8, 4]), box([9, 0], [0, 4])])).toEqual([{ kind: "outside", piece: 1 }]);
  });

  it("agrees with counting every element, on random sets of boxes", () => {
    const rnd = seededRandom(1234);
    for (let trial = 0; trial < 400; trial++) {
      const rank = 1 + rnd.int(3);
      const shape = Array.from({ length: rank }, () => 1 + rnd.int(6));
      // Start from an exact tiling (a random grid), then maybe break it.
      const cuts = shape.map((n) => [...new Set([0, n, rnd.int(n + 1), rnd.int(n + 1)])].sort((a, b) => a - b));
      let boxes: Box[] = [{ offset: [], shape: [] }];
      for (let d = 0; d < rank; d++) {
        const next: Box[] = [];
        for (const b of boxes) for (let k = 0; k + 1 < cuts[d]!.length; k++) next.push(box([...b.offset, cuts[d]![k]!], [...b.shape, cuts[d]![k + 1]! - cuts[d]![k]!]));
        boxes = next;
      }
      const mutation = rnd.int(4);
      if (mutation === 1 && boxes.length > 1) boxes.splice(rnd.int(boxes.length), 1);
      if (mutation === 2) boxes.push(boxes[rnd.int(boxes.length)]!);
      if (mutation === 3) {
        const i = rnd.int(boxes.length);
        const d = rnd.int(rank);
        const b = boxes[i]!;
        boxes[i] = box(b.offset.map((o, k) => (k === d ? o + 1 : o)), [...b.shape]);
      }
      boxes = rnd.shuffle(boxes);
      const counts = coverage(shape, boxes);
      const outside = boxes.some((b) => b.shape.some((n, d) => b.offset[d]! + n > shape[d]!));
      const exact = !outside && counts.every((c) => c === 1);
      const problems = checkTiling(shape, boxes);
      expect(problems.length === 0, `shape ${JSON.stringify(shape)} boxes ${JSON.stringify(boxes)}`).toBe(exact);
      for (const p of problems) {
        if (p.kind !== "gap") continue;
        // The gap named is in no box, and the count of missing elements is right.
        expect(coverage(shape, [p.region]).every((c, i) => c === 0 || counts[i] === 0)).toBe(true);
        expect(p.missing).toBe(counts.filter((c) => c === 0).length);
      }
    }
  });

  it("checks thousands of pieces of a 2^40-element tensor (never its elements)", () => {
    const rows = 1 << 20;
    const boxes = Array.from({ length: 4096 }, (_, r) => box([r * (rows / 4096), 0], [rows / 4096, 1 << 20]));
    expect(checkTiling([rows, 1 << 20], boxes)).toEqual([]);
    const missing = boxes.filter((_, i) => i !== 4095);
    expect(checkTiling([rows, 1 << 20], missing)).toEqual([{ kind: "gap", region: { offset: [rows - 256, 0], shape: [256, 1 << 20] }, missing: 256 * 2 ** 20 }]);
  });
});
