import * as fs from "node:fs";
import * as path from "node:path";
import { prepareSavedConversion, savedConversionSummary, writeSavedConversion } from "../consolidate/convert.js";
import { CONSOLIDATED_DIR } from "../consolidate/names.js";
import { type PartSpec, assignFiles, checkPart, fingerprintRun } from "../consolidate/parts.js";
import { type ConsolidateOptions, type ConsolidationPlan, planConsolidation } from "../consolidate/plan.js";
import { type ShardedSave, locateShardedSave, openShardedSave } from "../consolidate/save.js";
import { type MetadataFiles, listMetadataFiles, writeConsolidation } from "../consolidate/write.js";
import { BufferPool } from "../convert/buffer-pool.js";
import type { FaultInjection } from "../convert/faults.js";
import { InputError } from "../errors.js";
import { type RunOutcome, finishRun, runPart } from "./consolidate-run.js";
import type { ConvertRequest, ConvertSummary } from "./convert.js";
import { LocalFolder } from "./local-folder.js";
import { LocalOutput } from "./local-output.js";
import { OutputFolder } from "./output-folder.js";
import { startWriteThread } from "./write-thread.js";

export interface ConsolidateRequest extends ConsolidateOptions {
  /** An Automodel `model/` folder, or the checkpoint folder above it, on a local disk. */
  readonly src: string;
  readonly dst: string;
  readonly force?: boolean;
  readonly followSymlinks?: boolean;
  /** Write only this part of the output files; the last part to finish commits DST. */
  readonly part?: PartSpec;
  /** Commit a run whose parts are all done (N from `part.count`, or from the run in progress). */
  readonly finish?: boolean;
  readonly signal?: AbortSignal;
  /** Called once the plan is known, with the files this process will write. */
  readonly onPlan?: (plan: ConsolidationPlan, files: readonly string[]) => void;
  readonly onProgress?: (bytesDone: number, tensorsDone: number) => void;
  /** Leftovers of interrupted runs removed, locks taken over: as they happen. */
  readonly onNote?: (note: string) => void;
  /** How long a lock of a process on another machine must stand still to count as abandoned (ms). */
  readonly lockStaleMs?: number;
  readonly faults?: FaultInjection;
}

export interface ConsolidateSummary {
  readonly src: string;
  readonly dst: string;
  readonly ranks: number;
  readonly pieces: number;
  /** Output tensors and bytes of the whole consolidation. */
  readonly tensors: number;
  readonly bytes: number;
  readonly outputFiles: number;
  /** What this process wrote (output files, and the index when it committed). */
  readonly files: readonly string[];
  readonly auxFiles: readonly string[];
  /** Tensors cast back to the dtype the base model had (fqn_to_dtype_mapping.json). */
  readonly restored: number;
  /** Mapping entries without pieces that were left out: a tied lm_head.weight. */
  readonly dropped: readonly string[];
  /** Layers whose experts come out in more than one dtype (see SPEC §9 and --uniform-expert-dtypes). */
  readonly mixedExperts: readonly string[];
  readonly part?: PartSpec;
  /** How many parts the run has (1 without parts). */
  readonly parts: number;
  /** Whether DST is in place (always, without parts; with parts, when this process was the last). */
  readonly committed: boolean;
  /** With parts: the parts not done yet when this one ended. */
  readonly waitingFor: readonly number[];
  readonly notes: readonly string[];
  readonly seconds: number;
}

export interface OpenedSave {
  readonly save: ShardedSave;
  /** The `model/` folder on disk. */
  readonly modelDir: string;
  readonly srcDir: string;
}

/** Open the sharded save a user named: the `model/` folder, or the checkpoint folder above it. */
export async function openLocalSave(src: string, options: { followSymlinks?: boolean; signal?: AbortSignal } = {}): Promise<OpenedSave> {
  const folder = new LocalFolder(src, options.followSymlinks ? { followSymlinks: true } : {});
  const rel = await locateShardedSave(folder, options.signal);
  if (rel === undefined) {
    throw new InputError(
      `${src}: not a sharded training save: no rank files (shard-00001-model-00001-of-00001.safetensors, …) or .hf_metadata/fqn_to_file_index_mapping.json here or in ${path.join(src, "model")}`,
    );
  }
  const save = await openShardedSave(folder, rel, options.signal);
  return { save, modelDir: rel === "" ? src : path.join(src, rel), srcDir: src };
}

/** Whether a local path holds a sharded training save (and not an ordinary checkpoint). */
export async function isShardedSave(location: string): Promise<boolean> {
  let st: fs.Stats;
  try {
    st = fs.statSync(location);
  } catch {
    return false;
  }
  if (!st.isDirectory()) return false;
  if (["model.safetensors", "model.safetensors.index.json"].some((f) => fs.existsSync(path.join(location, f)))) return false;
  return (await locateShardedSave(new LocalFolder(location))) !== undefined;
}

/**
 * Consolidate a sharded training save into a Hugging Face checkpoint folder, equal tensor for tensor to
 * what Automodel's consolidator writes, after proving the save complete. Without `part`, one process writes
 * everything into a temporary sibling of DST renamed into place when complete (as `convert`); with it, see
 * `consolidate-run.ts`.
 */
export async function consolidateCheckpoint(req: ConsolidateRequest): Promise<ConsolidateSummary> {
  const started = performance.now();
  if (req.part) checkPart(req.part);
  startWriteThread(new BufferPool().memory);
  const opened = await openLocalSave(req.src, req);
  const { save, modelDir, srcDir } = opened;
  try {
    const plan = planConsolidation(save, req);
    const metadata = await listMetadataFiles(save);
    const base = {
      src: req.src,
      dst: req.dst,
      ranks: save.ranks.length,
      pieces: plan.assembly.pieceCount,
      tensors: plan.tensors.length,
      bytes: plan.outputBytes,
      outputFiles: plan.files.length,
      restored: plan.restored,
      dropped: plan.assembly.dropped,
      mixedExperts: plan.mixedExperts,
    };
    const place = { source: srcDir, allowedInside: path.join(modelDir, CONSOLIDATED_DIR), ...(req.force ? { force: true } : {}) };
    if (req.part || req.finish) {
      const count = req.part?.count;
      // Loaded here: node:crypto costs start-up time a single process does not need to pay.
      const { sha256 } = await import("./checks.js");
      const fingerprint = (n: number): Promise<string> => fingerprintRun(plan, n, req, sha256(), modificationTimes(opened), req.signal);
      const context = { plan, metadata, place, fingerprint, req };
      const outcome: RunOutcome = req.finish ? await finishRun(context, count) : await runPart(context, req.part!, assignFiles(plan.files, req.part!.count)[req.part!.index - 1]!);
      return { ...base, ...outcome, seconds: (performance.now() - started) / 1000 };
    }
    return { ...base, ...(await single(plan, metadata, place, req)), seconds: (performance.now() - started) / 1000 };
  } finally {
    save.close();
  }
}

/** `convert` of a sharded save, with the output folder's guarantees (`convertCheckpoint` sends it here). */
export async function convertSavedCheckpoint(req: ConvertRequest, started: number): Promise<ConvertSummary> {
  const { save, srcDir } = await openLocalSave(req.src, req);
  try {
    const prepared = await prepareSavedConversion(save, req);
    const out = OutputFolder.prepare(req.dst, {
      source: srcDir,
      ...(req.force ? { force: true } : {}),
      ...(req.onNote ? { onNote: req.onNote } : {}),
    });
    try {
      const written = await writeSavedConversion(prepared, new LocalOutput(out.tmp, req.dst), req);
      out.commit();
      return { src: req.src, dst: req.dst, ...savedConversionSummary(prepared, written), notes: out.notes, seconds: (performance.now() - started) / 1000 };
    } catch (e) {
      throw out.fail(e);
    }
  } finally {
    save.close();
  }
}

/** What identifies the rank files' contents on a local disk beyond their headers: when each was written. */
function modificationTimes(opened: OpenedSave): string[] {
  return opened.save.ranks.map((r) => {
    const st = fs.statSync(path.join(opened.srcDir, ...r.rel.split("/")), { bigint: true });
    return `${path.posix.basename(r.rel)} ${st.size} ${st.mtimeNs}`;
  });
}

async function single(
  plan: ConsolidationPlan,
  metadata: MetadataFiles,
  place: { source: string; allowedInside: string; force?: boolean },
  req: ConsolidateRequest,
): Promise<RunOutcome> {
  req.onPlan?.(plan, plan.files.map((f) => f.file));
  const out = OutputFolder.prepare(req.dst, { ...place, ...(req.onNote ? { onNote: req.onNote } : {}) });
  try {
    const written = await writeConsolidation(plan, new LocalOutput(out.tmp, req.dst), metadata, {
      ...(req.signal ? { signal: req.signal } : {}),
      ...(req.onProgress ? { onProgress: req.onProgress } : {}),
      ...(req.faults ? { faults: req.faults } : {}),
    });
    out.commit();
    return { parts: 1, files: written.files, auxFiles: written.auxFiles, committed: true, waitingFor: [], notes: out.notes };
  } catch (e) {
    throw out.fail(e);
  }
}
