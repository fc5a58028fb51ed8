import { type CliResult, startCli } from "./cli.js";

export interface AsyncCliResult extends CliResult {
  /** The command did not finish within the time limit and was killed. */
  readonly timedOut: boolean;
}

/**
 * `runCli` without blocking the test worker, so independent commands can run side by side. A command still
 * running after `timeoutMs` is killed and reported as timed out (a hang is a failure, never a stuck suite).
 */
export function runCliAsync(args: readonly string[], options: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<AsyncCliResult> {
  const child = startCli(args, options.env ? { env: options.env } : {});
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (s: string) => (stdout += s));
  child.stderr.setEncoding("utf8").on("data", (s: string) => (stderr += s));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill("SIGKILL");
  }, options.timeoutMs ?? 60_000);
  return new Promise((resolve, reject) => {
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, timedOut });
    });
  });
}
