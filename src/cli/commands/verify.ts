import type { Command } from "commander";
import { layoutShortName } from "../../convert/layout.js";
import { EXIT_DIFFERENT } from "../../errors.js";
import { formatBytes, formatCount, formatSeconds, table } from "../format.js";
import { printJson, say } from "../output.js";
import { Progress } from "../progress.js";
import { SOURCE_HELP, sourceOptions } from "../sources.js";

export function registerVerify(program: Command): void {
  program
    .command("verify")
    .description("prove that converting to the other layout and back returns every tensor bit for bit (nothing is written)")
    .argument("<dir>", SOURCE_HELP)
    .option("--json", "print the report as JSON")
    .option("-q, --quiet", "print nothing; the exit code tells")
    .option("--follow-symlinks", "allow shards that are symlinks leading outside the folder")
    .action(async (dir: string, flags: { json?: boolean; quiet?: boolean; followSymlinks?: boolean }) => {
      const { verifyCheckpoint } = await import("../../node/checks.js");
      let progress: Progress | undefined;
      const report = await verifyCheckpoint(dir, {
        ...sourceOptions(flags),
        onProgress: (bytes, tensors, totalBytes, totalTensors) => {
          progress ??= new Progress(!flags.quiet && !flags.json, "verifying", totalBytes, totalTensors);
          progress.update(bytes, tensors);
        },
      }).finally(() => progress?.stop());
      if (!report.exact) process.exitCode = EXIT_DIFFERENT;
      if (flags.json) {
        printJson(report);
        return;
      }
      if (flags.quiet) return;
      const rows = report.components.map((c) => [
        c.component,
        formatCount(c.tensors),
        formatCount(c.exact),
        formatCount(c.upcast),
        formatCount(c.differ),
        formatCount(c.missing),
        c.exact === c.tensors ? "exact" : "NOT EXACT",
      ]);
      say(`${dir}: round trip ${report.path.map(layoutShortName).join(" → ")}, ${formatCount(report.tensors)} tensors, ${formatBytes(report.bytes)}`);
      say("");
      say(table(["component", "tensors", "exact", "upcast", "differ", "lost", "result"], rows, new Set([1, 2, 3, 4, 5])));
      if (report.problems.length > 0) {
        say("");
        for (const p of report.problems) say(`  ${p}`);
      }
      say("");
      say(report.exact ? `bit-exact round trip (${formatSeconds(report.seconds)})` : `NOT bit-exact (${formatSeconds(report.seconds)})`);
    });
}
