import { parseModelConfig } from "../adapters/config.js";
import { byteLength } from "../tensor/tensor.js";
import { assemble } from "./assemble.js";
import { ConfigShapes, namePattern } from "./config-shapes.js";
import { IncompleteSaveError, planConsolidation } from "./plan.js";
import { type ShardedSave, violationLine } from "./save.js";

/** What `inspect` shows of a sharded training save, from headers and metadata alone. */
export interface ShardedSaveReport {
  readonly location: string;
  readonly kind: "sharded-save";
  /** Each rank file found: its name, pieces and bytes. */
  readonly ranks: readonly { readonly file: string; readonly pieces: number; readonly bytes: number }[];
  readonly pieces: number;
  readonly emptyPieces: number;
  /** Distinct tensors in the rank files. */
  readonly tensors: number;
  readonly bytes: number;
  /** Tensors split along an axis other than the first (expert-parallel column pieces). */
  readonly columnSplit: number;
  /** fqn_to_file_index_mapping.json: tensors listed and output files (n). */
  readonly mapping?: { readonly tensors: number; readonly files: number };
  /** Entries of fqn_to_dtype_mapping.json, when there is one. */
  readonly dtypeMapping?: number;
  readonly model?: { readonly kind: "omni" | "nemotron_h"; readonly layers: number; readonly experts?: number; readonly hidden?: number };
  /**
   * Tensors whose first axis config.json fixes (where a lost last rank file shows as a short tensor), and
   * the others with at least one axis, by name pattern (layer numbers as N).
   */
  readonly configChecked: { readonly tensors: number; readonly unchecked: number; readonly uncheckedPatterns: readonly string[] };
  /** What consolidation would write, when the save is complete. */
  readonly consolidate?: {
    readonly tensors: number;
    readonly bytes: number;
    readonly files: readonly { readonly file: string; readonly tensors: number; readonly bytes: number }[];
    readonly restored: number;
    readonly dropped: readonly string[];
    readonly mixedExperts: readonly string[];
  };
  /** Everything that keeps it from being consolidated, one line each (what is missing among it). */
  readonly problems: readonly string[];
}

export function describeShardedSave(save: ShardedSave, location = save.where): ShardedSaveReport {
  const ranks = save.ranks.map((r) => ({
    file: r.rel.split("/").pop()!,
    pieces: r.file.header.entries.length,
    bytes: r.file.header.entries.reduce((n, e) => n + (e.end - e.begin), 0),
  }));
  const assembly = assemble(save);
  const config = save.metadata.config;
  let model: ShardedSaveReport["model"];
  let checked = 0;
  let unchecked = 0;
  const patterns = new Set<string>();
  if (config) {
    const c = parseModelConfig(config.values, config.file);
    model = {
      kind: c.kind,
      layers: c.llm.numHiddenLayers,
      ...(c.llm.nRoutedExperts !== undefined ? { experts: c.llm.nRoutedExperts } : {}),
      ...(c.llm.hiddenSize !== undefined ? { hidden: c.llm.hiddenSize } : {}),
    };
    const shapes = new ConfigShapes(config.values);
    for (const t of save.tensors.values()) {
      if (shapes.fixesFirstAxis(t.name)) checked++;
      else if (t.pieces[0]!.entry.shape.length > 0) {
        unchecked++;
        patterns.add(namePattern(t.name));
      }
    }
  }
  let consolidate: ShardedSaveReport["consolidate"];
  let problems: string[] = [];
  try {
    const plan = planConsolidation(save);
    consolidate = {
      tensors: plan.tensors.length,
      bytes: plan.outputBytes,
      files: plan.files.map((f) => ({ file: f.file, tensors: f.tensors.length, bytes: f.bytes })),
      restored: plan.restored,
      dropped: assembly.dropped,
      mixedExperts: plan.mixedExperts,
    };
  } catch (e) {
    if (!(e instanceof IncompleteSaveError)) throw e;
    problems = e.violations.map(violationLine);
  }
  let bytes = 0;
  for (const t of save.tensors.values()) for (const p of t.pieces) bytes += byteLength(p.entry);
  const fileIndex = save.metadata.fileIndex;
  return {
    location,
    kind: "sharded-save",
    ranks,
    pieces: assembly.pieceCount,
    emptyPieces: assembly.emptyPieces,
    tensors: save.tensors.size,
    bytes,
    columnSplit: assembly.columnSplit,
    ...(fileIndex ? { mapping: { tensors: fileIndex.size, files: assembly.fileCount } } : {}),
    ...(save.metadata.dtypes ? { dtypeMapping: save.metadata.dtypes.size } : {}),
    ...(model ? { model } : {}),
    configChecked: { tensors: checked, unchecked, uncheckedPatterns: [...patterns] },
    ...(consolidate ? { consolidate } : {}),
    problems,
  };
}
