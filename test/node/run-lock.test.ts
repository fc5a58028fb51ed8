import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { LockHeldError } from "../../src/errors.js";
import { RunLock, liveOwner } from "../../src/node/run-lock.js";

// The run lock guards parts of one consolidation that may run on several machines sharing a filesystem;
// a foreign owner is played here by a lock file naming another host, whose heartbeat stands still or moves.

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "run-lock-"));
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

const foreign = (beat = 0): string => `${JSON.stringify({ host: "elsewhere.invalid", pid: 4242, beat })}\n`;
const owner = (file: string): { host: string; pid: number } => JSON.parse(fs.readFileSync(file, "utf8")) as { host: string; pid: number };
const leftovers = (): string[] => fs.readdirSync(dir).filter((n) => n !== "part.lock");

describe("RunLock", () => {
  it("is created whole, names this process, and is gone after release", async () => {
    const file = path.join(dir, "part.lock");
    const lock = await RunLock.acquire(file, "part 1/2", { staleMs: 200 });
    expect(owner(file)).toMatchObject({ host: os.hostname(), pid: process.pid });
    expect(leftovers()).toEqual([]);
    lock.assertHeld("part 1/2");
    lock.release();
    lock.release();
    expect(fs.existsSync(file)).toBe(false);
  });

  it("refuses while another machine's heartbeat moves", async () => {
    const file = path.join(dir, "part.lock");
    fs.writeFileSync(file, foreign(0));
    let beat = 0;
    const ticker = setInterval(() => fs.writeFileSync(file, foreign(++beat)), 20);
    try {
      await expect(RunLock.acquire(file, "part 1/2", { staleMs: 400 })).rejects.toThrow(LockHeldError);
      await expect(RunLock.acquire(file, "part 1/2", { staleMs: 400 })).rejects.toThrow(/part 1\/2 is being written by pid 4242 on elsewhere\.invalid/);
    } finally {
      clearInterval(ticker);
    }
    expect(owner(file).host).toBe("elsewhere.invalid");
  });

  it("takes over a lock whose heartbeat stood still, and says whose it was", async () => {
    const file = path.join(dir, "part.lock");
    fs.writeFileSync(file, foreign(7));
    const stale: string[] = [];
    const lock = await RunLock.acquire(file, "part 1/2", { staleMs: 200, onStale: (o) => stale.push(o) });
    expect(stale).toEqual(["pid 4242 on elsewhere.invalid"]);
    expect(owner(file).pid).toBe(process.pid);
    expect(leftovers()).toEqual([]);
    lock.release();
  });

  it("takes over a lock that does not parse (garbage, never a half-written one)", async () => {
    const file = path.join(dir, "part.lock");
    fs.writeFileSync(file, "");
    const lock = await RunLock.acquire(file, "part 1/2", { staleMs: 200 });
    expect(owner(file).pid).toBe(process.pid);
    lock.release();
  });

  it("knows when it was taken over, stops beating over its successor's lock, and leaves it on release", async () => {
    const file = path.join(dir, "part.lock");
    const lock = await RunLock.acquire(file, "part 1/2", { staleMs: 250 });
    // What a process on another machine does after this one stood still past the stale time.
    fs.writeFileSync(file, foreign(1));
    expect(() => lock.assertHeld("part 1/2")).toThrow(LockHeldError);
    expect(() => lock.assertHeld("part 1/2")).toThrow(/taken over by pid 4242 on elsewhere\.invalid/);
    await new Promise((r) => setTimeout(r, 200)); // several heartbeats' time
    expect(owner(file).host).toBe("elsewhere.invalid");
    lock.release();
    expect(owner(file).host).toBe("elsewhere.invalid");
    expect(leftovers()).toEqual([]);
  });

  it("beats while held, so another machine sees it alive", async () => {
    const file = path.join(dir, "part.lock");
    const lock = await RunLock.acquire(file, "part 1/2", { staleMs: 250 });
    const first = JSON.parse(fs.readFileSync(file, "utf8")) as { beat: number };
    await new Promise((r) => setTimeout(r, 200));
    const later = JSON.parse(fs.readFileSync(file, "utf8")) as { beat: number };
    expect(later.beat).toBeGreaterThan(first.beat);
    // This process's own lock does not count as a live other owner.
    expect(await liveOwner(file, 100)).toBeUndefined();
    lock.release();
    expect(leftovers()).toEqual([]);
  });
});
