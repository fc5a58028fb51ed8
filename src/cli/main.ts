import * as fs from "node:fs";
import { Command, CommanderError } from "commander";
import { EXIT_INPUT, EXIT_INTERNAL, OmniCkptError, exitCodeOf } from "../errors.js";
import { abortOutputs } from "../node/output-folder.js";
import { bareParts, registerConsolidate } from "./commands/consolidate.js";
import { registerConvert } from "./commands/convert.js";
import { registerDiff } from "./commands/diff.js";
import { registerInspect } from "./commands/inspect.js";
import { registerLora } from "./commands/lora.js";
import { registerSynth } from "./commands/synth.js";
import { registerSynthSave } from "./commands/synth-save.js";
import { registerVerify } from "./commands/verify.js";
import { stopAllProgress } from "./progress.js";

const version = (JSON.parse(fs.readFileSync(new URL("../../../package.json", import.meta.url), "utf8")) as { version: string }).version;

/** One line on stderr; the stack only with --debug, and for our own bugs a pointer to it. */
function report(e: unknown, debug: boolean): number {
  // A command that failed with its bar still showing: the error gets a line of its own.
  stopAllProgress();
  const message = e instanceof Error ? e.message.split("\n")[0]! : String(e);
  if (e instanceof OmniCkptError) {
    process.stderr.write(`omni-ckpt: error: ${message}\n`);
    if (debug && e.stack) process.stderr.write(`${e.stack}\n`);
    return exitCodeOf(e);
  }
  process.stderr.write(`omni-ckpt: internal error: ${message}${debug ? "" : " (run with --debug for details)"}\n`);
  if (debug && e instanceof Error && e.stack) process.stderr.write(`${e.stack}\n`);
  return EXIT_INTERNAL;
}

export async function main(argv: readonly string[]): Promise<number> {
  const debug = argv.includes("--debug");
  const program = new Command()
    .name("omni-ckpt")
    .description("Convert Nemotron-3-Nano-Omni checkpoints between the Hugging Face and NeMo Automodel layouts.")
    .version(version)
    .option("--debug", "print stack traces with errors")
    .showHelpAfterError(false)
    // An error is one line: no "(Did you mean …?)" line after it.
    .showSuggestionAfterError(false)
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s.startsWith("error:") ? `omni-ckpt: ${s}` : s) });
  for (const register of [registerConvert, registerInspect, registerVerify, registerDiff, registerSynth, registerLora, registerSynthSave, registerConsolidate]) register(program);
  const everyCommand = (c: Command): Command[] => [c, ...c.commands.flatMap(everyCommand)];
  for (const c of program.commands) c.exitOverride().option("--debug", "print stack traces with errors");
  for (const c of program.commands.flatMap(everyCommand)) c.showSuggestionAfterError(false);
  try {
    await program.parseAsync(bareParts(argv), { from: "user" });
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : EXIT_INPUT;
    return report(e, debug);
  }
}

/**
 * The command line owns the process: on Ctrl-C or a kill it removes what is half-built and exits at once
 * (a SIGKILL leaves the clearly named temporary folder for the next run to remove). Library calls install
 * nothing of the kind; they clean up when their AbortSignal fires.
 */
function installSignalHandlers(): void {
  const onSignal = (signal: NodeJS.Signals, code: number): void => {
    // The bar hid the cursor and turned line wrapping off: give the terminal back first.
    stopAllProgress();
    if (abortOutputs() > 0) process.stderr.write(`omni-ckpt: interrupted by ${signal}; the partial output was removed\n`);
    process.exit(code);
  };
  process.on("SIGINT", () => onSignal("SIGINT", 130));
  process.on("SIGTERM", () => onSignal("SIGTERM", 143));
  process.on("exit", () => abortOutputs());
}

installSignalHandlers();

// A reader that stops early (`omni-ckpt diff A B | head`) closes the pipe. Nothing printed after that can
// reach anyone, so the process ends quietly with the command's exit code (as on any exit, a conversion
// still running is cleaned up).
process.stdout.on("error", (e: NodeJS.ErrnoException) => {
  if (e.code === "EPIPE") process.exit(typeof process.exitCode === "number" ? process.exitCode : 0);
  process.exit(report(e, process.argv.includes("--debug")));
});

// A closed stderr (`… 2>&1 | head -1`) must not turn a refusal's exit code into an I/O failure's.
process.stderr.on("error", (e: NodeJS.ErrnoException) => {
  if (e.code !== "EPIPE") throw e;
});

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.exitCode = report(e, process.argv.includes("--debug"));
  },
);
