import type { DType } from "../tensor/dtype.js";
import { type TensorInfo, formatShape, sameShape } from "../tensor/tensor.js";
import { type View, contiguous, isContiguous } from "../tensor/view.js";

/**
 * A conversion is planned from names, dtypes and shapes alone. Each output tensor says how to build it:
 * pieces, each copying a strided view of one input tensor into a region of the output (casting when the
 * dtypes differ). The in-memory adapters and the streaming converter execute the very same plan.
 */
export interface Piece {
  /** Name of the input tensor read. */
  readonly src: string;
  /** Elements of the input, as a view over its contiguous data. */
  readonly srcView: View;
  /** Where they go, as a view over the output's contiguous data; same shape as `srcView`. */
  readonly dstView: View;
  /**
   * When the input holds quantized codes (FP8): each element's value is its code times its scale, computed
   * in float32 and rounded to bfloat16, as PyTorch's `(w.to(torch.float32) * scale).to(torch.bfloat16)`;
   * that bfloat16 value is then cast to the output's dtype like any other bf16 input.
   */
  readonly scale?: PieceScale;
}

/** Where a quantized input's scales are and how they spread over its elements (`src/quant/`). */
export interface PieceScale {
  /** Name of the scale tensor, read as another input. */
  readonly src: string;
  /**
   * One scale for the whole tensor; one per row (ModelOpt's per-output-channel `[out]` / `[out, 1]`); or
   * one per `block` rows × columns, the last blocks of each axis ragged (block FP8's `weight_scale_inv`,
   * `[ceil(out / block[0]), ceil(in / block[1])]`).
   */
  readonly layout: "tensor" | "row" | "block";
  /** Columns of the quantized input (its last dimension): an element's row and column come from its flat index. */
  readonly cols: number;
  /** Rows and columns of a block, for the block layout. */
  readonly block?: readonly [number, number];
}

export interface PlannedTensor extends TensorInfo {
  readonly name: string;
  /** Pieces cover every element of the output exactly once. */
  readonly pieces: readonly Piece[];
}

export type DiagnosticCode =
  /** A key no rule knows; it is passed through unchanged (the reference warns too). */
  | "unknown-key"
  /** An expert index outside `[0, n_routed_experts)`; the reference drops it silently. */
  | "expert-out-of-range"
  /** A layer at or past `num_hidden_layers`, dropped as the reference does. */
  | "layer-dropped"
  /** A grouped expert tensor whose shape does not fit the config; the reference passes it through. */
  | "grouped-shape-mismatch"
  /** A per-expert LoRA group without every expert; left per-expert as the reference does. */
  | "lora-incomplete"
  /** An input the reference discards without a word (FP8 scales, duplicate gated LoRA halves). */
  | "dropped";

export interface Diagnostic {
  readonly code: DiagnosticCode;
  readonly message: string;
  readonly key?: string;
}

export interface Plan {
  readonly tensors: readonly PlannedTensor[];
  readonly diagnostics: readonly Diagnostic[];
}

/** Header information of a set of input tensors, by name. */
export type HeaderMap = ReadonlyMap<string, TensorInfo>;

/** The tensor as it is: one piece, the whole input. */
export function inputTensor(name: string, info: TensorInfo): PlannedTensor {
  const v = contiguous(info.shape);
  return { name, dtype: info.dtype, shape: [...info.shape], pieces: [{ src: name, srcView: v, dstView: v }] };
}

/** The same recipe under another name, optionally cast to another dtype. */
export function renamed(t: PlannedTensor, name: string, dtype: DType = t.dtype): PlannedTensor {
  return { ...t, name, dtype };
}

/**
 * A tensor that is a view of another (transpose, select, reshape, permute, …). Only single-piece tensors
 * whose piece fills the output contiguously can be viewed: every tensor the rules view is an input.
 */
export function viewOf(t: PlannedTensor, name: string, f: (v: View) => View, dtype: DType = t.dtype): PlannedTensor {
  const p = singlePiece(t);
  const srcView = f(p.srcView);
  return { name, dtype, shape: [...srcView.shape], pieces: [{ src: p.src, srcView, dstView: contiguous(srcView.shape) }] };
}

function singlePiece(t: PlannedTensor): Piece {
  const p = t.pieces[0];
  if (t.pieces.length !== 1 || !p || !isContiguous(p.dstView) || p.dstView.offset !== 0) {
    throw new Error(`internal: ${t.name} is assembled from several inputs and cannot be viewed again`);
  }
  return p;
}

export interface Part {
  readonly from: PlannedTensor;
  /** View of `from` to take (identity when omitted). */
  readonly take?: (v: View) => View;
  /** Where it lands in the output. */
  readonly into: View;
}

/** A tensor assembled from parts of others: the grouped expert tensors and their inverse. */
export function assemble(name: string, dtype: DType, shape: readonly number[], parts: readonly Part[]): PlannedTensor {
  const pieces: Piece[] = parts.map((part) => {
    const p = singlePiece(part.from);
    const srcView = part.take ? part.take(p.srcView) : p.srcView;
    if (!sameShape(srcView.shape, part.into.shape)) {
      throw new Error(
        `internal: ${part.from.name} ${formatShape(srcView.shape)} does not fit region ${formatShape(part.into.shape)} of ${name}`,
      );
    }
    return { src: p.src, srcView, dstView: part.into };
  });
  return { name, dtype, shape: [...shape], pieces };
}

/** A "state dict" in the middle of planning: names to recipes, in insertion order like a Python dict. */
export type PlanDict = Map<string, PlannedTensor>;

export function dictFromHeaders(headers: HeaderMap): PlanDict {
  const d: PlanDict = new Map();
  for (const [name, info] of headers) d.set(name, inputTensor(name, info));
  return d;
}

/** Collects diagnostics and forwards them to the caller's logger as they happen. */
export class Diagnostics {
  readonly list: Diagnostic[] = [];
  constructor(private readonly logger?: Logger) {}

  add(code: DiagnosticCode, message: string, key?: string): void {
    const d: Diagnostic = key === undefined ? { code, message } : { code, message, key };
    this.list.push(d);
    this.logger?.warn?.(message, d);
  }
}

/** Where the adapters send warnings; nothing is printed unless the caller passes one. */
export interface Logger {
  warn?(message: string, diagnostic: Diagnostic): void;
}
