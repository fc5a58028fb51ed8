import { canCast, castInto } from "./cast.js";
import { copyView } from "./copy.js";
import { type DType, itemSize } from "./dtype.js";
import { type Tensor, formatShape, makeTensor, numel, sameShape } from "./tensor.js";
import { contiguous, select, slice, transpose } from "./view.js";

/**
 * Whole-tensor operations for in-memory tensors. Each returns a new tensor in fresh memory (never a window
 * into its input), so a result can be mutated without touching the input.
 */

function describe(t: Tensor): string {
  return `${t.dtype}${formatShape(t.shape)}`;
}

/** A `Tensor` is a plain object, so its bytes may disagree with its shape; the kernels would not notice. */
function checked(op: string, t: Tensor, index?: number): Tensor {
  const size = numel(t.shape) * itemSize(t.dtype);
  if (t.data.byteLength !== size) {
    const which = index === undefined ? "tensor" : `tensor ${index}`;
    throw new RangeError(`${op}: ${which} ${describe(t)} needs ${size} bytes, has ${t.data.byteLength}`);
  }
  return t;
}

function nonEmpty(op: string, ts: readonly Tensor[]): Tensor {
  const first = ts[0];
  if (first === undefined) throw new RangeError(`${op}: needs at least one tensor`);
  ts.forEach((t, i) => checked(op, t, i));
  return first;
}

/** `t.transpose(-2, -1).contiguous()`. */
export function transposeLast2(t: Tensor): Tensor {
  checked("transposeLast2", t);
  const rank = t.shape.length;
  if (rank < 2) throw new RangeError(`transposeLast2: needs at least 2 dimensions, got ${describe(t)}`);
  const src = transpose(contiguous(t.shape), rank - 2, rank - 1);
  const out = makeTensor(t.dtype, src.shape);
  copyView(t.data, out.data, itemSize(t.dtype), src, contiguous(out.shape));
  return out;
}

/** `torch.stack(ts)`: a new first axis. */
export function stack(ts: readonly Tensor[]): Tensor {
  const first = nonEmpty("stack", ts);
  ts.forEach((t, i) => {
    if (t.dtype !== first.dtype || !sameShape(t.shape, first.shape)) {
      throw new RangeError(`stack: tensor ${i} is ${describe(t)} but tensor 0 is ${describe(first)}`);
    }
  });
  const out = makeTensor(first.dtype, [ts.length, ...first.shape]);
  const dst = contiguous(out.shape);
  ts.forEach((t, i) => copyView(t.data, out.data, itemSize(t.dtype), contiguous(t.shape), select(dst, 0, i)));
  return out;
}

/** `torch.cat(ts, dim=-1)`. */
export function concatLast(ts: readonly Tensor[]): Tensor {
  const first = nonEmpty("concatLast", ts);
  const rank = first.shape.length;
  if (rank === 0) throw new RangeError(`concatLast: cannot concatenate 0-d tensors`);
  const lead = first.shape.slice(0, -1);
  ts.forEach((t, i) => {
    if (t.dtype !== first.dtype || t.shape.length !== rank || !sameShape(t.shape.slice(0, -1), lead)) {
      throw new RangeError(
        `concatLast: tensor ${i} is ${describe(t)} but tensor 0 is ${describe(first)}; ` +
          `all but the last dimension and the dtype must match`,
      );
    }
  });
  const width = ts.reduce((sum, t) => sum + t.shape[rank - 1]!, 0);
  const out = makeTensor(first.dtype, [...lead, width]);
  const dst = contiguous(out.shape);
  let at = 0;
  for (const t of ts) {
    const n = t.shape[rank - 1]!;
    copyView(t.data, out.data, itemSize(t.dtype), contiguous(t.shape), slice(dst, rank - 1, at, at + n));
    at += n;
  }
  return out;
}

/** `t[start:end]` along the first axis, copied. */
export function selectRows(t: Tensor, start: number, end: number): Tensor {
  checked("selectRows", t);
  const rows = t.shape[0];
  if (rows === undefined) throw new RangeError(`selectRows: cannot take rows of a 0-d tensor`);
  if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end < start || end > rows) {
    throw new RangeError(`selectRows: rows [${start}, ${end}) out of range for ${describe(t)}`);
  }
  const src = slice(contiguous(t.shape), 0, start, end);
  const out = makeTensor(t.dtype, src.shape);
  copyView(t.data, out.data, itemSize(t.dtype), src, contiguous(out.shape));
  return out;
}

/** `t.to(dtype)` for floats, bit-identical to PyTorch (SPEC §4); a same-dtype "cast" is a copy of any dtype. */
export function cast(t: Tensor, dtype: DType): Tensor {
  checked("cast", t);
  if (!canCast(t.dtype, dtype)) {
    throw new TypeError(
      `cast: cannot cast ${describe(t)} to ${dtype}: only float tensors are cast, to F32, F16, BF16 or F64`,
    );
  }
  const out = makeTensor(dtype, t.shape);
  // castInto reads through typed arrays, which need an aligned start; a fresh copy always is.
  const src = t.data.byteOffset % itemSize(t.dtype) === 0 ? t.data : t.data.slice();
  castInto(src, t.dtype, out.data, dtype, numel(t.shape));
  return out;
}
