import { WriteError } from "../errors.js";
import type { TensorSink } from "./stream.js";

/** Failures a test can ask a conversion to stage. */
export interface FaultInjection {
  /** Fail the first write that would take the output past this many bytes, as a full disk would. */
  readonly writeErrorAfter?: number;
  /** Hold every chunk write this long, so a test can interrupt a conversion half-way. */
  readonly delayMs?: number;
}

/**
 * The command line's spelling of a fault, `write-error-after=N,delay-ms=N` (its `OMNI_CKPT_FAULT`
 * variable, read by the command line only).
 */
export function parseFaults(spec: string | undefined): FaultInjection | undefined {
  if (!spec) return undefined;
  const settings = new Map(
    spec.split(",").map((kv) => {
      const [k, v] = kv.split("=");
      return [k!.trim(), Number(v)] as const;
    }),
  );
  const out: { writeErrorAfter?: number; delayMs?: number } = {};
  const failAfter = settings.get("write-error-after");
  const delay = settings.get("delay-ms");
  if (failAfter !== undefined) out.writeErrorAfter = failAfter;
  if (delay !== undefined) out.delayMs = delay;
  return out;
}

/** A sink that stages the given faults on its way to `sink`. */
export function withInjectedFaults(sink: TensorSink, faults: FaultInjection | undefined): TensorSink {
  if (!faults) return sink;
  const failAfter = faults.writeErrorAfter;
  const delay = faults.delayMs ?? 0;
  let written = 0;
  return {
    ...(sink.follows ? { follows: (a: string, b: string) => sink.follows!(a, b) } : {}),
    async write(name, offset, bytes) {
      if (delay > 0) await new Promise((r) => setTimeout(r, delay));
      if (failAfter !== undefined && written + bytes.byteLength > failAfter) {
        throw new WriteError(`write of ${JSON.stringify(name)} failed: no space left on device (ENOSPC, injected)`);
      }
      written += bytes.byteLength;
      return sink.write(name, offset, bytes);
    },
  };
}
