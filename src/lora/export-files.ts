import { type AuxFiles, copyAuxFiles, listAuxFiles } from "../convert/aux-files.js";
import { checkpointSource } from "../convert/checkpoint-source.js";
import { type TensorSink, type TensorSource, streamTensors } from "../convert/stream.js";
import type { Folder } from "../io/folder.js";
import type { OutputStore } from "../io/output.js";
import type { StoredTensor } from "../safetensors/checkpoint.js";
import type { PlannedTensor } from "../adapters/plan.js";
import { SafetensorsFileWriter } from "../safetensors/file-writer.js";
import type { SafetensorsFile } from "../safetensors/file.js";
import { byteLength } from "../tensor/tensor.js";
import { ADAPTER_CONFIG, ADAPTER_WEIGHTS, type AdapterFolder, openAdapter } from "./files.js";
import { type ExportOptions, type ExportPlan, planExport } from "./export.js";
import { type BaseModel, type LoraSet, readLora } from "./read.js";

/** Positional reads of one safetensors file's tensors by name (an adapter's). */
export function fileSource(file: SafetensorsFile): TensorSource {
  const tensors = new Map<string, StoredTensor>();
  for (const [name, entry] of file.tensors) tensors.set(name, { name, dtype: entry.dtype, shape: entry.shape, file, entry });
  return checkpointSource(tensors);
}

/** One safetensors file written through the stream: its header first, tensors at their offsets. */
export async function writeSafetensors(
  out: OutputStore,
  rel: string,
  tensors: readonly PlannedTensor[],
  source: TensorSource,
  options: { signal?: AbortSignal; onProgress?: (bytes: number, tensors: number) => void } = {},
): Promise<void> {
  const w = await SafetensorsFileWriter.create(out, rel, tensors);
  try {
    const at = new Map<string, { offset: number; size: number }>();
    tensors.forEach((t, i) => at.set(t.name, { offset: w.header.offsets[i]!, size: byteLength(t) }));
    const sink: TensorSink = {
      write: (name, offset, bytes) => w.write(at.get(name)!.offset + offset, bytes),
      follows: (previous, next) => {
        const a = at.get(previous);
        const b = at.get(next);
        return a !== undefined && b !== undefined && a.offset + a.size === b.offset;
      },
    };
    let done = 0;
    let count = 0;
    await streamTensors(tensors, source, sink, {
      ...(options.signal ? { signal: options.signal } : {}),
      onProgress: (bytes, completed) => {
        done += bytes;
        count += completed;
        options.onProgress?.(done, count);
      },
    });
    await w.finish();
    await out.check?.(rel, w.size, w.header.bytes);
  } catch (e) {
    w.abandon();
    throw e;
  }
}

export interface PreparedExport {
  readonly set: LoraSet;
  readonly plan: ExportPlan;
  readonly aux: AuxFiles;
}

/** Read an open adapter and plan its export; every other file of its folder is checked before anything is written. */
export async function prepareExport(adapter: AdapterFolder, options: ExportOptions & { base?: BaseModel } = {}): Promise<PreparedExport> {
  const set = readLora(adapter, options.base);
  const plan = planExport(set, options);
  const aux = await listAuxFiles(adapter.folder, new Set([ADAPTER_WEIGHTS]), { skip: new Set([ADAPTER_CONFIG]) });
  return { set, plan, aux };
}

export interface ExportWriteOptions {
  readonly signal?: AbortSignal;
  readonly onPlan?: (plan: ExportPlan) => void;
  readonly onProgress?: (bytes: number, tensors: number) => void;
}

/** What an export wrote. */
export interface WrittenExport {
  readonly files: readonly string[];
  readonly auxFiles: readonly string[];
}

/**
 * Write a prepared export: `adapter_model.safetensors` streamed tensor by tensor from the adapter's,
 * the rewritten `adapter_config.json`, and every other file of the folder (`automodel_peft_config.json`,
 * a README, tokenizer files) copied unchanged.
 */
export async function writeExport(prepared: PreparedExport, out: OutputStore, options: ExportWriteOptions = {}): Promise<WrittenExport> {
  const { set, plan, aux } = prepared;
  options.onPlan?.(plan);
  await writeSafetensors(out, ADAPTER_WEIGHTS, plan.tensors, fileSource(set.adapter.weights), options);
  await out.writeFile(ADAPTER_CONFIG, new TextEncoder().encode(plan.configText));
  const auxFiles = await copyAuxFiles(set.adapter.folder, out, aux, options.signal);
  return { files: [ADAPTER_WEIGHTS, ADAPTER_CONFIG], auxFiles };
}

/** Export the adapter of any folder into any output (a browser holding files in memory, a test). */
export async function exportAdapterFolder(
  folder: Folder,
  out: OutputStore,
  options: ExportOptions & ExportWriteOptions & { base?: BaseModel } = {},
): Promise<PreparedExport & WrittenExport> {
  const adapter = await openAdapter(folder, options.signal);
  try {
    const prepared = await prepareExport(adapter, options);
    return { ...prepared, ...(await writeExport(prepared, out, options)) };
  } finally {
    adapter.close();
  }
}
