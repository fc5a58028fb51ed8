/**
 * Hugging Face's default `max_shard_size`, in decimal units as it counts them. A module of its own so the
 * command line can show it without loading the writer.
 */
export const DEFAULT_MAX_SHARD_SIZE = 5_000_000_000;

/** The default as the `--max-shard-size` flag spells it ("5GB"). */
export const DEFAULT_MAX_SHARD_SIZE_FLAG = `${DEFAULT_MAX_SHARD_SIZE / 1e9}GB`;
