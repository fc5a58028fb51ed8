import { parseModelConfig } from "../adapters/config.js";
import { parseExpertKey } from "../adapters/expert-keys.js";
import { expertRange } from "../adapters/experts.js";
import { FILE_INDEX_MAPPING, DTYPE_MAPPING, METADATA_DIR, rankFileName } from "../consolidate/names.js";
import { type AuxFiles, listAuxFiles } from "../convert/aux-files.js";
import { UsageError, throwIfAborted } from "../errors.js";
import type { Folder } from "../io/folder.js";
import type { OutputStore } from "../io/output.js";
import { type Checkpoint, INDEX_FILE, readIndex } from "../safetensors/checkpoint.js";
import { sortByUtf8 } from "../safetensors/encode.js";
import { type DType, isFloat, itemSize } from "../tensor/dtype.js";
import { byteLength } from "../tensor/tensor.js";
import { transfer } from "../tensor/transfer.js";
import { type View, contiguous, extent, rebase } from "../tensor/view.js";

/**
 * NeMo Automodel's sharded training saves made from an HF checkpoint, for tests and the bench: the
 * `model/` folder `Checkpointer.save_model` writes with `save_consolidated: false` (SPEC §9), with the
 * layout FSDP2 and expert parallelism leave the weights in. Our own code, following the format as the
 * SPEC and the notes describe it and as the fixtures show it:
 *
 * - every tensor split along axis 0 over all W ranks `torch.chunk`-style (ceil(n/W) rows, the last ranks
 *   fewer or none; an empty piece sits at the axis's end, and identical empty pieces are written once);
 * - buffers (running stats, input normalisation, the routing bias, 0-d counters) whole in one rank's file,
 *   the one with the fewest bytes so far (DCP's de-duplication);
 * - per-expert weights: without expert parallelism whole, experts split over the ranks in blocks; with
 *   `ep` > 1 expert e lives on the ranks of its EP group (SPEC §3's ranges) and is split along axis 1 over
 *   the W/ep ranks of that group (column pieces);
 * - `.hf_metadata/`: the HF folder's other files, `fqn_to_file_index_mapping.json` from its index (or cut by
 *   size), `fqn_to_dtype_mapping.json` from its headers for the keys rank 0 holds (as Automodel writes it).
 */

export interface AutomodelSaveOptions {
  /** Ranks (W). */
  readonly world: number;
  /** Expert-parallel size; W must be a multiple of it (ep_shard = W / ep). Default 1. */
  readonly ep?: number;
  /** The dtype training held floats in, which the shards are saved in: F32 master weights, bf16 state. Default: as in the HF checkpoint. */
  readonly trainDType?: "F32" | "BF16";
  /** Keys of fqn_to_dtype_mapping.json: rank 0's (Automodel), all, or no file. Default "rank0". */
  readonly dtypeMapping?: "rank0" | "all" | "none";
  /** Output files of the mapping when the HF checkpoint has no index: sequential buckets of this many bytes (Automodel: 5 GiB). */
  readonly maxFileSize?: number;
  /** Tensors left out of every rank file but kept in the mapping (a lost tensor, a tied lm_head). */
  readonly omit?: (name: string) => boolean;
  readonly signal?: AbortSignal;
}

export interface AutomodelSaveSummary {
  readonly ranks: number;
  readonly pieces: number;
  readonly tensors: number;
  readonly bytes: number;
  /** Files written, relative to the `model/` folder. */
  readonly files: readonly string[];
}

/** One piece of one tensor in one rank's file. */
interface Placed {
  readonly name: string;
  readonly offset: readonly number[];
  readonly shape: readonly number[];
  readonly dtype: DType;
}

const BUFFER = /(?:running_mean|running_var|num_batches_tracked|input_conditioner\.norm_mean|input_conditioner\.norm_std|e_score_correction_bias|featurizer\.fb|featurizer\.window)$/;

const ceilDiv = (a: number, b: number): number => Math.ceil(a / b);

/** Where the pieces of every tensor go, per rank. */
function layout(checkpoint: Checkpoint, options: AutomodelSaveOptions, experts: number | undefined): Placed[][] {
  const W = options.world;
  const ep = options.ep ?? 1;
  if (!Number.isSafeInteger(W) || W < 1) throw new UsageError(`--world must be a positive integer, got ${W}`);
  if (!Number.isSafeInteger(ep) || ep < 1 || W % ep !== 0) throw new UsageError(`--ep must divide the world size ${W}, got ${ep}`);
  const epShard = W / ep;
  const ranks: Placed[][] = Array.from({ length: W }, () => []);
  const bytes = new Array<number>(W).fill(0);
  const put = (r: number, p: Placed): void => {
    ranks[r]!.push(p);
    bytes[r]! += byteLength(p);
  };
  const saved = (dtype: DType): DType => (options.trainDType && isFloat(dtype) && dtype !== options.trainDType && !dtype.startsWith("F8_") ? options.trainDType : dtype);

  for (const t of checkpoint.tensors.values()) {
    if (options.omit?.(t.name)) continue;
    const dtype = saved(t.dtype);
    const S = t.shape;
    const k = parseExpertKey(t.name);
    if (k?.kind === "expert-weight" && k.rest === "" && experts !== undefined && S.length === 2) {
      if (ep === 1) {
        put(Math.min(W - 1, Math.floor(k.expert / ceilDiv(experts, W))), { name: t.name, offset: [0, 0], shape: [...S], dtype });
        continue;
      }
      let group = 0;
      while (group < ep - 1 && k.expert >= expertRange(experts, { rank: group, size: ep })[1]) group++;
      const chunk = ceilDiv(S[1]!, epShard);
      for (let s = 0; s < epShard; s++) {
        const start = Math.min(s * chunk, S[1]!);
        const end = Math.min(S[1]!, start + chunk);
        put(s * ep + group, { name: t.name, offset: [0, start], shape: [S[0]!, end - start], dtype });
      }
      continue;
    }
    if (S.length === 0 || BUFFER.test(t.name)) {
      let r = 0;
      for (let i = 1; i < W; i++) if (bytes[i]! < bytes[r]!) r = i;
      put(r, { name: t.name, offset: S.map(() => 0), shape: [...S], dtype });
      continue;
    }
    const n = S[0]!;
    const chunk = Math.max(1, ceilDiv(n, W));
    let emptyAt: number | undefined;
    for (let r = 0; r < W; r++) {
      const start = r * chunk;
      if (start >= n) {
        emptyAt = r; // identical empty pieces are written once: by the last rank that has one
        continue;
      }
      put(r, { name: t.name, offset: [start, ...S.slice(1).map(() => 0)], shape: [Math.min(chunk, n - start), ...S.slice(1)], dtype });
    }
    if (emptyAt !== undefined) put(emptyAt, { name: t.name, offset: [n, ...S.slice(1).map(() => 0)], shape: [0, ...S.slice(1)], dtype });
  }
  return ranks;
}

const encoder = new TextEncoder();

/** A rank file's header as DCP's writer spells it: compact JSON, `__metadata__` last, padded with spaces to 8 bytes. */
function rankHeader(pieces: readonly Placed[]): { bytes: Uint8Array; offsets: number[] } {
  const parts: string[] = [];
  const offsets: number[] = [];
  let at = 0;
  for (const p of pieces) {
    const size = byteLength(p);
    offsets.push(at);
    parts.push(`${JSON.stringify(p.name)}:{"dtype":"${p.dtype}","shape":[${p.shape.join(",")}],"data_offsets":[${at},${at + size}]}`);
    at += size;
  }
  // Python's json.dumps defaults: ", " and ": " separators.
  const info = `{${pieces.map((p) => `${JSON.stringify(p.name)}: {"saved_offsets": [${p.offset.join(", ")}]}`).join(", ")}}`;
  parts.push(`"__metadata__":${JSON.stringify({ DCP_SHARDING_INFO: info, DCP_VERSION: "1.0", format: "pt" })}`);
  const json = encoder.encode(`{${parts.join(",")}}`);
  const padded = Math.ceil(json.byteLength / 8) * 8;
  const bytes = new Uint8Array(8 + padded);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(padded), true);
  bytes.set(json, 8);
  bytes.fill(0x20, 8 + json.byteLength);
  return { bytes, offsets };
}

/** Pieces are copied in blocks of rows of at most this many bytes. */
const BLOCK_BYTES = 16 * 1024 * 1024;

/** Write one piece's bytes at `position`: its box of the source tensor, cast to the saved dtype, block by block. */
async function writePiece(checkpoint: Checkpoint, p: Placed, file: { write(position: number, bytes: Uint8Array): Promise<void> }, position: number): Promise<void> {
  const t = checkpoint.tensors.get(p.name)!;
  if (p.shape.some((n) => n === 0)) return;
  const strides = contiguous(t.shape).strides;
  const rows = p.shape[0] ?? 1;
  const rowElems = p.shape.slice(1).reduce((a, b) => a * b, 1);
  const perBlock = Math.max(1, Math.floor(BLOCK_BYTES / Math.max(1, rowElems * itemSize(p.dtype))));
  const inItem = itemSize(t.dtype);
  for (let r = 0; r < rows; r += perBlock) {
    const n = Math.min(perBlock, rows - r);
    const shape = p.shape.length === 0 ? [] : [n, ...p.shape.slice(1)];
    const start = p.offset.map((o, d) => (d === 0 ? o + r : o));
    let offset = 0;
    start.forEach((o, d) => (offset += o * strides[d]!));
    const view: View = { offset, shape, strides };
    const { start: first, end } = extent(view);
    const region = new Uint8Array((end - first) * inItem);
    await t.file.readRange(t.entry, first * inItem, region);
    const out = new Uint8Array(shape.reduce((a, b) => a * b, 1) * itemSize(p.dtype));
    transfer(region, t.dtype, rebase(view, first), out, p.dtype, contiguous(shape));
    await file.write(position + r * rowElems * itemSize(p.dtype), out);
  }
}

/** A mapping written as Automodel writes it: `json.dump(indent=2, sort_keys=True)`, no trailing newline. */
function mappingJson(entries: readonly [string, number | string][]): string {
  const sorted = sortByUtf8(entries, (e) => e[0]);
  return `{\n${sorted.map(([k, v]) => `  ${JSON.stringify(k)}: ${JSON.stringify(v)}`).join(",\n")}\n}`;
}

/** Output file index per tensor: from the HF checkpoint's index (the file number in each shard's name), or by size. */
async function fileIndexes(checkpoint: Checkpoint, names: readonly string[], maxFileSize: number): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const known = new Set(names);
  if (checkpoint.folder && (await checkpoint.folder.stat(INDEX_FILE))) {
    const weightMap = await readIndex(checkpoint.folder);
    const shards = [...new Set(weightMap.values())].sort();
    const numbered = shards.map((s) => /-(\d+)-of-(\d+)\.safetensors$/.exec(s));
    for (const [tensor, shard] of weightMap) {
      if (!known.has(tensor)) continue;
      const m = numbered[shards.indexOf(shard)];
      out.set(tensor, m ? Number(m[1]) : shards.indexOf(shard) + 1);
    }
    return out;
  }
  let index = 1;
  let size = 0;
  for (const name of sortByUtf8([...names], (n) => n)) {
    const b = byteLength(checkpoint.tensors.get(name)!);
    if (size > 0 && size + b > maxFileSize) {
      index++;
      size = 0;
    }
    size += b;
    out.set(name, index);
  }
  return out;
}

const CONSOLIDATE_SH = `#!/usr/bin/env bash
# Made by omni-ckpt's synthetic Automodel save (NeMo Automodel writes its consolidation helper here).
# Consolidate with: omni-ckpt consolidate "$(dirname "$0")" "$(dirname "$0")/consolidated"
exit 1
`;

/**
 * Write an HF checkpoint (with its folder's other files) as NeMo Automodel's sharded save: rank files,
 * `.hf_metadata/` and `consolidate.sh`, into `out` (the `model/` folder).
 */
export async function writeAutomodelSave(checkpoint: Checkpoint, out: OutputStore, options: AutomodelSaveOptions): Promise<AutomodelSaveSummary> {
  const folder: Folder | undefined = checkpoint.folder;
  if (!folder) throw new UsageError("a sharded save is made from a checkpoint folder (with config.json)");
  const config = await checkpoint.readConfig(options.signal);
  const experts = parseModelConfig(config.values, config.file).llm.nRoutedExperts;
  const ranks = layout(checkpoint, options, experts);
  const files: string[] = [];
  let pieces = 0;
  for (const [r, list] of ranks.entries()) {
    // A rank with nothing to save writes no file.
    if (list.length === 0) continue;
    const header = rankHeader(list);
    const rel = rankFileName(r + 1);
    const size = header.bytes.byteLength + list.reduce((n, p) => n + byteLength(p), 0);
    const file = await out.create(rel, size);
    try {
      await file.write(0, header.bytes);
      for (const [i, p] of list.entries()) {
        throwIfAborted(options.signal);
        await writePiece(checkpoint, p, file, header.bytes.byteLength + header.offsets[i]!);
      }
      await file.finish();
    } catch (e) {
      file.abandon();
      throw e;
    }
    files.push(rel);
    pieces += list.length;
  }

  await out.mkdir(METADATA_DIR);
  const aux: AuxFiles = await listAuxFiles(folder, checkpoint.weightFiles, options.signal ? { signal: options.signal } : {});
  for (const e of aux.entries) {
    const rel = `${METADATA_DIR}/${e.rel}`;
    if (e.dir) {
      await out.mkdir(rel);
      continue;
    }
    const src = await folder.open(e.rel, options.signal);
    try {
      const bytes = new Uint8Array(src.size);
      await src.read(bytes, 0, options.signal);
      await out.writeFile(rel, bytes);
    } finally {
      src.close();
    }
    files.push(rel);
  }
  const names = [...checkpoint.tensors.keys()];
  const index = await fileIndexes(checkpoint, names, options.maxFileSize ?? 5 * 1024 ** 3);
  await out.writeFile(`${METADATA_DIR}/${FILE_INDEX_MAPPING}`, encoder.encode(mappingJson([...index])));
  files.push(`${METADATA_DIR}/${FILE_INDEX_MAPPING}`);
  const mode = options.dtypeMapping ?? "rank0";
  if (mode !== "none") {
    // Rank 0's own state dict holds every tensor but the experts other ranks own.
    const rank0 = new Set((ranks[0] ?? []).map((p) => p.name));
    const keep = (name: string): boolean => {
      if (mode === "all") return true;
      const k = parseExpertKey(name);
      return !(k?.kind === "expert-weight" && k.rest === "") || rank0.has(name);
    };
    const dtypes = [...checkpoint.tensors.values()].filter((t) => keep(t.name)).map((t) => [t.name, t.dtype] as [string, string]);
    await out.writeFile(`${METADATA_DIR}/${DTYPE_MAPPING}`, encoder.encode(mappingJson(dtypes)));
    files.push(`${METADATA_DIR}/${DTYPE_MAPPING}`);
  }
  await out.writeFile("consolidate.sh", encoder.encode(CONSOLIDATE_SH));
  files.push("consolidate.sh");
  const bytes = ranks.flat().reduce((n, p) => n + byteLength(p), 0);
  return { ranks: files.filter((f) => f.startsWith("shard-")).length, pieces, tensors: checkpoint.tensors.size, bytes, files };
}
