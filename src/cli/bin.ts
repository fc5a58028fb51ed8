#!/usr/bin/env node
import { setFlagsFromString } from "node:v8";

/*
 * A run of this tool is a short process whose JavaScript is mostly lukewarm: thousands of tensors planned
 * once, a few hundred chunks dispatched, the heavy lifting in WebAssembly and the kernel. With V8's default
 * budget some 65 such functions reach its optimizing compiler, which then spends ~0.4 s of CPU on them
 * (--trace-opt, bench checkpoint) while both cores are busy copying. A 15× larger budget leaves that
 * compiler only the loops that really run long (casts, diff, verify), which it still optimizes.
 * The flag must be set before any of our functions exist, hence this entry and the import after it.
 */
setFlagsFromString("--interrupt-budget=1000000");
await import("./main.js");
