import { UsageError } from "../errors.js";

/**
 * Python's `re.match(pattern, key)`: the pattern must match at the start of the key (not necessarily to
 * its end). The reference's exclude regex is a Python pattern, so its few spellings JavaScript lacks
 * (`(?P<name>…)`, `(?P=name)`, `\A`, `\Z`, leading inline flags) are translated.
 */
export function compileKeyRegex(pattern: string | RegExp): RegExp {
  if (pattern instanceof RegExp) {
    const flags = pattern.flags.replace(/[gy]/g, "");
    return new RegExp(`^(?:${pattern.source})`, flags);
  }
  let source = pattern;
  let flags = "";
  const inline = /^\(\?([aiLmsux]+)\)/.exec(source);
  if (inline) {
    for (const f of inline[1]!) {
      if (f === "i" || f === "m" || f === "s") flags += f;
      else if (f !== "u") throw new UsageError(`invalid regex ${JSON.stringify(pattern)}: inline flag (?${f}) is not supported`);
    }
    source = source.slice(inline[0].length);
  }
  source = source
    .replace(/\(\?P<([A-Za-z_][A-Za-z0-9_]*)>/g, "(?<$1>")
    .replace(/\(\?P=([A-Za-z_][A-Za-z0-9_]*)\)/g, "\\k<$1>")
    .replace(/(^|[^\\])\\A/g, "$1^")
    .replace(/(^|[^\\])\\Z/g, "$1$");
  try {
    return new RegExp(`^(?:${source})`, flags);
  } catch (e) {
    throw new UsageError(`invalid regex ${JSON.stringify(pattern)}: ${(e as Error).message}`);
  }
}
