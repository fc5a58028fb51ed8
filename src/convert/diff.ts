import * as crypto from "node:crypto";
import { InputError } from "../errors.js";
import { Checkpoint, type StoredTensor } from "../safetensors/checkpoint.js";
import { castInto } from "../tensor/cast.js";
import { type DType, isFloat, itemSize } from "../tensor/dtype.js";
import { formatShape, sameShape } from "../tensor/tensor.js";
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
  /** sha256 of each compared tensor's bytes, in A and in B. */
  readonly hashes: ReadonlyMap<string, { readonly a: string; readonly b: string }>;
  readonly identical: boolean;
  readonly seconds: number;
}

export interface DiffOptions {
  readonly followSymlinks?: boolean;
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
    const wa = new Float64Array(n);
    const wb = new Float64Array(n);
    castInto(a, dtype, new Uint8Array(wa.buffer), "F64", n);
    castInto(b, dtype, new Uint8Array(wb.buffer), "F64", n);
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

async function compareTensor(a: StoredTensor, b: StoredTensor): Promise<{ same: boolean; hashA: string; hashB: string; max: number; count: number }> {
  const ha = crypto.createHash("sha256");
  const hb = crypto.createHash("sha256");
  const size = a.entry.end - a.entry.begin;
  const bufA = new Uint8Array(new ArrayBuffer(Math.min(CHUNK, size)));
  const bufB = new Uint8Array(new ArrayBuffer(Math.min(CHUNK, size)));
  let same = true;
  let max = 0;
  let count = 0;
  for (let at = 0; at < size; at += CHUNK) {
    const len = Math.min(CHUNK, size - at);
    const ca = bufA.subarray(0, len);
    const cb = bufB.subarray(0, len);
    await Promise.all([a.file.readRange(a.entry, at, ca), b.file.readRange(b.entry, at, cb)]);
    ha.update(ca);
    hb.update(cb);
    if (Buffer.compare(ca, cb) !== 0) {
      same = false;
      const d = chunkDelta(ca, cb, a.dtype);
      max = Math.max(max, d.max);
      count += d.count;
    }
  }
  return { same, hashA: ha.digest("hex"), hashB: hb.digest("hex"), max, count };
}

/** Compare two checkpoints of the same layout tensor by tensor, streaming their bytes. */
export async function diffCheckpoints(pathA: string, pathB: string, options: DiffOptions = {}): Promise<DiffReport> {
  const started = performance.now();
  const open = options.followSymlinks ? { followSymlinks: true } : {};
  const a = Checkpoint.open(pathA, open);
  let b: Checkpoint | undefined;
  try {
    b = Checkpoint.open(pathB, open);
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
    for (const name of names) {
      const ta = a.tensors.get(name);
      const tb = b.tensors.get(name);
      if (!tb) {
        differences.push({ name, kind: "only-a", detail: `only in ${pathA} (${ta!.dtype}${formatShape(ta!.shape)})` });
        continue;
      }
      if (!ta) {
        differences.push({ name, kind: "only-b", detail: `only in ${pathB} (${tb.dtype}${formatShape(tb.shape)})` });
        continue;
      }
      if (ta.dtype !== tb.dtype) {
        differences.push({ name, kind: "dtype", detail: `dtype ${ta.dtype} vs ${tb.dtype}` });
      } else if (!sameShape(ta.shape, tb.shape)) {
        differences.push({ name, kind: "shape", detail: `shape ${formatShape(ta.shape)} vs ${formatShape(tb.shape)}` });
      } else {
        const r = await compareTensor(ta, tb);
        hashes.set(name, { a: r.hashA, b: r.hashB });
        if (r.same) same++;
        else {
          differences.push({
            name,
            kind: "content",
            detail: `${r.count} of ${ta.shape.reduce((x, y) => x * y, 1)} elements differ, max |a - b| = ${r.max}`,
            maxAbsDiff: r.max,
            differingElements: r.count,
          });
        }
      }
      bytesDone += ta.entry.end - ta.entry.begin;
      options.onProgress?.(bytesDone, bytesTotal);
    }
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
  } finally {
    a.close();
    b?.close();
  }
}
