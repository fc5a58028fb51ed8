import { describe, expect, it } from "vitest";
import {
  type View,
  contiguous,
  extent,
  isContiguous,
  permute,
  rebase,
  reshape,
  select,
  simplifyPair,
  slice,
  transpose,
} from "../../src/tensor/view.js";
import { type Random, seededRandom } from "../helpers/fixtures.js";
import { indices } from "../helpers/state-dicts.js";

const plain = (v: View): { offset: number; shape: number[]; strides: number[] } => ({
  offset: v.offset,
  shape: [...v.shape],
  strides: [...v.strides],
});

describe("view constructors, by hand", () => {
  const v = contiguous([2, 3, 4]);

  it("contiguous: row-major strides, any offset, 0-d and empty shapes", () => {
    expect(plain(v)).toEqual({ offset: 0, shape: [2, 3, 4], strides: [12, 4, 1] });
    expect(plain(contiguous([5, 7], 3))).toEqual({ offset: 3, shape: [5, 7], strides: [7, 1] });
    expect(plain(contiguous([]))).toEqual({ offset: 0, shape: [], strides: [] });
    expect(plain(contiguous([3, 0, 2]))).toEqual({ offset: 0, shape: [3, 0, 2], strides: [0, 2, 1] });
  });

  it("permute and transpose reorder shape and strides together", () => {
    expect(plain(permute(v, [2, 0, 1]))).toEqual({ offset: 0, shape: [4, 2, 3], strides: [1, 12, 4] });
    expect(plain(transpose(v, 0, 2))).toEqual({ offset: 0, shape: [4, 3, 2], strides: [1, 4, 12] });
    expect(plain(transpose(v, 1, 1))).toEqual(plain(v));
    expect(() => permute(v, [0, 1])).toThrow(new RangeError("permute: order [0, 1] does not fit a 3-d view"));
    expect(() => permute(v, [0, 1, 1])).toThrow(new RangeError("permute: order [0, 1, 1] does not fit a 3-d view"));
    expect(() => permute(v, [0, 1, 3])).toThrow(new RangeError("permute: dimension 3 out of range for a 3-d view"));
    expect(() => transpose(v, -1, 0)).toThrow(new RangeError("transpose: dimension -1 out of range for a 3-d view"));
  });

  it("select drops a dimension and moves the offset", () => {
    expect(plain(select(v, 1, 2))).toEqual({ offset: 8, shape: [2, 4], strides: [12, 1] });
    expect(plain(select(contiguous([3], 5), 0, 2))).toEqual({ offset: 7, shape: [], strides: [] });
    expect(() => select(v, 1, 3)).toThrow(new RangeError("select: index 3 out of range for size 3"));
    expect(() => select(v, 0, 0.5)).toThrow(new RangeError("select: index 0.5 out of range for size 2"));
    expect(() => select(contiguous([]), 0, 0)).toThrow(new RangeError("select: dimension 0 out of range for a 0-d view"));
  });

  it("slice narrows a dimension and keeps the strides", () => {
    expect(plain(slice(v, 2, 1, 3))).toEqual({ offset: 1, shape: [2, 3, 2], strides: [12, 4, 1] });
    expect(plain(slice(v, 0, 1, 2))).toEqual({ offset: 12, shape: [1, 3, 4], strides: [12, 4, 1] });
    expect(plain(slice(v, 1, 3, 3))).toEqual({ offset: 12, shape: [2, 0, 4], strides: [12, 4, 1] });
    expect(() => slice(v, 1, 2, 1)).toThrow(new RangeError("slice: [2, 1) out of range for size 3"));
    expect(() => slice(v, 1, 0, 4)).toThrow(new RangeError("slice: [0, 4) out of range for size 3"));
    expect(() => slice(v, 1, -1, 2)).toThrow(new RangeError("slice: [-1, 2) out of range for size 3"));
  });

  it("isContiguous ignores size-1 dimensions and sees through offsets", () => {
    expect(isContiguous(v)).toBe(true);
    expect(isContiguous(transpose(v, 0, 1))).toBe(false);
    expect(isContiguous(slice(v, 0, 1, 2))).toBe(true);
    expect(isContiguous(slice(v, 2, 0, 2))).toBe(false);
    expect(isContiguous({ offset: 4, shape: [1, 3, 1], strides: [99, 1, 7] })).toBe(true);
    expect(isContiguous(contiguous([]))).toBe(true);
  });

  it("reshape re-strides a contiguous view, keeps its offset, and refuses anything else", () => {
    expect(plain(reshape(slice(v, 0, 1, 2), [12]))).toEqual({ offset: 12, shape: [12], strides: [1] });
    expect(plain(reshape(v, [4, 6]))).toEqual({ offset: 0, shape: [4, 6], strides: [6, 1] });
    expect(plain(reshape(select(contiguous([3]), 0, 1), [1, 1]))).toEqual({ offset: 1, shape: [1, 1], strides: [1, 1] });
    expect(() => reshape(v, [5, 5])).toThrow(new RangeError("reshape: cannot view [2, 3, 4] as [5, 5]"));
    expect(() => reshape(transpose(v, 1, 2), [24])).toThrow(new RangeError("reshape: view is not contiguous"));
  });

  it("extent and rebase", () => {
    expect(extent(contiguous([2, 3], 4))).toEqual({ start: 4, end: 10 });
    expect(extent(transpose(contiguous([2, 3], 4), 0, 1))).toEqual({ start: 4, end: 10 });
    // Columns 1..3 of a 4×5 matrix: first element 1, last 3·5 + 3 = 18.
    expect(extent(slice(contiguous([4, 5]), 1, 1, 4))).toEqual({ start: 1, end: 19 });
    expect(extent(slice(contiguous([4, 5]), 1, 2, 2))).toEqual({ start: 2, end: 2 });
    expect(extent(contiguous([], 9))).toEqual({ start: 9, end: 10 });
    expect(plain(rebase(slice(v, 2, 1, 3), 1))).toEqual({ offset: 0, shape: [2, 3, 2], strides: [12, 4, 1] });
  });

  it("simplifyPair merges a plain copy into one run and a transpose into two dimensions", () => {
    expect(simplifyPair(v, contiguous([2, 3, 4], 7))).toEqual({ shape: [24], src: [1], dst: [1] });
    const t = permute(contiguous([4, 2, 3]), [1, 2, 0]); // [2, 3, 4] read from a [4, 6] matrix's columns
    expect(simplifyPair(t, v)).toEqual({ shape: [6, 4], src: [1, 6], dst: [4, 1] });
    expect(simplifyPair(contiguous([1, 5, 1]), transpose(contiguous([1, 5, 1]), 0, 2))).toEqual({
      shape: [5],
      src: [1],
      dst: [1],
    });
    expect(simplifyPair(contiguous([1, 1]), contiguous([1, 1]))).toEqual({ shape: [], src: [], dst: [] });
    // A column slice on the source keeps rows apart but merges the leading dimensions.
    expect(simplifyPair(slice(contiguous([2, 3, 5]), 2, 0, 4), contiguous([2, 3, 4]))).toEqual({
      shape: [6, 4],
      src: [5, 1],
      dst: [4, 1],
    });
  });
});

/*
 * Property test: a view built by a random chain of operations must address exactly the element an
 * independent model addresses. The model is a function from an index tuple to a flat element index, built
 * by composing the meaning of each operation, with no strides involved.
 */

type Address = (index: readonly number[]) => number;

interface Modelled {
  view: View;
  shape: number[];
  address: Address;
}

function rowMajor(index: readonly number[], shape: readonly number[]): number {
  let at = 0;
  for (let k = 0; k < shape.length; k++) at = at * shape[k]! + index[k]!;
  return at;
}

function unravel(at: number, shape: readonly number[]): number[] {
  const index = new Array<number>(shape.length).fill(0);
  for (let k = shape.length - 1; k >= 0; k--) {
    index[k] = at % shape[k]!;
    at = Math.floor(at / shape[k]!);
  }
  return index;
}


const count = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);
const addressOf = (v: View, index: readonly number[]): number =>
  index.reduce((at, i, k) => at + i * v.strides[k]!, v.offset);

function randomShape(r: Random, maxRank: number): number[] {
  return Array.from({ length: r.int(maxRank + 1) }, () => r.pick([0, 1, 1, 2, 2, 3, 3, 4, 5]));
}

function step(m: Modelled, r: Random): Modelled {
  const rank = m.shape.length;
  const { address } = m;
  switch (r.int(5)) {
    case 0: {
      const order = r.shuffle(m.shape.map((_, i) => i));
      return {
        view: permute(m.view, order),
        shape: order.map((d) => m.shape[d]!),
        address: (idx) => {
          const old = new Array<number>(rank);
          order.forEach((d, j) => (old[d] = idx[j]!));
          return address(old);
        },
      };
    }
    case 1: {
      if (rank === 0) return m;
      const dim = r.int(rank);
      const size = m.shape[dim]!;
      const start = r.int(size + 1);
      const end = start + r.int(size - start + 1);
      const shape = [...m.shape];
      shape[dim] = end - start;
      return {
        view: slice(m.view, dim, start, end),
        shape,
        address: (idx) => address(idx.map((i, k) => (k === dim ? i + start : i))),
      };
    }
    case 2: {
      const dims = m.shape.map((_, i) => i).filter((i) => m.shape[i]! > 0);
      if (dims.length === 0) return m;
      const dim = r.pick(dims);
      const at = r.int(m.shape[dim]!);
      return {
        view: select(m.view, dim, at),
        shape: m.shape.filter((_, i) => i !== dim),
        address: (idx) => address([...idx.slice(0, dim), at, ...idx.slice(dim)]),
      };
    }
    case 3: {
      if (rank < 2) return m;
      const a = r.int(rank);
      const b = r.int(rank);
      const shape = [...m.shape];
      [shape[a], shape[b]] = [shape[b]!, shape[a]!];
      return {
        view: transpose(m.view, a, b),
        shape,
        address: (idx) => {
          const old = [...idx];
          [old[a], old[b]] = [old[b]!, old[a]!];
          return address(old);
        },
      };
    }
    default: {
      if (!isContiguous(m.view)) return m;
      const n = count(m.shape);
      const divisors = [1, 2, 3, 4, 5].filter((d) => n % d === 0);
      const shape = r.pick([[n], [1, n, 1], ...divisors.map((d) => [d, n / d])]);
      const from = m.shape;
      return { view: reshape(m.view, shape), shape, address: (idx) => address(unravel(rowMajor(idx, shape), from)) };
    }
  }
}

describe("views against an independent index model (seeded)", () => {
  it("address the same elements after 2,000 random chains of permute/transpose/slice/select/reshape", () => {
    const r = seededRandom(0x5eed);
    const problems: string[] = [];
    for (let c = 0; c < 2000 && problems.length < 5; c++) {
      const base = randomShape(r, 4);
      const offset = r.int(4);
      let m: Modelled = { view: contiguous(base, offset), shape: base, address: (idx) => offset + rowMajor(idx, base) };
      const ops = 1 + r.int(5);
      for (let k = 0; k < ops; k++) m = step(m, r);
      const where = `case ${c}: base [${base}] offset ${offset} → ${JSON.stringify(plain(m.view))}`;

      if (m.view.shape.join() !== m.shape.join()) problems.push(`${where}: shape, model says [${m.shape}]`);
      let lo = Infinity;
      let hi = -Infinity;
      let rowMajorFromFirst = true;
      let first: number | undefined;
      for (const idx of indices(m.shape)) {
        const want = m.address(idx);
        if (addressOf(m.view, idx) !== want) {
          problems.push(`${where}: [${idx}] addresses ${addressOf(m.view, idx)}, model ${want}`);
          break;
        }
        first ??= want;
        if (want !== first + rowMajor(idx, m.shape)) rowMajorFromFirst = false;
        lo = Math.min(lo, want);
        hi = Math.max(hi, want);
      }
      const { start, end } = extent(m.view);
      if (count(m.shape) > 0) {
        if (start !== lo || end !== hi + 1) problems.push(`${where}: extent [${start}, ${end}), touched [${lo}, ${hi}]`);
        if (isContiguous(m.view) !== rowMajorFromFirst) problems.push(`${where}: isContiguous ${isContiguous(m.view)}`);
      } else if (end !== start) problems.push(`${where}: empty view with extent [${start}, ${end})`);
    }
    expect(problems).toEqual([]);
  });

  it("simplifyPair keeps the sequence of (source, destination) element pairs of 2,000 random view pairs", () => {
    const r = seededRandom(0x51a9);
    const problems: string[] = [];
    for (let c = 0; c < 2000 && problems.length < 5; c++) {
      // Two unrelated chains that end on the same shape: walk one, then fit a fresh base to the other.
      const base = randomShape(r, 4);
      let m: Modelled = { view: contiguous(base), shape: base, address: (idx) => rowMajor(idx, base) };
      for (let k = 0, n = 1 + r.int(4); k < n; k++) m = step(m, r);
      const order = r.shuffle(m.shape.map((_, i) => i));
      const pad = m.shape.map(() => r.int(2));
      const dstBase = contiguous(order.map((d) => m.shape[d]! + pad[d]!), r.int(3));
      const inverse = order.map((_, i) => order.indexOf(i));
      let dst = permute(dstBase, inverse);
      m.shape.forEach((n, i) => (dst = slice(dst, i, pad[i]!, pad[i]! + n)));

      const want: string[] = [];
      for (const idx of indices(m.shape)) want.push(`${addressOf(m.view, idx)}>${addressOf(dst, idx)}`);
      const s = simplifyPair(m.view, dst);
      const got: string[] = [];
      for (const idx of indices(s.shape)) {
        const a = idx.reduce((at, i, k) => at + i * s.src[k]!, m.view.offset);
        const b = idx.reduce((at, i, k) => at + i * s.dst[k]!, dst.offset);
        got.push(`${a}>${b}`);
      }
      if (count(m.shape) === 0) continue;
      if (s.shape.some((d) => d === 1)) problems.push(`case ${c}: size-1 dimension left in [${s.shape}]`);
      if (got.join() !== want.join()) {
        problems.push(`case ${c}: ${JSON.stringify(plain(m.view))} → ${JSON.stringify(plain(dst))} simplified to ${JSON.stringify(s)}`);
      }
    }
    expect(problems).toEqual([]);
  });
});
