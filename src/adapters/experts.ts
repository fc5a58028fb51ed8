import { ConversionError, UsageError } from "../errors.js";
import { type DType, isFloat } from "../tensor/dtype.js";
import { formatShape, sameShape } from "../tensor/tensor.js";
import { type View, contiguous, select, slice, transpose } from "../tensor/view.js";
import { type Part, type PlanDict, type PlannedTensor, assemble, renamed } from "./plan.js";

/**
 * What the MoE expert rules share (the reference's MoESplitExpertsStateDictMixin): the rules' parameters,
 * expert-parallel ranges, and the stacking and per-expert views the merge, split and LoRA rules are built
 * from (`experts-merge.ts`, `experts-split.ts`, `experts-lora.ts`). Everything works on plan dicts, so
 * nothing here reads bytes.
 */

export type ExpertActivation = "relu2" | "swiglu" | "swigluoai" | "quick_geglu" | "geglu";

const GATED: ReadonlySet<string> = new Set(["swiglu", "swigluoai", "quick_geglu", "geglu"]);

export function isGatedActivation(activation: string): boolean {
  return GATED.has(activation);
}

export interface ExpertRules {
  readonly nExperts: number;
  /** `moe_intermediate_size`: where a gated grouped tensor splits into gate and up. */
  readonly interDim: number;
  readonly gated: boolean;
  /** dtype of merged expert weights (the reference's adapter `dtype`). */
  readonly dtype: DType;
}

export interface ExpertParallel {
  readonly rank: number;
  readonly size: number;
}

/** Experts `[start, end)` that an EP rank holds: the first `E mod size` ranks take one extra (SPEC §3). */
export function expertRange(nExperts: number, ep?: ExpertParallel): [number, number] {
  if (!ep) return [0, nExperts];
  const { rank, size } = ep;
  if (!Number.isInteger(size) || size < 1) throw new UsageError(`expert-parallel size must be ≥ 1, got ${size}`);
  if (!Number.isInteger(rank) || rank < 0 || rank >= size) {
    throw new UsageError(`expert-parallel rank must be in [0, ${size}), got ${rank}`);
  }
  const per = Math.floor(nExperts / size);
  const rem = nExperts % size;
  const start = rank < rem ? rank * (per + 1) : rank * per + rem;
  return [start, start + (rank < rem ? per + 1 : per)];
}

/** Insert without silently replacing: two inputs that would become one output are an error. */
export function put(dict: PlanDict, key: string, t: PlannedTensor): void {
  const previous = dict.get(key);
  if (previous) {
    const a = previous.pieces[0]?.src ?? previous.name;
    const b = t.pieces[0]?.src ?? t.name;
    throw new ConversionError(`tensors ${JSON.stringify(a)} and ${JSON.stringify(b)} would both become ${JSON.stringify(key)}`);
  }
  dict.set(key, { ...t, name: key });
}

export function requireMatrix(t: PlannedTensor, what: string): void {
  if (t.shape.length !== 2) {
    throw new ConversionError(`${JSON.stringify(t.pieces[0]?.src ?? t.name)}: ${what} must be a matrix, found shape ${formatShape(t.shape)}`);
  }
}

/** All tensors of a group must agree in shape and dtype before they can share one grouped tensor. */
export function requireUniform(list: readonly PlannedTensor[], what: string): PlannedTensor {
  const first = list[0]!;
  requireMatrix(first, what);
  for (const t of list) {
    if (t.dtype !== first.dtype || !sameShape(t.shape, first.shape)) {
      throw new ConversionError(
        `${what}: ${JSON.stringify(t.pieces[0]?.src)} is ${t.dtype}${formatShape(t.shape)} but ` +
          `${JSON.stringify(first.pieces[0]?.src)} is ${first.dtype}${formatShape(first.shape)}; experts of one layer must match`,
      );
    }
  }
  return first;
}

export function targetDType(source: DType, target: DType): DType {
  return isFloat(source) ? target : source;
}

/** Stack `list[k]ᵀ` along a new first axis, in `dtype(first)` (LoRA tensors keep theirs). */
export function stackTransposed(
  name: string,
  list: readonly PlannedTensor[],
  what: string,
  dtype: (first: PlannedTensor) => DType = (t) => t.dtype,
): PlannedTensor {
  const first = requireUniform(list, what);
  const [a, b] = first.shape as [number, number];
  const out = contiguous([list.length, b, a]);
  return assemble(
    name,
    dtype(first),
    out.shape,
    list.map((t, n) => ({ from: t, take: (v) => transpose(v, 0, 1), into: select(out, 0, n) })),
  );
}

/** Gated experts: row k is [gates[k]ᵀ | ups[k]ᵀ] along the last axis (weights and LoRA B alike). */
export function stackGated(
  name: string,
  gates: readonly PlannedTensor[],
  ups: readonly PlannedTensor[],
  what: string,
  dtype: (first: PlannedTensor) => DType = (t) => t.dtype,
): PlannedTensor {
  const first = requireUniform([...gates, ...ups], what);
  const [i, h] = first.shape as [number, number];
  const out = contiguous([gates.length, h, 2 * i]);
  const parts: Part[] = [];
  gates.forEach((gate, n) => {
    const row = select(out, 0, n);
    parts.push({ from: gate, take: (v) => transpose(v, 0, 1), into: slice(row, 1, 0, i) });
    parts.push({ from: ups[n]!, take: (v) => transpose(v, 0, 1), into: slice(row, 1, i, 2 * i) });
  });
  return assemble(name, dtype(first), out.shape, parts);
}

/** Views selecting each expert of a grouped tensor; the first axis must be exactly the expert count. */
export function perExpert(t: PlannedTensor, rules: ExpertRules): ((v: View) => View)[] {
  if (t.shape.length !== 3) {
    throw new ConversionError(`${JSON.stringify(t.pieces[0]?.src ?? t.name)}: grouped expert tensor must be 3-d, found ${formatShape(t.shape)}`);
  }
  if (t.shape[0] !== rules.nExperts) {
    throw new ConversionError(
      `${JSON.stringify(t.pieces[0]?.src ?? t.name)}: holds ${t.shape[0]} experts on axis 0 but the config has ${rules.nExperts}` +
        (t.shape[0]! < rules.nExperts ? " (an expert-parallel slice cannot be converted to HF on its own)" : ""),
    );
  }
  return Array.from({ length: rules.nExperts }, (_, e) => (v) => select(v, 0, e));
}

/**
 * The gate and up halves of a gated grouped tensor's per-expert matrices (2 × moe_intermediate_size columns,
 * gate first), each transposed to HF's order. Any other width is refused: sliced, it would cut a wrong half.
 */
export function gatedHalves(t: PlannedTensor, rules: ExpertRules): { gate: (w: View) => View; up: (w: View) => View } {
  const width = t.shape[2]!;
  if (width !== 2 * rules.interDim) {
    throw new ConversionError(`${JSON.stringify(t.pieces[0]?.src)}: gated experts need 2 × moe_intermediate_size = ${2 * rules.interDim} columns, found ${width}`);
  }
  return {
    gate: (w) => transpose(slice(w, 1, 0, rules.interDim), 0, 1),
    up: (w) => transpose(slice(w, 1, rules.interDim, width), 0, 1),
  };
}

export function renameAll(list: readonly PlannedTensor[], f: (name: string) => string): PlannedTensor[] {
  return list.map((t) => renamed(t, f(t.name)));
}
