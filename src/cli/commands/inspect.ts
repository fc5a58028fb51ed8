import type { Command } from "commander";
import type { InspectReport } from "../../convert/inspect.js";
import type { QuantSummary } from "../../quant/detect.js";
import { layoutName, layoutShortName } from "../../convert/layout.js";
import { DEFAULT_MAX_SHARD_SIZE_FLAG } from "../../safetensors/shard-size.js";
import { formatBytes, formatCount, table } from "../format.js";
import { printJson, say } from "../output.js";
import { SOURCE_HELP, sourceOptions } from "../sources.js";

const SCALE_LAYOUTS: Readonly<Record<string, string>> = { tensor: "per tensor", row: "per row", block: "per block" };

const counts = (o: Readonly<Record<string, number | undefined>>, name: (k: string) => string = (k) => k): string =>
  Object.entries(o)
    .map(([k, n]) => `${name(k)}×${formatCount(n!)}`)
    .join(" ");

/** The quantization: which schemes, where (components), how scaled, and what else it adds. */
function renderQuantization(q: QuantSummary): string[] {
  const declared = q.declarations.map((d) => `${d.where}: ${[d.method, d.algo].filter((x) => x !== undefined).join(" ") || "no method named"}`);
  const lines = [`quantized: ${q.schemes.map((s) => s.name).join(" and ") || "no quantized weight"}${declared.length > 0 ? ` (${declared.join("; ")})` : ""}`];
  if (q.schemes.length > 0) {
    const rows = q.schemes.map((s) => [
      s.name,
      formatCount(s.weights),
      counts(s.dtypes),
      counts(s.scales, (k) => SCALE_LAYOUTS[k] ?? k) || "-",
      Object.entries(s.components)
        .map(([c, n]) => `${c} ${formatCount(n!)}`)
        .join(", "),
    ]);
    lines.push(table(["scheme", "weights", "dtypes", "scales", "where"], rows, new Set([1])));
  }
  const extras = Object.values(q.extras).reduce((a, n) => a + (n ?? 0), 0);
  if (extras > 0) lines.push(`and ${formatCount(extras)} tensors that only serve the quantization: ${counts(q.extras)}`);
  if (!q.dequantizable) lines.push(`convert --dequantize cannot read it: ${q.problem}`);
  return lines;
}

function render(r: InspectReport): string {
  const lines: string[] = [];
  const layout = r.layout ? layoutName(r.layout) : "unknown (neither HF nor native names)";
  lines.push(`${r.location}: ${layout} layout${r.epSlice ? `, expert-parallel slice (${r.epSlice.experts} of ${r.epSlice.of} experts per layer)` : ""}`);
  lines.push(`${formatCount(r.tensors)} tensors, ${formatCount(r.params)} parameters, ${formatBytes(r.bytes)} in ${r.files} file${r.files === 1 ? "" : "s"}`);
  lines.push("");
  const rows = r.components.map((c) => [
    c.component,
    formatCount(c.tensors),
    formatCount(c.params),
    formatBytes(c.bytes),
    Object.entries(c.dtypes)
      .map(([d, n]) => `${d}×${n}`)
      .join(" "),
  ]);
  lines.push(table(["component", "tensors", "parameters", "bytes", "dtypes"], rows, new Set([1, 2, 3])));
  if (r.model) {
    const m = r.model;
    lines.push("");
    lines.push(`model: ${m.kind === "omni" ? "Nemotron Omni" : "NemotronH"}, ${m.layers} language-model layers${m.hidden !== undefined ? `, hidden ${m.hidden}` : ""}`);
    lines.push(
      m.pattern !== undefined
        ? `layer pattern: ${m.pattern} (M Mamba, E MoE, * attention, - MLP)`
        : "layer pattern: not in config.json (no hybrid_override_pattern or layers_block_type)",
    );
    lines.push(m.experts !== undefined ? `experts: ${m.experts} routed per MoE layer, width ${m.expertWidth}` : "experts: none (dense)");
    if (m.mtpLayers !== undefined) lines.push(`MTP: ${m.mtpLayers} next-token prediction module${m.mtpLayers === 1 ? "" : "s"}`);
  }
  if (r.quantization) lines.push("", ...renderQuantization(r.quantization));
  if (r.convert) {
    lines.push("");
    const to = layoutShortName(r.convert.to);
    if ("error" in r.convert) lines.push(`convert --to ${r.convert.to}: not possible: ${r.convert.error}`);
    else lines.push(`convert ${r.convert.dequantize ? "--dequantize " : ""}--to ${r.convert.to} would write ${formatCount(r.convert.tensors)} ${to} tensors, ${formatBytes(r.convert.bytes)} in ${r.convert.files} file${r.convert.files === 1 ? "" : "s"} (${DEFAULT_MAX_SHARD_SIZE_FLAG} shards)`);
  }
  return lines.join("\n");
}

export function registerInspect(program: Command): void {
  program
    .command("inspect")
    .description("describe a checkpoint from its headers: layout, components, model shape, what convert would produce (or a sharded training save: ranks, pieces, what consolidate would write, what is missing)")
    .argument("<dir>", `${SOURCE_HELP}, or a .safetensors file`)
    .option("--json", "print the report as JSON")
    .option("--follow-symlinks", "allow shards that are symlinks leading outside the folder")
    .action(async (dir: string, flags: { json?: boolean; followSymlinks?: boolean }) => {
      const { isShardedSave } = await import("../../node/consolidate.js");
      if (await isShardedSave(dir)) {
        const { inspectSavedCheckpoint } = await import("./inspect-save.js");
        await inspectSavedCheckpoint(dir, flags);
        return;
      }
      const { inspectCheckpoint } = await import("../../node/checks.js");
      const report = await inspectCheckpoint(dir, sourceOptions(flags));
      if (flags.json) printJson(report);
      else say(render(report));
    });
}
