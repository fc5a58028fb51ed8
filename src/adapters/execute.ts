import { itemSize } from "../tensor/dtype.js";
import { type Tensor, numel } from "../tensor/tensor.js";
import { transfer } from "../tensor/transfer.js";
import type { PlannedTensor } from "./plan.js";

/** Build one planned tensor in memory from the tensors it reads. */
export function materialize(t: PlannedTensor, input: (name: string) => Tensor): Tensor {
  const data = new Uint8Array(numel(t.shape) * itemSize(t.dtype));
  for (const p of t.pieces) {
    const src = input(p.src);
    transfer(src.data, src.dtype, p.srcView, data, t.dtype, p.dstView);
  }
  return { dtype: t.dtype, shape: [...t.shape], data };
}

/** A state dict given as a Map or a plain object (whose own keys may include `__proto__`). */
export type StateDict = ReadonlyMap<string, Tensor> | Readonly<Record<string, Tensor>>;

export function toMap(sd: StateDict): ReadonlyMap<string, Tensor> {
  if (sd instanceof Map) return sd;
  const m = new Map<string, Tensor>();
  for (const key of Object.keys(sd)) m.set(key, (sd as Record<string, Tensor>)[key]!);
  return m;
}

export function lookup(sd: ReadonlyMap<string, Tensor>): (name: string) => Tensor {
  return (name) => {
    const t = sd.get(name);
    if (!t) throw new Error(`internal: planned input ${JSON.stringify(name)} is not in the state dict`);
    return t;
  };
}
