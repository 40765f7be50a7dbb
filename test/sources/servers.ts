/**
 * Test helpers: real nbdkit / qemu-nbd / nginx servers on 127.0.0.1 (random free port) or on a
 * unix socket in a temporary directory, started by the tests and killed on teardown.
 *
 * Needed Debian packages: nbdkit qemu-utils nginx libnbd-bin (see require-tools.sh). A missing
 * binary makes the test FAIL with the package to install; nothing is ever skipped.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { accessSync, constants, existsSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { promisify } from "node:util";

export const execFileAsync = promisify(execFile);

/** Which Debian package provides each tool the tests run. */
export const TOOL_PACKAGES: Record<string, string> = {
  nbdkit: "nbdkit",
  "qemu-nbd": "qemu-utils",
  nginx: "nginx",
  nbdcopy: "libnbd-bin",
  nbdinfo: "libnbd-bin",
  openssl: "openssl",
};

/** Absolute path of `name`, or an Error naming the package to install. */
export function requireTool(name: string): string {
  const dirs = [...(process.env.PATH ?? "").split(delimiter), "/usr/sbin", "/sbin", "/usr/local/sbin"];
  for (const dir of dirs) {
    if (dir === "") continue;
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  const pkg = TOOL_PACKAGES[name] ?? name;
  throw new Error(
    `required test tool "${name}" is not installed: run \`apt-get install -y ${pkg}\` ` +
      "(the source tests need: nbdkit qemu-utils nginx libnbd-bin; see test/sources/require-tools.sh)",
  );
}

// ---- processes --------------------------------------------------------------------------------

const live = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of live) child.kill("SIGKILL");
});

export async function makeTempDir(prefix = "medic-src-"): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix));
}

/** A port that was free a moment ago (the OS picks it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(port));
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A server process with its output kept for error messages. */
export class ServerProcess {
  child: ChildProcess | null = null;
  output = "";
  #exited: Promise<void> = Promise.resolve();

  constructor(
    readonly name: string,
    readonly command: string,
    public args: string[],
    readonly cwd?: string,
  ) {}

  start(): void {
    const child = spawn(this.command, this.args, { cwd: this.cwd, stdio: ["ignore", "pipe", "pipe"] });
    this.child = child;
    this.output = "";
    live.add(child);
    const collect = (chunk: Buffer) => {
      this.output += chunk.toString();
      if (this.output.length > 20_000) this.output = this.output.slice(-10_000);
    };
    child.stdout!.on("data", collect);
    child.stderr!.on("data", collect);
    this.#exited = new Promise((resolve) => {
      child.once("exit", () => {
        live.delete(child);
        resolve();
      });
      child.once("error", (error) => {
        this.output += `\nspawn error: ${error.message}`;
        live.delete(child);
        resolve();
      });
    });
  }

  get running(): boolean {
    return (
      this.child !== null &&
      this.child.exitCode === null &&
      this.child.signalCode === null &&
      live.has(this.child)
    );
  }

  describe(): string {
    return `${this.name} (${this.command} ${this.args.join(" ")})\n--- output ---\n${this.output.trim()}`;
  }

  /** Sends `signal` and waits for the exit (SIGKILL after 3 s). */
  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    const child = this.child;
    if (child === null || !live.has(child)) return;
    child.kill(signal);
    const killer = setTimeout(() => child.kill("SIGKILL"), 3000);
    await this.#exited;
    clearTimeout(killer);
  }

  /** Waits until `ready()` holds, failing fast if the process dies. */
  async waitReady(ready: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (!this.running) throw new Error(`${this.name} exited before becoming ready:\n${this.describe()}`);
      if (await ready()) return;
      await sleep(20);
    }
    throw new Error(`${this.name} not ready after ${timeoutMs} ms:\n${this.describe()}`);
  }
}

/** True when something accepts connections at the address. */
export function canConnect(address: { port: number } | { path: string }): Promise<boolean> {
  return new Promise((resolve) => {
    const socket =
      "port" in address
        ? net.connect({ host: "127.0.0.1", port: address.port })
        : net.connect({ path: address.path });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

// ---- nbdkit -------------------------------------------------------------------------------------

export interface NbdkitOptions {
  /** Plugin name and its arguments, e.g. "file", ["file=/tmp/x.img"]. */
  plugin: string;
  pluginArgs?: string[];
  /** Filters (outermost first) and their key=value arguments (appended after the plugin args). */
  filters?: string[];
  filterArgs?: string[];
  /** Listen on a unix socket in `dir` instead of a TCP port. */
  unix?: boolean;
  /** Fixed TCP port (default: a free one). */
  port?: number;
  /** --no-sr: do not offer structured replies. */
  noSr?: boolean;
  /** -r (default true). */
  readOnly?: boolean;
  /** Extra nbdkit options (before the plugin). */
  extra?: string[];
}

export class NbdkitServer {
  readonly process: ServerProcess;
  readonly socketPath?: string;
  readonly port?: number;
  readonly #pidFile: string;

  private constructor(
    readonly dir: string,
    readonly options: NbdkitOptions,
    port: number | undefined,
  ) {
    const bin = requireTool("nbdkit");
    this.#pidFile = join(dir, `nbdkit-${randomBytes(4).toString("hex")}.pid`);
    if (options.unix) this.socketPath = join(dir, "nbdkit.sock");
    else this.port = port;
    this.process = new ServerProcess("nbdkit", bin, this.#args());
  }

  static async start(dir: string, options: NbdkitOptions): Promise<NbdkitServer> {
    const port = options.unix ? undefined : (options.port ?? (await freePort()));
    const server = new NbdkitServer(dir, options, port);
    await server.launch();
    return server;
  }

  #args(): string[] {
    const o = this.options;
    const args = ["-f", "--exit-with-parent", "-P", this.#pidFile];
    if (o.readOnly ?? true) args.push("-r");
    if (o.noSr) args.push("--no-sr");
    if (this.socketPath !== undefined) args.push("-U", this.socketPath);
    else args.push("-i", "127.0.0.1", "-p", String(this.port));
    for (const f of o.filters ?? []) args.push(`--filter=${f}`);
    args.push(...(o.extra ?? []), o.plugin, ...(o.pluginArgs ?? []), ...(o.filterArgs ?? []));
    return args;
  }

  /** nbd:// or nbd+unix:// URL of `exportName`. */
  url(exportName = ""): string {
    if (this.socketPath !== undefined) return `nbd+unix:///${exportName}?socket=${this.socketPath}`;
    return `nbd://127.0.0.1:${this.port}/${exportName}`;
  }

  async launch(): Promise<void> {
    await rm(this.#pidFile, { force: true });
    if (this.socketPath !== undefined) await rm(this.socketPath, { force: true });
    this.process.start();
    await this.process.waitReady(
      async () => existsSync(this.#pidFile) && readFileSync(this.#pidFile, "utf8") !== "",
    );
  }

  /** Kills the server (SIGKILL: a crash, connections drop without NBD_CMD_DISC). */
  async kill(): Promise<void> {
    await this.process.stop("SIGKILL");
  }

  async stop(): Promise<void> {
    await this.process.stop("SIGTERM");
  }

  /** Restarts on the same port / socket, optionally with other plugin arguments. */
  async restart(pluginArgs?: string[]): Promise<void> {
    await this.process.stop("SIGKILL");
    if (pluginArgs !== undefined) this.options.pluginArgs = pluginArgs;
    this.process.args = this.#args();
    await this.launch();
  }
}

// ---- qemu-nbd -----------------------------------------------------------------------------------

export interface QemuNbdOptions {
  file: string;
  unix?: boolean;
  exportName?: string;
  description?: string;
}

export class QemuNbdServer {
  readonly process: ServerProcess;
  readonly socketPath?: string;
  readonly port?: number;

  private constructor(
    readonly dir: string,
    readonly options: QemuNbdOptions,
    port: number | undefined,
  ) {
    const bin = requireTool("qemu-nbd");
    if (options.unix) this.socketPath = join(dir, `qemu-nbd-${randomBytes(4).toString("hex")}.sock`);
    else this.port = port;
    const args = ["-f", "raw", "-r", "-t", "-e", "32"];
    if (options.exportName !== undefined) args.push("-x", options.exportName);
    if (options.description !== undefined) args.push("-D", options.description);
    if (this.socketPath !== undefined) args.push("-k", this.socketPath);
    else args.push("-b", "127.0.0.1", "-p", String(port));
    args.push(options.file);
    this.process = new ServerProcess("qemu-nbd", bin, args);
  }

  static async start(dir: string, options: QemuNbdOptions): Promise<QemuNbdServer> {
    const port = options.unix ? undefined : await freePort();
    const server = new QemuNbdServer(dir, options, port);
    server.process.start();
    const address = server.socketPath !== undefined ? { path: server.socketPath } : { port: port! };
    await server.process.waitReady(() => canConnect(address));
    return server;
  }

  url(exportName = this.options.exportName ?? ""): string {
    if (this.socketPath !== undefined) return `nbd+unix:///${exportName}?socket=${this.socketPath}`;
    return `nbd://127.0.0.1:${this.port}/${exportName}`;
  }

  async stop(): Promise<void> {
    await this.process.stop("SIGTERM");
  }
}

// ---- nginx --------------------------------------------------------------------------------------

export interface NginxOptions {
  /** Serve HTTPS with this certificate and key (PEM files) instead of HTTP. */
  tls?: { cert: string; key: string };
}

/**
 * nginx serving `dir/www` on 127.0.0.1:PORT, everything (pid, logs, temp paths) inside `dir`,
 * in the foreground as a single process. Locations:
 *   /          plain static files (ETag, ranges)
 *   /nohead/   the same files, but HEAD answers 405 (the source must probe with a range GET)
 *   /norange/  the same files with byte ranges disabled (max_ranges 0: 200 to every Range)
 *   /noetag/   the same files without ETag (Last-Modified is the only validator)
 * The access log (accessLog()) has one line per request: connection id, request number on that
 * connection, status, method, Range header.
 */
export class NginxServer {
  readonly process: ServerProcess;
  readonly www: string;
  readonly port: number;

  private constructor(
    readonly dir: string,
    port: number,
    readonly options: NginxOptions,
  ) {
    const bin = requireTool("nginx");
    this.www = join(dir, "www");
    this.port = port;
    this.process = new ServerProcess("nginx", bin, [
      "-p",
      dir,
      "-e",
      join(dir, "error.log"),
      "-c",
      join(dir, "nginx.conf"),
    ]);
  }

  static async start(dir: string, options: NginxOptions = {}): Promise<NginxServer> {
    const server = new NginxServer(dir, await freePort(), options);
    await mkdir(server.www, { recursive: true });
    await writeFile(join(dir, "nginx.conf"), server.#config());
    await server.launch();
    return server;
  }

  #config(): string {
    const d = this.dir;
    const listen = this.options.tls
      ? `listen 127.0.0.1:${this.port} ssl;\n    ssl_certificate ${this.options.tls.cert};\n    ssl_certificate_key ${this.options.tls.key};`
      : `listen 127.0.0.1:${this.port};`;
    const user = process.getuid?.() === 0 ? "user root;\n" : "";
    return `# generated by test/sources/servers.ts
${user}daemon off;
master_process off;
worker_processes 1;
pid ${d}/nginx.pid;
error_log ${d}/error.log info;
events { worker_connections 256; }
http {
  log_format medic '$connection $connection_requests $status "$request_method" "$http_range"';
  access_log ${d}/access.log medic;
  client_body_temp_path ${d}/tmp-client;
  proxy_temp_path ${d}/tmp-proxy;
  fastcgi_temp_path ${d}/tmp-fastcgi;
  uwsgi_temp_path ${d}/tmp-uwsgi;
  scgi_temp_path ${d}/tmp-scgi;
  default_type application/octet-stream;
  keepalive_requests 10000;
  server {
    ${listen}
    server_name localhost;
    root ${this.www};
    location / { }
    location /nohead/ {
      alias ${this.www}/;
      if ($request_method = HEAD) { return 405; }
    }
    location /norange/ {
      alias ${this.www}/;
      max_ranges 0;
    }
    location /noetag/ {
      alias ${this.www}/;
      etag off;
    }
  }
}
`;
  }

  /** Parsed access log lines. */
  accessLog(): Array<{ connection: number; request: number; status: number; method: string; range: string }> {
    const path = join(this.dir, "access.log");
    if (!existsSync(path)) return [];
    return readFileSync(path, "utf8")
      .split("\n")
      .filter((line) => line !== "")
      .map((line) => {
        const m = /^(\d+) (\d+) (\d+) "([^"]*)" "([^"]*)"$/.exec(line);
        if (m === null) throw new Error(`unexpected nginx access log line: ${line}`);
        return {
          connection: Number(m[1]),
          request: Number(m[2]),
          status: Number(m[3]),
          method: m[4]!,
          range: m[5]!,
        };
      });
  }

  url(path: string): string {
    return `${this.options.tls ? "https" : "http"}://127.0.0.1:${this.port}/${path.replace(/^\//, "")}`;
  }

  async launch(): Promise<void> {
    this.process.start();
    await this.process.waitReady(() => canConnect({ port: this.port }));
  }

  async stop(): Promise<void> {
    await this.process.stop("SIGTERM");
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.launch();
  }
}

// ---- images ---------------------------------------------------------------------------------

/** Writes `bytes` random bytes to `path` and returns them. */
export async function makeRandomImage(path: string, bytes: number): Promise<Buffer> {
  const data = randomBytes(bytes);
  await writeFile(path, data);
  return data;
}

/** Removes a temp dir (after servers are stopped). */
export async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}
