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

/**
 * One source over two: `other`'s tensors under names that start with `prefix` (a name no checkpoint
 * holds), `main`'s under their own. How an export reads the release's buffers beside SRC's tensors, and a
 * merge the adapter's factors beside the base's weights.
 */
export function prefixedUnion(main: TensorSource, prefix: string, other: TensorSource): TensorSource {
  const pick = (name: string): [TensorSource, string] => (name.startsWith(prefix) ? [other, name.slice(prefix.length)] : [main, name]);
  const union: TensorSource = {
    info: (name) => {
      const [s, n] = pick(name);
      return s.info(n);
    },
    read: (name, offset, buf, signal) => {
      const [s, n] = pick(name);
      return s.read(n, offset, buf, signal);
    },
    view: (name, offset, length) => {
      const [s, n] = pick(name);
      return s.view?.(n, offset, length);
    },
  };
  if (main.readSync && other.readSync) {
    union.readSync = (name, offset, buf) => {
      const [s, n] = pick(name);
      s.readSync!(n, offset, buf);
    };
  }
  return union;
}
