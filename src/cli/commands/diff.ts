import type { Command } from "commander";
import { layoutShortName } from "../../convert/layout.js";
import { EXIT_DIFFERENT } from "../../errors.js";
import { formatCount, formatSeconds } from "../format.js";
import { printJson, say } from "../output.js";
import { Progress } from "../progress.js";
import { SOURCE_HELP, sourceOptions } from "../sources.js";

export function registerDiff(program: Command): void {
  program
    .command("diff")
    .description("compare two checkpoints tensor by tensor, B converted into A's layout in memory if they differ (exit 0 only if identical)")
    .argument("<a>", `${SOURCE_HELP}, or a .safetensors file`)
    .argument("<b>", `${SOURCE_HELP}, or a .safetensors file`)
    .option("--json", "print the report, with per-tensor sha256, as JSON")
    .option("-q, --quiet", "print nothing; the exit code tells")
    .option("--follow-symlinks", "allow shards that are symlinks leading outside the folders")
    .action(async (a: string, b: string, flags: { json?: boolean; quiet?: boolean; followSymlinks?: boolean }) => {
      const { diffCheckpoints } = await import("../../node/checks.js");
      let progress: Progress | undefined;
      const report = await diffCheckpoints(a, b, {
        ...sourceOptions(flags),
        // Hashes are only shown in the JSON report; without it, hashing every byte would be wasted.
        hashes: flags.json === true,
        onProgress: (done, total) => {
          progress ??= new Progress(!flags.quiet && !flags.json, "comparing", total);
          progress.update(done);
        },
      }).finally(() => progress?.stop());
      if (!report.identical) process.exitCode = EXIT_DIFFERENT;
      if (flags.json) {
        printJson(report);
        return;
      }
      if (flags.quiet) return;
      for (const d of report.differences.slice(0, 50)) say(`${d.name}: ${d.detail}`);
      if (report.differences.length > 50) say(`… and ${report.differences.length - 50} more differences`);
      const how = report.converted ? `B converted ${layoutShortName(report.converted.from)} → ${layoutShortName(report.converted.to)} in memory, ` : "";
      say(
        report.identical
          ? `identical: ${formatCount(report.same)} tensors, same names, dtypes, shapes and bytes (${how}${formatSeconds(report.seconds)})`
          : `different: ${formatCount(report.differences.length)} difference${report.differences.length === 1 ? "" : "s"}, ${formatCount(report.same)} tensors identical (${how}${formatSeconds(report.seconds)})`,
      );
    });
}
