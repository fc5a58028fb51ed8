import type { Command } from "commander";
import { UsageError } from "../../errors.js";
import { formatBytes, formatCount, intFlag, parseSize } from "../format.js";
import { printJson, say } from "../output.js";

interface SynthSaveFlags {
  world: string;
  ep: string;
  trainDtype?: string;
  dtypeMapping: string;
  maxFileSize?: string;
  force?: boolean;
  json?: boolean;
}

export function registerSynthSave(program: Command): void {
  program
    .command("synth-save")
    .description("write an HF checkpoint as a NeMo Automodel sharded training save (model/ folder: rank files + .hf_metadata/), for testing consolidation")
    .argument("<src>", "HF checkpoint folder (never modified)")
    .argument("<dst>", "the save's model/ folder to create")
    .requiredOption("--world <n>", "number of ranks")
    .option("--ep <n>", "expert-parallel size (experts split into column pieces over world/ep ranks)", "1")
    .option("--train-dtype <dtype>", "dtype training held floats in, which the rank files store: f32 (float32 master weights) or bf16")
    .option("--dtype-mapping <which>", "keys of fqn_to_dtype_mapping.json: rank0 (as Automodel writes it), all, or none (no file)", "rank0")
    .option("--max-file-size <size>", "output files of the mapping when SRC has no index (default 5GiB, as Automodel)")
    .option("--force", "replace DST if it exists")
    .option("--json", "print a machine-readable summary")
    .action(async (src: string, dst: string, flags: SynthSaveFlags) => {
      const train = flags.trainDtype?.toLowerCase();
      if (train !== undefined && train !== "f32" && train !== "bf16") throw new UsageError(`--train-dtype must be f32 or bf16, got ${JSON.stringify(flags.trainDtype)}`);
      const mapping = flags.dtypeMapping;
      if (mapping !== "rank0" && mapping !== "all" && mapping !== "none") throw new UsageError(`--dtype-mapping must be rank0, all or none, got ${JSON.stringify(mapping)}`);
      const { synthesizeSave } = await import("../../node/synth-save.js");
      const summary = await synthesizeSave(src, dst, {
        world: intFlag(flags.world, "--world"),
        ep: intFlag(flags.ep, "--ep"),
        ...(train ? { trainDType: train === "f32" ? ("F32" as const) : ("BF16" as const) } : {}),
        dtypeMapping: mapping,
        ...(flags.maxFileSize !== undefined ? { maxFileSize: parseSize(flags.maxFileSize) } : {}),
        ...(flags.force ? { force: true } : {}),
      });
      if (flags.json) printJson(summary);
      else say(`wrote a sharded save of ${formatCount(summary.tensors)} tensors: ${summary.ranks} rank files, ${formatCount(summary.pieces)} pieces, ${formatBytes(summary.bytes)} → ${dst}`);
    });
}
