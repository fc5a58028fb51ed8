import { expertKeyLayout, parseExpertKey } from "../adapters/expert-keys.js";
import { InputError, UsageError } from "../errors.js";

export type Layout = "hf" | "native";

/**
 * A layout a caller named (a library call's `to`): TypeScript checks it, JavaScript does not, and any
 * other word would otherwise be read as one of the two.
 */
export function checkLayoutName(value: unknown, what = "to"): Layout {
  if (value === "hf" || value === "native") return value;
  throw new UsageError(`${what} must be "native" or "hf", got ${value === undefined ? "nothing" : JSON.stringify(value)}`);
}

/**
 * Names only one layout uses; a checkpoint's layout is the one whose markers it carries. Expert keys are
 * told apart by the key grammar (per-expert and ParamWrapper forms are HF, grouped ones native).
 */
const MARKERS: Readonly<Record<Layout, readonly RegExp[]>> = {
  hf: [/^mlp1\./, /^sound_encoder\.encoder\./, /^(?:language_model\.)?(?:base_model\.model\.)?backbone\./, /\.mixer\.(?:A_log|D|dt_bias)$/],
  native: [/^vision_projector\./, /^sound_encoder\.(?!encoder\.)/, /^(?:language_model\.)?(?:base_model\.model\.)?model\./, /\._fp32_params\./],
};

function layoutOf(name: string, layout: Layout): boolean {
  if (MARKERS[layout].some((re) => re.test(name))) return true;
  const k = parseExpertKey(name);
  return k !== undefined && expertKeyLayout(k) === layout;
}

export interface LayoutEvidence {
  readonly layout: Layout | undefined;
  /** One example name per layout, for messages. */
  readonly example: Partial<Record<Layout, string>>;
}

export function detectLayout(names: Iterable<string>): LayoutEvidence {
  const example: Partial<Record<Layout, string>> = {};
  for (const name of names) {
    for (const layout of ["hf", "native"] as const) {
      if (example[layout] === undefined && layoutOf(name, layout)) example[layout] = name;
    }
    if (example.hf !== undefined && example.native !== undefined) break;
  }
  const layout = example.hf !== undefined && example.native === undefined ? "hf" : example.native !== undefined && example.hf === undefined ? "native" : undefined;
  return { layout, example };
}

/** The layout, or a clear error when the names are of neither or of both. */
export function requireLayout(names: Iterable<string>, where: string): Layout {
  const e = detectLayout(names);
  if (e.layout) return e.layout;
  if (e.example.hf !== undefined && e.example.native !== undefined) {
    throw new InputError(
      `${where}: mixes HF names (${e.example.hf}) and native names (${e.example.native}); a checkpoint must be one layout`,
    );
  }
  throw new InputError(`${where}: no tensor name tells whether this is an HF or a native Nemotron Omni checkpoint`);
}

/** The layout's name in a sentence of output: HF or native. */
export function layoutShortName(layout: Layout): string {
  return layout === "hf" ? "HF" : "native";
}

export function layoutName(layout: Layout): string {
  return layout === "hf" ? "Hugging Face (HF)" : "native (NeMo Automodel)";
}
