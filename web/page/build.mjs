// Builds the trading page into the directory every node serves at `/`:
// app.js (src/main.ts) and worker.js (src/worker.ts), bundled with the
// client library by esbuild (ESM, minified, source maps, ES2022), beside
// index.html and style.css.
//
// OUT = $ORDERBOOK_UI_OUT (relative to the current directory), or
// ../../orderbook/server/static relative to this file. It is emptied and
// written afresh on every build. A marker file (.orderbook-ui, hidden, so
// the node never serves it) guards $ORDERBOOK_UI_OUT: a non-empty directory
// without it is not a page build and is left alone (the build fails).
import { build } from "esbuild";
import { copyFileSync, existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, parse, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const custom = Boolean(process.env.ORDERBOOK_UI_OUT);
const out = custom
  ? resolve(process.env.ORDERBOOK_UI_OUT)
  : resolve(here, "..", "..", "orderbook", "server", "static");
const MARKER = ".orderbook-ui";

if (out === parse(out).root || here.startsWith(out + "/") || out === here) {
  console.error(`build.mjs: refusing to use ${out} as the output directory`);
  process.exit(1);
}
// The default directory belongs to this build; another one is emptied only if a build made it.
if (custom && existsSync(out) && readdirSync(out).length > 0 && !existsSync(join(out, MARKER))) {
  console.error(`build.mjs: ${out} is not empty and holds no ${MARKER}: not a page build; refusing to empty it`);
  process.exit(1);
}
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
writeFileSync(join(out, MARKER), "built by web/page/build.mjs; emptied on every build\n");

await build({
  absWorkingDir: here,
  entryPoints: { app: "src/main.ts", worker: "src/worker.ts" },
  outdir: out,
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2022",
  minify: true,
  sourcemap: true,
  legalComments: "none",
  charset: "utf8",
  logLevel: "warning",
});
for (const file of ["index.html", "style.css"]) copyFileSync(join(here, "src", file), join(out, file));

const files = readdirSync(out).filter((f) => f !== MARKER).sort();
console.log(`orderbook page: ${files.join(", ")} -> ${out}`);
