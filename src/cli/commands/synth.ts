import type { Command } from "commander";
import { PRESETS } from "../../synth/presets.js";
import { SYNTH_QUANTS, type SynthQuant } from "../../synth/quant-kinds.js";
import { UsageError } from "../../errors.js";
import { DEFAULT_MAX_SHARD_SIZE_FLAG } from "../../safetensors/shard-size.js";
import { formatBytes, formatCount, intFlag, parseSize } from "../format.js";
import { printJson, say } from "../output.js";
import { Progress } from "../progress.js";

export function registerSynth(program: Command): void {
  program
    .command("synth")
    .description("write a synthetic, structurally complete HF-layout Omni checkpoint (deterministic per seed)")
    .argument("<dir>", "folder to create")
    .option("--preset <name>", `size: ${Object.keys(PRESETS).join(", ")} (bench is about 1 GB; nano-omni-30b is the real release, 66 GB: use --sparse)`, "tiny")
    .option("--seed <n>", "random seed", "0")
    .option("--dtype <dtype>", "weight dtype: bf16 or f32", "bf16")
    .option("--scale <n>", "repeat the layer pattern N times (N× the size, same tensor sizes)", "1")
    .option("--max-shard-size <size>", `largest shard, e.g. 5GB, 100KB (default: the release's 3.9GB cut for nano-omni-30b, else ${DEFAULT_MAX_SHARD_SIZE_FLAG})`)
    .option("--mtp", "add multi-token-prediction layers (other NemotronH checkpoints have them; the release has none)")
    .option("--sparse", "write real headers but leave the data as holes (zeros): full size, no disk space")
    .option("--quant <scheme>", `a quantized version: ${SYNTH_QUANTS.join(", ")} (ModelOpt FP8, block FP8, ModelOpt NVFP4 mixed with FP8)`)
    .option("--force", "replace DIR if it exists")
    .option("--json", "print a machine-readable summary")
    .action(async (dir: string, flags: { preset: string; seed: string; dtype: string; scale: string; maxShardSize?: string; mtp?: boolean; force?: boolean; json?: boolean; sparse?: boolean; quant?: string }) => {
      if (flags.quant !== undefined && !(SYNTH_QUANTS as readonly string[]).includes(flags.quant)) {
        throw new UsageError(`--quant must be one of ${SYNTH_QUANTS.join(", ")}, got ${JSON.stringify(flags.quant)}`);
      }
      const dtype = flags.dtype.toLowerCase();
      if (dtype !== "bf16" && dtype !== "f32") throw new UsageError(`--dtype must be bf16 or f32, got ${JSON.stringify(flags.dtype)}`);
      const { synthesize } = await import("../../node/synth.js");
      let progress: Progress | undefined;
      let summary: Awaited<ReturnType<typeof synthesize>>;
      try {
        summary = await synthesize(dir, {
          onProgress: (bytes, tensors, totalBytes, totalTensors) => {
            progress ??= new Progress(flags.json !== true, "synthesizing", totalBytes, totalTensors);
            progress.update(bytes, tensors);
          },
          preset: flags.preset,
          seed: intFlag(flags.seed, "--seed"),
          dtype: dtype === "f32" ? "F32" : "BF16",
          scale: intFlag(flags.scale, "--scale"),
          ...(flags.maxShardSize !== undefined ? { maxShardSize: parseSize(flags.maxShardSize) } : {}),
          ...(flags.mtp ? { mtp: true } : {}),
          ...(flags.force ? { force: true } : {}),
          ...(flags.sparse ? { sparse: true } : {}),
          ...(flags.quant !== undefined ? { quant: flags.quant as SynthQuant } : {}),
        });
      } finally {
        // Also when it fails: a bar left running keeps the process alive and the cursor hidden.
        progress?.stop();
      }
      if (flags.json) printJson(summary);
      else {
        const shards = summary.files.filter((f) => f.endsWith(".safetensors")).length;
        const others = summary.files.filter((f) => !f.endsWith(".safetensors") && f !== "model.safetensors.index.json").length;
        say(
          `synthesized ${summary.preset} Omni checkpoint${summary.quant ? ` (${summary.quant})` : ""}: ${formatCount(summary.tensors)} tensors, ${formatBytes(summary.bytes)} in ` +
            `${shards} shard${shards === 1 ? "" : "s"} + ${others} other files → ${dir}`,
        );
      }
    });
}
