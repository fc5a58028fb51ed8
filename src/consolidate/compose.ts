import type { Piece, PlannedTensor } from "../adapters/plan.js";
import type { TensorSource } from "../convert/stream.js";
import { ConversionError } from "../errors.js";
import { castInto } from "../tensor/cast.js";
import { type DType, itemSize } from "../tensor/dtype.js";
import type { TensorInfo } from "../tensor/tensor.js";
import { type View, contiguous } from "../tensor/view.js";
import type { AssembledTensor } from "./assemble.js";

/**
 * A conversion planned on the consolidated tensors, executed straight from the rank files: each piece of
 * the adapter's plan reads a view (a transpose, a selection, a slice, a reshape) of a consolidated tensor,
 * and is split here into the pieces of the saved pieces it meets. Every such view maps each of its axes
 * onto axes of the tensor, so the elements it takes from one saved piece (a box) form a box again: one
 * strided copy per saved piece. A view that maps its axes any other way is refused, never guessed at.
 */

interface Factor {
  /** The tensor axis this part of the view walks. */
  readonly axis: number;
  readonly size: number;
  /** Its stride in the output. */
  readonly dstStride: number;
}

interface Factored {
  /** The tensor index of the view's first element. */
  readonly base: readonly number[];
  /** The view's axes, each as one or more tensor axes (outer first), in the view's order. */
  readonly factors: readonly Factor[];
}

/**
 * Express a view of a contiguous tensor of `shape` as walks along its axes: each view axis walks one
 * tensor axis, or several adjacent ones whole (a reshape that merged them). Undefined when it does not.
 */
function factorView(src: View, dst: View, shape: readonly number[]): Factored | undefined {
  const strides = contiguous(shape).strides;
  const base: number[] = [];
  let rest = src.offset;
  for (let a = 0; a < shape.length; a++) {
    base.push(Math.floor(rest / strides[a]!));
    rest -= base[a]! * strides[a]!;
  }
  if (shape.length > 0 && base[0]! >= shape[0]!) return undefined;
  // Axes of size 1 share their stride with a neighbour and never move: only the others are walked.
  const axisOf = new Map<number, number>();
  shape.forEach((n, a) => {
    if (n > 1) axisOf.set(strides[a]!, a);
  });
  const used = new Set<number>();
  const factors: Factor[] = [];
  for (let k = 0; k < src.shape.length; k++) {
    let n = src.shape[k]!;
    if (n === 1) continue;
    let stride = src.strides[k]!;
    let dstStride = dst.strides[k]!;
    const parts: Factor[] = [];
    for (;;) {
      const a = axisOf.get(stride);
      if (a === undefined || used.has(a)) return undefined;
      used.add(a);
      if (n <= shape[a]! - base[a]!) {
        parts.push({ axis: a, size: n, dstStride });
        break;
      }
      if (base[a] !== 0 || n % shape[a]! !== 0) return undefined;
      parts.push({ axis: a, size: shape[a]!, dstStride });
      n /= shape[a]!;
      stride *= shape[a]!;
      dstStride *= shape[a]!;
    }
    factors.push(...parts.reverse());
  }
  return { base, factors };
}

/** How a composed piece names what it reads: a saved piece, possibly through its restoring cast. */
export type PieceSource = (piece: AssembledTensor["pieces"][number], consolidated: AssembledTensor, outDType: DType) => string;

/**
 * The pieces of `p` (which reads consolidated tensor `t`), each reading one saved piece of `t` instead.
 * Their elements are exactly `p`'s: the saved pieces tile `t`.
 */
export function composePiece(p: Piece, t: AssembledTensor, outDType: DType, sourceOf: PieceSource, into: string): Piece[] {
  if (p.srcView.shape.some((n) => n === 0)) return [];
  const f = factorView(p.srcView, p.dstView, t.shape);
  if (!f) {
    throw new ConversionError(`${into}: reads ${JSON.stringify(t.name)} through a view that does not map onto its axes (shape [${p.srcView.shape.join(", ")}], strides [${p.srcView.strides.join(", ")}]); it cannot be split by the rank files' pieces`);
  }
  const used = new Set(f.factors.map((x) => x.axis));
  const out: Piece[] = [];
  for (const s of t.pieces) {
    const box = s.entry.shape;
    const ps = contiguous(box).strides;
    let srcOffset = 0;
    let inside = true;
    for (let a = 0; a < t.shape.length && inside; a++) {
      if (used.has(a)) continue;
      const i = f.base[a]! - s.offset[a]!;
      if (i < 0 || i >= box[a]!) inside = false;
      else srcOffset += i * ps[a]!;
    }
    if (!inside) continue;
    let dstOffset = p.dstView.offset;
    const shape: number[] = [];
    const srcStrides: number[] = [];
    const dstStrides: number[] = [];
    for (const x of f.factors) {
      const b = f.base[x.axis]!;
      const lo = Math.max(b, s.offset[x.axis]!) - b;
      const hi = Math.min(b + x.size, s.offset[x.axis]! + box[x.axis]!) - b;
      if (hi <= lo) {
        inside = false;
        break;
      }
      srcOffset += (b + lo - s.offset[x.axis]!) * ps[x.axis]!;
      dstOffset += lo * x.dstStride;
      shape.push(hi - lo);
      srcStrides.push(ps[x.axis]!);
      dstStrides.push(x.dstStride);
    }
    if (!inside) continue;
    out.push({
      src: sourceOf(s, t, outDType),
      srcView: { offset: srcOffset, shape, strides: srcStrides },
      dstView: { offset: dstOffset, shape, strides: dstStrides },
    });
  }
  return out;
}

/** An adapter's planned tensor with every piece reading the rank files instead of consolidated tensors. */
export function composeTensor(t: PlannedTensor, consolidated: ReadonlyMap<string, AssembledTensor>, sourceOf: PieceSource): PlannedTensor {
  const pieces = t.pieces.flatMap((p) => {
    const c = consolidated.get(p.src);
    if (!c) throw new Error(`internal: ${t.name} reads ${JSON.stringify(p.src)}, which the consolidation does not have`);
    return composePiece(p, c, t.dtype, sourceOf, t.name);
  });
  return { ...t, pieces };
}

/** A saved piece read in another dtype: the restoring cast a consolidation would have made, done on read. */
export interface RestoredPiece {
  /** The saved piece's own name in the base source. */
  readonly of: string;
  readonly saved: DType;
  readonly info: TensorInfo;
}

/**
 * `base` plus pieces read through their restoring cast, under names of their own. A conversion that casts
 * a restored tensor again (bf16 restored from f32, then widened to f32 by a rule) must round exactly as
 * consolidating first and converting then would: twice.
 */
export function restoringSource(base: TensorSource, restored: ReadonlyMap<string, RestoredPiece>): TensorSource {
  const convert = (r: RestoredPiece, offset: number, buf: Uint8Array, read: (at: number, into: Uint8Array) => void | Promise<void>): void | Promise<void> => {
    const outItem = itemSize(r.info.dtype);
    const inItem = itemSize(r.saved);
    const count = buf.byteLength / outItem;
    const saved = new Uint8Array(count * inItem);
    const cast = (): void => {
      if (buf.byteOffset % outItem === 0) castInto(saved, r.saved, buf, r.info.dtype, count);
      else {
        const aligned = new Uint8Array(buf.byteLength);
        castInto(saved, r.saved, aligned, r.info.dtype, count);
        buf.set(aligned);
      }
    };
    const pending = read((offset / outItem) * inItem, saved);
    return pending ? pending.then(cast) : cast();
  };
  const source: TensorSource = {
    info: (name) => restored.get(name)?.info ?? base.info(name),
    read: async (name, offset, buf, signal) => {
      const r = restored.get(name);
      if (!r) return base.read(name, offset, buf, signal);
      await convert(r, offset, buf, (at, into) => base.read(r.of, at, into, signal));
    },
  };
  if (base.readSync) {
    const readSync = base.readSync.bind(base);
    source.readSync = (name, offset, buf) => {
      const r = restored.get(name);
      if (!r) return readSync(name, offset, buf);
      void convert(r, offset, buf, (at, into) => readSync(r.of, at, into));
    };
  }
  if (base.view) {
    const view = base.view.bind(base);
    source.view = (name, offset, length) => (restored.has(name) ? undefined : view(name, offset, length));
  }
  return source;
}
