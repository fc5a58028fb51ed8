import { type ChildProcess, spawn } from "node:child_process";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { RSS_HOOK, type Sample, checkpoint, clear, cli, convert, dirBytes, fmt, mb, median, rounds, table, timed, work } from "./lib.js";

/**
 * `convert --to native` of the bench checkpoint read from a loopback HTTP server (a process of its own,
 * `bench/http-server.ts`, serving the checkpoint from the page cache) against the same conversion from
 * the local folder, alternating, BENCH_ROUNDS rounds. Target: at least half the local throughput, and
 * the same peak RSS.
 */

const serverScript = path.join(path.dirname(fileURLToPath(import.meta.url)), "http-server.js");

interface Server {
  readonly url: string;
  readonly child: ChildProcess;
  /** The server's CPU seconds, once stopped. */
  stop(): Promise<number>;
}

function startServer(root: string): Promise<Server> {
  const child = spawn(process.execPath, [serverScript, root], { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (s: string) => (stderr += s));
  return new Promise((resolve, reject) => {
    child.on("error", reject);
    child.stdout!.setEncoding("utf8").once("data", (s: string) => {
      const port = Number(s.trim());
      resolve({
        url: `http://127.0.0.1:${port}`,
        child,
        stop: () =>
          new Promise((done) => {
            child.once("close", () => done(Number(/server_cpu_s=([\d.]+)/.exec(stderr)?.[1] ?? Number.NaN)));
            child.kill("SIGTERM");
          }),
      });
    });
  });
}

export async function httpSection(): Promise<string> {
  const base = await checkpoint(1);
  const bytes = dirBytes(base);
  const server = await startServer(path.dirname(base));
  const url = `${server.url}/${path.basename(base)}`;
  const dst = path.join(work, "http-native");
  const overHttp = (): Sample => timed(base, process.execPath, ["--import", RSS_HOOK, cli, "convert", "--to", "native", "--quiet", url, dst]);
  let serverCpu = Number.NaN;
  const local: Sample[] = [];
  const remote: Sample[] = [];
  try {
    clear(dst);
    overHttp(); // warm-up, not counted
    clear(dst);
    for (let i = 0; i < rounds; i++) {
      local.push(convert("native", base, dst));
      clear(dst);
      remote.push(overHttp());
      clear(dst);
    }
  } finally {
    serverCpu = await server.stop();
    clear(dst);
  }
  const localMedian = median(local.map((s) => s.seconds));
  const row = (what: string, samples: Sample[]): string[] => {
    const xs = samples.map((s) => s.seconds);
    const t = median(xs);
    const rss = Math.max(...samples.map((s) => s.maxRssBytes ?? 0));
    return [what, fmt(t), `${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)} s`, `${(bytes / t / 1e6).toFixed(0)} MB/s`, `${((localMedian / t) * 100).toFixed(0)}%`, rss ? mb(rss) : "-"];
  };
  return (
    `convert --to native from a loopback HTTP server (another process) against local files, ${mb(bytes)}, median of ${rounds} alternating runs:\n\n` +
    `${table(["", "median", "range", "throughput", "of local throughput", "peak RSS"], [row("from local files", local), row("from http://127.0.0.1", remote)])}\n\n` +
    `server CPU: ${(serverCpu / (rounds + 1)).toFixed(2)} s per conversion\n`
  );
}
