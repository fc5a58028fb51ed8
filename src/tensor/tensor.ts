import { type DType, itemSize } from "./dtype.js";

/** A tensor is its dtype, its shape and its little-endian bytes; nothing else. */
export interface Tensor {
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly data: Uint8Array;
}

/** What planning needs to know of a tensor: everything but its bytes. */
export interface TensorInfo {
  readonly dtype: DType;
  readonly shape: readonly number[];
}

/** Number of elements, or undefined when it does not fit a safe integer. A zero anywhere makes it 0. */
export function numelOrUndefined(shape: readonly number[]): number | undefined {
  if (shape.includes(0)) return 0;
  let n = 1;
  for (const d of shape) {
    n *= d;
    if (!Number.isSafeInteger(n)) return undefined;
  }
  return n;
}

export function numel(shape: readonly number[]): number {
  const n = numelOrUndefined(shape);
  if (n === undefined) throw new RangeError(`shape [${shape.join(", ")}] has more elements than 2^53`);
  return n;
}

export function byteLength(info: TensorInfo): number {
  return numel(info.shape) * itemSize(info.dtype);
}

export function makeTensor(dtype: DType, shape: readonly number[], data?: Uint8Array): Tensor {
  const size = byteLength({ dtype, shape });
  if (data === undefined) return { dtype, shape: [...shape], data: new Uint8Array(size) };
  if (data.byteLength !== size) {
    throw new RangeError(`tensor of ${dtype}[${shape.join(", ")}] needs ${size} bytes, got ${data.byteLength}`);
  }
  return { dtype, shape: [...shape], data };
}

export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

export function formatShape(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}
