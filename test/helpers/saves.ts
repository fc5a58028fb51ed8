import { type ConsolidateOptions, type ConsolidationPlan, IncompleteSaveError, planConsolidation } from "../../src/consolidate/plan.js";
import { locateShardedSave, openShardedSave } from "../../src/consolidate/save.js";
import { listMetadataFiles, writeConsolidation } from "../../src/consolidate/write.js";
import { MemoryFolder } from "../../src/io/folder.js";
import { MemoryOutput } from "../../src/io/output.js";
import { Checkpoint } from "../../src/safetensors/checkpoint.js";
import { SafetensorsFile } from "../../src/safetensors/file.js";
import { type AutomodelSaveOptions, writeAutomodelSave } from "../../src/synth/automodel-save.js";
import { type SynthOptions, planSynth, writeSynth } from "../../src/synth/layout.js";
import type { Tensor } from "../../src/tensor/tensor.js";

/**
 * Sharded training saves made in memory for tests: a synthetic HF checkpoint, written as NeMo Automodel's
 * sharded save by our own maker, consolidated back, all without touching the disk.
 */

export type Files = Map<string, Uint8Array>;

/** A synthetic HF checkpoint in memory. */
export async function memoryHf(options: SynthOptions = {}): Promise<MemoryFolder> {
  const out = new MemoryOutput("hf");
  await writeSynth(planSynth(options), out);
  return new MemoryFolder(out.files, "hf");
}

/** `hf` written as a sharded save: the files of its `model/` folder. */
export async function memorySave(hf: MemoryFolder, options: AutomodelSaveOptions): Promise<Files> {
  const ckpt = await Checkpoint.open(hf);
  try {
    const out = new MemoryOutput("model");
    await writeAutomodelSave(ckpt, out, options);
    return out.files;
  } finally {
    ckpt.close();
  }
}

/** The files of a `model/` folder as the checkpoint folder above it would hold them. */
export function underModel(files: Files): Files {
  return new Map([...files].map(([rel, bytes]) => [`model/${rel}`, bytes]));
}

/** Plan the consolidation of a save held in memory (`files` of its `model/` folder, named `ckpt/model`). */
export async function planFiles(files: Files, options: ConsolidateOptions = {}): Promise<ConsolidationPlan> {
  const folder = new MemoryFolder(underModel(files), "ckpt");
  const save = await openShardedSave(folder, (await locateShardedSave(folder))!);
  return planConsolidation(save, options);
}

/** Consolidate a save held in memory: the output's files. */
export async function consolidateFiles(files: Files, options: ConsolidateOptions = {}): Promise<{ out: Files; plan: ConsolidationPlan }> {
  const plan = await planFiles(files, options);
  const out = new MemoryOutput("out");
  await writeConsolidation(plan, out, await listMetadataFiles(plan.save));
  return { out: out.files, plan };
}

/** Every problem that keeps a save from being consolidated, one line each (none when it would be). */
export async function problemsOf(files: Files, options: ConsolidateOptions = {}): Promise<string[]> {
  try {
    await planFiles(files, options);
    return [];
  } catch (e) {
    if (e instanceof IncompleteSaveError) return e.lines;
    throw e;
  }
}

/** Every tensor of the checkpoint among `files` (its index's shards, or model.safetensors). */
export function tensorsOf(files: Files): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  for (const [rel, bytes] of files) {
    if (!rel.endsWith(".safetensors") || rel.includes("/")) continue;
    const f = SafetensorsFile.fromBytes(bytes, rel);
    for (const name of f.tensors.keys()) out.set(name, f.readTensorSync(name));
  }
  return out;
}

export function filesOf(folder: MemoryFolder): Promise<Files> {
  return collect(folder, "", new Map());
}

async function collect(folder: MemoryFolder, rel: string, out: Files): Promise<Files> {
  for (const e of await folder.list(rel)) {
    const child = rel === "" ? e.name : `${rel}/${e.name}`;
    if (e.kind === "folder") await collect(folder, child, out);
    else {
      const src = await folder.open(child);
      const bytes = new Uint8Array(src.size);
      await src.read(bytes, 0);
      out.set(child, bytes);
    }
  }
  return out;
}

interface HeaderEntry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

/**
 * Edit a rank file's header (its entries and its DCP_SHARDING_INFO, both as plain objects) and write it
 * back with the same data: for broken saves.
 */
export function editRank(
  files: Files,
  rel: string,
  edit: (entries: Record<string, HeaderEntry>, info: Record<string, { saved_offsets: unknown }>, metadata: Record<string, string>) => void,
): void {
  const bytes = files.get(rel);
  if (!bytes) throw new Error(`no ${rel}`);
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n))) as Record<string, unknown>;
  const metadata = (header["__metadata__"] ?? {}) as Record<string, string>;
  delete header["__metadata__"];
  const info = metadata["DCP_SHARDING_INFO"] !== undefined ? (JSON.parse(metadata["DCP_SHARDING_INFO"]) as Record<string, { saved_offsets: unknown }>) : {};
  const entries = header as unknown as Record<string, HeaderEntry>;
  const original = metadata["DCP_SHARDING_INFO"];
  edit(entries, info, metadata);
  // The info object is written back unless the edit replaced (or removed) the string itself.
  if (original !== undefined && metadata["DCP_SHARDING_INFO"] === original) metadata["DCP_SHARDING_INFO"] = JSON.stringify(info);
  const json = JSON.stringify({ ...entries, ...(Object.keys(metadata).length > 0 ? { __metadata__: metadata } : {}) });
  writeRank(files, rel, json, bytes.subarray(8 + n));
}

/** A rank file from header JSON text (padded to 8 bytes) and data. */
export function writeRank(files: Files, rel: string, json: string, data: Uint8Array): void {
  const text = new TextEncoder().encode(json);
  const padded = Math.ceil(text.byteLength / 8) * 8;
  const out = new Uint8Array(8 + padded + data.byteLength);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(text, 8);
  out.fill(0x20, 8 + text.byteLength, 8 + padded);
  out.set(data, 8 + padded);
  files.set(rel, out);
}

/** Which rank file holds a piece of `tensor` at `offset`. */
export function rankHolding(files: Files, tensor: string, offset: readonly number[]): string {
  for (const [rel, bytes] of files) {
    if (!rel.startsWith("shard-")) continue;
    const f = SafetensorsFile.fromBytes(bytes, rel);
    const info = JSON.parse(f.header.metadata!.get("DCP_SHARDING_INFO")!) as Record<string, { saved_offsets: number[] }>;
    if (info[tensor] && info[tensor].saved_offsets.join(",") === offset.join(",")) return rel;
  }
  throw new Error(`no piece of ${tensor} at [${offset.join(", ")}]`);
}

/** `model/.hf_metadata/<name>` as text, to edit. */
export function metadataText(files: Files, name: string): string {
  return new TextDecoder().decode(files.get(`.hf_metadata/${name}`)!);
}

export function setMetadata(files: Files, name: string, text: string): void {
  files.set(`.hf_metadata/${name}`, new TextEncoder().encode(text));
}
