import type { ShardedSaveReport } from "../../consolidate/describe.js";
import { EXIT_INPUT } from "../../errors.js";
import { formatBytes, formatCount, table } from "../format.js";
import { printJson, say, warn } from "../output.js";
import { sourceOptions } from "../sources.js";

const plural = (n: number, word: string): string => `${formatCount(n)} ${word}${n === 1 ? "" : "s"}`;

/** At most this many problems are listed; the rest are counted. */
const MAX_PROBLEMS = 50;

function render(r: ShardedSaveReport): string {
  const lines: string[] = [];
  lines.push(`${r.location}: NeMo Automodel sharded training save, ${plural(r.ranks.length, "rank file")}, ${plural(r.pieces, "piece")} (${formatCount(r.emptyPieces)} empty), ${formatBytes(r.bytes)}`);
  const column = r.columnSplit > 0 ? `, ${formatCount(r.columnSplit)} of them in column pieces (expert parallelism)` : "";
  const mapping = r.mapping ? `; mapping: ${plural(r.mapping.tensors, "tensor")} into ${plural(r.mapping.files, "output file")}` : "";
  const dtypes = r.dtypeMapping !== undefined ? `; dtype mapping: ${plural(r.dtypeMapping, "entry").replace(/entrys$/, "entries")}` : "; no dtype mapping";
  lines.push(`${plural(r.tensors, "tensor")}${column}${mapping}${dtypes}`);
  lines.push("");
  lines.push(table(["rank file", "pieces", "bytes"], r.ranks.map((k) => [k.file, formatCount(k.pieces), formatBytes(k.bytes)]), new Set([1, 2])));
  if (r.model) {
    const m = r.model;
    lines.push("");
    lines.push(`model: ${m.kind === "omni" ? "Nemotron Omni" : "NemotronH"}, ${m.layers} language-model layers${m.hidden !== undefined ? `, hidden ${m.hidden}` : ""}${m.experts !== undefined ? `, ${m.experts} experts per MoE layer` : ""}`);
    const c = r.configChecked;
    lines.push(`config.json fixes the first axis of ${plural(c.tensors, "tensor")}, where a lost last rank file would show`);
    if (c.unchecked > 0) {
      const shown = c.uncheckedPatterns.slice(0, 8).join(", ");
      const more = c.uncheckedPatterns.length > 8 ? `, … (${c.uncheckedPatterns.length - 8} more names)` : "";
      lines.push(`not by the config, only against their own pieces: ${plural(c.unchecked, "tensor")} (${shown}${more})`);
    }
  }
  lines.push("");
  const c = r.consolidate;
  if (c) {
    const restored = c.restored > 0 ? `, ${plural(c.restored, "tensor")} cast back to the base model's dtype` : "";
    lines.push(`consolidate would write ${plural(c.tensors, "tensor")}, ${formatBytes(c.bytes)} in ${plural(c.files.length, "file")}${restored}:`);
    for (const f of c.files) lines.push(`  ${f.file}  ${plural(f.tensors, "tensor")}, ${formatBytes(f.bytes)}`);
    for (const d of c.dropped) lines.push(`  (${d}: no pieces, tied to the embeddings; left out)`);
    if (c.mixedExperts.length > 0) lines.push(`experts in more than one dtype (the dtype mapping lacks some) in ${plural(c.mixedExperts.length, "group")}, e.g. ${c.mixedExperts[0]}`);
  } else {
    lines.push(`cannot be consolidated: ${plural(r.problems.length, "problem")}`);
    for (const p of r.problems.slice(0, MAX_PROBLEMS)) lines.push(`  ${p}`);
    if (r.problems.length > MAX_PROBLEMS) lines.push(`  … and ${r.problems.length - MAX_PROBLEMS} more`);
  }
  return lines.join("\n");
}

/** `inspect` of a sharded training save: the report, and exit 2 when it cannot be consolidated. */
export async function inspectSavedCheckpoint(dir: string, flags: { json?: boolean; followSymlinks?: boolean }): Promise<void> {
  const { inspectShardedSave } = await import("../../node/checks.js");
  const report = await inspectShardedSave(dir, sourceOptions(flags));
  if (flags.json) printJson(report);
  else say(render(report));
  if (report.problems.length > 0) {
    if (!flags.json) warn(`error: ${dir}: cannot be consolidated (${plural(report.problems.length, "problem")}, listed above)`);
    process.exitCode = EXIT_INPUT;
  }
}
