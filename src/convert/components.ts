/** The parts of the Omni model, as `inspect` and `verify` report them. */
export const COMPONENTS = [
  "vision encoder",
  "vision projector",
  "sound encoder",
  "sound projection",
  "language model",
  "MTP",
  "other",
] as const;

export type Component = (typeof COMPONENTS)[number];

export function componentOf(name: string): Component {
  if (name.startsWith("vision_model.")) return "vision encoder";
  if (name.startsWith("mlp1.") || name.startsWith("vision_projector.")) return "vision projector";
  if (name.startsWith("sound_encoder.")) return "sound encoder";
  if (name.startsWith("sound_projection.")) return "sound projection";
  if (name.startsWith("language_model.mtp.") || name.startsWith("mtp.")) return "MTP";
  if (name.startsWith("language_model.") || /^(?:base_model\.model\.)?(?:backbone|model)\.|^lm_head\./.test(name)) return "language model";
  return "other";
}
