import * as crypto from "node:crypto";
import { type CompareOptions, type DiffReport, type Hasher, compareCheckpoints } from "../convert/diff.js";
import { type InspectReport, describeCheckpoint } from "../convert/inspect.js";
import { type VerifyOptions, type VerifyReport, verifyRoundTrip } from "../convert/verify.js";
import { type ShardedSaveReport, describeShardedSave } from "../consolidate/describe.js";
import { openLocalSave } from "./consolidate.js";
import { type SourceOptions, openSource } from "./sources.js";

/** sha256 in hex, from Node's crypto (loaded only by the commands that hash). */
export function sha256(): Hasher {
  const h = crypto.createHash("sha256");
  return {
    update: (bytes) => void h.update(bytes),
    digest: () => h.digest("hex"),
  };
}

/** `inspect` of a checkpoint named as on the command line (folder, cache snapshot, repo id or file). */
export async function inspectCheckpoint(location: string, options: SourceOptions & { signal?: AbortSignal } = {}): Promise<InspectReport> {
  const { checkpoint, source } = await openSource(location, options);
  try {
    return await describeCheckpoint(checkpoint, source.display ?? location, options.signal);
  } finally {
    checkpoint.close();
  }
}

/** `inspect` of a NeMo Automodel sharded training save (its `model/` folder or the checkpoint folder above). */
export async function inspectShardedSave(location: string, options: SourceOptions & { signal?: AbortSignal } = {}): Promise<ShardedSaveReport> {
  const { save } = await openLocalSave(location, options);
  try {
    return describeShardedSave(save, location);
  } finally {
    save.close();
  }
}

/** `verify` of a checkpoint named as on the command line. */
export async function verifyCheckpoint(location: string, options: SourceOptions & VerifyOptions = {}): Promise<VerifyReport> {
  const { checkpoint, source } = await openSource(location, options);
  try {
    return { ...(await verifyRoundTrip(checkpoint, options)), dir: source.display ?? location };
  } finally {
    checkpoint.close();
  }
}

export interface DiffOptions extends SourceOptions, Omit<CompareOptions, "hasher"> {
  /** Also hash every compared tensor (sha256, in `hashes`); the comparison itself does not need it. Default true. */
  readonly hashes?: boolean;
}

/** `diff` of two checkpoints named as on the command line. */
export async function diffCheckpoints(pathA: string, pathB: string, options: DiffOptions = {}): Promise<DiffReport> {
  const { checkpoint: a, source: sa } = await openSource(pathA, options);
  try {
    const { checkpoint: b, source: sb } = await openSource(pathB, options);
    try {
      const report = await compareCheckpoints(a, b, { ...options, ...(options.hashes ?? true ? { hasher: sha256 } : {}) });
      return { ...report, a: sa.display ?? pathA, b: sb.display ?? pathB };
    } finally {
      b.close();
    }
  } finally {
    a.close();
  }
}
