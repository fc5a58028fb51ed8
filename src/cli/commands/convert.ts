import type { Command } from "commander";
import type { ExpertActivation } from "../../adapters/experts.js";
import type { BaseAudit } from "../../convert/base.js";
import type { ConvertSummary } from "../../node/convert.js";
import { parseFaults } from "../../convert/faults.js";
import { type Layout, layoutShortName } from "../../convert/layout.js";
import { UsageError } from "../../errors.js";
import { redactUrl } from "../../io/http-client.js";
import { DEFAULT_MAX_SHARD_SIZE_FLAG } from "../../safetensors/shard-size.js";
import { formatBytes, formatCount, formatRate, formatSeconds, intFlag, parseSize } from "../format.js";
import { printJson, say, warn, warnList } from "../output.js";
import { Progress } from "../progress.js";
import { SOURCE_HELP, sourceOptions } from "../sources.js";

interface ConvertFlags {
  to: string;
  dtype?: string;
  epRank?: string;
  epSize?: string;
  numLayers?: string;
  exclude?: string;
  v4Compatible?: boolean;
  maxShardSize: string;
  force?: boolean;
  quiet?: boolean;
  json?: boolean;
  followSymlinks?: boolean;
  expertActivation?: string;
  dequantize?: boolean;
  base?: string;
}

function describe(s: ConvertSummary): string {
  const files = s.files.length === 1 ? "1 file" : `${s.files.length} files`;
  const aux = s.auxFiles.length > 0 ? ` + ${s.auxFiles.length} other file${s.auxFiles.length === 1 ? "" : "s"}` : "";
  return (
    `converted ${layoutShortName(s.from)} → ${layoutShortName(s.to)}: ${formatCount(s.tensorsIn)} → ${formatCount(s.tensorsOut)} tensors, ` +
    `${formatBytes(s.bytesOut)} in ${files}${aux}, ${formatSeconds(s.seconds)} (${formatRate(s.bytesIn, s.seconds)}) → ${s.dst}`
  );
}

const DTYPE_WORDS: Readonly<Partial<Record<string, string>>> = { F32: "float32", BF16: "bfloat16", F16: "float16", F64: "float64" };

/** `7,349 of 7,349 release tensors present, 4 taken from the release, 92 written as float32` */
function auditLine(a: BaseAudit): string {
  const retyped = Object.entries(a.retyped).map(([d, n]) => `${formatCount(n!)} written as ${DTYPE_WORDS[d] ?? d}`);
  return [`${formatCount(a.present)} of ${formatCount(a.releaseTensors)} release tensors present`, `${formatCount(a.taken.length)} taken from the release`, ...retyped].join(", ");
}

function dequantizedNote(s: ConvertSummary): string {
  const d = s.dequantized!;
  const weights = Object.entries(d.weights).map(([scheme, n]) => `${formatCount(n)} ${scheme}`).join(" and ");
  const left = [`${formatCount(d.droppedTensors)} quantization tensor${d.droppedTensors === 1 ? "" : "s"} (scales, input_scale, k_scale/v_scale)`];
  if (d.configRemoved.length > 0) left.push(`${d.configRemoved.join(" and ")} (every other field kept as written)`);
  if (s.droppedFiles.length > 0) left.push(s.droppedFiles.join(", "));
  return `dequantized ${weights} weights to bf16; left out ${left.join(", ")}`;
}

export function registerConvert(program: Command): void {
  program
    .command("convert")
    .description("convert a checkpoint folder between the HF and native layouts, streaming")
    .argument("<src>", `${SOURCE_HELP} (never modified)`)
    .argument("<dst>", "folder to create")
    .requiredOption("--to <layout>", "target layout: native or hf")
    .option("--dtype <dtype>", "dtype of the grouped expert tensors (to native): bf16, f32 or f16 (default bf16)")
    .option("--ep-rank <r>", "write only expert-parallel rank R's experts (to native)")
    .option("--ep-size <n>", "number of expert-parallel ranks (to native)")
    .option("--num-layers <n>", "keep only the first N language-model layers (to native)")
    .option("--exclude <regex>", "drop tensors whose name matches this Python-style regex at its start (to hf)")
    .option("--v4-compatible", "write expert LoRA per expert (PEFT v4) instead of the fused ParamWrapper form (to hf)")
    .option("--expert-activation <act>", "expert activation: relu2 (this model) or a gated one (swiglu, geglu, …)")
    .option("--dequantize", "read a quantized (FP8) HF checkpoint's weights as bf16 and leave its scales and quantization config out")
    .option("--max-shard-size <size>", "largest shard, e.g. 5GB, 500MB, 100KB", DEFAULT_MAX_SHARD_SIZE_FLAG)
    .option("--base <release>", "to hf: the release SRC was trained from (folder, cache snapshot or repo id): its static buffers, dtypes and shards, audited")
    .option("--force", "replace DST if it exists")
    .option("--follow-symlinks", "allow shards and files that are symlinks leading outside SRC")
    .option("-q, --quiet", "print nothing but errors")
    .option("--json", "print a machine-readable summary")
    .action(async (src: string, dst: string, flags: ConvertFlags, command: Command) => {
      if (flags.to !== "native" && flags.to !== "hf") throw new UsageError(`--to must be native or hf, got ${JSON.stringify(flags.to)}`);
      // The shard size has a default; only one the user gave contradicts --base.
      const shardSizeGiven = command.getOptionValueSource("maxShardSize") === "cli";
      if ((flags.epRank === undefined) !== (flags.epSize === undefined)) throw new UsageError("--ep-rank and --ep-size go together");
      const ep = flags.epRank !== undefined ? { rank: intFlag(flags.epRank, "--ep-rank"), size: intFlag(flags.epSize!, "--ep-size") } : undefined;
      const quiet = flags.quiet === true || flags.json === true;
      // Loaded on use, so `--help` and the other commands do not pay for the converter's modules.
      const { convertCheckpoint } = await import("../../node/convert.js");
      // For the test suite's fault tests only; the library takes faults as an option, never from the environment.
      const faults = parseFaults(process.env["OMNI_CKPT_FAULT"]);
      let progress: Progress | undefined;
      const summary = await convertCheckpoint({
        src,
        dst,
        to: flags.to as Layout,
        ...(flags.dtype !== undefined ? { dtype: flags.dtype } : {}),
        ...(ep ? { ep } : {}),
        ...(flags.numLayers !== undefined ? { numLayers: intFlag(flags.numLayers, "--num-layers") } : {}),
        ...(flags.exclude !== undefined ? { exclude: flags.exclude } : {}),
        ...(flags.v4Compatible ? { v4Compatible: true } : {}),
        ...(flags.expertActivation !== undefined ? { expertActivation: flags.expertActivation as ExpertActivation } : {}),
        ...(flags.dequantize ? { dequantize: true } : {}),
        ...(flags.base === undefined || shardSizeGiven ? { maxShardSize: parseSize(flags.maxShardSize) } : {}),
        ...(flags.base !== undefined ? { base: flags.base } : {}),
        ...(flags.force ? { force: true } : {}),
        ...sourceOptions(flags),
        ...(faults ? { faults } : {}),
        onPlan: (plan) => {
          progress = new Progress(!quiet, "converting", plan.outputBytes, plan.tensors.length);
        },
        onProgress: (bytes, tensors) => progress?.update(bytes, tensors),
        onNote: (note) => {
          if (!quiet) warn(note);
        },
      }).finally(() => progress?.stop());
      if (flags.json) {
        printJson(summary);
        return;
      }
      if (flags.quiet) return;
      warnList(summary.warnings.map((w) => `warning: ${w.message}`));
      if (summary.skippedFiles.length > 0) warn(`not copied (weights of another checkpoint): ${summary.skippedFiles.join(", ")}`);
      if (!summary.auxListed) warn(`${/^https?:\/\//i.test(src) ? redactUrl(src) : src} cannot be listed, so only config.json and the weights were copied; no other file (tokenizer, processor, code) was`);
      if (summary.dequantized) warn(dequantizedNote(summary));
      if (summary.base) say(auditLine(summary.base));
      if (summary.configChanged && flags.numLayers !== undefined) {
        warn("config.json: num_hidden_layers and the layer pattern were cut to --num-layers (every other field kept as written)");
      }
      say(describe(summary));
    });
}
