import type { PieceScale, PlannedTensor } from "../adapters/plan.js";
import { type DType, itemSize } from "../tensor/dtype.js";
import { byteLength } from "../tensor/tensor.js";
import { type View, extent, rebase, simplifyPair } from "../tensor/view.js";

/**
 * How a stream cuts planned tensors into chunks: contiguous byte ranges of the output, each filled from
 * whole pieces, with the reads each needs. Pure planning over names, dtypes and views: nothing here reads
 * or writes a byte.
 */

/** What chunk planning needs to know of the input: each tensor's dtype. */
export type InputDTypes = (name: string) => DType;

/** Whether output tensors are stored back to back, so several small ones can share one write. */
export type Follows = (previous: string, next: string) => boolean;

/**
 * Small enough that a chunk's source and destination stay in a core's L2 cache (1 MB here) while it is
 * transposed, read from the page cache and written back; large enough to keep system calls few. Measured on
 * the bench checkpoint: 1 MB chunks cut user CPU by ~0.15 s against 4 MB (whose transposes ran from L3 at
 * 3–4 GB/s instead of 9), 512 KB chunks were slower again, and 4 MB beat 16 MB.
 */
export const CHUNK_BYTES = 1024 * 1024;

export interface PieceTask {
  readonly src: string;
  readonly srcDType: DType;
  /** Bytes of the input tensor this piece reads: [srcByteStart, srcByteStart + srcByteLength). */
  readonly srcByteStart: number;
  readonly srcByteLength: number;
  readonly srcView: View;
  readonly dstDType: DType;
  /** Byte offset, within the chunk, of the region `dstView` is relative to. */
  readonly dstBase: number;
  readonly dstView: View;
  /** Read straight into the chunk at this byte offset (same dtype, contiguous on both sides). */
  readonly directAt?: number;
  /** The input holds quantized codes: the scales to apply (the scale tensor is read as well). */
  readonly scale?: PieceScale;
}

/** Which bytes of which output tensor a part of a chunk holds. */
export interface ChunkSpan {
  readonly tensor: PlannedTensor;
  /** Byte offset of the span within the chunk. */
  readonly at: number;
  /** Byte offset of the span within its tensor. */
  readonly byteStart: number;
  readonly byteLength: number;
}

export interface Chunk {
  /** The output tensor the chunk starts in, and where in it; the chunk may run on into following tensors. */
  readonly tensor: string;
  readonly byteStart: number;
  readonly byteLength: number;
  readonly pieces: readonly PieceTask[];
  /** Tensors whose last byte is in this chunk. */
  readonly tensorsCompleted: number;
  /** The tensors the chunk holds, in order: one, or several small whole ones packed together. */
  readonly spans: readonly ChunkSpan[];
}

interface Segment {
  readonly src: string;
  readonly scale: PieceScale | undefined;
  readonly srcView: View;
  readonly dstView: View;
  readonly dstStart: number;
  readonly dstEnd: number;
}

function isRun(src: View, dst: View): { n: number } | undefined {
  const s = simplifyPair(src, dst);
  if (s.shape.length === 0) return { n: 1 };
  return s.shape.length === 1 && s.src[0] === 1 && s.dst[0] === 1 ? { n: s.shape[0]! } : undefined;
}

/** Pieces that are plain runs on both sides can be cut anywhere; others are taken whole. */
function segments(t: PlannedTensor, maxElements: number): Segment[] {
  const out: Segment[] = [];
  for (const p of t.pieces) {
    if (p.srcView.shape.some((d) => d === 0)) continue;
    const run = isRun(p.srcView, p.dstView);
    if (!run) {
      const e = extent(p.dstView);
      out.push({ src: p.src, scale: p.scale, srcView: p.srcView, dstView: p.dstView, dstStart: e.start, dstEnd: e.end });
      continue;
    }
    const perSeg = Math.max(1, Math.floor(maxElements));
    for (let at = 0; at < run.n; at += perSeg) {
      const len = Math.min(perSeg, run.n - at);
      const srcView: View = { offset: p.srcView.offset + at, shape: [len], strides: [1] };
      const dstView: View = { offset: p.dstView.offset + at, shape: [len], strides: [1] };
      out.push({ src: p.src, scale: p.scale, srcView, dstView, dstStart: dstView.offset, dstEnd: dstView.offset + len });
    }
  }
  return out.sort((a, b) => a.dstStart - b.dstStart || a.dstEnd - b.dstEnd);
}

function pieceTask(s: Segment, dtypeOf: InputDTypes, regionStart: number, dstDType: DType): PieceTask {
  const srcDType = dtypeOf(s.src);
  const inItem = itemSize(srcDType);
  const { start, end } = extent(s.srcView);
  const srcView = rebase(s.srcView, start);
  const dstView = rebase(s.dstView, regionStart);
  const task = { src: s.src, srcDType, srcByteStart: start * inItem, srcByteLength: (end - start) * inItem, srcView, dstDType, dstBase: 0, dstView };
  if (s.scale) return { ...task, scale: s.scale };
  return isRun(srcView, dstView) && srcDType === dstDType ? { ...task, directAt: dstView.offset * inItem } : task;
}

/**
 * Cut a planned tensor into chunks: contiguous byte ranges of the output, each filled by whole pieces.
 * A cut is only made where no earlier piece reaches past it, so interleaved pieces (a gated row) stay
 * together.
 */
export function chunkTensor(t: PlannedTensor, dtypeOf: InputDTypes, chunkBytes: number): Chunk[] {
  const outItem = itemSize(t.dtype);
  const segs = segments(t, chunkBytes / Math.max(outItem, 8));
  const chunks: Chunk[] = [];
  let group: Segment[] = [];
  let start = 0;
  let end = 0;
  const flush = (last: boolean): void => {
    if (group.length === 0) return;
    const pieces = group.map((s) => pieceTask(s, dtypeOf, start, t.dtype));
    const span: ChunkSpan = { tensor: t, at: 0, byteStart: start * outItem, byteLength: (end - start) * outItem };
    chunks.push({ tensor: t.name, byteStart: span.byteStart, byteLength: span.byteLength, pieces, tensorsCompleted: last ? 1 : 0, spans: [span] });
    group = [];
  };
  for (const s of segs) {
    if (group.length > 0 && s.dstStart >= end && (end - start + (s.dstEnd - s.dstStart)) * outItem > chunkBytes) flush(false);
    if (group.length === 0) {
      start = s.dstStart;
      end = s.dstEnd;
    }
    group.push(s);
    end = Math.max(end, s.dstEnd);
  }
  flush(true);
  // A zero-size tensor has no bytes but still completes: an empty chunk says so.
  if (chunks.length === 0) {
    chunks.push({ tensor: t.name, byteStart: 0, byteLength: 0, pieces: [], tensorsCompleted: 1, spans: [{ tensor: t, at: 0, byteStart: 0, byteLength: 0 }] });
  }
  return chunks;
}

/**
 * Chunks for a whole list of tensors, in order. Whole small tensors that follow each other in the output
 * file are packed into one chunk, so a shard of thousands of per-expert matrices is written in large
 * writes rather than one per tensor.
 */
export function* planChunks(tensors: readonly PlannedTensor[], dtypeOf: InputDTypes, follows: Follows | undefined, chunkBytes = CHUNK_BYTES): Generator<Chunk> {
  let packed: { tensor: string; last: string; byteLength: number; pieces: PieceTask[]; tensors: number; spans: ChunkSpan[] } | undefined;
  const flush = function* (): Generator<Chunk> {
    if (packed) {
      yield { tensor: packed.tensor, byteStart: 0, byteLength: packed.byteLength, pieces: packed.pieces, tensorsCompleted: packed.tensors, spans: packed.spans };
    }
    packed = undefined;
  };
  for (const t of tensors) {
    const size = byteLength(t);
    const chunks = chunkTensor(t, dtypeOf, chunkBytes);
    const whole = chunks.length === 1 && chunks[0]!.byteStart === 0 && chunks[0]!.byteLength === size;
    if (!whole || size > chunkBytes / 2) {
      yield* flush();
      yield* chunks;
      continue;
    }
    const only = chunks[0]!;
    if (packed && (packed.byteLength + size > chunkBytes || !follows?.(packed.last, t.name))) yield* flush();
    if (!packed) {
      packed = { tensor: t.name, last: t.name, byteLength: size, pieces: [...only.pieces], tensors: 1, spans: [...only.spans] };
      continue;
    }
    const base = packed.byteLength;
    packed.spans.push({ tensor: t, at: base, byteStart: 0, byteLength: size });
    for (const p of only.pieces) {
      packed.pieces.push(p.directAt === undefined ? { ...p, dstBase: base } : { ...p, dstBase: base, directAt: base + p.directAt });
    }
    packed.byteLength += size;
    packed.last = t.name;
    packed.tensors++;
  }
  yield* flush();
}

/**
 * One read per run of pieces that read adjacent bytes of the same input: splitting a grouped tensor reads
 * consecutive experts' slabs, which become one large read instead of one per expert.
 */
export function readRuns(chunk: Chunk): { src: string; start: number; end: number; pieces: number[] }[] {
  const order = chunk.pieces
    .map((_, i) => i)
    .filter((i) => chunk.pieces[i]!.directAt === undefined)
    .sort((a, b) => {
      const pa = chunk.pieces[a]!;
      const pb = chunk.pieces[b]!;
      return pa.src < pb.src ? -1 : pa.src > pb.src ? 1 : pa.srcByteStart - pb.srcByteStart;
    });
  const runs: { src: string; start: number; end: number; pieces: number[] }[] = [];
  for (const i of order) {
    const p = chunk.pieces[i]!;
    const last = runs[runs.length - 1];
    if (last && last.src === p.src && last.end === p.srcByteStart) {
      last.end += p.srcByteLength;
      last.pieces.push(i);
    } else runs.push({ src: p.src, start: p.srcByteStart, end: p.srcByteStart + p.srcByteLength, pieces: [i] });
  }
  return runs;
}

