import { parseExpertKey } from "../adapters/expert-keys.js";
import type { Piece, PlannedTensor } from "../adapters/plan.js";
import { CHUNK_BYTES } from "../convert/chunks.js";
import { FormatError } from "../errors.js";
import type { StoredTensor } from "../safetensors/checkpoint.js";
import { type DType, isFloat, itemSize } from "../tensor/dtype.js";
import { byteLength } from "../tensor/tensor.js";
import { type View, contiguous, simplifyPair } from "../tensor/view.js";
import { type AssembledTensor, type Assembly, assemble } from "./assemble.js";
import { outputFileName } from "./names.js";
import { type SavedPiece, type ShardedSave, type Violation, knownDType, violationLine } from "./save.js";

/**
 * Consolidation as a plan in the conversion model: each output tensor's pieces copy one saved piece
 * (contiguous in its rank file) into its box of the output (a contiguous range for a row piece, a strided
 * region for a column piece), casting where the dtype is restored. The stream that executes every
 * conversion executes it too, with its bounded memory.
 */

export interface ConsolidateOptions {
  /**
   * Give every per-expert weight of a layer the dtype the mapping gives that layer's other experts, when the
   * mapping lacks it (SPEC §9: Automodel writes the mapping from rank 0's experts only). Off by default,
   * which is exactly what Automodel's consolidator writes.
   */
  readonly uniformExpertDTypes?: boolean;
}

export interface OutputFile {
  readonly file: string;
  /** 1-based, as in the mapping. */
  readonly index: number;
  /** In the mapping's order, as Automodel writes them. */
  readonly tensors: readonly PlannedTensor[];
  readonly bytes: number;
}

export interface ConsolidationPlan {
  readonly save: ShardedSave;
  readonly assembly: Assembly;
  /** Output files in index order; indexes whose every tensor is absent are not written (as Automodel). */
  readonly files: readonly OutputFile[];
  /** Every output tensor, file after file. */
  readonly tensors: readonly PlannedTensor[];
  /** The saved pieces by the names the plan's pieces read them under. */
  readonly sources: ReadonlyMap<string, StoredTensor>;
  readonly inputBytes: number;
  readonly outputBytes: number;
  /** Tensors written in another dtype than saved (restored by the dtype mapping). */
  readonly restored: number;
  /** Layers whose experts come out in more than one dtype: "language_model.backbone.layers.1 up_proj: BF16, F32". */
  readonly mixedExperts: readonly string[];
}

/** A save that cannot be consolidated, with every reason: each is one line. */
export class IncompleteSaveError extends FormatError {
  override name = "IncompleteSaveError";
  constructor(
    readonly save: string,
    readonly violations: readonly Violation[],
  ) {
    const first = violations[0]!;
    super(first.file, violations.length > 1 ? `${first.detail} (and ${violations.length - 1} more problems; omni-ckpt inspect ${save} lists them)` : first.detail, first.tensor);
  }

  get lines(): string[] {
    return this.violations.map(violationLine);
  }
}

/** Dtypes Automodel's consolidator restores to (SPEC §9): ordinary floats, never FP8. */
const RESTORABLE: ReadonlySet<string> = new Set(["F16", "BF16", "F32", "F64"]);

/**
 * The dtype a tensor is written in (SPEC §9): the mapping's dtype when it is an ordinary float and the
 * saved dtype is a float, otherwise the saved dtype.
 */
export function restoredDType(saved: DType, mapped: string | undefined): DType {
  const to = knownDType(mapped);
  return to !== undefined && RESTORABLE.has(to) && isFloat(saved) ? to : saved;
}

/** `prefix|layer|proj` of a per-expert weight, or undefined. */
function expertGroup(name: string): string | undefined {
  const k = parseExpertKey(name);
  return k?.kind === "expert-weight" && k.rest === "" ? `${k.prefix}layers.${k.layer} ${k.proj}` : undefined;
}

/**
 * The dtype mapping with every per-expert weight it lacks given the dtype it gives the same layer's other
 * experts of the same projection, when they agree on one.
 */
export function uniformExpertDTypes(mapping: ReadonlyMap<string, string>, names: Iterable<string>): Map<string, string> {
  const byGroup = new Map<string, Set<string>>();
  for (const [name, dtype] of mapping) {
    const g = expertGroup(name);
    if (g !== undefined) byGroup.set(g, (byGroup.get(g) ?? new Set()).add(dtype));
  }
  const out = new Map(mapping);
  for (const name of names) {
    if (out.has(name)) continue;
    const g = expertGroup(name);
    const seen = g !== undefined ? byGroup.get(g) : undefined;
    if (seen?.size === 1) out.set(name, [...seen][0]!);
  }
  return out;
}

/** The saved pieces as input tensors of a plan, named by their unique keys. */
function storedPieces(assembly: Assembly): Map<string, StoredTensor> {
  const out = new Map<string, StoredTensor>();
  for (const t of assembly.tensors) {
    for (const p of t.pieces) out.set(p.key, { name: p.key, dtype: p.entry.dtype, shape: p.entry.shape, file: p.rank.file, entry: p.entry });
  }
  return out;
}

/** Where a piece's elements lie in the contiguous full tensor: its box as a view. */
export function boxView(p: SavedPiece, strides: readonly number[]): View {
  let offset = 0;
  p.offset.forEach((o, d) => (offset += o * strides[d]!));
  return { offset, shape: [...p.entry.shape], strides: [...strides] };
}

function isRun(src: View, dst: View): boolean {
  const s = simplifyPair(src, dst);
  return s.shape.length === 0 || (s.shape.length === 1 && s.src[0] === 1 && s.dst[0] === 1);
}

/**
 * A saved piece copied into its box. A piece that is not one run of the output (a column piece) is cut into
 * bands of rows, each spanning at most a chunk of the output: chunks then hold whole rows of the tensor,
 * every column piece's part of them included, and never more of it than a chunk.
 */
function piecesOf(t: AssembledTensor, outDType: DType): Piece[] {
  const strides = contiguous(t.shape).strides;
  const out: Piece[] = [];
  for (const p of t.pieces) {
    const src = contiguous(p.entry.shape);
    const dst = boxView(p, strides);
    if (isRun(src, dst)) {
      out.push({ src: p.key, srcView: src, dstView: dst });
      continue;
    }
    const axis = p.entry.shape.findIndex((n) => n > 1);
    const rows = p.entry.shape[axis]!;
    const band = Math.max(1, Math.floor(CHUNK_BYTES / (strides[axis]! * itemSize(outDType))));
    for (let r = 0; r < rows; r += band) {
      const n = Math.min(band, rows - r);
      const shape = [...p.entry.shape];
      shape[axis] = n;
      out.push({
        src: p.key,
        srcView: { offset: r * src.strides[axis]!, shape, strides: src.strides },
        dstView: { offset: dst.offset + r * strides[axis]!, shape, strides },
      });
    }
  }
  return out;
}

/**
 * Plan the consolidation of a save, refusing (with every reason) unless it is complete: every tensor's
 * pieces tile its full box exactly in one dtype, rank files run without holes, the mapping and the rank
 * files name the same tensors, and the shapes agree with the config.
 */
export function planConsolidation(save: ShardedSave, options: ConsolidateOptions = {}): ConsolidationPlan {
  const assembly = assemble(save);
  const problems = [...assembly.problems];
  let mapping = save.metadata.dtypes ?? new Map<string, string>();
  if (options.uniformExpertDTypes) mapping = uniformExpertDTypes(mapping, assembly.tensors.map((t) => t.name));

  const byFile = new Map<number, PlannedTensor[]>();
  const groups = new Map<string, Set<DType>>();
  let restored = 0;
  for (const t of assembly.tensors) {
    const mapped = mapping.get(t.name);
    const dtype = restoredDType(t.dtype, mapped);
    if (dtype !== t.dtype && !isRestorableFrom(t.dtype)) {
      problems.push({
        file: save.where,
        tensor: t.name,
        detail: `is saved as ${t.dtype} and the base model had ${mapped}: restoring would cast FP8 codes without their scales, giving wrong weights; refusing`,
      });
      continue;
    }
    if (dtype !== t.dtype) restored++;
    const planned: PlannedTensor = { name: t.name, dtype, shape: [...t.shape], pieces: piecesOf(t, dtype) };
    const list = byFile.get(t.fileIndex) ?? [];
    list.push(planned);
    byFile.set(t.fileIndex, list);
    const g = expertGroup(t.name);
    if (g !== undefined) groups.set(g, (groups.get(g) ?? new Set()).add(dtype));
  }
  if (problems.length > 0) throw new IncompleteSaveError(save.where, problems);

  const files: OutputFile[] = [...byFile.keys()]
    .sort((a, b) => a - b)
    .map((index) => {
      const tensors = byFile.get(index)!;
      return { file: outputFileName(index, assembly.fileCount), index, tensors, bytes: tensors.reduce((n, t) => n + byteLength(t), 0) };
    });
  const sources = storedPieces(assembly);
  let inputBytes = 0;
  for (const s of sources.values()) inputBytes += byteLength(s);
  const mixedExperts = [...groups].filter(([, d]) => d.size > 1).map(([g, d]) => `${g}: ${[...d].sort().join(", ")}`);
  return {
    save,
    assembly,
    files,
    tensors: files.flatMap((f) => f.tensors),
    sources,
    inputBytes,
    outputBytes: files.reduce((n, f) => n + f.bytes, 0),
    restored,
    mixedExperts,
  };
}

/** FP8 codes are restored only with their scales, which a sharded save does not carry. */
function isRestorableFrom(saved: DType): boolean {
  return saved !== "F8_E4M3" && saved !== "F8_E5M2";
}
