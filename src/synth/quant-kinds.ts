/** The quantized versions `synth --quant` writes (src/synth/quantize.ts); apart so the CLI loads nothing else to list them. */
export type SynthQuant = "fp8" | "fp8-block" | "nvfp4";
export const SYNTH_QUANTS: readonly SynthQuant[] = ["fp8", "fp8-block", "nvfp4"];
