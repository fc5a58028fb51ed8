import * as fs from "node:fs";
import * as path from "node:path";
import { INDEX_FILE, indexJson } from "../safetensors/shard-plan.js";
import { encodeHeader } from "../safetensors/encode.js";
import { type SynthOptions, type SynthPlan, type SynthProgress, type SynthSummary, planSynth, synthOtherFiles, synthSummary, writeSynth } from "../synth/layout.js";
import type { SynthQuant } from "../synth/quant-kinds.js";
import { quantSynthOtherFiles, quantizeSynthPlan, writeQuantSynth } from "../synth/quantize.js";
import { LocalOutput, writeFileDurably } from "./local-output.js";
import { OutputFolder } from "./output-folder.js";

export interface SynthRequest extends SynthOptions {
  /** Replace `dir` if it exists. */
  readonly force?: boolean;
  /**
   * Write the headers but leave the data as holes (zeros): a checkpoint of the full size and shape that
   * takes no disk space and is written instantly. For planning, `inspect` and pipeline tests at real scale.
   */
  readonly sparse?: boolean;
  /** A quantized version: ModelOpt FP8, block FP8 or (mixed) NVFP4, as `src/synth/quantize.ts` makes them. */
  readonly quant?: SynthQuant;
  /** Told after each tensor is written (not for `sparse`, which writes no data). */
  readonly onProgress?: SynthProgress;
}

/** Shards with real headers and holes for data, plus the index and other files: a placeholder of any size. */
function writeSparse(dir: string, plan: SynthPlan, others: readonly [string, Uint8Array][] = synthOtherFiles(plan)): string[] {
  const plans = plan.shards;
  for (const shard of plans) {
    const header = encodeHeader(shard.tensors);
    const fd = fs.openSync(path.join(dir, shard.file), "wx", 0o644);
    try {
      fs.writeSync(fd, header.bytes);
      fs.ftruncateSync(fd, header.bytes.byteLength + header.dataSize);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  }
  const files = plans.map((p) => p.file);
  const index = indexJson(plans);
  if (index !== undefined) {
    writeFileDurably(path.join(dir, INDEX_FILE), index);
    files.push(INDEX_FILE);
  }
  for (const [rel, bytes] of others) writeFileDurably(path.join(dir, rel), bytes);
  return [...files, ...others.map(([rel]) => rel)];
}

/** Write a synthetic HF-layout checkpoint to `dir` (built in a temporary sibling, renamed when complete). */
export async function synthesize(dir: string, options: SynthRequest = {}): Promise<SynthSummary & { readonly quant?: SynthQuant }> {
  const base = planSynth(options);
  const q = options.quant !== undefined ? quantizeSynthPlan(base, options.quant) : undefined;
  const plan = q?.plan ?? base;
  const out = OutputFolder.prepare(dir, options.force ? { force: true } : {});
  try {
    let files: string[];
    if (options.sparse) files = writeSparse(out.tmp, plan, q ? quantSynthOtherFiles(q) : undefined);
    else if (q) files = await writeQuantSynth(q, new LocalOutput(out.tmp, dir), options.signal, options.onProgress);
    else files = await writeSynth(plan, new LocalOutput(out.tmp, dir), options.signal, options.onProgress);
    out.commit();
    return { ...synthSummary(plan, dir, files), ...(q ? { quant: q.quant } : {}) };
  } catch (e) {
    throw out.fail(e);
  }
}
