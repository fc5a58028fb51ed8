import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LOCK_TAG, THIS_HOST } from "../../src/node/output-folder.js";
import { CLI, runCli, snapshot, startCli, tempDir } from "../helpers/cli.js";

const work = tempDir();
const src = path.join(work, "src");
const reference = path.join(work, "reference");
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

beforeAll(() => {
  // Many small shards: chunks never span shards, so a slowed-down conversion takes a while.
  expect(runCli(["synth", src, "--preset", "tiny", "--max-shard-size", "10KB"]).code).toBe(0);
  expect(runCli(["convert", "--to", "native", "-q", src, reference]).code).toBe(0);
});

/** Names in `dir` that a conversion to `base` leaves beside it (temporary folders, locks). */
function leftovers(dir: string, base: string): string[] {
  return fs.readdirSync(dir).filter((n) => n.startsWith(`.${base}.omni-ckpt`));
}

async function waitFor(check: () => boolean, ms = 15_000): Promise<void> {
  const until = Date.now() + ms;
  while (!check()) {
    if (Date.now() > until) throw new Error("timed out waiting");
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Start a slowed-down conversion and wait until it has begun writing shards into its temporary folder. */
async function startSlowConversion(dst: string, base: string) {
  const child = startCli(["convert", "--to", "native", "--max-shard-size", "1KB", src, dst], { env: { OMNI_CKPT_FAULT: "delay-ms=100" } });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code, signal) => resolve(code ?? (signal ? -1 : null))));
  await waitFor(() => leftovers(work, base).some((n) => n.includes("tmp") && fs.readdirSync(path.join(work, n)).length > 0));
  await new Promise((r) => setTimeout(r, 300));
  return { child, exited, stderr: () => stderr };
}

/** What a killed run of this machine leaves: `.BASE.omni-ckpt-tmp-PID-HOST-RANDOM`. */
const killedTmp = (base: string): RegExp => new RegExp(`\\.${base}\\.omni-ckpt-tmp-\\d+-${THIS_HOST.replace(/[.]/g, "\\.")}-[0-9a-f]{8}`);

describe("interruptions never leave a half-written DST", () => {
  it("SIGKILL: no DST, a clearly named temporary folder that the next run removes", async () => {
    const dst = path.join(work, "killed");
    const before = snapshot(src);
    const run = await startSlowConversion(dst, "killed");
    run.child.kill("SIGKILL");
    await run.exited;
    expect(fs.existsSync(dst)).toBe(false);
    const left = leftovers(work, "killed");
    expect(left.some((n) => new RegExp(`^${killedTmp("killed").source}$`).test(n))).toBe(true);
    const again = runCli(["convert", "--to", "native", src, dst]);
    expect(again.code).toBe(0);
    expect(again.stderr).toMatch(new RegExp(`removed .*${killedTmp("killed").source}, left by an interrupted run`));
    expect(leftovers(work, "killed")).toEqual([]);
    expect(runCli(["diff", dst, reference]).code).toBe(0);
    expect(snapshot(src)).toEqual(before);
  });

  it.each([
    ["SIGINT", 130],
    ["SIGTERM", 143],
  ] as const)("%s: temporary folder and lock removed, exit %i, no DST", async (signal, code) => {
    const base = `signal-${signal}`;
    const dst = path.join(work, base);
    const run = await startSlowConversion(dst, base);
    run.child.kill(signal);
    expect(await run.exited).toBe(code);
    expect(run.stderr()).toMatch(new RegExp(`interrupted by ${signal}; the partial output was removed`));
    expect(fs.existsSync(dst)).toBe(false);
    expect(leftovers(work, base)).toEqual([]);
  });
});

describe("write failures", () => {
  it("an injected ENOSPC: one clear line, exit 1, nothing left behind, SRC untouched", () => {
    const dst = path.join(work, "enospc");
    const before = snapshot(src);
    const r = runCli(["convert", "--to", "native", src, dst], { env: { OMNI_CKPT_FAULT: "write-error-after=6000" } });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^omni-ckpt: error: write of ".*" failed: no space left on device \(ENOSPC, injected\)\n$/);
    expect(fs.existsSync(dst)).toBe(false);
    expect(leftovers(work, "enospc")).toEqual([]);
    expect(snapshot(src)).toEqual(before);
  });

  // A real full disk: a 24 KB tmpfs in a private mount namespace, where the machine allows one.
  const canMount = spawnSync("unshare", ["-m", "sh", "-c", "mount -t tmpfs -o size=8k tmpfs /mnt && umount /mnt"]).status === 0;
  it.skipIf(!canMount)("a real full tmpfs: clear error, nothing left on it", () => {
    const mnt = tempDir("omni-ckpt-tmpfs-");
    const script = `mount -t tmpfs -o size=24k tmpfs "${mnt}" && "${process.execPath}" "${CLI}" convert --to native "${src}" "${mnt}/out"; echo "rc=$?"; ls -A "${mnt}"; umount "${mnt}"`;
    const r = spawnSync("unshare", ["-m", "sh", "-c", script], { encoding: "utf8" });
    fs.rmSync(mnt, { recursive: true, force: true });
    expect(r.stdout.trim()).toBe("rc=1");
    expect(r.stderr).toMatch(/^omni-ckpt: error: .*no space left on device \(ENOSPC\)\n$/);
  });
});

describe("two conversions racing to one DST", () => {
  it("one succeeds, the other fails clearly, and DST is never a mix", async () => {
    const dst = path.join(work, "raced");
    const start = () => {
      const child = startCli(["convert", "--to", "native", src, dst], { env: { OMNI_CKPT_FAULT: "delay-ms=10" } });
      let stderr = "";
      child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
      return new Promise<{ code: number | null; stderr: string }>((resolve) => child.on("exit", (code) => resolve({ code, stderr })));
    };
    const results = await Promise.all([start(), start()]);
    const codes = results.map((r) => r.code).sort();
    expect(codes).toEqual([0, 2]);
    const loser = results.find((r) => r.code === 2)!;
    expect(loser.stderr).toMatch(/is being written by another omni-ckpt process \(pid \d+\)|already exists and is not empty/);
    expect(runCli(["diff", dst, reference]).code).toBe(0);
    expect(leftovers(work, "raced")).toEqual([]);
  });
});

describe("a run of another machine sharing the filesystem", () => {
  it("its lock makes a conversion fail at once, naming the machine and the lock to remove if that run is gone", () => {
    const dst = path.join(work, "shared");
    const lock = path.join(work, `.shared${LOCK_TAG}`);
    // pid 1 is alive here, but says nothing about a process on another machine either way.
    fs.writeFileSync(lock, `${JSON.stringify({ host: "elsewhere.invalid", pid: 1 })}\n`);
    const r = runCli(["convert", "--to", "native", src, dst]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      `omni-ckpt: error: ${dst} is being written by another omni-ckpt process (pid 1 on elsewhere.invalid); wait for it or choose another destination. If that run is gone, remove ${lock}: another machine's lock is never taken over, as whether its run is alive cannot be seen from here\n`,
    );
    expect(leftovers(work, "shared")).toEqual([path.basename(lock)]);
    fs.rmSync(lock);
    expect(runCli(["convert", "--to", "native", "-q", src, dst]).code).toBe(0);
    expect(leftovers(work, "shared")).toEqual([]);
  });
});

describe("a --force replacement killed half-way", () => {
  it("brings the old DST back on the next run instead of losing it", () => {
    const dst = path.join(work, "replaced");
    expect(runCli(["convert", "--to", "native", "-q", src, dst]).code).toBe(0);
    const before = snapshot(dst);
    // What a SIGKILL between the two renames of a --force commit leaves: DST moved aside, no DST.
    const aside = path.join(work, ".replaced.omni-ckpt-old-999999-deadbeef");
    fs.renameSync(dst, aside);
    const r = runCli(["convert", "--to", "native", src, dst]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/restored .*replaced from .*\.replaced\.omni-ckpt-old-999999-deadbeef, left by a --force replacement that was interrupted/);
    expect(r.stderr).toMatch(/replaced already exists and is not empty; pass --force/);
    expect(snapshot(dst)).toEqual(before);
    expect(leftovers(work, "replaced")).toEqual([]);
  });
});
