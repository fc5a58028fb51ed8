import * as path from "node:path";
import type { Diagnostic } from "../adapters/plan.js";
import { InputError, UsageError } from "../errors.js";
import { CONFIG_FILE, Checkpoint } from "../safetensors/checkpoint.js";
import { DEFAULT_MAX_SHARD_SIZE, ShardedWriter, checkShardOnDisk, writeFileDurably } from "../safetensors/sharded-writer.js";
import type { TensorInfo } from "../tensor/tensor.js";
import { copyAuxFiles, listAuxFiles } from "./aux-files.js";
import { BufferPool } from "./buffer-pool.js";
import type { Layout } from "./layout.js";
import { OutputFolder } from "./output-folder.js";
import { type ConversionPlan, type ConvertOptions, planConversion, planInput } from "./planner.js";
import { withInjectedFaults } from "./faults.js";
import { type TensorSource, streamTensors } from "./stream.js";

export interface ConvertRequest extends ConvertOptions {
  readonly src: string;
  readonly dst: string;
  readonly force?: boolean;
  readonly maxShardSize?: number;
  readonly followSymlinks?: boolean;
  /** Called once the plan is known, before any byte is written. */
  readonly onPlan?: (plan: ConversionPlan) => void;
  /** Bytes written so far, tensors completed so far. */
  readonly onProgress?: (bytesDone: number, tensorsDone: number) => void;
  /** Leftovers of interrupted runs removed or restored, as they are found. */
  readonly onNote?: (note: string) => void;
}

export interface ConvertSummary {
  readonly src: string;
  readonly dst: string;
  readonly from: Layout;
  readonly to: Layout;
  readonly tensorsIn: number;
  readonly tensorsOut: number;
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly files: readonly string[];
  readonly auxFiles: readonly string[];
  readonly skippedFiles: readonly string[];
  readonly configChanged: boolean;
  readonly warnings: readonly Diagnostic[];
  readonly notes: readonly string[];
  readonly seconds: number;
}

/** Positional reads of a checkpoint's tensors. */
export function checkpointSource(ckpt: Checkpoint): TensorSource {
  const get = (name: string) => {
    const t = ckpt.tensors.get(name);
    if (!t) throw new Error(`internal: no input tensor ${JSON.stringify(name)}`);
    return t;
  };
  return {
    info: (name): TensorInfo => get(name),
    read: (name, offset, buf) => {
      const t = get(name);
      return t.file.readRange(t.entry, offset, buf);
    },
    readSync: (name, offset, buf) => {
      const t = get(name);
      t.file.readRangeSync(t.entry, offset, buf);
    },
  };
}

/**
 * Convert a checkpoint folder on disk, streaming tensor by tensor into a temporary sibling of DST that
 * is renamed into place only when complete and verified. SRC is only ever read.
 */
export async function convertCheckpoint(req: ConvertRequest): Promise<ConvertSummary> {
  const started = performance.now();
  // Before the destination is touched, like every other refusal of the request itself.
  if (req.maxShardSize !== undefined && !(Number.isSafeInteger(req.maxShardSize) && req.maxShardSize > 0)) {
    throw new UsageError(`the largest shard must be a positive whole number of bytes, got ${req.maxShardSize}`);
  }
  new BufferPool().startWriter();
  const ckpt = Checkpoint.open(req.src, req.followSymlinks ? { followSymlinks: true } : {});
  try {
    if (ckpt.dir === undefined) throw new InputError(`${req.src}: convert needs a checkpoint folder (with config.json), not a single file`);
    const configFile = path.join(ckpt.dir, CONFIG_FILE);
    const plan = planConversion(planInput(ckpt), ckpt.readConfig(), configFile, req);
    // Every other file is checked before a byte is written, so a bad one fails fast.
    const aux = listAuxFiles(ckpt.dir, ckpt.weightFiles, {
      skipConfig: plan.outputConfig !== undefined,
      ...(req.followSymlinks ? { followSymlinks: true } : {}),
    });
    const out = OutputFolder.prepare(req.dst, {
      source: ckpt.dir,
      ...(req.force ? { force: true } : {}),
      ...(req.onNote ? { onNote: req.onNote } : {}),
    });
    req.onPlan?.(plan);
    let writer: ShardedWriter | undefined;
    try {
      writer = new ShardedWriter(out.tmp, plan.tensors, req.maxShardSize ?? DEFAULT_MAX_SHARD_SIZE);
      let bytesDone = 0;
      let tensorsDone = 0;
      await streamTensors(plan.tensors, checkpointSource(ckpt), withInjectedFaults(writer), {
        onProgress: (bytes, completed) => {
          bytesDone += bytes;
          tensorsDone += completed;
          req.onProgress?.(bytesDone, tensorsDone);
        },
      });
      const files = await writer.finish(checkShardOnDisk);
      if (plan.outputConfig) writeFileDurably(path.join(out.tmp, CONFIG_FILE), `${JSON.stringify(plan.outputConfig, null, 2)}\n`);
      const copied = copyAuxFiles(ckpt.dir, out.tmp, aux);
      out.commit();
      return {
        src: req.src,
        dst: req.dst,
        from: plan.source,
        to: plan.target,
        tensorsIn: ckpt.tensors.size,
        tensorsOut: plan.tensors.length,
        bytesIn: plan.inputBytes,
        bytesOut: plan.outputBytes,
        files,
        auxFiles: copied,
        skippedFiles: aux.skipped,
        configChanged: plan.outputConfig !== undefined,
        warnings: plan.warnings,
        notes: out.notes,
        seconds: (performance.now() - started) / 1000,
      };
    } catch (e) {
      writer?.abandon();
      throw out.fail(e);
    }
  } finally {
    ckpt.close();
  }
}
