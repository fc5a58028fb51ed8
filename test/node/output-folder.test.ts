import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { LockHeldError } from "../../src/errors.js";
import { LocalOutput, fsyncTree } from "../../src/node/local-output.js";
import { LOCK_TAG, OutputFolder, THIS_HOST, TMP_TAG, assertNotLocked, lockOwner, suffixOwner } from "../../src/node/output-folder.js";
import { tempDir } from "../helpers/cli.js";

const work = tempDir("omni-ckpt-output-folder-");
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

/** Another machine sharing the filesystem, as its locks and folders name it. */
const ELSEWHERE = "elsewhere.invalid";

/** A pid no process on this machine has: that of a child that has exited (and been reaped). */
function deadPid(): number {
  const pid = spawnSync(process.execPath, ["-e", ""]).pid;
  if (pid === undefined) throw new Error("could not start a child process");
  return pid;
}

/** A pid alive on this machine that is not this process's. */
const livePid = process.ppid;

const lockOf = (dst: string): string => path.join(path.dirname(dst), `.${path.basename(dst)}${LOCK_TAG}`);
const besides = (dst: string): string[] => fs.readdirSync(path.dirname(dst)).filter((n) => n.startsWith(`.${path.basename(dst)}.`)).sort();

/** A leftover folder beside DST (`tag` is `omni-ckpt-tmp` or `omni-ckpt-old`) holding one file. */
function leftover(dst: string, tag: string, suffix: string): string {
  const dir = path.join(path.dirname(dst), `.${path.basename(dst)}.${tag}-${suffix}`);
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, "config.json"), "{}\n");
  return dir;
}

function prepare(dst: string): { out: OutputFolder; notes: string[] } {
  const notes: string[] = [];
  return { out: OutputFolder.prepare(dst, { onNote: (n) => notes.push(n) }), notes };
}

describe("a committed output is durable in every folder it made", () => {
  it("fsyncTree syncs every folder once, each after all the folders inside it, the root last", () => {
    const root = path.join(work, "tree");
    for (const d of ["a/b/c", "a/d", "e"]) fs.mkdirSync(path.join(root, d), { recursive: true });
    fs.writeFileSync(path.join(root, "a/b/c/file"), "x");
    fs.writeFileSync(path.join(root, "top"), "y");
    // A link to a folder outside is not the output's own folder: it is not followed.
    fs.mkdirSync(path.join(work, "outside"));
    fs.symlinkSync(path.join(work, "outside"), path.join(root, "a/link"));
    const synced: string[] = [];
    fsyncTree(root, (dir) => synced.push(path.relative(root, dir) || "."));
    expect([...synced].sort()).toEqual([".", "a", "a/b", "a/b/c", "a/d", "e"]);
    for (const dir of synced) {
      const inside = synced.filter((d) => d !== dir && (dir === "." || d.startsWith(`${dir}/`)));
      for (const child of inside) expect(synced.indexOf(child), `${child} before ${dir}`).toBeLessThan(synced.indexOf(dir));
    }
  });

  it("an output with nested folders is committed whole", async () => {
    const dst = path.join(work, "nested");
    const out = OutputFolder.prepare(dst);
    const store = new LocalOutput(out.tmp, dst);
    await store.mkdir("extra");
    await store.mkdir("extra/deeper");
    await store.writeFile("extra/deeper/file.json", new TextEncoder().encode("{}\n"));
    await store.writeFile("config.json", new TextEncoder().encode("{}\n"));
    out.commit();
    expect(fs.readFileSync(path.join(dst, "extra/deeper/file.json"), "utf8")).toBe("{}\n");
    expect(fs.readdirSync(work).filter((n) => n.startsWith(".nested"))).toEqual([]);
  });
});

describe("the lock beside DST and leftovers of other runs, on a filesystem machines share", () => {
  it("names this machine and this process in the lock and the temporary folder", () => {
    const dst = path.join(work, "named");
    const { out } = prepare(dst);
    expect(lockOwner(lockOf(dst))).toEqual({ host: THIS_HOST, pid: process.pid });
    expect(path.basename(out.tmp)).toMatch(new RegExp(`^\\.named${TMP_TAG.replace(/\./g, "\\.")}${process.pid}-${THIS_HOST.replace(/\./g, "\\.")}-[0-9a-f]{8}$`));
    expect(suffixOwner(path.basename(out.tmp).slice(`.named${TMP_TAG}`.length))).toEqual({ host: THIS_HOST, pid: process.pid });
    out.abort();
    expect(besides(dst)).toEqual([]);
  });

  it("reads the owner of a name, hostnames with dashes and digits included, and old pid-only names as this machine's", () => {
    expect(suffixOwner("12-node-17-0a1b2c3d")).toEqual({ host: "node-17", pid: 12 });
    expect(suffixOwner("12-99-0a1b2c3d")).toEqual({ host: "99", pid: 12 });
    expect(suffixOwner("12-0a1b2c3d")).toEqual({ host: THIS_HOST, pid: 12 });
    expect(suffixOwner("garbage")).toBeUndefined();
  });

  it("refuses at once a lock of another machine, even one whose pid is dead here, and leaves it as it was", () => {
    const dst = path.join(work, "foreign-lock");
    const lock = lockOf(dst);
    const pid = deadPid();
    const content = `${JSON.stringify({ host: ELSEWHERE, pid })}\n`;
    fs.writeFileSync(lock, content);
    expect(() => OutputFolder.prepare(dst)).toThrow(LockHeldError);
    expect(() => OutputFolder.prepare(dst)).toThrow(
      `${dst} is being written by another omni-ckpt process (pid ${pid} on ${ELSEWHERE}); wait for it or choose another destination. If that run is gone, remove ${lock}: another machine's lock is never taken over, as whether its run is alive cannot be seen from here`,
    );
    // Replacing DST does not break into another machine's run either.
    expect(() => OutputFolder.prepare(dst, { force: true })).toThrow(LockHeldError);
    expect(fs.readFileSync(lock, "utf8")).toBe(content);
    expect(besides(dst)).toEqual([path.basename(lock)]);
    // The consolidation's check of a single writer says the same.
    expect(() => assertNotLocked(lock, dst)).toThrow(`(pid ${pid} on ${ELSEWHERE})`);
    // Removed as the message says, DST is free.
    fs.rmSync(lock);
    prepare(dst).out.abort();
  });

  it("takes over this machine's lock of a dead process, written before or after locks named the host", () => {
    for (const content of [`${deadPid()}\n`, JSON.stringify({ host: THIS_HOST, pid: deadPid() })]) {
      const dst = path.join(work, "stale-lock");
      fs.writeFileSync(lockOf(dst), content);
      const { out } = prepare(dst);
      expect(lockOwner(lockOf(dst)), content).toEqual({ host: THIS_HOST, pid: process.pid });
      out.abort();
      expect(besides(dst)).toEqual([]);
    }
  });

  it("refuses this machine's lock of a live process, naming its pid alone, in either form", () => {
    for (const content of [`${livePid}\n`, JSON.stringify({ host: THIS_HOST, pid: livePid })]) {
      const dst = path.join(work, "live-lock");
      fs.writeFileSync(lockOf(dst), content);
      expect(() => OutputFolder.prepare(dst), content).toThrow(new LockHeldError(`${dst} is being written by another omni-ckpt process (pid ${livePid}); wait for it or choose another destination`));
      expect(fs.readFileSync(lockOf(dst), "utf8")).toBe(content);
      fs.rmSync(lockOf(dst));
    }
  });

  it("leaves another machine's temporary folder and moved-aside DST, saying whose they are and how to remove them", () => {
    const dst = path.join(work, "foreign-leftovers");
    const pid = deadPid();
    const tmp = leftover(dst, "omni-ckpt-tmp", `${pid}-${ELSEWHERE}-0123abcd`);
    const old = leftover(dst, "omni-ckpt-old", `${pid}-${ELSEWHERE}-89abcdef`);
    const { out, notes } = prepare(dst);
    expect(notes.sort()).toEqual([
      `left ${old}, a checkpoint that pid ${pid} on ${ELSEWHERE} moved aside to replace ${dst} (--force); if that run is gone, it is the DST it replaced: move it back or remove it`,
      `left ${tmp}, the output of pid ${pid} on ${ELSEWHERE}, which may still be writing it; if that run is gone, remove it`,
    ]);
    // Not restored into DST either: that run may be between its two renames right now.
    expect(fs.existsSync(dst)).toBe(false);
    fs.writeFileSync(path.join(out.tmp, "config.json"), "{}\n");
    out.commit();
    for (const dir of [tmp, old]) expect(fs.readFileSync(path.join(dir, "config.json"), "utf8")).toBe("{}\n");
    expect(besides(dst)).toEqual([path.basename(old), path.basename(tmp)].sort());
  });

  it("still removes this machine's leftovers of dead runs, named before or after names carried the host, and keeps a live run's", () => {
    const dst = path.join(work, "own-leftovers");
    const oldStyle = leftover(dst, "omni-ckpt-tmp", `${deadPid()}-0123abcd`);
    const newStyle = leftover(dst, "omni-ckpt-tmp", `${deadPid()}-${THIS_HOST}-4567cdef`);
    const live = leftover(dst, "omni-ckpt-tmp", `${livePid}-${THIS_HOST}-89abcdef`);
    const aside = leftover(dst, "omni-ckpt-old", `${deadPid()}-${THIS_HOST}-fedcba98`);
    const notes: string[] = [];
    // The DST put back is not replaced without --force.
    expect(() => OutputFolder.prepare(dst, { onNote: (n) => notes.push(n) })).toThrow(`${dst} already exists and is not empty; pass --force to replace it`);
    expect(notes.sort()).toEqual(
      [
        `removed ${oldStyle}, left by an interrupted run`,
        `removed ${newStyle}, left by an interrupted run`,
        `restored ${dst} from ${aside}, left by a --force replacement that was interrupted`,
      ].sort(),
    );
    expect(fs.readFileSync(path.join(dst, "config.json"), "utf8")).toBe("{}\n");
    expect(besides(dst)).toEqual([path.basename(live)]);
  });
});
