import { InputError, throwIfAborted } from "../errors.js";
import type { Checkpoint, StoredTensor } from "../safetensors/checkpoint.js";
import { equalBytes } from "../safetensors/encode.js";
import { toFloat64 } from "../tensor/cast.js";
import { type DType, isFloat, itemSize } from "../tensor/dtype.js";
import { formatShape, numel, sameShape } from "../tensor/tensor.js";
import { detectLayout, layoutName } from "./layout.js";

export type DifferenceKind = "only-a" | "only-b" | "dtype" | "shape" | "content";

export interface TensorDifference {
  readonly name: string;
  readonly kind: DifferenceKind;
  readonly detail: string;
  /** Largest |a − b| over the elements (content differences of equal dtype). */
  readonly maxAbsDiff?: number;
  readonly differingElements?: number;
}

export interface DiffReport {
  readonly a: string;
  readonly b: string;
  readonly tensorsA: number;
  readonly tensorsB: number;
  /** Tensors equal in name, dtype, shape and bytes. */
  readonly same: number;
  readonly differences: readonly TensorDifference[];
  /** sha256 of each compared tensor's bytes, in A and in B; empty unless asked for. */
  readonly hashes: ReadonlyMap<string, { readonly a: string; readonly b: string }>;
  readonly identical: boolean;
  readonly seconds: number;
}

/** An incremental hash of a tensor's bytes (the Node entry gives sha256). */
export interface Hasher {
  update(bytes: Uint8Array): void;
  digest(): string;
}

export interface CompareOptions {
  /** Hash every compared tensor with hashers from here (reported in `hashes`); the comparison itself does not need it. */
  readonly hasher?: () => Hasher;
  readonly signal?: AbortSignal;
  readonly onProgress?: (bytesDone: number, bytesTotal: number) => void;
}

const CHUNK = 16 * 1024 * 1024;

/** Elementwise |a − b| statistics of two equal-dtype chunks; integers compare exactly as BigInt where needed. */
function chunkDelta(a: Uint8Array, b: Uint8Array, dtype: DType): { max: number; count: number } {
  const size = itemSize(dtype);
  const n = a.byteLength / size;
  let max = 0;
  let count = 0;
  if (isFloat(dtype)) {
    const wa = toFloat64(a, dtype);
    const wb = toFloat64(b, dtype);
    for (let i = 0; i < n; i++) {
      const x = wa[i]!;
      const y = wb[i]!;
      // Equal values (a NaN payload difference included) are not counted; -0 against 0 is, with distance 0.
      if (Object.is(x, y) || (Number.isNaN(x) && Number.isNaN(y))) continue;
      const d = Number.isNaN(x) || Number.isNaN(y) ? Number.POSITIVE_INFINITY : Math.abs(x - y);
      count++;
      if (d > max || Number.isNaN(d)) max = d;
    }
    return { max, count };
  }
  const view = (u: Uint8Array): DataView => new DataView(u.buffer, u.byteOffset, u.byteLength);
  const va = view(a);
  const vb = view(b);
  for (let i = 0; i < n; i++) {
    let x: number;
    let y: number;
    switch (size) {
      case 1:
        x = dtype === "I8" ? va.getInt8(i) : va.getUint8(i);
        y = dtype === "I8" ? vb.getInt8(i) : vb.getUint8(i);
        break;
      case 2:
        x = dtype === "I16" ? va.getInt16(2 * i, true) : va.getUint16(2 * i, true);
        y = dtype === "I16" ? vb.getInt16(2 * i, true) : vb.getUint16(2 * i, true);
        break;
      case 4:
        x = dtype === "I32" ? va.getInt32(4 * i, true) : va.getUint32(4 * i, true);
        y = dtype === "I32" ? vb.getInt32(4 * i, true) : vb.getUint32(4 * i, true);
        break;
      default: {
        // 64-bit integers: the distance is exact in BigInt, then reported as a number.
        const p = dtype === "I64" ? va.getBigInt64(8 * i, true) : va.getBigUint64(8 * i, true);
        const q = dtype === "I64" ? vb.getBigInt64(8 * i, true) : vb.getBigUint64(8 * i, true);
        x = 0;
        y = Number(p > q ? p - q : q - p);
      }
    }
    if (x !== y) {
      count++;
      max = Math.max(max, Math.abs(x - y));
    }
  }
  return { max, count };
}

interface Pair {
  readonly name: string;
  readonly a: StoredTensor;
  readonly b: StoredTensor;
}

interface PairChunk {
  readonly pair: Pair;
  readonly a: Uint8Array;
  readonly b: Uint8Array;
  readonly last: boolean;
}

/**
 * The bytes of every pair of tensors, chunk by chunk, from two reused double buffers: the next chunk is
 * read while the caller hashes and compares this one (which it must finish before asking for the next).
 */
async function* pairedChunks(pairs: readonly Pair[], signal?: AbortSignal): AsyncGenerator<PairChunk> {
  const slots = [0, 1].map(() => ({ a: new Uint8Array(new ArrayBuffer(CHUNK)), b: new Uint8Array(new ArrayBuffer(CHUNK)) }));
  const jobs = function* () {
    for (const pair of pairs) {
      const size = pair.a.entry.end - pair.a.entry.begin;
      for (let at = 0; at < size || (at === 0 && size === 0); at += CHUNK) {
        const len = Math.min(CHUNK, size - at);
        yield { pair, at, len, last: at + len >= size };
        if (size === 0) break;
      }
    }
  };
  let k = 0;
  const start = (job: { pair: Pair; at: number; len: number; last: boolean }) => {
    const slot = slots[k++ % 2]!;
    const a = slot.a.subarray(0, job.len);
    const b = slot.b.subarray(0, job.len);
    // Both reads end before a failure is reported: the caller closes the files next.
    const done = Promise.allSettled([
      job.pair.a.file.readRange(job.pair.a.entry, job.at, a, signal),
      job.pair.b.file.readRange(job.pair.b.entry, job.at, b, signal),
    ]).then((results) => {
      for (const r of results) if (r.status === "rejected") throw r.reason;
      return { pair: job.pair, a, b, last: job.last };
    });
    done.catch(() => undefined);
    return done;
  };
  const it = jobs();
  let next = it.next();
  let pending = next.done ? undefined : start(next.value);
  while (pending) {
    const ready = await pending;
    next = it.next();
    pending = next.done ? undefined : start(next.value);
    yield ready;
  }
}

/** Compare two checkpoints of the same layout tensor by tensor, streaming their bytes. */
export async function compareCheckpoints(a: Checkpoint, b: Checkpoint, options: CompareOptions = {}): Promise<DiffReport> {
  const started = performance.now();
  const pathA = a.where;
  const pathB = b.where;
  const la = detectLayout(a.tensors.keys()).layout;
  const lb = detectLayout(b.tensors.keys()).layout;
  if (la && lb && la !== lb) {
    throw new InputError(`${pathA} is in the ${layoutName(la)} layout but ${pathB} is ${layoutName(lb)}; convert one of them first`);
  }
  const differences: TensorDifference[] = [];
  const hashes = new Map<string, { a: string; b: string }>();
  let same = 0;
  let bytesDone = 0;
  let bytesTotal = 0;
  for (const t of a.tensors.values()) if (b.tensors.has(t.name)) bytesTotal += t.entry.end - t.entry.begin;
  const names = [...new Set([...a.tensors.keys(), ...b.tensors.keys()])].sort();
  const pairs: Pair[] = [];
  for (const name of names) {
    const ta = a.tensors.get(name);
    const tb = b.tensors.get(name);
    if (!tb) differences.push({ name, kind: "only-a", detail: `only in ${pathA} (${ta!.dtype}${formatShape(ta!.shape)})` });
    else if (!ta) differences.push({ name, kind: "only-b", detail: `only in ${pathB} (${tb.dtype}${formatShape(tb.shape)})` });
    else if (ta.dtype !== tb.dtype) differences.push({ name, kind: "dtype", detail: `dtype ${ta.dtype} vs ${tb.dtype}` });
    else if (!sameShape(ta.shape, tb.shape)) {
      differences.push({ name, kind: "shape", detail: `shape ${formatShape(ta.shape)} vs ${formatShape(tb.shape)}` });
    } else pairs.push({ name, a: ta, b: tb });
  }
  const hasher = (): Hasher | undefined => options.hasher?.();
  let ha = hasher();
  let hb = hasher();
  let delta = { max: 0, count: 0 };
  let equal = true;
  for await (const c of pairedChunks(pairs, options.signal)) {
    ha?.update(c.a);
    hb?.update(c.b);
    if (!equalBytes(c.a, c.b)) {
      equal = false;
      const d = chunkDelta(c.a, c.b, c.pair.a.dtype);
      delta = { max: Math.max(delta.max, d.max), count: delta.count + d.count };
    }
    bytesDone += c.a.byteLength;
    throwIfAborted(options.signal);
    if (!c.last) continue;
    const { name, a: ta } = c.pair;
    if (ha && hb) hashes.set(name, { a: ha.digest(), b: hb.digest() });
    if (equal) same++;
    else {
      differences.push({
        name,
        kind: "content",
        detail: `${delta.count} of ${numel(ta.shape)} elements differ, max |a - b| = ${delta.max}`,
        maxAbsDiff: delta.max,
        differingElements: delta.count,
      });
    }
    ha = hasher();
    hb = hasher();
    delta = { max: 0, count: 0 };
    equal = true;
    options.onProgress?.(bytesDone, bytesTotal);
  }
  differences.sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));
  return {
    a: pathA,
    b: pathB,
    tensorsA: a.tensors.size,
    tensorsB: b.tensors.size,
    same,
    differences,
    hashes,
    identical: differences.length === 0,
    seconds: (performance.now() - started) / 1000,
  };
}
