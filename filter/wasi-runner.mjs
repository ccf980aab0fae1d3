#!/usr/bin/env -S node --no-warnings
// Runs a wasm32-wasip1 test binary under Node's built-in WASI (cargo's runner for that
// target): `node --no-warnings filter/wasi-runner.mjs <file.wasm> [args...]`.
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import { argv, env, exit } from "node:process";

const [file, ...args] = argv.slice(2);
const wasi = new WASI({
  version: "preview1",
  args: [file, ...args],
  env: { ...env, RUST_TEST_THREADS: "1" },
  returnOnExit: true,
});
const module = await WebAssembly.compile(await readFile(file));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
exit(wasi.start(instance));
