import { throwIfAborted } from "../errors.js";
import type { Folder } from "../io/folder.js";
import type { OutputStore } from "../io/output.js";
import { CONFIG_FILE, type ShardPlan } from "../safetensors/shard-plan.js";
import { DEFAULT_MAX_SHARD_SIZE } from "../safetensors/shard-size.js";
import { ShardedWriter } from "../safetensors/sharded-writer.js";
import { type AuxFiles, copyAuxFiles } from "./aux-files.js";
import { type FaultInjection, withInjectedFaults } from "./faults.js";
import type { ConversionPlan } from "./planner.js";
import { type TensorSource, streamTensors } from "./stream.js";

// The writing half of every whole-checkpoint operation (a conversion, the conversion of a sharded
// save), kept apart from how each one plans, so both write, cancel and clean up the same way.

export interface ConvertCallbacks {
  /** Called once the plan is known, before any byte is written. */
  readonly onPlan?: (plan: ConversionPlan) => void;
  /** Bytes written so far, tensors completed so far. */
  readonly onProgress?: (bytesDone: number, tensorsDone: number) => void;
}

export interface WriteOptions extends ConvertCallbacks {
  readonly maxShardSize?: number;
  /** Cancels the conversion between chunks; the caller removes what was written. */
  readonly signal?: AbortSignal;
  /** Failures to stage, for tests of the error paths. */
  readonly faults?: FaultInjection;
}

/** What a conversion wrote. */
export interface WrittenCheckpoint {
  readonly files: readonly string[];
  readonly auxFiles: readonly string[];
}

/**
 * Stream planned tensors from a source into an output (shards cut by size, or as given), then the
 * config (when the plan edits it) and the other files: the writing half of every whole-checkpoint
 * operation. Cancellation is heard between chunks and once more before the caller commits.
 */
export async function writePlanned(
  plan: Pick<ConversionPlan, "tensors" | "outputConfig">,
  source: TensorSource,
  others: { readonly folder: Folder; readonly aux: AuxFiles },
  out: OutputStore,
  options: WriteOptions & { readonly shards?: readonly ShardPlan[] },
): Promise<WrittenCheckpoint> {
  const writer = options.shards
    ? await ShardedWriter.fromPlans(out, options.shards)
    : await ShardedWriter.create(out, plan.tensors, options.maxShardSize ?? DEFAULT_MAX_SHARD_SIZE);
  try {
    let bytesDone = 0;
    let tensorsDone = 0;
    await streamTensors(plan.tensors, source, withInjectedFaults(writer, options.faults), {
      ...(options.signal ? { signal: options.signal } : {}),
      onProgress: (bytes, completed) => {
        bytesDone += bytes;
        tensorsDone += completed;
        options.onProgress?.(bytesDone, tensorsDone);
      },
    });
    throwIfAborted(options.signal);
    const files = await writer.finish();
    if (plan.outputConfig) await out.writeFile(CONFIG_FILE, new TextEncoder().encode(plan.outputConfig.text));
    const auxFiles = await copyAuxFiles(others.folder, out, others.aux, options.signal);
    // The last moment to hear of a cancellation: after this the caller commits the output.
    throwIfAborted(options.signal);
    return { files, auxFiles };
  } catch (e) {
    writer.abandon();
    throw e;
  }
}

