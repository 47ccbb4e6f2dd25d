// Generates the TypeScript protobuf types and codecs in src/gen/ from
// proto/orderbook/v1/*.proto with protoc-gen-es. protoc itself comes from
// grpcio-tools in the project's virtual environment (the same compiler that
// generates the Python code), so nothing else needs installing.
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const client = resolve(here, "..");
const root = resolve(client, "..", "..");
const protoDir = join(root, "proto");
const out = join(client, "src", "gen");
const plugin = resolve(client, "..", "node_modules", ".bin", "protoc-gen-es");

const venvPython = join(root, ".venv", "bin", "python");
const python = process.env.PYTHON || (existsSync(venvPython) ? venvPython : "python3");

const protos = readdirSync(join(protoDir, "orderbook", "v1"))
  .filter((f) => f.endsWith(".proto"))
  .map((f) => join("orderbook", "v1", f));

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
execFileSync(
  python,
  [
    "-m", "grpc_tools.protoc",
    `-I${protoDir}`,
    `--plugin=protoc-gen-es=${plugin}`,
    `--es_out=${out}`,
    "--es_opt=target=ts,import_extension=js",
    ...protos,
  ],
  { stdio: "inherit", cwd: protoDir },
);
