import { serializationRank } from "../tensor/dtype.js";
import { type Tensor, type TensorInfo, byteLength } from "../tensor/tensor.js";
import { PREFIX_LENGTH } from "./header.js";

export interface DeclaredTensor extends TensorInfo {
  readonly name: string;
}

/** What PyTorch's `save_file` writes into `__metadata__` by default. */
export const DEFAULT_METADATA: Readonly<Record<string, string>> = { format: "pt" };

export interface EncodedHeader {
  /** Prefix, JSON and padding: everything before the data. */
  readonly bytes: Uint8Array;
  /** Byte offset of each tensor within the data section, in declaration order. */
  readonly offsets: readonly number[];
  readonly dataSize: number;
}

const encoder = new TextEncoder();

/**
 * The header for tensors stored in the given order, byte-compatible with the reference serializer:
 * compact JSON, `__metadata__` first, then `dtype`, `shape`, `data_offsets` per tensor, padded with spaces
 * so the data starts on an 8-byte boundary.
 */
export function encodeHeader(
  tensors: readonly DeclaredTensor[],
  metadata: Readonly<Record<string, string>> | null = DEFAULT_METADATA,
): EncodedHeader {
  const parts: string[] = [];
  if (metadata !== null) parts.push(`"__metadata__":${JSON.stringify(metadata)}`);
  const offsets: number[] = [];
  let offset = 0;
  for (const t of tensors) {
    const size = byteLength(t);
    offsets.push(offset);
    parts.push(
      `${JSON.stringify(t.name)}:{"dtype":${JSON.stringify(t.dtype)},"shape":[${t.shape.join(",")}],"data_offsets":[${offset},${offset + size}]}`,
    );
    offset += size;
    if (!Number.isSafeInteger(offset)) throw new RangeError("checkpoint larger than 2^53 bytes");
  }
  const json = encoder.encode(`{${parts.join(",")}}`);
  const padded = Math.ceil(json.byteLength / 8) * 8;
  const bytes = new Uint8Array(PREFIX_LENGTH + padded);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(padded), true);
  bytes.set(json, PREFIX_LENGTH);
  bytes.fill(0x20, PREFIX_LENGTH + json.byteLength);
  return { bytes, offsets, dataSize: offset };
}

/** Byte-wise comparison, as Rust and Python order UTF-8 strings (JavaScript's `<` compares UTF-16 units). */
export function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.byteLength, b.byteLength);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return a.byteLength - b.byteLength;
}

/** Whether two byte ranges hold the same bytes. */
export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  // Eight bytes at a time where both are aligned: comparing 1.3 GB tensors byte by byte would dominate verify.
  let i = 0;
  if (a.byteOffset % 8 === 0 && b.byteOffset % 8 === 0) {
    const words = Math.floor(a.byteLength / 8);
    const x = new BigUint64Array(a.buffer, a.byteOffset, words);
    const y = new BigUint64Array(b.buffer, b.byteOffset, words);
    for (let w = 0; w < words; w++) if (x[w] !== y[w]) return false;
    i = words * 8;
  }
  for (; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Names sorted as UTF-8 bytes, each encoded once. */
export function sortByUtf8<T>(items: readonly T[], key: (item: T) => string): T[] {
  const keyed = items.map((item) => ({ item, bytes: encoder.encode(key(item)) }));
  keyed.sort((a, b) => compareBytes(a.bytes, b.bytes));
  return keyed.map((k) => k.item);
}

/**
 * The order the reference serializer stores tensors in: wider dtypes first (by its dtype ranking), then by
 * name compared as UTF-8 bytes. Writing in this order makes a single-file output byte-identical to it.
 */
export function referenceOrder<T extends DeclaredTensor>(tensors: readonly T[]): T[] {
  const keyed = tensors.map((t) => ({ t, rank: serializationRank(t.dtype), key: encoder.encode(t.name) }));
  keyed.sort((a, b) => b.rank - a.rank || compareBytes(a.key, b.key));
  return keyed.map((k) => k.t);
}

/** Serialize small in-memory tensors into one safetensors image, in the reference serializer's order. */
export function serialize(tensors: Iterable<[string, Tensor]>, metadata: Readonly<Record<string, string>> | null = DEFAULT_METADATA): Uint8Array {
  const list = referenceOrder([...tensors].map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape, data: t.data })));
  const names = new Set<string>();
  for (const t of list) {
    if (names.has(t.name)) throw new RangeError(`tensor ${JSON.stringify(t.name)} given twice`);
    names.add(t.name);
  }
  const header = encodeHeader(list, metadata);
  const out = new Uint8Array(header.bytes.byteLength + header.dataSize);
  out.set(header.bytes);
  list.forEach((t, i) => out.set(t.data, header.bytes.byteLength + header.offsets[i]!));
  return out;
}
