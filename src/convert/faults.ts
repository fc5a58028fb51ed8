import { WriteError } from "../safetensors/writer.js";
import type { TensorSink } from "./stream.js";

/**
 * Fault injection for the test suite, off unless `OMNI_CKPT_FAULT` is set:
 * `write-error-after=N` fails the first write that would take the output past N bytes (as a full disk
 * would), `delay-ms=N` holds every chunk write N ms so a test can interrupt a conversion half-way.
 */
export function withInjectedFaults(sink: TensorSink, spec = process.env["OMNI_CKPT_FAULT"]): TensorSink {
  if (!spec) return sink;
  const settings = new Map(
    spec.split(",").map((kv) => {
      const [k, v] = kv.split("=");
      return [k!.trim(), Number(v)] as const;
    }),
  );
  const failAfter = settings.get("write-error-after");
  const delay = settings.get("delay-ms") ?? 0;
  let written = 0;
  return {
    ...(sink.follows ? { follows: (a: string, b: string) => sink.follows!(a, b) } : {}),
    async write(name, offset, bytes) {
      if (delay > 0) await new Promise((r) => setTimeout(r, delay));
      if (failAfter !== undefined && written + bytes.byteLength > failAfter) {
        throw new WriteError(`write of ${JSON.stringify(name)} failed: no space left on device (ENOSPC, injected by OMNI_CKPT_FAULT)`);
      }
      written += bytes.byteLength;
      return sink.write(name, offset, bytes);
    },
  };
}
