import type { StoredTensor } from "../safetensors/checkpoint.js";
import type { TensorInfo } from "../tensor/tensor.js";
import type { TensorSource } from "./stream.js";

/**
 * Positional reads of a checkpoint's tensors by name, offered synchronously when every file it reads can
 * be (local files from the page cache), so the stream reads on its own thread instead of waiting.
 */
export function checkpointSource(tensors: ReadonlyMap<string, StoredTensor>): TensorSource {
  const get = (name: string): StoredTensor => {
    const t = tensors.get(name);
    if (!t) throw new Error(`internal: no input tensor ${JSON.stringify(name)}`);
    return t;
  };
  const sync = [...tensors.values()].every((t) => t.file.readsSync);
  const readAhead = Math.max(0, ...[...new Set([...tensors.values()].map((t) => t.file))].map((f) => f.source.readAhead ?? 0));
  const source: TensorSource = {
    ...(readAhead > 0 ? { readAhead } : {}),
    info: (name): TensorInfo => get(name),
    read: (name, offset, buf, signal) => {
      const t = get(name);
      return t.file.readRange(t.entry, offset, buf, signal);
    },
    view: (name, offset, length) => {
      const t = get(name);
      return t.file.viewRange(t.entry, offset, length);
    },
  };
  if (sync) {
    source.readSync = (name, offset, buf) => {
      const t = get(name);
      t.file.readRangeSync(t.entry, offset, buf);
    };
  }
  return source;
}
