import { parseModelConfig } from "../adapters/config.js";
import type { DType } from "../tensor/dtype.js";
import { formatShape } from "../tensor/tensor.js";
import { type Box, boundingShape, checkTiling, formatBox } from "./boxes.js";
import { ConfigShapes } from "./config-shapes.js";
import { FILE_INDEX_MAPPING, rankFileName } from "./names.js";
import type { SavedPiece, SavedTensor, ShardedSave, Violation } from "./save.js";

/**
 * Every tensor of a save put together from its pieces, on paper: its dtype, its full shape and whether the
 * pieces tile it exactly. This is where a lost rank file, a gap, an overlap or a misplaced piece is found,
 * before anything is written (Automodel's consolidator checks none of it, SPEC §9).
 */

export interface AssembledTensor {
  readonly name: string;
  /** The dtype every piece was saved in. */
  readonly dtype: DType;
  readonly shape: readonly number[];
  /** The pieces that hold elements (empty pieces left out), in rank order. */
  readonly pieces: readonly SavedPiece[];
  /** Output file index from the mapping (1-based). */
  readonly fileIndex: number;
}

export interface Assembly {
  /** In the mapping's order (which is the order inside each output file). */
  readonly tensors: readonly AssembledTensor[];
  /** The largest file index of the mapping: n in `model-0000i-of-0000n`. */
  readonly fileCount: number;
  /** Mapping entries without a piece that may be left out: a tied `lm_head.weight`. */
  readonly dropped: readonly string[];
  readonly problems: readonly Violation[];
  /** Pieces in all rank files, empty ones included. */
  readonly pieceCount: number;
  readonly emptyPieces: number;
  /** Tensors split along an axis other than the first (expert-parallel column pieces). */
  readonly columnSplit: number;
}

const dims = (n: number): string => `${n} dimension${n === 1 ? "" : "s"}`;

function boxOf(p: SavedPiece): Box {
  return { offset: p.offset, shape: p.entry.shape };
}

function where(p: SavedPiece): string {
  return `${p.rank.file.name} at ${formatBox(boxOf(p))}`;
}

/** Whether the config ties the output embedding to the input one (top level or the language model's). */
function tiedEmbeddings(values: Record<string, unknown>): boolean {
  // The language model's own config governs: an Omni config's top level may carry transformers' default
  // (true) for a language model that is not tied, and an lm_head left out on its word would be lost.
  let llm: boolean | undefined;
  try {
    llm = parseModelConfig(values).llm.tieWordEmbeddings;
  } catch {
    // Not a config omni-ckpt reads: the config check of the save reports what is wrong with it.
  }
  return llm ?? values["tie_word_embeddings"] === true;
}

const LM_HEAD = /^(?:language_model\.)?lm_head\.weight$/;

/** Put every tensor of the save together and list all that is wrong with it (the save's own problems first). */
export function assemble(save: ShardedSave): Assembly {
  const problems: Violation[] = [...save.problems];
  const { fileIndex, config } = save.metadata;
  const shapes = config ? new ConfigShapes(config.values) : undefined;
  const mappingFile = save.folder.describe(`${save.metadataRel}/${FILE_INDEX_MAPPING}`);
  const here = save.where;

  let pieceCount = 0;
  let emptyPieces = 0;
  let columnSplit = 0;
  const assembled = new Map<string, AssembledTensor>();
  const shorts: Short[] = [];
  for (const t of save.tensors.values()) {
    pieceCount += t.pieces.length;
    emptyPieces += t.pieces.filter((p) => p.entry.shape.includes(0)).length;
    const a = assembleOne(t, shapes, here, problems, shorts);
    if (!a) continue;
    if (a.pieces.some((p) => p.offset.slice(1).some((o) => o > 0))) columnSplit++;
    const index = fileIndex?.get(t.name);
    if (fileIndex && index === undefined) {
      problems.push({ file: mappingFile, tensor: t.name, detail: `is in the rank files (${t.pieces[0]!.rank.file.name}, …) but not in the mapping, so no output file is named for it` });
      continue;
    }
    assembled.set(t.name, { ...a, fileIndex: index ?? 0 });
  }

  const tensors: AssembledTensor[] = [];
  const dropped: string[] = [];
  const tied = config ? tiedEmbeddings(config.values) : false;
  let fileCount = 0;
  for (const [name, index] of fileIndex ?? []) {
    fileCount = Math.max(fileCount, index);
    const a = assembled.get(name);
    if (a) tensors.push(a);
    else if (save.tensors.has(name)) continue; // already reported
    else if (tied && LM_HEAD.test(name)) dropped.push(name);
    else problems.push({ file: mappingFile, tensor: name, detail: `is listed for output file ${index}, but no rank file holds a piece of it` });
  }
  // File names do not carry the world size: a lost last rank file shows only as tensors that come out
  // short. Say so first, naming the file that would come next, unless a rank file that is there is at
  // fault already (unreadable, or its pieces unplaceable): then that comes first, and this after it.
  const last = save.ranks[save.ranks.length - 1];
  if (shorts.length > 0 && last && last.number === save.ranks.length) {
    const s = shorts[0]!;
    problems[save.problems.length === 0 ? "unshift" : "push"]({
      file: save.describe(rankFileName(last.number + 1)),
      detail:
        `may be missing: ${shorts.length} tensor${shorts.length === 1 ? "" : "s"} whose shape the config gives come out short ` +
        `(the first, "${s.name}", ends at ${s.end} of ${s.size} on axis ${s.axis}), as when the last rank's file is lost`,
    });
  }
  return { tensors, fileCount, dropped, problems, pieceCount, emptyPieces, columnSplit };
}

/** A tensor that comes out shorter than the config gives it. */
interface Short {
  readonly name: string;
  readonly axis: number;
  readonly end: number;
  readonly size: number;
}

function assembleOne(t: SavedTensor, shapes: ConfigShapes | undefined, here: string, problems: Violation[], shorts: Short[]): Omit<AssembledTensor, "fileIndex"> | undefined {
  const first = t.pieces[0]!;
  const dtype = first.entry.dtype;
  const rank = first.entry.shape.length;
  let ok = true;
  for (const p of t.pieces.slice(1)) {
    if (p.entry.dtype !== dtype) {
      problems.push({ file: p.rank.file.name, tensor: t.name, detail: `piece at ${formatBox(boxOf(p))} is ${p.entry.dtype}, but ${where(first)} is ${dtype}: one tensor has one dtype` });
      ok = false;
    } else if (p.entry.shape.length !== rank) {
      problems.push({ file: p.rank.file.name, tensor: t.name, detail: `piece ${formatShape(p.entry.shape)} has ${dims(p.entry.shape.length)}, but ${where(first)} has ${rank}` });
      ok = false;
    }
  }
  if (!ok) return undefined;

  const boxes = t.pieces.map(boxOf);
  const span = boundingShape(boxes, rank);
  const rule = shapes?.shapeOf(t.name);
  let shape = span;
  if (rule) {
    if (rule.shape.length !== rank) {
      problems.push({ file: here, tensor: t.name, detail: `its pieces have ${dims(rank)}, but the config gives it ${rule.shape.length} (${rule.from})` });
      return undefined;
    }
    shape = span.map((n, d) => rule.shape[d] ?? n);
  }
  const tiling = checkTiling(shape, boxes);
  for (const p of tiling) {
    if (p.kind === "outside") {
      const piece = t.pieces[p.piece]!;
      const by = rule && rule.shape.some((n, d) => n !== undefined && n < span[d]!) ? ` (config: ${rule.from})` : "";
      problems.push({ file: piece.rank.file.name, tensor: t.name, detail: `piece at ${formatBox(boxOf(piece))} lies outside the tensor's shape ${formatShape(shape)}${by}` });
    } else if (p.kind === "overlap") {
      const a = t.pieces[p.a]!;
      const b = t.pieces[p.b]!;
      problems.push({ file: b.rank.file.name, tensor: t.name, detail: `piece at ${formatBox(boxOf(b))} overlaps ${where(a)}: both hold ${formatBox(p.region)}` });
    } else {
      problems.push({ file: here, tensor: t.name, detail: gapDetail(shape, span, p.region, p.missing, rule?.from) });
      const axis = span.findIndex((n, d) => n < shape[d]!);
      if (rule && axis >= 0) shorts.push({ name: t.name, axis, end: span[axis]!, size: shape[axis]! });
    }
  }
  if (tiling.length > 0) return undefined;
  return { name: t.name, dtype, shape, pieces: t.pieces.filter((p) => !p.entry.shape.includes(0)) };
}

function gapDetail(shape: readonly number[], span: readonly number[], region: Box, missing: number, from: string | undefined): string {
  const short = span.findIndex((n, d) => n < shape[d]!);
  const total = shape.reduce((a, b) => a * b, 1);
  const what = `no piece holds elements ${formatBox(region)} of ${formatShape(shape)} (${missing} of ${total} elements are in no rank file)`;
  if (short >= 0 && from !== undefined) {
    return `${what}: the pieces end at ${span[short]} on axis ${short} but the config gives ${shape[short]} (${from}); a rank file may be missing`;
  }
  return what;
}
