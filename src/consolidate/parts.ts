import type { Hasher } from "../convert/diff.js";
import { UsageError } from "../errors.js";
import type { ConsolidateOptions, ConsolidationPlan, OutputFile } from "./plan.js";

/**
 * A consolidation split over N processes with no coordinator but the filesystem: each part writes a
 * disjoint set of output files, balanced by bytes, and every part computes the same split from the same
 * headers. A run is identified by a fingerprint of what decides its output (SPEC §9 input, N, options), so
 * parts of different runs never mix.
 */

/** Part `index` (1-based) of `count`. */
export interface PartSpec {
  readonly index: number;
  readonly count: number;
}

export function checkPart(part: PartSpec): void {
  if (!Number.isSafeInteger(part.count) || part.count < 1) throw new UsageError(`the number of parts must be a positive integer, got ${part.count}`);
  if (!Number.isSafeInteger(part.index) || part.index < 1 || part.index > part.count) {
    throw new UsageError(`part ${part.index} of ${part.count} does not exist: parts are numbered 1 to ${part.count}`);
  }
}

/**
 * Output files per part (index 0 is part 1), largest files first to the part with the fewest bytes so far
 * (ties to the lower part): within the largest file's size of the best balance. Deterministic.
 */
export function assignFiles(files: readonly OutputFile[], count: number): string[][] {
  const parts = Array.from({ length: count }, () => ({ bytes: 0, files: [] as OutputFile[] }));
  const order = [...files].sort((a, b) => b.bytes - a.bytes || a.index - b.index);
  for (const f of order) {
    let best = 0;
    for (let i = 1; i < count; i++) if (parts[i]!.bytes < parts[best]!.bytes) best = i;
    parts[best]!.bytes += f.bytes;
    parts[best]!.files.push(f);
  }
  return parts.map((p) => p.files.sort((a, b) => a.index - b.index).map((f) => f.file));
}

const encoder = new TextEncoder();
const baseName = (rel: string): string => rel.slice(rel.lastIndexOf("/") + 1);

/**
 * Feed a run's identity to `hasher`: the format of the run, N, the options, every rank file's name, size
 * and header bytes, and the metadata that decides the output (both mappings and the config). `extra` is
 * what the host adds (a local disk adds the rank files' modification times, so a save rewritten with the
 * same shapes is another run).
 */
export async function fingerprintRun(plan: ConsolidationPlan, count: number, options: ConsolidateOptions, hasher: Hasher, extra: readonly string[] = [], signal?: AbortSignal): Promise<string> {
  const text = (s: string): void => hasher.update(encoder.encode(`${s}\n`));
  text("omni-ckpt consolidation run v1");
  text(`parts ${count}`);
  text(`uniform-expert-dtypes ${options.uniformExpertDTypes === true}`);
  for (const r of plan.save.ranks) {
    const head = new Uint8Array(r.file.header.dataStart);
    await r.file.source.read(head, 0, signal);
    // The file's name inside model/, not its path from SRC: SRC may be named as model/ or the folder above it.
    text(`rank ${r.number} ${baseName(r.rel)} ${r.file.source.size} ${head.byteLength}`);
    hasher.update(head);
  }
  const { fileIndex, dtypes, config } = plan.save.metadata;
  text(JSON.stringify([...(fileIndex ?? [])]));
  text(JSON.stringify([...(dtypes ?? [])]));
  text(config?.text ?? "");
  for (const e of extra) text(e);
  return hasher.digest();
}
