/**
 * Boxes of a tensor's index space, and the exact check that a set of them tiles a tensor: no element in
 * two, none outside, none in no box. Works on the boxes alone (a sweep along the first axis), never on
 * elements, so a tensor of billions of elements in thousands of pieces is checked in microseconds.
 */

export interface Box {
  readonly offset: readonly number[];
  readonly shape: readonly number[];
}

export type TilingProblem =
  | { readonly kind: "outside"; readonly piece: number }
  | { readonly kind: "overlap"; readonly a: number; readonly b: number; readonly region: Box }
  | { readonly kind: "gap"; readonly region: Box; readonly missing: number };

function volume(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

function isEmpty(b: Box): boolean {
  return b.shape.some((d) => d === 0);
}

/** The box both hold, or undefined when they share no element. */
export function intersect(a: Box, b: Box): Box | undefined {
  const offset: number[] = [];
  const shape: number[] = [];
  for (let d = 0; d < a.shape.length; d++) {
    const lo = Math.max(a.offset[d]!, b.offset[d]!);
    const hi = Math.min(a.offset[d]! + a.shape[d]!, b.offset[d]! + b.shape[d]!);
    if (hi <= lo) return undefined;
    offset.push(lo);
    shape.push(hi - lo);
  }
  return { offset, shape };
}

/** The smallest shape holding every box, as Automodel computes a tensor's shape: per axis, the largest end. */
export function boundingShape(boxes: readonly Box[], rank: number): number[] {
  const out = new Array<number>(rank).fill(0);
  for (const b of boxes) for (let d = 0; d < rank; d++) out[d] = Math.max(out[d]!, b.offset[d]! + b.shape[d]!);
  return out;
}

/** `[48:64, 0:16]`, numpy's spelling of a box. */
export function formatBox(b: Box): string {
  return `[${b.shape.map((n, d) => `${b.offset[d]}:${b.offset[d]! + n}`).join(", ")}]`;
}

/** At most this many overlaps are reported per tensor; one is enough to refuse. */
const MAX_OVERLAPS = 3;

/**
 * Whether `boxes` tile the tensor of `shape` exactly. Boxes must have the tensor's rank. Empty boxes hold
 * no element and only need to lie inside (Automodel writes an empty piece at the end of an axis, offset
 * equal to its size). Returns every piece outside, the first few overlaps and the first gap.
 */
export function checkTiling(shape: readonly number[], boxes: readonly Box[]): TilingProblem[] {
  const problems: TilingProblem[] = [];
  const full: Box = { offset: shape.map(() => 0), shape };
  const inside: number[] = [];
  boxes.forEach((b, i) => {
    const ok = b.shape.every((n, d) => b.offset[d]! >= 0 && b.offset[d]! + n <= shape[d]!);
    if (!ok) problems.push({ kind: "outside", piece: i });
    else if (!isEmpty(b)) inside.push(i);
  });
  if (problems.length > 0) return problems;

  // Sweep along axis 0: a box can only overlap the boxes still open where it starts. Row bands (FSDP)
  // keep one box open, column pieces a handful.
  const order = [...inside].sort((i, j) => (boxes[i]!.offset[0] ?? 0) - (boxes[j]!.offset[0] ?? 0));
  const open: number[] = [];
  let covered = 0;
  for (const i of order) {
    const b = boxes[i]!;
    if (shape.length > 0) {
      const start = b.offset[0]!;
      for (let k = open.length - 1; k >= 0; k--) {
        const o = boxes[open[k]!]!;
        if (o.offset[0]! + o.shape[0]! <= start) open.splice(k, 1);
      }
    }
    for (const j of open) {
      const region = intersect(boxes[j]!, b);
      if (region && problems.length < MAX_OVERLAPS) problems.push({ kind: "overlap", a: j, b: i, region });
    }
    open.push(i);
    covered += volume(b.shape);
  }
  if (problems.length > 0) return problems;
  const total = volume(shape);
  if (covered < total) {
    const region = firstGap(shape, inside.map((i) => boxes[i]!)) ?? full;
    problems.push({ kind: "gap", region, missing: total - covered });
  }
  return problems;
}

/**
 * The first box of the tensor that no box covers, for a message; only called once boxes are known not to
 * overlap. Splits the tensor into slabs at every box boundary along one axis, then looks inside each slab
 * along the next.
 */
function firstGap(shape: readonly number[], boxes: readonly Box[]): Box | undefined {
  const rank = shape.length;
  const walk = (d: number, within: readonly Box[], lo: number[], hi: number[]): Box | undefined => {
    if (d === rank) return within.length === 0 ? { offset: lo, shape: hi.map((h, k) => h - lo[k]!) } : undefined;
    const cuts = new Set<number>([0, shape[d]!]);
    for (const b of within) {
      cuts.add(b.offset[d]!);
      cuts.add(b.offset[d]! + b.shape[d]!);
    }
    const sorted = [...cuts].sort((a, b) => a - b);
    for (let k = 0; k + 1 < sorted.length; k++) {
      const a = sorted[k]!;
      const b = sorted[k + 1]!;
      const over = within.filter((x) => x.offset[d]! <= a && x.offset[d]! + x.shape[d]! >= b);
      if (over.length === 0) {
        const offset = [...lo, a, ...shape.slice(d + 1).map(() => 0)];
        const ends = [...hi, b, ...shape.slice(d + 1)];
        return { offset, shape: ends.map((e, i) => e - offset[i]!) };
      }
      const g = walk(d + 1, over, [...lo, a], [...hi, b]);
      if (g) return g;
    }
    return undefined;
  };
  return walk(0, boxes, [], []);
}
