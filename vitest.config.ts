import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Spawned-process tests and large synthetic checkpoints share two cores; more forks only thrash.
    pool: "forks",
    maxWorkers: 2,
  },
});
