import type { Command } from "commander";
import type { Layout } from "../../convert/layout.js";
import { UsageError } from "../../errors.js";
import type { ExpertExport } from "../../lora/export.js";
import type { LoraExportSummary, LoraMergeSummary } from "../../node/lora.js";
import { formatBytes, formatCount, formatRate, formatSeconds, parseSize } from "../format.js";
import { printJson, say, warn, warnList } from "../output.js";
import { Progress } from "../progress.js";
import { SOURCE_HELP, sourceOptions } from "../sources.js";

interface Flags {
  to?: string;
  force?: boolean;
  quiet?: boolean;
  json?: boolean;
  followSymlinks?: boolean;
}

const EXPERTS = ["per-expert", "fused", "drop"];

function layoutFlag(to: string | undefined): Layout | undefined {
  if (to === undefined) return undefined;
  if (to !== "hf" && to !== "native") throw new UsageError(`--to must be hf or native, got ${JSON.stringify(to)}`);
  return to;
}

const side = (s: "automodel" | "hf"): string => (s === "automodel" ? "Automodel" : "HF");

function others(files: readonly string[]): string {
  return files.length > 0 ? ` + ${files.length} other file${files.length === 1 ? "" : "s"}` : "";
}

function describeExport(s: LoraExportSummary): string {
  const expertNote =
    s.expertModules > 0 ? ` (${formatCount(s.expertModules)} of them routed experts${s.experts ? `, ${s.experts === "fused" ? "fused ParamWrapper form" : "per expert"}` : ""})` : "";
  const dropped = s.dropped ? `; dropped ${formatCount(s.dropped.modules)} routed-expert modules (${formatCount(s.dropped.tensors)} tensors)` : "";
  return (
    `exported ${side(s.from)} → ${s.to === "hf" ? "HF" : "Automodel"} adapter: ${formatCount(s.tensorsIn)} → ${formatCount(s.tensorsOut)} tensors, ` +
    `${formatCount(s.modules)} LoRA modules${expertNote}${dropped}, ${formatBytes(s.bytesOut)}${others(s.auxFiles)}, ${formatSeconds(s.seconds)} → ${s.dst}`
  );
}

function describeMerge(s: LoraMergeSummary): string {
  const files = s.files.length === 1 ? "1 file" : `${s.files.length} files`;
  const experts = s.expertModules > 0 ? ` (${formatCount(s.expertModules)} routed-expert)` : "";
  const replaced = s.replaced > 0 ? `, ${formatCount(s.replaced)} weights replaced` : "";
  return (
    `merged ${side(s.adapter)} adapter into ${s.base}: ${formatCount(s.modules)} LoRA modules${experts}${replaced}, ` +
    `${formatCount(s.tensorsOut)} ${s.to === "native" ? "native " : ""}tensors, ${formatBytes(s.bytesOut)} in ${files}${others(s.auxFiles)}, ` +
    `${formatSeconds(s.seconds)} (${formatRate(s.bytesOut, s.seconds)}) → ${s.dst}`
  );
}

export function registerLora(program: Command): void {
  const lora = program
    .command("lora")
    .description("LoRA fine-tunes: export NeMo Automodel adapters for PEFT and vLLM, or merge an adapter into the base");

  lora
    .command("export")
    .description("rename an Automodel adapter for PEFT on the HF release (or, with --to native, a PEFT adapter back for Automodel)")
    .argument("<adapter>", "adapter folder (adapter_model.safetensors, adapter_config.json); never modified")
    .argument("<dst>", "adapter folder to create")
    .option("--base <release>", `the release the adapter belongs to, to check names and widths against: ${SOURCE_HELP}`)
    .option("--to <layout>", "hf (PEFT on the HF release, default) or native (Automodel)")
    .option("--experts <form>", "routed-expert LoRA in the HF export: per-expert (default), fused (PEFT ≥ 0.19 ParamWrapper, for transformers 5) or drop")
    .option("--force", "replace DST if it exists")
    .option("--follow-symlinks", "allow files that are symlinks leading outside their folder")
    .option("-q, --quiet", "print nothing but errors")
    .option("--json", "print a machine-readable summary")
    .option("--debug", "print stack traces with errors")
    .exitOverride()
    .action(async (adapter: string, dst: string, flags: Flags & { base?: string; experts?: string }) => {
      const to = layoutFlag(flags.to);
      if (flags.experts !== undefined && !EXPERTS.includes(flags.experts)) {
        throw new UsageError(`--experts must be per-expert, fused or drop, got ${JSON.stringify(flags.experts)}`);
      }
      const quiet = flags.quiet === true || flags.json === true;
      const { exportLoraAdapter } = await import("../../node/lora.js");
      let progress: Progress | undefined;
      const summary = await exportLoraAdapter({
        adapter,
        dst,
        ...(flags.base !== undefined ? { base: flags.base } : {}),
        ...(to ? { to } : {}),
        ...(flags.experts !== undefined ? { experts: flags.experts as ExpertExport } : {}),
        ...(flags.force ? { force: true } : {}),
        ...sourceOptions(flags),
        onPlan: (plan) => {
          progress = new Progress(!quiet, "exporting", plan.bytes, plan.tensors.length);
        },
        onProgress: (bytes, tensors) => progress?.update(bytes, tensors),
        onNote: (note) => {
          if (!quiet) warn(note);
        },
      }).finally(() => progress?.stop());
      if (flags.json) return printJson(summary);
      if (flags.quiet) return;
      warnList(summary.warnings.map((w) => `warning: ${w}`));
      say(describeExport(summary));
    });

  lora
    .command("merge")
    .description("merge an adapter (Automodel's or PEFT's) into the HF release: W + (B @ A) · scale for every adapted weight, routed experts included")
    .argument("<base>", `the HF release: ${SOURCE_HELP} (never modified)`)
    .argument("<adapter>", "adapter folder (Automodel or PEFT); never modified")
    .argument("<dst>", "checkpoint folder to create")
    .option("--to <layout>", "hf (the merged release, default) or native (the merged model in Automodel's layout)")
    .option("--max-shard-size <size>", "cut shards by size, e.g. 5GB (default: the base's shards; always by size, 5GB, for --to native)")
    .option("--force", "replace DST if it exists")
    .option("--follow-symlinks", "allow shards and files that are symlinks leading outside their folder")
    .option("-q, --quiet", "print nothing but errors")
    .option("--json", "print a machine-readable summary")
    .option("--debug", "print stack traces with errors")
    .exitOverride()
    .action(async (base: string, adapter: string, dst: string, flags: Flags & { maxShardSize?: string }) => {
      const to = layoutFlag(flags.to);
      const quiet = flags.quiet === true || flags.json === true;
      const { mergeLoraAdapter } = await import("../../node/lora.js");
      let progress: Progress | undefined;
      const summary = await mergeLoraAdapter({
        base,
        adapter,
        dst,
        ...(to ? { to } : {}),
        ...(flags.maxShardSize !== undefined ? { maxShardSize: parseSize(flags.maxShardSize) } : {}),
        ...(flags.force ? { force: true } : {}),
        ...sourceOptions(flags),
        onPlan: (prepared) => {
          progress = new Progress(!quiet, "merging", prepared.outputBytes, prepared.tensors.length);
        },
        onProgress: (bytes, tensors) => progress?.update(bytes, tensors),
        onNote: (note) => {
          if (!quiet) warn(note);
        },
      }).finally(() => progress?.stop());
      if (flags.json) return printJson(summary);
      if (flags.quiet) return;
      warnList(summary.warnings.map((w) => `warning: ${w}`));
      if (summary.skippedFiles.length > 0) warn(`not copied (weights of another checkpoint): ${summary.skippedFiles.join(", ")}`);
      if (!summary.auxListed) warn(`${base} cannot be listed, so only its config.json and weights were read; no other file was copied`);
      say(describeMerge(summary));
    });
}
