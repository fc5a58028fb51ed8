/**
 * A strided view of a flat element buffer, the way PyTorch describes `transpose`, `permute`, `select`,
 * `narrow` and `reshape` without moving data. Every conversion rule is a set of view-to-view copies, so
 * the same rule can run on bytes in memory or on byte ranges read from disk.
 */
export interface View {
  /** Element offset of index (0, …, 0). */
  readonly offset: number;
  readonly shape: readonly number[];
  /** Element strides, one per dimension; never negative. */
  readonly strides: readonly number[];
}

export function contiguous(shape: readonly number[], offset = 0): View {
  const strides = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i]!;
  }
  return { offset, shape: [...shape], strides };
}

function checkDim(v: View, dim: number, what: string): void {
  if (!Number.isInteger(dim) || dim < 0 || dim >= v.shape.length) {
    throw new RangeError(`${what}: dimension ${dim} out of range for a ${v.shape.length}-d view`);
  }
}

export function permute(v: View, order: readonly number[]): View {
  if (order.length !== v.shape.length || new Set(order).size !== order.length) {
    throw new RangeError(`permute: order [${order.join(", ")}] does not fit a ${v.shape.length}-d view`);
  }
  for (const d of order) checkDim(v, d, "permute");
  return { offset: v.offset, shape: order.map((d) => v.shape[d]!), strides: order.map((d) => v.strides[d]!) };
}

export function transpose(v: View, a: number, b: number): View {
  checkDim(v, a, "transpose");
  checkDim(v, b, "transpose");
  const order = v.shape.map((_, i) => i);
  order[a] = b;
  order[b] = a;
  return permute(v, order);
}

/** `v[..., index, ...]` along `dim`: the dimension disappears. */
export function select(v: View, dim: number, index: number): View {
  checkDim(v, dim, "select");
  if (!Number.isInteger(index) || index < 0 || index >= v.shape[dim]!) {
    throw new RangeError(`select: index ${index} out of range for size ${v.shape[dim]}`);
  }
  return {
    offset: v.offset + index * v.strides[dim]!,
    shape: v.shape.filter((_, i) => i !== dim),
    strides: v.strides.filter((_, i) => i !== dim),
  };
}

/** `v[..., start:end, ...]` along `dim` (PyTorch `narrow`). */
export function slice(v: View, dim: number, start: number, end: number): View {
  checkDim(v, dim, "slice");
  if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end < start || end > v.shape[dim]!) {
    throw new RangeError(`slice: [${start}, ${end}) out of range for size ${v.shape[dim]}`);
  }
  const shape = [...v.shape];
  shape[dim] = end - start;
  return { offset: v.offset + start * v.strides[dim]!, shape, strides: [...v.strides] };
}

export function isContiguous(v: View): boolean {
  let s = 1;
  for (let i = v.shape.length - 1; i >= 0; i--) {
    if (v.shape[i] !== 1 && v.strides[i] !== s) return false;
    s *= v.shape[i]!;
  }
  return true;
}

/** Reshape is only defined here for contiguous views, which is all the conversion rules need. */
export function reshape(v: View, shape: readonly number[]): View {
  const from = v.shape.reduce((a, b) => a * b, 1);
  const to = shape.reduce((a, b) => a * b, 1);
  if (from !== to) {
    throw new RangeError(`reshape: cannot view [${v.shape.join(", ")}] as [${shape.join(", ")}]`);
  }
  if (!isContiguous(v)) throw new RangeError("reshape: view is not contiguous");
  return contiguous(shape, v.offset);
}

/** Smallest element range [start, end) that holds every element the view touches. */
export function extent(v: View): { start: number; end: number } {
  if (v.shape.some((d) => d === 0)) return { start: v.offset, end: v.offset };
  let last = v.offset;
  for (let i = 0; i < v.shape.length; i++) last += (v.shape[i]! - 1) * v.strides[i]!;
  return { start: v.offset, end: last + 1 };
}

export function rebase(v: View, origin: number): View {
  return { offset: v.offset - origin, shape: v.shape, strides: v.strides };
}

/**
 * Canonical form for the kernels: size-1 dimensions dropped and neighbours merged wherever both views
 * step through them as one run. A plain copy becomes one dimension, a transpose two.
 */
export function simplifyPair(src: View, dst: View): { shape: number[]; src: number[]; dst: number[] } {
  const shape: number[] = [];
  const ss: number[] = [];
  const ds: number[] = [];
  for (let i = 0; i < src.shape.length; i++) {
    const n = src.shape[i]!;
    if (n === 1) continue;
    const k = shape.length - 1;
    if (k >= 0 && ss[k] === src.strides[i]! * n && ds[k] === dst.strides[i]! * n) {
      shape[k] = shape[k]! * n;
      ss[k] = src.strides[i]!;
      ds[k] = dst.strides[i]!;
    } else {
      shape.push(n);
      ss.push(src.strides[i]!);
      ds.push(dst.strides[i]!);
    }
  }
  return { shape, src: ss, dst: ds };
}
