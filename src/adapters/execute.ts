import { scaleValues } from "../quant/dequantize.js";
import { type Tensor, byteLength } from "../tensor/tensor.js";
import { transfer } from "../tensor/transfer.js";
import { type HeaderMap, type Plan, type PlannedTensor, inputTensor } from "./plan.js";

/** Build one planned tensor in memory from the tensors it reads. */
export function materialize(t: PlannedTensor, input: (name: string) => Tensor): Tensor {
  const data = new Uint8Array(byteLength(t));
  for (const p of t.pieces) {
    const src = input(p.src);
    const scaling = p.scale ? { scale: p.scale, values: scaleValues(input(p.scale.src).data, input(p.scale.src).dtype), origin: 0 } : undefined;
    transfer(src.data, src.dtype, p.srcView, data, t.dtype, p.dstView, undefined, scaling);
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

/** Execute a plan against in-memory inputs. */
export function run(plan: Plan, inputs: ReadonlyMap<string, Tensor>): Map<string, Tensor> {
  const get = lookup(inputs);
  const out = new Map<string, Tensor>();
  for (const t of plan.tensors) out.set(t.name, materialize(t, get));
  return out;
}

/**
 * The in-memory surface both adapters share with the reference (`fromHf`, `toHf`,
 * `convertSingleTensorToHf`), each nothing but the adapter's plan executed on the given tensors.
 */
export abstract class PlannedStateDictAdapter<FromOptions, ToOptions> {
  abstract planFromHf(headers: HeaderMap, options?: FromOptions): Plan;
  abstract planToHf(headers: HeaderMap, options?: ToOptions): Plan;
  /** The HF tensors one native tensor becomes. */
  abstract planSingleToHf(fqn: string, t: PlannedTensor, options?: ToOptions): PlannedTensor[];

  fromHf(stateDict: StateDict, options?: FromOptions): Map<string, Tensor> {
    const sd = toMap(stateDict);
    return run(this.planFromHf(sd, options), sd);
  }

  toHf(stateDict: StateDict, options?: ToOptions): Map<string, Tensor> {
    const sd = toMap(stateDict);
    return run(this.planToHf(sd, options), sd);
  }

  convertSingleTensorToHf(fqn: string, tensor: Tensor, options?: ToOptions): [string, Tensor][] {
    return this.planSingleToHf(fqn, inputTensor(fqn, tensor), options).map((t) => [t.name, materialize(t, () => tensor)]);
  }
}
