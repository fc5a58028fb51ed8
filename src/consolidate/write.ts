import { type AuxFiles, copyAuxFiles, listAuxFiles } from "../convert/aux-files.js";
import { checkpointSource } from "../convert/checkpoint-source.js";
import { type FaultInjection, withInjectedFaults } from "../convert/faults.js";
import { streamTensors } from "../convert/stream.js";
import type { EntryStat, Folder, FolderEntry } from "../io/folder.js";
import type { OutputStore } from "../io/output.js";
import { INDEX_FILE, type ShardPlan, indexJson, shardsFromGroups } from "../safetensors/shard-plan.js";
import { ShardedWriter } from "../safetensors/sharded-writer.js";
import { DTYPE_MAPPING, FILE_INDEX_MAPPING } from "./names.js";
import type { ConsolidationPlan } from "./plan.js";
import type { ShardedSave } from "./save.js";

export interface ConsolidationWriteOptions {
  /** Only these output files (one part of a consolidation split over processes); all of them when omitted. */
  readonly files?: ReadonlySet<string>;
  /** Cancels between chunks; the caller removes what was written. */
  readonly signal?: AbortSignal;
  /** Bytes and tensors written so far. */
  readonly onProgress?: (bytesDone: number, tensorsDone: number) => void;
  /** Failures to stage, for tests of the error paths. */
  readonly faults?: FaultInjection;
}

/** The `.hf_metadata` folder as a folder of its own, so its files copy to the top of the output. */
class SubFolder implements Folder {
  constructor(
    private readonly parent: Folder,
    private readonly rel: string,
  ) {}

  get name(): string {
    return this.parent.describe(this.rel);
  }

  private full(rel: string): string {
    return rel === "" ? this.rel : `${this.rel}/${rel}`;
  }

  describe(rel: string): string {
    return this.parent.describe(this.full(rel));
  }

  list(rel: string, signal?: AbortSignal): Promise<readonly FolderEntry[] | undefined> {
    return this.parent.list(this.full(rel), signal);
  }

  stat(rel: string, signal?: AbortSignal): Promise<EntryStat | undefined> {
    return this.parent.stat(this.full(rel), signal);
  }

  open(rel: string, signal?: AbortSignal) {
    return this.parent.open(this.full(rel), signal);
  }
}

/** What Automodel's consolidator copies to its output: every file of `.hf_metadata/` but the two mappings. */
export interface MetadataFiles {
  readonly folder: Folder;
  readonly files: AuxFiles;
}

const MAPPINGS: ReadonlySet<string> = new Set([FILE_INDEX_MAPPING, DTYPE_MAPPING]);

/** List (and check: no FIFOs, no symlinks leading out) the metadata files a consolidation copies. */
export async function listMetadataFiles(save: ShardedSave, options: { skip?: ReadonlySet<string> } = {}): Promise<MetadataFiles> {
  const folder = new SubFolder(save.folder, save.metadataRel);
  const skip = new Set([...MAPPINGS, ...(options.skip ?? [])]);
  return { folder, files: await listAuxFiles(folder, new Set(), { skip }) };
}

/** The output files of a plan as shard plans (file names and tensors, in Automodel's order). */
export function shardPlans(plan: ConsolidationPlan): ShardPlan[] {
  return shardsFromGroups(new Map(plan.files.map((f) => [f.file, f.tensors])));
}

/**
 * Stream a plan's output files (all, or the ones asked for) into `out`: every tensor assembled piece by
 * piece into its place, files made durable and checked as they read back. Writes no index: see
 * `completeConsolidation`. Returns the files written.
 */
export async function writeConsolidatedFiles(plan: ConsolidationPlan, out: OutputStore, options: ConsolidationWriteOptions = {}): Promise<string[]> {
  const wanted = options.files;
  const files = plan.files.filter((f) => !wanted || wanted.has(f.file));
  const writer = await ShardedWriter.fromPlans(out, shardsFromGroups(new Map(files.map((f) => [f.file, f.tensors]))), { index: false });
  try {
    let bytesDone = 0;
    let tensorsDone = 0;
    await streamTensors(files.flatMap((f) => f.tensors), checkpointSource(plan.sources), withInjectedFaults(writer, options.faults), {
      ...(options.signal ? { signal: options.signal } : {}),
      onProgress: (bytes, completed) => {
        bytesDone += bytes;
        tensorsDone += completed;
        options.onProgress?.(bytesDone, tensorsDone);
      },
    });
    return await writer.finish();
  } catch (e) {
    writer.abandon();
    throw e;
  }
}

/** What makes written output files a checkpoint: the index, then the metadata files. Returns what it wrote. */
export async function completeConsolidation(plan: ConsolidationPlan, out: OutputStore, metadata: MetadataFiles, signal?: AbortSignal): Promise<{ index: string; auxFiles: string[] }> {
  await out.writeFile(INDEX_FILE, new TextEncoder().encode(indexJson(shardPlans(plan))!));
  const auxFiles = await copyAuxFiles(metadata.folder, out, metadata.files, signal);
  return { index: INDEX_FILE, auxFiles };
}

/** A whole consolidation into `out`: every output file, the index, the metadata files. */
export async function writeConsolidation(
  plan: ConsolidationPlan,
  out: OutputStore,
  metadata: MetadataFiles,
  options: ConsolidationWriteOptions = {},
): Promise<{ files: string[]; auxFiles: string[] }> {
  const files = await writeConsolidatedFiles(plan, out, options);
  const done = await completeConsolidation(plan, out, metadata, options.signal);
  return { files: [...files, done.index], auxFiles: done.auxFiles };
}
