import type { Command } from "commander";
import type { PartSpec } from "../../consolidate/parts.js";
import { IncompleteSaveError } from "../../consolidate/plan.js";
import { parseFaults } from "../../convert/faults.js";
import { EXIT_INPUT, UsageError } from "../../errors.js";
import type { ConsolidateSummary } from "../../node/consolidate.js";
import { formatBytes, formatCount, formatRate, formatSeconds, intFlag } from "../format.js";
import { printJson, say, warn, warnList } from "../output.js";
import { Progress } from "../progress.js";

interface ConsolidateFlags {
  part?: string;
  parts?: string | true;
  finish?: boolean;
  uniformExpertDtypes?: boolean;
  force?: boolean;
  quiet?: boolean;
  json?: boolean;
  followSymlinks?: boolean;
}

/** Where a launcher puts a process's index (0-based) and the number of processes. */
const INDEX_VARS = ["RANK", "SLURM_PROCID", "JOB_COMPLETION_INDEX"] as const;
const COUNT_VARS = ["WORLD_SIZE", "SLURM_NTASKS"] as const;

function envInt(env: NodeJS.ProcessEnv, name: string): number | undefined {
  const v = env[name];
  if (v === undefined || v.trim() === "") return undefined;
  if (!/^[0-9]+$/.test(v.trim())) throw new UsageError(`${name}=${JSON.stringify(v)} in the environment is not a whole number`);
  return Number(v);
}

function first(env: NodeJS.ProcessEnv, names: readonly string[]): { name: string; value: number } | undefined {
  for (const name of names) {
    const value = envInt(env, name);
    if (value !== undefined) return { name, value };
  }
  return undefined;
}

/**
 * Which part this process is. `--part K/N` says so (K from 1). Otherwise N is `--parts N`, or the
 * launcher's WORLD_SIZE / SLURM_NTASKS, and K the launcher's RANK / SLURM_PROCID / JOB_COMPLETION_INDEX
 * (0-based there). Without either flag a launcher's variables split the work only when they give both K and
 * N > 1; `--parts 1` runs one process whatever the environment says.
 */
export function resolvePart(flags: Pick<ConsolidateFlags, "part" | "parts">, env: NodeJS.ProcessEnv): { part?: PartSpec; from?: string } {
  if (flags.part !== undefined) {
    if (flags.parts !== undefined) throw new UsageError("--part and --parts go separately: --part K/N, or --parts N with K from the launcher");
    const m = /^\s*([0-9]+)\s*\/\s*([0-9]+)\s*$/.exec(flags.part);
    if (!m) throw new UsageError(`--part must be K/N (e.g. --part 2/4), got ${JSON.stringify(flags.part)}`);
    return { part: { index: Number(m[1]), count: Number(m[2]) } };
  }
  const given = typeof flags.parts === "string" && flags.parts !== "" ? intFlag(flags.parts, "--parts") : undefined;
  const count = given !== undefined ? { name: "--parts", value: given } : first(env, COUNT_VARS);
  const index = first(env, INDEX_VARS);
  if (flags.parts === undefined && (count === undefined || index === undefined || count.value <= 1)) return {};
  if (count === undefined) throw new UsageError(`--parts without N needs the number of processes in ${COUNT_VARS.join(" or ")}`);
  if (count.value === 1) return {};
  if (index === undefined) throw new UsageError(`--parts ${count.value}: this process's index is in none of ${INDEX_VARS.join(", ")}; give --part K/${count.value}`);
  if (index.value >= count.value) throw new UsageError(`${index.name}=${index.value} is not below the number of parts, ${count.value}`);
  return { part: { index: index.value + 1, count: count.value }, from: `${index.name}=${index.value}, ${count.name === "--parts" ? "--parts" : count.name}=${count.value}` };
}

function describe(s: ConsolidateSummary, timed: boolean): string {
  const files = s.outputFiles === 1 ? "1 file" : `${s.outputFiles} files`;
  const aux = s.auxFiles.length > 0 ? ` + ${s.auxFiles.length} other file${s.auxFiles.length === 1 ? "" : "s"}` : "";
  const time = timed ? `, ${formatSeconds(s.seconds)} (${formatRate(s.bytes, s.seconds)})` : "";
  return `consolidated ${s.ranks} rank file${s.ranks === 1 ? "" : "s"} (${formatCount(s.pieces)} pieces) → ${formatCount(s.tensors)} tensors, ${formatBytes(s.bytes)} in ${files}${aux}${time} → ${s.dst}`;
}

function partLine(s: ConsolidateSummary): string {
  const p = s.part!;
  const mine = s.files.filter((f) => f.endsWith(".safetensors")).length;
  return `part ${p.index}/${p.count}: wrote ${mine} of ${s.outputFiles} output file${s.outputFiles === 1 ? "" : "s"} in ${formatSeconds(s.seconds)}`;
}

/**
 * `--parts` takes an optional N, and commander would take the next word for it: `--parts SRC DST` would
 * lose SRC. A word after it that is no number is left to be an argument (as if `--parts=` were given).
 */
export function bareParts(argv: readonly string[]): string[] {
  if (!argv.includes("consolidate")) return [...argv];
  // A word of digits (and slashes: `--parts 2/4` meant as `--part 2/4`) stays N, to be checked as one.
  return argv.map((a, i) => (a === "--parts" && i + 1 < argv.length && !/^[\d/]+$/.test(argv[i + 1]!) && !argv[i + 1]!.startsWith("-") ? "--parts=" : a));
}

export function registerConsolidate(program: Command): void {
  program
    .command("consolidate")
    .description("consolidate a NeMo Automodel sharded training save (model/shard-*.safetensors + .hf_metadata/) into a Hugging Face checkpoint, proven complete first")
    .argument("<src>", "the save's model/ folder, or the checkpoint folder above it (epoch_0_step_500/), on a local disk (never modified)")
    .argument("<dst>", "folder to create (model/consolidated inside SRC is allowed, where Automodel puts it)")
    .option("--part <K/N>", "write only part K of N (K from 1); the last part to finish commits DST")
    .option("--parts [n]", "split into N parts, this process's K from RANK, SLURM_PROCID or JOB_COMPLETION_INDEX (N from WORLD_SIZE or SLURM_NTASKS when not given)")
    .option("--finish", "commit a split consolidation whose parts are all done (when no part could)")
    .option("--uniform-expert-dtypes", "give experts the mapping lacks the dtype of their layer's other experts (Automodel leaves them as saved)")
    .option("--force", "replace DST if it exists; discard a stopped split run of other options")
    .option("--follow-symlinks", "allow files that are symlinks leading outside SRC")
    .option("-q, --quiet", "print nothing but errors")
    .option("--json", "print a machine-readable summary")
    .action(async (src: string, dst: string, flags: ConsolidateFlags) => {
      const quiet = flags.quiet === true || flags.json === true;
      const { part, from } = resolvePart(flags, process.env);
      if (from && !quiet) warn(`part ${part!.index}/${part!.count} (${from} from the launcher; --parts 1 runs a single process)`);
      const { consolidateCheckpoint } = await import("../../node/consolidate.js");
      const faults = parseFaults(process.env["OMNI_CKPT_FAULT"]);
      let progress: Progress | undefined;
      let summary: ConsolidateSummary;
      try {
        summary = await consolidateCheckpoint({
          src,
          dst,
          ...(part ? { part } : {}),
          ...(flags.finish ? { finish: true } : {}),
          ...(flags.uniformExpertDtypes ? { uniformExpertDTypes: true } : {}),
          ...(flags.force ? { force: true } : {}),
          ...(flags.followSymlinks ? { followSymlinks: true } : {}),
          ...(faults ? { faults } : {}),
          onPlan: (plan, files) => {
            const mine = plan.files.filter((f) => files.includes(f.file));
            progress = new Progress(!quiet, "consolidating", mine.reduce((n, f) => n + f.bytes, 0), mine.reduce((n, f) => n + f.tensors.length, 0));
          },
          onProgress: (bytes, tensors) => progress?.update(bytes, tensors),
          onNote: (note) => {
            if (!quiet) warn(note);
          },
        }).finally(() => progress?.stop());
      } catch (e) {
        // Every reason a save cannot be consolidated, one line each.
        if (!(e instanceof IncompleteSaveError) || e.violations.length === 1) throw e;
        warnList(e.lines.map((l) => `error: ${l}`), 50);
        process.exitCode = EXIT_INPUT;
        return;
      }
      if (flags.json) {
        printJson(summary);
        return;
      }
      if (flags.quiet) return;
      for (const d of summary.dropped) warn(`warning: ${d} has no pieces and the config ties it to the embeddings (tie_word_embeddings): left out, as Automodel does`);
      const mixed = summary.mixedExperts;
      if (mixed.length > 0) {
        warn(
          `warning: in ${mixed.length} expert group${mixed.length === 1 ? "" : "s"} the experts come out in more than one dtype, as Automodel's consolidator writes them ` +
            `(its dtype mapping holds rank 0's experts only), e.g. ${mixed[0]}; convert --to native refuses such a checkpoint, --uniform-expert-dtypes gives each layer's experts one dtype`,
        );
      }
      if (summary.part) {
        const waiting = summary.waitingFor;
        say(
          summary.committed
            ? `${partLine(summary)}; all ${summary.parts} parts done: ${describe(summary, false)}`
            : waiting.length > 0
              ? `${partLine(summary)}; waiting for part${waiting.length === 1 ? "" : "s"} ${waiting.join(", ")} (the last part to finish commits ${dst})`
              : `${partLine(summary)}; all ${summary.parts} parts done, another part is committing ${dst}`,
        );
      } else if (flags.finish) say(`all ${summary.parts} parts done: ${describe(summary, false)}`);
      else say(describe(summary, true));
    });
}
