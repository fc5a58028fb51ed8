import * as fs from "node:fs";
import * as path from "node:path";
import type { PartSpec } from "../consolidate/parts.js";
import type { FaultInjection } from "../convert/faults.js";
import type { ConsolidationPlan } from "../consolidate/plan.js";
import { type MetadataFiles, completeConsolidation, shardPlans, writeConsolidatedFiles } from "../consolidate/write.js";
import { InputError, LockHeldError, WriteError } from "../errors.js";
import { DEFAULT_METADATA, encodeHeader } from "../safetensors/encode.js";
import { describeIoError } from "./file-source.js";
import { LocalOutput, checkFileOnDisk, fsyncPath, writeFileDurably } from "./local-output.js";
import { LOCK_TAG, assertNotLocked, checkDestination, moveIntoPlace, placeDestination, releaseLock, takeLock, trackOutput, untrackOutput } from "./output-folder.js";
import { RunLock, liveOwner } from "./run-lock.js";

/**
 * A consolidation split over N processes (on any machines sharing the filesystem), with no coordinator but
 * the filesystem. Beside DST:
 *
 *   .DST.omni-ckpt-run-<id>/         the output being built: each part writes its own files into it
 *   .DST.omni-ckpt-run-<id>.state/   run.json, part-K-of-N.lock (a live part), part-K-of-N.done (a finished one)
 *
 * `<id>` is the run's fingerprint (SRC's rank headers, N, options), so parts of one run share the folder and
 * parts of another run find a different one and are refused. A part writes its files, syncs them, marks
 * itself done; the part that finds every part done (or `consolidate --finish`) checks every file, writes the
 * index and the metadata files, and renames the folder into place. A part killed midway leaves its lock and
 * some of its files: rerun, it takes the lock over and writes its files again; nothing of the others is
 * touched, and nothing of the run is ever removed as stale by a part of the same run.
 */

export interface RunContext {
  readonly plan: ConsolidationPlan;
  readonly metadata: MetadataFiles;
  readonly place: { readonly source: string; readonly allowedInside: string; readonly force?: boolean };
  /** The run's fingerprint for N parts. */
  readonly fingerprint: (count: number) => Promise<string>;
  readonly req: {
    readonly dst: string;
    readonly force?: boolean;
    readonly signal?: AbortSignal;
    readonly onPlan?: (plan: ConsolidationPlan, files: readonly string[]) => void;
    readonly onProgress?: (bytesDone: number, tensorsDone: number) => void;
    readonly onNote?: (note: string) => void;
    readonly lockStaleMs?: number;
    readonly faults?: FaultInjection;
  };
}

export interface RunOutcome {
  /** The part this process ran (none for `--finish`). */
  readonly part?: PartSpec;
  /** How many parts the run has. */
  readonly parts: number;
  readonly files: readonly string[];
  readonly auxFiles: readonly string[];
  readonly committed: boolean;
  readonly waitingFor: readonly number[];
  readonly notes: readonly string[];
}

const RUN_TAG = ".omni-ckpt-run-";
const STATE_SUFFIX = ".state";
/** Hex digits of the fingerprint in folder names: enough that two runs never meet. */
const ID_LENGTH = 16;

interface RunPaths {
  readonly dst: string;
  readonly parent: string;
  readonly base: string;
  readonly id: string;
  readonly staging: string;
  readonly state: string;
}

function runPaths(target: string, id: string): RunPaths {
  const parent = path.dirname(target);
  const base = path.basename(target);
  const staging = path.join(parent, `.${base}${RUN_TAG}${id.slice(0, ID_LENGTH)}`);
  return { dst: target, parent, base, id, staging, state: `${staging}${STATE_SUFFIX}` };
}

const partName = (k: number, n: number): string => `part-${k}-of-${n}`;

interface RunInfo {
  readonly run: string;
  readonly parts: number;
}

function readRunInfo(state: string): RunInfo | undefined {
  try {
    const v = JSON.parse(fs.readFileSync(path.join(state, "run.json"), "utf8")) as Partial<RunInfo>;
    return typeof v.run === "string" && Number.isSafeInteger(v.parts) ? (v as RunInfo) : undefined;
  } catch {
    return undefined;
  }
}

class Notes {
  readonly list: string[] = [];
  constructor(private readonly on?: (note: string) => void) {}
  add(text: string): void {
    this.list.push(text);
    this.on?.(text);
  }
}

/** Whether any lock in a run's state folder belongs to a live process. */
async function liveLocks(state: string, staleMs?: number): Promise<string[]> {
  let names: string[];
  try {
    names = fs.readdirSync(state).filter((n) => n.endsWith(".lock"));
  } catch {
    return [];
  }
  // Each owner on another machine may take a heartbeat's wait to judge: all of them at once.
  const owners = await Promise.all(names.map((n) => liveOwner(path.join(state, n), staleMs)));
  return names.filter((_, i) => owners[i] !== undefined).map((n) => n.replace(/\.lock$/, ""));
}

/**
 * What lies beside DST from other runs: a run in progress (live parts) refuses this one; a stopped one is
 * discarded only with --force; state left by a run that already committed is removed.
 */
async function checkOtherRuns(p: RunPaths, ctx: RunContext, notes: Notes): Promise<void> {
  const prefix = `.${p.base}${RUN_TAG}`;
  const ours = path.basename(p.staging);
  for (const name of fs.readdirSync(p.parent)) {
    if (!name.startsWith(prefix) || name.endsWith(".tmp")) continue;
    const staging = path.join(p.parent, name.endsWith(STATE_SUFFIX) ? name.slice(0, -STATE_SUFFIX.length) : name);
    const state = `${staging}${STATE_SUFFIX}`;
    const isState = name.endsWith(STATE_SUFFIX);
    if (isState && fs.existsSync(staging)) continue; // seen with its staging folder
    if (!fs.existsSync(path.join(p.parent, name))) continue; // discarded with its staging folder
    if (isState && !fs.existsSync(staging)) {
      // A run that committed (or was discarded) but was stopped before it removed its state.
      if ((await liveLocks(state, ctx.req.lockStaleMs)).length === 0) {
        fs.rmSync(state, { recursive: true, force: true });
        notes.add(`removed ${state}, left by a run that had already finished`);
      }
      continue;
    }
    // This run's own folders in progress: nothing to check, and no other machine's heartbeat to wait for.
    if (path.basename(staging) === ours) continue;
    const live = await liveLocks(state, ctx.req.lockStaleMs);
    const info = readRunInfo(state);
    const what = `${staging} holds a different consolidation run into ${ctx.req.dst}${info ? ` (${info.parts} parts)` : ""}: other SRC headers, part count or options`;
    if (live.length > 0) throw new InputError(`${what}, and its ${live.join(", ")} ${live.length === 1 ? "is" : "are"} still running; parts of different runs never mix`);
    if (!ctx.place.force) throw new InputError(`${what}, stopped; rerun its parts as they were, or pass --force to discard it`);
    fs.rmSync(staging, { recursive: true, force: true });
    fs.rmSync(state, { recursive: true, force: true });
    notes.add(`discarded ${staging}, a stopped consolidation run with other SRC headers, part count or options (--force)`);
  }
}

/** A single-process `convert` or `consolidate` writing DST right now refuses the run. */
function checkNoSingleWriter(p: RunPaths, dst: string): void {
  assertNotLocked(path.join(p.parent, `.${p.base}${LOCK_TAG}`), dst);
}

async function openRun(ctx: RunContext, count: number, notes: Notes): Promise<RunPaths> {
  const target = placeDestination(ctx.req.dst, ctx.place);
  const p = runPaths(target, await ctx.fingerprint(count));
  checkNoSingleWriter(p, ctx.req.dst);
  await checkOtherRuns(p, ctx, notes);
  checkDestination(ctx.req.dst, target, ctx.place.force ?? false);
  try {
    fs.mkdirSync(p.staging, { recursive: true });
    fs.mkdirSync(p.state, { recursive: true });
    const info = path.join(p.state, "run.json");
    if (!fs.existsSync(info)) {
      const tmp = `${info}.${process.pid}.tmp`;
      fs.writeFileSync(tmp, `${JSON.stringify({ run: p.id, parts: count, src: ctx.place.source, dst: ctx.req.dst }, null, 2)}\n`);
      fs.renameSync(tmp, info);
    }
  } catch (e) {
    throw new WriteError(`${p.staging}: cannot create the run's folders: ${describeIoError(e)}`);
  }
  return p;
}

/** The files a run writes, with the size and header each must have. */
function expectedFiles(plan: ConsolidationPlan): Map<string, { size: number; header: Uint8Array }> {
  const out = new Map<string, { size: number; header: Uint8Array }>();
  for (const s of shardPlans(plan)) {
    const h = encodeHeader(s.tensors, DEFAULT_METADATA);
    out.set(s.file, { size: h.bytes.byteLength + h.dataSize, header: h.bytes });
  }
  return out;
}

/**
 * Run part `part` of a consolidation: write its files into the run's folder, mark it done, and commit DST if
 * it is the last part to finish.
 */
export async function runPart(ctx: RunContext, part: PartSpec, files: readonly string[]): Promise<RunOutcome> {
  const notes = new Notes(ctx.req.onNote);
  const p = await openRun(ctx, part.count, notes);
  const name = partName(part.index, part.count);
  const lock = await RunLock.acquire(path.join(p.state, `${name}.lock`), `part ${part.index}/${part.count} of the consolidation into ${ctx.req.dst}`, {
    ...(ctx.req.lockStaleMs !== undefined ? { staleMs: ctx.req.lockStaleMs } : {}),
    onStale: (owner) => notes.add(`took over part ${part.index}/${part.count} from ${owner}, which stopped without finishing`),
  });
  const done = path.join(p.state, `${name}.done`);
  let written: string[] = [];
  // Until it is done, what this part wrote goes when it is interrupted (Ctrl-C, SIGTERM) or fails.
  const partial = {
    abort: (): void => {
      for (const f of files) fs.rmSync(path.join(p.staging, f), { force: true });
      lock.release();
      untrackOutput(partial);
    },
  };
  try {
    if (fs.existsSync(done)) notes.add(`part ${part.index}/${part.count} was already done by an earlier run of it; nothing to write`);
    else {
      trackOutput(partial);
      const left = files.filter((f) => fs.existsSync(path.join(p.staging, f)));
      for (const f of left) fs.rmSync(path.join(p.staging, f), { force: true });
      if (left.length > 0) notes.add(`removed ${left.length} file${left.length === 1 ? "" : "s"} of part ${part.index}/${part.count} left half-written by an interrupted run of it`);
      ctx.req.onPlan?.(ctx.plan, files);
      written = await writeConsolidatedFiles(ctx.plan, new LocalOutput(p.staging, ctx.req.dst), {
        files: new Set(files),
        ...(ctx.req.signal ? { signal: ctx.req.signal } : {}),
        ...(ctx.req.onProgress ? { onProgress: ctx.req.onProgress } : {}),
        ...(ctx.req.faults ? { faults: ctx.req.faults } : {}),
      });
      fsyncPath(p.staging);
      // A part taken over while it stood still leaves marking it done to the one that took it.
      lock.assertHeld(`part ${part.index}/${part.count} of the consolidation into ${ctx.req.dst}`);
      writeFileDurably(done, `${JSON.stringify({ files: written }, null, 2)}\n`);
      fsyncPath(p.state);
      untrackOutput(partial);
    }
  } catch (e) {
    partial.abort();
    throw e;
  }
  lock.release();
  const finished = await tryFinish(ctx, p, part.count, notes);
  return { part, parts: part.count, files: [...written, ...finished.files], auxFiles: finished.auxFiles, committed: finished.committed, waitingFor: finished.waitingFor, notes: notes.list };
}

/** `consolidate --finish`: commit a run whose parts are all done; N from the request or the run in progress. */
export async function finishRun(ctx: RunContext, count: number | undefined): Promise<RunOutcome> {
  const notes = new Notes(ctx.req.onNote);
  const target = placeDestination(ctx.req.dst, ctx.place);
  let n = count;
  if (n === undefined) {
    const prefix = `.${path.basename(target)}${RUN_TAG}`;
    const runs = fs
      .readdirSync(path.dirname(target))
      .filter((f) => f.startsWith(prefix) && f.endsWith(STATE_SUFFIX))
      .map((f) => readRunInfo(path.join(path.dirname(target), f)))
      .filter((i): i is RunInfo => i !== undefined);
    for (const info of runs) if ((await ctx.fingerprint(info.parts)) === info.run) n = info.parts;
    if (n === undefined) {
      throw new InputError(`${ctx.req.dst}: no consolidation run of this SRC in progress${runs.length > 0 ? " (the runs beside it are of other SRC headers or options)" : ""}; nothing to finish`);
    }
  }
  const p = runPaths(target, await ctx.fingerprint(n));
  if (!fs.existsSync(p.state) || !fs.existsSync(p.staging)) throw new InputError(`${ctx.req.dst}: no run of ${n} parts of this SRC in progress (${p.staging}); nothing to finish`);
  checkNoSingleWriter(p, ctx.req.dst);
  const finished = await tryFinish(ctx, p, n, notes);
  if (!finished.committed && finished.waitingFor.length > 0) {
    const missing = finished.waitingFor;
    throw new InputError(
      `${ctx.req.dst}: cannot finish: part${missing.length === 1 ? "" : "s"} ${missing.join(", ")} of ${n} ${missing.length === 1 ? "is" : "are"} not done; run ${missing.map((k) => `--part ${k}/${n}`).join(", ")}`,
    );
  }
  return { parts: n, ...finished, notes: notes.list };
}

/**
 * If every part is done, commit: check every file against the plan (size and header), write the index and
 * the metadata files, rename the run's folder into place. One process commits; the others return.
 */
async function tryFinish(ctx: RunContext, p: RunPaths, count: number, notes: Notes): Promise<Omit<RunOutcome, "notes" | "part" | "parts">> {
  const missing: number[] = [];
  for (let k = 1; k <= count; k++) if (!fs.existsSync(path.join(p.state, `${partName(k, count)}.done`))) missing.push(k);
  if (missing.length > 0) return { files: [], auxFiles: [], committed: false, waitingFor: missing };
  let lock: RunLock;
  try {
    lock = await RunLock.acquire(path.join(p.state, "finish.lock"), `the commit of ${ctx.req.dst}`, {
      ...(ctx.req.lockStaleMs !== undefined ? { staleMs: ctx.req.lockStaleMs } : {}),
      onStale: (owner) => notes.add(`took over the commit of ${ctx.req.dst} from ${owner}, which stopped before it was done`),
    });
  } catch (e) {
    // Another part saw every part done at the same time and is committing, or has committed already
    // (the run's state folder, where the lock would go, is gone with its commit).
    if (e instanceof LockHeldError) return { files: [], auxFiles: [], committed: false, waitingFor: [] };
    if (!fs.existsSync(p.state)) {
      notes.add(`${ctx.req.dst} was committed by another part meanwhile`);
      return { files: [], auxFiles: [], committed: false, waitingFor: [] };
    }
    throw e;
  }
  const dstLock = path.join(p.parent, `.${p.base}${LOCK_TAG}`);
  try {
    if (!fs.existsSync(p.staging)) {
      notes.add(`${ctx.req.dst} was committed by another part meanwhile`);
      return { files: [], auxFiles: [], committed: false, waitingFor: [] };
    }
    takeLock(dstLock, ctx.req.dst);
    lock.assertHeld(`the commit of ${ctx.req.dst}`);
    const expected = expectedFiles(ctx.plan);
    for (const [file, e] of expected) {
      const full = path.join(p.staging, file);
      if (!fs.existsSync(full)) throw new WriteError(`${ctx.req.dst}: ${file} is missing from ${p.staging} although every part is marked done`);
      checkFileOnDisk(full, e.size, e.header, path.join(ctx.req.dst, file));
    }
    // A commit stopped midway may have left the index or metadata files: they are written again.
    for (const name of fs.readdirSync(p.staging)) if (!expected.has(name)) fs.rmSync(path.join(p.staging, name), { recursive: true, force: true });
    const out = new LocalOutput(p.staging, ctx.req.dst);
    const done = await completeConsolidation(ctx.plan, out, ctx.metadata, ctx.req.signal);
    moveIntoPlace(p.staging, p.dst, ctx.place.force ?? false, (t) => notes.add(t));
    fs.rmSync(p.state, { recursive: true, force: true });
    return { files: [done.index], auxFiles: done.auxFiles, committed: true, waitingFor: [] };
  } finally {
    releaseLock(dstLock);
    lock.release();
  }
}
