import { InputError } from "../errors.js";

export type Layout = "hf" | "native";

/** Names only one layout uses; a checkpoint's layout is the one whose markers it carries. */
const MARKERS: Readonly<Record<Layout, readonly RegExp[]>> = {
  hf: [
    /^mlp1\./,
    /^sound_encoder\.encoder\./,
    /^(?:language_model\.)?(?:base_model\.model\.)?backbone\./,
    /\.mixer\.experts\.\d+\./,
    /\.mixer\.(?:A_log|D|dt_bias)$/,
    /\.mixer\.experts\.(?:base_layer\.)?lora_[AB]\.weight$/,
  ],
  native: [
    /^vision_projector\./,
    /^sound_encoder\.(?!encoder\.)/,
    /^(?:language_model\.)?(?:base_model\.model\.)?model\./,
    /\._fp32_params\./,
    /\.mixer\.experts\.(?:gate_and_up_projs|down_projs)$/,
    /\.mixer\.experts\.lora_(?:gate_and_up|down)_[AB]$/,
  ],
};

export interface LayoutEvidence {
  readonly layout: Layout | undefined;
  /** One example name per layout, for messages. */
  readonly example: Partial<Record<Layout, string>>;
}

export function detectLayout(names: Iterable<string>): LayoutEvidence {
  const example: Partial<Record<Layout, string>> = {};
  for (const name of names) {
    for (const layout of ["hf", "native"] as const) {
      if (example[layout] === undefined && MARKERS[layout].some((re) => re.test(name))) example[layout] = name;
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
