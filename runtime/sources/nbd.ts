/**
 * NBD client (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md) over TCP or a
 * unix socket: fixed newstyle handshake, structured replies, NBD_OPT_INFO / NBD_OPT_GO with
 * block size constraints, pipelined NBD_CMD_READ, reconnect with backoff.
 *
 * Receive path: the socket reads (Node's `onread`) into one reusable scratch buffer while a reply
 * header is expected, and straight into the caller's result buffer while a read payload is
 * expected, so large payloads are never copied in user space and nothing is concatenated.
 */
import net from "node:net";
import { BlockError, type BlockSource, checkRange, checkTarget, SECTOR_SIZE } from "../block/types.ts";
import { trackIo } from "../vmx/clock.ts";
import {
  backoffDelay,
  errorMessage,
  type ResolvedSourceOptions,
  resolveOptions,
  Sleeper,
  type SourceOptions,
  sectorSpan,
} from "./options.ts";

// ---- protocol constants (proto.md "Values") -------------------------------------------------

const NBDMAGIC = Buffer.from("NBDMAGIC", "latin1");
const IHAVEOPT = Buffer.from("IHAVEOPT", "latin1");
const OLDSTYLE_MAGIC = Buffer.from([0, 0, 0x42, 0x02, 0x81, 0x86, 0x12, 0x53]);
const OPT_REPLY_MAGIC = Buffer.from([0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9]);
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

const FLAG_FIXED_NEWSTYLE = 1 << 0;
const FLAG_NO_ZEROES = 1 << 1;
const FLAG_C_FIXED_NEWSTYLE = 1 << 0;
const FLAG_C_NO_ZEROES = 1 << 1;

export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;

const OPT_EXPORT_NAME = 1;
const OPT_ABORT = 2;
const OPT_INFO = 6;
const OPT_GO = 7;
const OPT_STRUCTURED_REPLY = 8;

const REP_ACK = 1;
const REP_INFO = 3;
const REP_ERR_BIT = 0x80000000;
const REP_ERR_NAMES: Record<number, string> = {
  1: "NBD_REP_ERR_UNSUP",
  2: "NBD_REP_ERR_POLICY",
  3: "NBD_REP_ERR_INVALID",
  4: "NBD_REP_ERR_PLATFORM",
  5: "NBD_REP_ERR_TLS_REQD",
  6: "NBD_REP_ERR_UNKNOWN",
  7: "NBD_REP_ERR_SHUTDOWN",
  8: "NBD_REP_ERR_BLOCK_SIZE_REQD",
  9: "NBD_REP_ERR_TOO_BIG",
  10: "NBD_REP_ERR_EXT_HEADER_REQD",
};
const REP_ERR_UNSUP = REP_ERR_BIT + 1;
const REP_ERR_UNKNOWN = REP_ERR_BIT + 6;
const REP_ERR_TLS_REQD = REP_ERR_BIT + 5;
const REP_ERR_SHUTDOWN = REP_ERR_BIT + 7;

const INFO_EXPORT = 0;
const INFO_NAME = 1;
const INFO_DESCRIPTION = 2;
const INFO_BLOCK_SIZE = 3;

const CMD_READ = 0;
const CMD_DISC = 2;

const REPLY_FLAG_DONE = 1 << 0;
const REPLY_TYPE_NONE = 0;
const REPLY_TYPE_OFFSET_DATA = 1;
const REPLY_TYPE_OFFSET_HOLE = 2;
const REPLY_TYPE_ERROR = 0x8001;
const REPLY_TYPE_ERROR_OFFSET = 0x8002;

const NBD_ESHUTDOWN = 108;
const NBD_ERRORS: Record<number, string> = {
  1: "EPERM (operation not permitted)",
  5: "EIO (input/output error)",
  12: "ENOMEM (cannot allocate memory)",
  22: "EINVAL (invalid argument)",
  28: "ENOSPC (no space left on device)",
  75: "EOVERFLOW (value too large)",
  95: "ENOTSUP (operation not supported)",
  108: "ESHUTDOWN (server is shutting down)",
};

export const NBD_DEFAULT_PORT = 10809;
/** proto.md "Size constraints": what a client may assume when the server advertises nothing. */
const DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024;
const MAX_OPTION_REPLY = 1024 * 1024;
const MAX_ERROR_CHUNK = 64 * 1024;
const SCRATCH_SIZE = 256 * 1024;

// ---- URLs ---------------------------------------------------------------------------------------

/** Where an NBD export lives. */
export interface NbdTarget {
  host?: string;
  port?: number;
  socketPath?: string;
  exportName: string;
  /** Canonical URL, for descriptions. */
  url: string;
}

/** Parses `nbd://HOST[:PORT]/EXPORT` and `nbd+unix:///EXPORT?socket=PATH` (doc/uri.md). */
export function parseNbdUrl(url: string): NbdTarget {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch (error) {
    throw new BlockError(`invalid NBD URL "${url}"`, "config", { cause: error });
  }
  const scheme = parsed.protocol.slice(0, -1);
  if (scheme === "nbds" || scheme === "nbds+unix") {
    throw new BlockError(`${url}: NBD over TLS (${scheme}://) is not supported`, "config");
  }
  let exportName: string;
  try {
    exportName = decodeURIComponent(parsed.pathname.replace(/^\//, ""));
  } catch (error) {
    throw new BlockError(`${url}: bad percent-encoding in the export name`, "config", { cause: error });
  }
  if (scheme === "nbd") {
    if (parsed.hostname === "") throw new BlockError(`${url}: an nbd:// URL needs a host`, "config");
    const host = parsed.hostname.replace(/^\[(.*)\]$/, "$1");
    const port = parsed.port === "" ? NBD_DEFAULT_PORT : Number(parsed.port);
    const hostPart = host.includes(":") ? `[${host}]` : host;
    return { host, port, exportName, url: `nbd://${hostPart}:${port}/${encodeURIComponent(exportName)}` };
  }
  if (scheme === "nbd+unix") {
    const socketPath = parsed.searchParams.get("socket");
    if (socketPath === null || socketPath === "") {
      throw new BlockError(`${url}: an nbd+unix:// URL needs ?socket=PATH`, "config");
    }
    return {
      socketPath,
      exportName,
      url: `nbd+unix:///${encodeURIComponent(exportName)}?socket=${socketPath}`,
    };
  }
  throw new BlockError(`${url}: not an NBD URL (expected nbd:// or nbd+unix://)`, "config");
}

// ---- export information -------------------------------------------------------------------------

/** What the server told about the export during the handshake. */
export interface NbdExportInfo {
  /** Export size in bytes. */
  size: number;
  /** Transmission flags (NBD_FLAG_*). */
  flags: number;
  readOnly: boolean;
  /** Whether NBD_OPT_STRUCTURED_REPLY was negotiated. */
  structuredReplies: boolean;
  /** Whether the server advertised NBD_INFO_BLOCK_SIZE (otherwise the three sizes are protocol defaults). */
  blockSizeAdvertised: boolean;
  minBlockSize: number;
  preferredBlockSize: number;
  maxBlockSize: number;
  /** Canonical name (NBD_INFO_NAME) and description (NBD_INFO_DESCRIPTION), when sent. */
  name?: string;
  description?: string;
  /** True when the server only spoke old (non-fixed) newstyle and NBD_OPT_EXPORT_NAME was used. */
  legacyExportName: boolean;
}

export interface NbdOptions extends SourceOptions {
  /** Ask for structured replies (sparse reads, error messages). Default true. */
  structuredReplies?: boolean;
}

interface ResolvedNbdOptions extends ResolvedSourceOptions {
  structuredReplies: boolean;
}

/** Counters, for tests and logs. */
export interface NbdStats {
  /** NBD_CMD_READ requests sent (including retries). */
  requests: number;
  /** Payload bytes received in data chunks / simple replies. */
  bytes: number;
  dataChunks: number;
  holeChunks: number;
  /** Requests retried after a server error or a timeout. */
  retries: number;
  timeouts: number;
  /** Successful reconnects. */
  reconnects: number;
}

// ---- requests -----------------------------------------------------------------------------------

interface ReadOp {
  lba: number;
  count: number;
  pending: number;
  settled: boolean;
  resolve(): void;
  reject(error: Error): void;
}

/** One NBD_CMD_READ's worth of a read (reads larger than the maximum payload are split). */
interface Part {
  op: ReadOp;
  /** Absolute byte offset in the export, and length. */
  offset: number;
  length: number;
  /** Exactly `length` bytes of the op's result buffer. */
  dest: Uint8Array;
  /** Failed attempts (server errors, timeouts). */
  attempts: number;
  /** Connections lost while this part was in flight. */
  losses: number;
}

interface ServerError {
  code: number;
  message: string;
  offset?: number;
}

/** One transmission of a Part on one connection. */
interface Attempt {
  part: Part;
  cookie: number;
  sentAt: number;
  /** Timed out: the reply, if it ever comes, is swallowed. */
  abandoned: boolean;
  covered: number;
  /** Sorted, merged [start, end) pairs relative to the part, for overlap checks. */
  intervals: number[];
  error: ServerError | null;
}

function nbdErrorName(code: number): string {
  return NBD_ERRORS[code] ?? `error ${code}`;
}

function isPermanent(error: unknown): boolean {
  return (
    error instanceof BlockError &&
    (error.code === "config" ||
      error.code === "protocol" ||
      error.code === "changed" ||
      error.code === "closed")
  );
}

function readU64(buf: Buffer, at: number): number {
  const hi = buf.readUInt32BE(at);
  if (hi >= 0x200000) return Number.NaN; // beyond 2^53: not representable, callers treat as violation
  return hi * 0x100000000 + buf.readUInt32BE(at + 4);
}

function writeU64(buf: Buffer, at: number, value: number): void {
  buf.writeUInt32BE(Math.floor(value / 0x100000000), at);
  buf.writeUInt32BE(value >>> 0, at + 4);
}

/** Adds [start, start+len) to a sorted list of disjoint intervals; false if it overlaps one. */
function addInterval(list: number[], start: number, len: number): boolean {
  const end = start + len;
  const n = list.length;
  if (n === 0 || start >= list[n - 1]!) {
    if (n > 0 && start === list[n - 1]) list[n - 1] = end;
    else list.push(start, end);
    return true;
  }
  // Binary search for the first interval whose end is > start.
  let lo = 0;
  let hi = n / 2;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (list[mid * 2 + 1]! <= start) lo = mid + 1;
    else hi = mid;
  }
  const i = lo * 2;
  if (i < n && list[i]! < end) return false;
  list.splice(i, 0, start, end);
  return true;
}

// ---- one connection -----------------------------------------------------------------------------

interface ConnectionEvents {
  onReply(conn: Connection, attempt: Attempt): void;
  /** The connection is gone; `protocol` when the server broke the protocol (hard disconnect). */
  onGone(conn: Connection, error: Error, protocol: boolean): void;
}

enum RxState {
  Header = 0,
  Prefix = 1,
  Payload = 2,
}

type Mode = "connecting" | "handshake" | "ready" | "closing" | "dead";

class Connection {
  mode: Mode = "connecting";
  info!: NbdExportInfo;
  readonly pending = new Map<number, Attempt>();
  abandoned = 0;
  lastProgress = 0;
  stats: NbdStats;

  readonly #target: NbdTarget;
  readonly #opts: ResolvedNbdOptions;
  #events: ConnectionEvents | null;
  #socket!: net.Socket;
  #nextCookie = 1;

  // handshake reader
  #hsChunks: Buffer[] = [];
  #hsBytes = 0;
  #hsWaiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
  #hsError: Error | null = null;

  // transmission receive state machine
  readonly #scratch = Buffer.allocUnsafe(SCRATCH_SIZE);
  readonly #hdr = Buffer.allocUnsafe(32);
  #state = RxState.Header;
  #hdrWant = 4;
  #hdrHave = 0;
  #prefix: Buffer = this.#hdr;
  #prefixWant = 0;
  #prefixHave = 0;
  #chunkFlags = 0;
  #chunkType = 0;
  #chunkLength = 0;
  #attempt: Attempt | null = null;
  #dst: Uint8Array | null = null;
  #targetPos = 0;
  #payloadLeft = 0;
  #finishAfterPayload = false;

  private constructor(
    target: NbdTarget,
    opts: ResolvedNbdOptions,
    events: ConnectionEvents | null,
    stats: NbdStats,
  ) {
    this.#target = target;
    this.#opts = opts;
    this.#events = events;
    this.stats = stats;
  }

  /** Connects and negotiates; `purpose` "info" stops after NBD_OPT_INFO and aborts. */
  static async open(
    target: NbdTarget,
    opts: ResolvedNbdOptions,
    events: ConnectionEvents | null,
    stats: NbdStats,
    purpose: "go" | "info" = "go",
  ): Promise<Connection> {
    const conn = new Connection(target, opts, events, stats);
    await conn.#connect(purpose);
    return conn;
  }

  setEvents(events: ConnectionEvents): void {
    this.#events = events;
  }

  get ready(): boolean {
    return this.mode === "ready";
  }

  /** Live (not abandoned) requests in flight. */
  get inFlight(): number {
    return this.pending.size;
  }

  // -- connecting and handshake --

  async #connect(purpose: "go" | "info"): Promise<void> {
    const t = this.#target;
    const desc = t.url;
    const onread = {
      buffer: () => this.#nextBuffer(),
      callback: (n: number, buf: Uint8Array): boolean => {
        this.#onRead(n, buf);
        return true;
      },
    };
    const socket =
      t.socketPath !== undefined
        ? net.connect({ path: t.socketPath, onread })
        : net.connect({ host: t.host!, port: t.port!, onread });
    this.#socket = socket;
    socket.setNoDelay(true);
    socket.on("error", (error) => this.#gone(error, false));
    socket.on("close", () => this.#gone(new Error("connection closed by the server"), false));
    const timer = setTimeout(() => {
      socket.destroy(
        new BlockError(
          `${desc}: connecting and negotiating took longer than ${this.#opts.connectTimeoutMs} ms`,
          "timeout",
        ),
      );
    }, this.#opts.connectTimeoutMs);
    try {
      await new Promise<void>((resolve, reject) => {
        const onError = (error: Error) => reject(error);
        socket.once("error", onError);
        socket.once("connect", () => {
          socket.off("error", onError);
          resolve();
        });
      });
      socket.setKeepAlive(true, 10_000);
      this.mode = "handshake";
      await this.#handshake(purpose);
    } catch (error) {
      socket.destroy();
      this.mode = "dead";
      if (error instanceof BlockError) throw error;
      throw new BlockError(`${desc}: cannot connect: ${errorMessage(error)}`, "io", { cause: error });
    } finally {
      clearTimeout(timer);
    }
  }

  #read(n: number): Promise<Buffer> {
    if (this.#hsBytes >= n) return Promise.resolve(this.#take(n));
    if (this.#hsError !== null) return Promise.reject(this.#hsError);
    return new Promise((resolve, reject) => {
      this.#hsWaiter = { n, resolve, reject };
    });
  }

  #take(n: number): Buffer {
    const all = this.#hsChunks.length === 1 ? this.#hsChunks[0]! : Buffer.concat(this.#hsChunks);
    this.#hsChunks = all.length > n ? [all.subarray(n)] : [];
    this.#hsBytes -= n;
    return all.subarray(0, n);
  }

  #write(data: Buffer): void {
    this.#socket.write(data);
  }

  #protocol(message: string): BlockError {
    return new BlockError(`${this.#target.url}: NBD protocol violation: ${message}`, "protocol");
  }

  async #handshake(purpose: "go" | "info"): Promise<void> {
    const magic = await this.#read(8);
    if (!magic.equals(NBDMAGIC)) {
      throw this.#protocol(
        `the server did not greet with NBDMAGIC (got ${magic.toString("hex")}); is it an NBD server?`,
      );
    }
    const magic2 = await this.#read(8);
    if (magic2.equals(OLDSTYLE_MAGIC)) {
      throw new BlockError(
        `${this.#target.url}: the server uses oldstyle negotiation, which is not supported (use newstyle)`,
        "config",
      );
    }
    if (!magic2.equals(IHAVEOPT)) throw this.#protocol(`expected IHAVEOPT, got ${magic2.toString("hex")}`);
    const hflags = (await this.#read(2)).readUInt16BE(0);
    const fixed = (hflags & FLAG_FIXED_NEWSTYLE) !== 0;
    const noZeroes = (hflags & FLAG_NO_ZEROES) !== 0;
    const cflags = Buffer.alloc(4);
    cflags.writeUInt32BE((fixed ? FLAG_C_FIXED_NEWSTYLE : 0) | (noZeroes ? FLAG_C_NO_ZEROES : 0));
    this.#write(cflags);

    if (!fixed) {
      if (purpose === "info")
        throw new BlockError(`${this.#target.url}: server does not support NBD_OPT_INFO`, "config");
      this.info = await this.#exportName(noZeroes, false);
    } else {
      let structured = false;
      if (this.#opts.structuredReplies) {
        this.#sendOption(OPT_STRUCTURED_REPLY, Buffer.alloc(0));
        const reply = await this.#optionReply(OPT_STRUCTURED_REPLY);
        if (reply.type === REP_ACK) structured = true;
        else if (reply.type === REP_ERR_SHUTDOWN) throw this.#optionError(OPT_STRUCTURED_REPLY, reply);
        else if ((reply.type & REP_ERR_BIT) === 0) {
          throw this.#protocol(`unexpected reply type ${reply.type} to NBD_OPT_STRUCTURED_REPLY`);
        }
        // Any other error (NBD_REP_ERR_UNSUP, ...): carry on with simple replies.
      }
      const info = await this.#infoOrGo(purpose === "go" ? OPT_GO : OPT_INFO, structured, noZeroes);
      this.info = info;
      if (purpose === "info") {
        this.#sendOption(OPT_ABORT, Buffer.alloc(0));
        this.mode = "closing";
        this.#socket.end();
        return;
      }
    }
    this.#validateInfo(this.info);
    // Transmission: anything already buffered belongs to the reply stream.
    this.mode = "ready";
    this.lastProgress = performance.now();
    const rest = this.#hsChunks;
    this.#hsChunks = [];
    this.#hsBytes = 0;
    for (const chunk of rest) this.#parse(chunk, 0, chunk.length);
  }

  #validateInfo(info: NbdExportInfo): void {
    const url = this.#target.url;
    if (!Number.isSafeInteger(info.size)) throw this.#protocol(`export size does not fit in 2^53 bytes`);
    if (info.size % SECTOR_SIZE !== 0) {
      throw new BlockError(
        `${url}: export size ${info.size} bytes is not a multiple of ${SECTOR_SIZE} ` +
          `(${info.size % SECTOR_SIZE} bytes past the last whole sector); a disk image must be whole sectors`,
        "config",
      );
    }
    const { minBlockSize: min, preferredBlockSize: pref, maxBlockSize: max } = info;
    const pow2 = (v: number) => v > 0 && (v & (v - 1)) === 0;
    if (!pow2(min) || min > 65536)
      throw this.#protocol(`minimum block size ${min} is not a power of 2 <= 65536`);
    if (!pow2(pref) || pref < min) throw this.#protocol(`preferred block size ${pref} is invalid`);
    if (max < min || max < SECTOR_SIZE) {
      throw this.#protocol(`maximum payload ${max} is smaller than the minimum block size or a sector`);
    }
  }

  #sendOption(option: number, data: Buffer): void {
    const header = Buffer.allocUnsafe(16);
    IHAVEOPT.copy(header, 0);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(data.length, 12);
    this.#write(data.length > 0 ? Buffer.concat([header, data]) : header);
  }

  async #optionReply(option: number): Promise<{ type: number; data: Buffer }> {
    const header = await this.#read(20);
    if (!header.subarray(0, 8).equals(OPT_REPLY_MAGIC)) {
      throw this.#protocol(`bad option reply magic ${header.subarray(0, 8).toString("hex")}`);
    }
    const replyTo = header.readUInt32BE(8);
    if (replyTo !== option)
      throw this.#protocol(`reply to option ${replyTo} while waiting for option ${option}`);
    const type = header.readUInt32BE(12);
    const length = header.readUInt32BE(16);
    if (length > MAX_OPTION_REPLY) throw this.#protocol(`option reply of ${length} bytes`);
    const data = length > 0 ? Buffer.from(await this.#read(length)) : Buffer.alloc(0);
    return { type, data };
  }

  #optionError(option: number, reply: { type: number; data: Buffer }): BlockError {
    const url = this.#target.url;
    const name = REP_ERR_NAMES[reply.type - REP_ERR_BIT] ?? `error reply ${reply.type >>> 0}`;
    const text = reply.data.length > 0 ? `: ${reply.data.toString("utf8")}` : "";
    const what = `${name} to option ${option}${text}`;
    if (reply.type === REP_ERR_UNKNOWN) {
      return new BlockError(
        `${url}: export "${this.#target.exportName}" not found on the server (${name}${text})`,
        "config",
      );
    }
    if (reply.type === REP_ERR_TLS_REQD) {
      return new BlockError(
        `${url}: the server requires TLS, which this client does not support (${what})`,
        "config",
      );
    }
    if (reply.type === REP_ERR_SHUTDOWN)
      return new BlockError(`${url}: the server is shutting down (${what})`, "io");
    return new BlockError(`${url}: the server refused the export (${what})`, "config");
  }

  async #infoOrGo(option: number, structured: boolean, noZeroes: boolean): Promise<NbdExportInfo> {
    const name = Buffer.from(this.#target.exportName, "utf8");
    const requests = option === OPT_INFO ? [INFO_BLOCK_SIZE, INFO_NAME, INFO_DESCRIPTION] : [INFO_BLOCK_SIZE];
    const data = Buffer.alloc(4 + name.length + 2 + 2 * requests.length);
    data.writeUInt32BE(name.length, 0);
    name.copy(data, 4);
    data.writeUInt16BE(requests.length, 4 + name.length);
    requests.forEach((r, i) => {
      data.writeUInt16BE(r, 6 + name.length + 2 * i);
    });
    this.#sendOption(option, data);
    const info: NbdExportInfo = {
      size: -1,
      flags: 0,
      readOnly: false,
      structuredReplies: structured,
      blockSizeAdvertised: false,
      minBlockSize: 1,
      preferredBlockSize: 4096,
      maxBlockSize: DEFAULT_MAX_PAYLOAD,
      legacyExportName: false,
    };
    for (;;) {
      const reply = await this.#optionReply(option);
      if (reply.type === REP_ACK) break;
      if (reply.type === REP_INFO) {
        const d = reply.data;
        if (d.length < 2) throw this.#protocol(`NBD_REP_INFO of ${d.length} bytes`);
        const kind = d.readUInt16BE(0);
        if (kind === INFO_EXPORT) {
          if (d.length !== 12) throw this.#protocol(`NBD_INFO_EXPORT of ${d.length} bytes (must be 12)`);
          info.size = readU64(d, 2);
          info.flags = d.readUInt16BE(10);
          info.readOnly = (info.flags & NBD_FLAG_READ_ONLY) !== 0;
        } else if (kind === INFO_BLOCK_SIZE) {
          if (d.length !== 14) throw this.#protocol(`NBD_INFO_BLOCK_SIZE of ${d.length} bytes (must be 14)`);
          info.blockSizeAdvertised = true;
          info.minBlockSize = d.readUInt32BE(2);
          info.preferredBlockSize = d.readUInt32BE(6);
          info.maxBlockSize = d.readUInt32BE(10);
        } else if (kind === INFO_NAME) {
          info.name = d.toString("utf8", 2);
        } else if (kind === INFO_DESCRIPTION) {
          info.description = d.toString("utf8", 2);
        }
        continue; // unknown information types are ignored
      }
      if (reply.type === REP_ERR_UNSUP && option === OPT_GO) return this.#exportName(noZeroes, structured);
      if ((reply.type & REP_ERR_BIT) !== 0) throw this.#optionError(option, reply);
      throw this.#protocol(`unexpected reply type ${reply.type} to option ${option}`);
    }
    if (info.size < 0) throw this.#protocol("NBD_REP_ACK without NBD_INFO_EXPORT");
    return info;
  }

  /** The pre-NBD_OPT_GO way: no error reporting, the server just hangs up on an unknown export. */
  async #exportName(noZeroes: boolean, structured: boolean): Promise<NbdExportInfo> {
    this.#sendOption(OPT_EXPORT_NAME, Buffer.from(this.#target.exportName, "utf8"));
    let d: Buffer;
    try {
      d = await this.#read(noZeroes ? 10 : 134);
    } catch (error) {
      throw new BlockError(
        `${this.#target.url}: the server closed the connection after NBD_OPT_EXPORT_NAME ` +
          `(export "${this.#target.exportName}" unknown?)`,
        "config",
        { cause: error },
      );
    }
    const flags = d.readUInt16BE(8);
    return {
      size: readU64(d, 0),
      flags,
      readOnly: (flags & NBD_FLAG_READ_ONLY) !== 0,
      structuredReplies: structured,
      blockSizeAdvertised: false,
      minBlockSize: 1,
      preferredBlockSize: 4096,
      maxBlockSize: DEFAULT_MAX_PAYLOAD,
      legacyExportName: true,
    };
  }

  // -- transmission: sending --

  /** Sends reads for `parts` (the caller respects maxInFlight); returns the attempts. */
  send(parts: Part[]): void {
    if (parts.length === 0) return;
    const now = performance.now();
    if (this.pending.size === 0) this.lastProgress = now;
    const buf = Buffer.allocUnsafe(28 * parts.length);
    let at = 0;
    for (const part of parts) {
      let cookie = this.#nextCookie;
      while (this.pending.has(cookie)) cookie = (cookie + 1) >>> 0 || 1;
      this.#nextCookie = (cookie + 1) >>> 0 || 1;
      this.pending.set(cookie, {
        part,
        cookie,
        sentAt: now,
        abandoned: false,
        covered: 0,
        intervals: [],
        error: null,
      });
      buf.writeUInt32BE(REQUEST_MAGIC, at);
      buf.writeUInt16BE(0, at + 4);
      buf.writeUInt16BE(CMD_READ, at + 6);
      buf.writeUInt32BE(0, at + 8);
      buf.writeUInt32BE(cookie, at + 12);
      writeU64(buf, at + 16, part.offset);
      buf.writeUInt32BE(part.length, at + 24);
      at += 28;
    }
    this.stats.requests += parts.length;
    this.#socket.write(buf);
  }

  abandon(attempt: Attempt): void {
    if (!attempt.abandoned) {
      attempt.abandoned = true;
      this.abandoned++;
    }
  }

  /** Soft disconnect (NBD_CMD_DISC); resolves once the socket is closed. */
  close(): Promise<void> {
    if (this.mode === "dead") return Promise.resolve();
    const wasReady = this.mode === "ready";
    this.mode = "closing";
    return new Promise<void>((resolve) => {
      const socket = this.#socket;
      const timer = setTimeout(() => socket.destroy(), 1000);
      socket.once("close", () => {
        clearTimeout(timer);
        resolve();
      });
      if (wasReady && !socket.destroyed) {
        const disc = Buffer.alloc(28);
        disc.writeUInt32BE(REQUEST_MAGIC, 0);
        disc.writeUInt16BE(CMD_DISC, 6);
        socket.end(disc);
      } else {
        socket.destroy();
      }
      if (socket.closed) {
        clearTimeout(timer);
        resolve();
      }
    });
  }

  /** Drops the connection (after NBD_CMD_DISC when `soft`); reported through onGone like any loss. */
  destroy(error: Error, soft = false): void {
    if (this.mode !== "ready") {
      this.#gone(error, false);
      return;
    }
    this.mode = "dead";
    const socket = this.#socket;
    if (soft) {
      const disc = Buffer.alloc(28);
      disc.writeUInt32BE(REQUEST_MAGIC, 0);
      disc.writeUInt16BE(CMD_DISC, 6);
      socket.end(disc);
      setTimeout(() => socket.destroy(), 1000).unref();
    } else {
      socket.destroy();
    }
    this.#events?.onGone(this, error, false);
  }

  #gone(error: Error, protocol: boolean): void {
    const mode = this.mode;
    if (mode === "dead") return;
    this.mode = "dead";
    if (mode === "connecting" || mode === "handshake") {
      this.#hsError = error;
      const waiter = this.#hsWaiter;
      this.#hsWaiter = null;
      waiter?.reject(error);
      return;
    }
    if (mode === "closing") return;
    this.#socket.destroy();
    this.#events?.onGone(this, error, protocol);
  }

  #violation(message: string): void {
    const error = this.#protocol(message);
    if (this.mode === "ready") {
      this.mode = "dead";
      this.#socket.destroy();
      this.#events?.onGone(this, error, true);
    }
  }

  // -- transmission: receiving --

  #nextBuffer(): Uint8Array {
    if (
      this.#state === RxState.Payload &&
      this.#dst !== null &&
      this.#payloadLeft > 0 &&
      this.mode === "ready"
    ) {
      return this.#dst.subarray(this.#targetPos, this.#targetPos + this.#payloadLeft);
    }
    return this.#scratch;
  }

  #onRead(n: number, buf: Uint8Array): void {
    if (this.mode === "ready") {
      this.lastProgress = performance.now();
      if (buf !== this.#scratch) {
        // The kernel wrote straight into the result buffer (see #nextBuffer).
        this.#targetPos += n;
        this.#payloadLeft -= n;
        this.stats.bytes += n;
        if (this.#payloadLeft === 0) this.#payloadDone();
        return;
      }
      try {
        this.#parse(this.#scratch, 0, n);
      } catch (error) {
        this.#violation(`internal error while parsing: ${errorMessage(error)}`);
      }
      return;
    }
    if (this.mode === "handshake" || this.mode === "connecting") {
      this.#hsChunks.push(Buffer.from(this.#scratch.subarray(0, n)));
      this.#hsBytes += n;
      const waiter = this.#hsWaiter;
      if (waiter !== null && this.#hsBytes >= waiter.n) {
        this.#hsWaiter = null;
        waiter.resolve(this.#take(waiter.n));
      }
    }
    // closing / dead: discard
  }

  #parse(buf: Buffer, start: number, end: number): void {
    let i = start;
    while (i < end && this.mode === "ready") {
      if (this.#state === RxState.Header) {
        const take = Math.min(this.#hdrWant - this.#hdrHave, end - i);
        buf.copy(this.#hdr, this.#hdrHave, i, i + take);
        i += take;
        this.#hdrHave += take;
        if (this.#hdrHave < this.#hdrWant) return;
        if (this.#hdrWant === 4) {
          const magic = this.#hdr.readUInt32BE(0);
          if (magic === SIMPLE_REPLY_MAGIC) this.#hdrWant = 16;
          else if (magic === STRUCTURED_REPLY_MAGIC) this.#hdrWant = 20;
          else {
            this.#violation(`bad reply magic 0x${magic.toString(16).padStart(8, "0")}`);
            return;
          }
          continue;
        }
        this.#onHeader();
      } else if (this.#state === RxState.Prefix) {
        const take = Math.min(this.#prefixWant - this.#prefixHave, end - i);
        buf.copy(this.#prefix, this.#prefixHave, i, i + take);
        i += take;
        this.#prefixHave += take;
        if (this.#prefixHave === this.#prefixWant) this.#onPrefix();
      } else {
        const take = Math.min(this.#payloadLeft, end - i);
        if (this.#dst !== null) buf.copy(this.#dst, this.#targetPos, i, i + take);
        i += take;
        this.#targetPos += take;
        this.#payloadLeft -= take;
        this.stats.bytes += take;
        if (this.#payloadLeft === 0) this.#payloadDone();
      }
    }
  }

  #resetHeader(): void {
    this.#state = RxState.Header;
    this.#hdrWant = 4;
    this.#hdrHave = 0;
    this.#attempt = null;
    this.#dst = null;
  }

  #lookup(at: number): Attempt | undefined {
    if (this.#hdr.readUInt32BE(at) !== 0) return undefined;
    return this.pending.get(this.#hdr.readUInt32BE(at + 4));
  }

  #onHeader(): void {
    const hdr = this.#hdr;
    if (this.#hdrWant === 16) {
      const error = hdr.readUInt32BE(4);
      const attempt = this.#lookup(8);
      if (attempt === undefined) {
        this.#violation(`simple reply for unknown cookie ${hdr.toString("hex", 8, 16)}`);
        return;
      }
      // With structured replies negotiated a server MUST NOT answer a read with a simple reply;
      // the framing is still unambiguous (payload = request length), so it is tolerated.
      this.#attempt = attempt;
      if (error !== 0) {
        attempt.error = { code: error, message: "" };
        this.#resetHeader();
        this.#finish(attempt);
        return;
      }
      attempt.covered = attempt.part.length;
      this.stats.dataChunks++;
      this.#beginPayload(attempt, 0, attempt.part.length, true);
      return;
    }
    const flags = hdr.readUInt16BE(4);
    const type = hdr.readUInt16BE(6);
    const length = hdr.readUInt32BE(16);
    const attempt = this.#lookup(8);
    if (attempt === undefined) {
      this.#violation(`structured reply chunk for unknown cookie ${hdr.toString("hex", 8, 16)}`);
      return;
    }
    if (!this.info.structuredReplies) {
      this.#violation("structured reply although none were negotiated");
      return;
    }
    this.#attempt = attempt;
    this.#chunkFlags = flags;
    this.#chunkType = type;
    this.#chunkLength = length;
    switch (type) {
      case REPLY_TYPE_OFFSET_DATA:
        if (length < 9) {
          this.#violation(`NBD_REPLY_TYPE_OFFSET_DATA with length ${length}`);
          return;
        }
        this.#beginPrefix(8);
        return;
      case REPLY_TYPE_OFFSET_HOLE:
        if (length !== 12) {
          this.#violation(`NBD_REPLY_TYPE_OFFSET_HOLE with length ${length} (must be 12)`);
          return;
        }
        this.#beginPrefix(12);
        return;
      case REPLY_TYPE_NONE:
        if (length !== 0) {
          this.#violation(`NBD_REPLY_TYPE_NONE with length ${length}`);
          return;
        }
        if ((flags & REPLY_FLAG_DONE) === 0) {
          this.#violation("NBD_REPLY_TYPE_NONE without NBD_REPLY_FLAG_DONE");
          return;
        }
        this.#chunkDone();
        return;
      default:
        if ((type & 0x8000) === 0) {
          this.#violation(`unexpected structured reply type ${type}`);
          return;
        }
        if (length < (type === REPLY_TYPE_ERROR_OFFSET ? 14 : 6)) {
          this.#violation(`error chunk type ${type} with length ${length}`);
          return;
        }
        if (length > MAX_ERROR_CHUNK) {
          this.#violation(`error chunk of ${length} bytes`);
          return;
        }
        this.#beginPrefix(length);
        return;
    }
  }

  #beginPrefix(n: number): void {
    this.#state = RxState.Prefix;
    this.#prefix = n <= this.#hdr.length ? this.#hdr : Buffer.allocUnsafe(n);
    this.#prefixWant = n;
    this.#prefixHave = 0;
  }

  #beginPayload(attempt: Attempt, rel: number, length: number, finish: boolean): void {
    this.#state = RxState.Payload;
    this.#dst = attempt.abandoned ? null : attempt.part.dest;
    this.#targetPos = rel;
    this.#payloadLeft = length;
    this.#finishAfterPayload = finish;
  }

  #payloadDone(): void {
    const attempt = this.#attempt!;
    if (this.#finishAfterPayload) {
      this.#resetHeader();
      this.#finish(attempt);
    } else {
      this.#resetHeader();
    }
  }

  #onPrefix(): void {
    const attempt = this.#attempt!;
    const part = attempt.part;
    const p = this.#prefix;
    const type = this.#chunkType;
    if (type === REPLY_TYPE_OFFSET_DATA || type === REPLY_TYPE_OFFSET_HOLE) {
      const offset = readU64(p, 0);
      const length = type === REPLY_TYPE_OFFSET_DATA ? this.#chunkLength - 8 : p.readUInt32BE(8);
      const what = type === REPLY_TYPE_OFFSET_DATA ? "data" : "hole";
      if (length === 0) {
        this.#violation(`empty ${what} chunk`);
        return;
      }
      const rel = offset - part.offset;
      if (!(rel >= 0 && rel + length <= part.length)) {
        this.#violation(
          `${what} chunk [${offset}, ${offset + length}) lies outside the request [${part.offset}, ${part.offset + part.length})`,
        );
        return;
      }
      if (!addInterval(attempt.intervals, rel, length)) {
        this.#violation(`${what} chunk [${offset}, ${offset + length}) overlaps an earlier chunk`);
        return;
      }
      attempt.covered += length;
      if (type === REPLY_TYPE_OFFSET_HOLE) {
        this.stats.holeChunks++;
        if (!attempt.abandoned) part.dest.fill(0, rel, rel + length);
        this.#chunkDone();
        return;
      }
      this.stats.dataChunks++;
      this.#beginPayload(attempt, rel, length, (this.#chunkFlags & REPLY_FLAG_DONE) !== 0);
      return;
    }
    // An error chunk.
    const code = p.readUInt32BE(0);
    const msgLen = p.readUInt16BE(4);
    const fixed = type === REPLY_TYPE_ERROR_OFFSET ? 14 : 6;
    if (msgLen > this.#chunkLength - fixed) {
      this.#violation(`error message length ${msgLen} exceeds the chunk (${this.#chunkLength} bytes)`);
      return;
    }
    const error: ServerError = { code: code === 0 ? 22 : code, message: p.toString("utf8", 6, 6 + msgLen) };
    if (type === REPLY_TYPE_ERROR_OFFSET) error.offset = readU64(p, 6 + msgLen);
    else if (type !== REPLY_TYPE_ERROR) error.message = `unknown error chunk type ${type}: ${error.message}`;
    attempt.error ??= error;
    this.#chunkDone();
  }

  #chunkDone(): void {
    const attempt = this.#attempt!;
    const done = (this.#chunkFlags & REPLY_FLAG_DONE) !== 0;
    this.#resetHeader();
    if (done) this.#finish(attempt);
  }

  #finish(attempt: Attempt): void {
    if (attempt.abandoned) {
      this.pending.delete(attempt.cookie);
      this.abandoned--;
      return;
    }
    if (attempt.error === null && attempt.covered !== attempt.part.length) {
      // Left in `pending`, so the violation fails this read too.
      this.#violation(
        `reply to a ${attempt.part.length}-byte read at offset ${attempt.part.offset} ended after ` +
          `${attempt.covered} bytes`,
      );
      return;
    }
    this.pending.delete(attempt.cookie);
    this.#events?.onReply(this, attempt);
  }
}

// ---- the source ---------------------------------------------------------------------------------

function resolveNbdOptions(options: NbdOptions): ResolvedNbdOptions {
  return {
    ...resolveOptions(options, { maxInFlight: 16, maxRequestBytes: 1024 * 1024 }),
    structuredReplies: options.structuredReplies ?? true,
  };
}

function emptyStats(): NbdStats {
  return { requests: 0, bytes: 0, dataChunks: 0, holeChunks: 0, retries: 0, timeouts: 0, reconnects: 0 };
}

/** Negotiates with NBD_OPT_INFO (without entering transmission) and reports what the server says. */
export async function nbdInfo(url: string | NbdTarget, options: NbdOptions = {}): Promise<NbdExportInfo> {
  const target = typeof url === "string" ? parseNbdUrl(url) : url;
  const conn = await Connection.open(target, resolveNbdOptions(options), null, emptyStats(), "info");
  await conn.close();
  return conn.info;
}

/** A read-only NBD export as a BlockSource. */
export class NbdSource implements BlockSource {
  readonly description: string;
  readonly sectors: number;
  readonly target: NbdTarget;
  readonly stats: NbdStats;

  #info: NbdExportInfo;
  readonly #opts: ResolvedNbdOptions;
  #conn: Connection | null;
  #connecting: Promise<void> | null = null;
  #queue: Part[] = [];
  #closed = false;
  #closing: Promise<void> | undefined;
  #fatal: BlockError | null = null;
  readonly #sleeper = new Sleeper();
  readonly #sweep: ReturnType<typeof setInterval>;
  readonly #align: number;
  readonly #maxRequest: number;
  readonly #events: ConnectionEvents;
  #lastAttempts = 0;

  private constructor(target: NbdTarget, opts: ResolvedNbdOptions, conn: Connection, stats: NbdStats) {
    this.target = target;
    this.description = target.url;
    this.#opts = opts;
    this.#conn = conn;
    this.stats = stats;
    this.#info = conn.info;
    this.sectors = conn.info.size / SECTOR_SIZE;
    this.#align = Math.max(SECTOR_SIZE, conn.info.minBlockSize);
    const max = Math.min(opts.maxRequestBytes, conn.info.maxBlockSize);
    this.#maxRequest = Math.max(this.#align, max - (max % this.#align));
    this.#events = {
      onReply: (c, a) => this.#onReply(c, a),
      onGone: (c, e, p) => this.#onGone(c, e, p),
    };
    conn.setEvents(this.#events);
    if (!conn.ready) queueMicrotask(() => this.#onGone(conn, new Error("connection lost"), false));
    const period = Math.min(1000, Math.max(10, Math.floor(opts.timeoutMs / 4)));
    this.#sweep = setInterval(() => this.#checkTimeouts(), period);
    this.#sweep.unref();
  }

  /** Connects (retrying transient failures like a reconnect would) and negotiates the export. */
  static async open(url: string | NbdTarget, options: NbdOptions = {}): Promise<NbdSource> {
    const target = typeof url === "string" ? parseNbdUrl(url) : url;
    const opts = resolveNbdOptions(options);
    const stats = emptyStats();
    const holder: ConnectionEvents = {
      onReply: () => {},
      onGone: () => {},
    };
    let lastError: unknown;
    for (let attempt = 0; attempt <= opts.reconnectAttempts; attempt++) {
      if (attempt > 0) {
        const delayMs = backoffDelay(attempt, opts.retryDelayMs, opts.maxRetryDelayMs);
        opts.onEvent({
          kind: "reconnecting",
          source: target.url,
          attempt,
          delayMs,
          error: lastError as Error,
        });
        await new Promise((r) => setTimeout(r, delayMs));
      }
      try {
        const conn = await Connection.open(target, opts, holder, stats);
        return new NbdSource(target, opts, conn, stats);
      } catch (error) {
        if (isPermanent(error)) throw error;
        lastError = error;
      }
    }
    throw new BlockError(
      `${target.url}: cannot connect after ${opts.reconnectAttempts + 1} attempts: ${errorMessage(lastError)}`,
      "io",
      { cause: lastError },
    );
  }

  /** What the server told in the handshake (of the current connection). */
  get info(): NbdExportInfo {
    return this.#info;
  }

  async read(lba: number, count: number): Promise<Uint8Array> {
    this.#checkRead(lba, count);
    if (count === 0) return new Uint8Array(0);
    const start = lba * SECTOR_SIZE;
    const end = start + count * SECTOR_SIZE;
    const align = this.#align;
    const aStart = start - (start % align);
    const aEnd = Math.min(this.#info.size, Math.ceil(end / align) * align);
    const raw = Buffer.allocUnsafeSlow(aEnd - aStart);
    const buffer = new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength);
    await this.#transfer(lba, count, aStart, aEnd, buffer);
    return aStart === start && aEnd === end ? buffer : buffer.subarray(start - aStart, end - aStart);
  }

  /**
   * Like read(), into the caller's buffer: the replies' payloads land in it directly, with no
   * allocation (a caller that reuses its buffers makes no garbage). A range the server's minimum
   * block size does not align goes through read().
   */
  async readInto(lba: number, count: number, target: Uint8Array, offset = 0): Promise<void> {
    this.#checkRead(lba, count);
    const bytes = checkTarget(this.description, count, target, offset);
    if (count === 0) return;
    const start = lba * SECTOR_SIZE;
    const end = start + bytes;
    if (start % this.#align !== 0 || (end % this.#align !== 0 && end !== this.#info.size)) {
      target.set(await this.read(lba, count), offset);
      return;
    }
    await this.#transfer(lba, count, start, end, target.subarray(offset, offset + bytes));
  }

  #checkRead(lba: number, count: number): void {
    if (this.#closed) throw new BlockError(`${this.description}: source is closed`, "closed");
    if (this.#fatal !== null) throw this.#fatal;
    checkRange(this.description, this.sectors, lba, count);
  }

  /** Reads the export's bytes [aStart, aEnd) (aligned) into `buffer`, in parts of at most the maximum request. */
  async #transfer(
    lba: number,
    count: number,
    aStart: number,
    aEnd: number,
    buffer: Uint8Array,
  ): Promise<void> {
    const done = new Promise<void>((resolve, reject) => {
      const op: ReadOp = { lba, count, pending: 0, settled: false, resolve, reject };
      for (let off = aStart; off < aEnd; off += this.#maxRequest) {
        const length = Math.min(this.#maxRequest, aEnd - off);
        op.pending++;
        this.#queue.push({
          op,
          offset: off,
          length,
          dest: buffer.subarray(off - aStart, off - aStart + length),
          attempts: 0,
          losses: 0,
        });
      }
    });
    this.#pump();
    await trackIo(this.#opts.clock, done);
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#closed = true;
      clearInterval(this.#sweep);
      this.#sleeper.cancelAll();
      const error = new BlockError(`${this.description}: source is closed`, "closed");
      const conn = this.#conn;
      this.#conn = null;
      if (conn !== null) {
        for (const attempt of conn.pending.values()) this.#fail(attempt.part.op, error);
      }
      for (const part of this.#queue) this.#fail(part.op, error);
      this.#queue = [];
      if (conn !== null) await conn.close();
      if (this.#connecting !== null) await this.#connecting.catch(() => {});
    })();
    return this.#closing;
  }

  // -- scheduling --

  #pump(): void {
    if (this.#closed) return;
    if (this.#queue.length === 0) return;
    const conn = this.#conn;
    if (conn === null || !conn.ready) {
      if (this.#connecting === null) this.#reconnect(new Error("not connected"));
      return;
    }
    const room = this.#opts.maxInFlight - conn.inFlight;
    if (room <= 0) return;
    const batch: Part[] = [];
    while (batch.length < room && this.#queue.length > 0) {
      const part = this.#queue.shift()!;
      if (!part.op.settled) batch.push(part);
    }
    conn.send(batch);
  }

  #fail(op: ReadOp, error: Error): void {
    if (op.settled) return;
    op.settled = true;
    op.reject(error);
  }

  #onReply(conn: Connection, attempt: Attempt): void {
    const part = attempt.part;
    const error = attempt.error;
    if (error === null) {
      const op = part.op;
      if (!op.settled && --op.pending === 0) {
        op.settled = true;
        op.resolve();
      }
      this.#pump();
      return;
    }
    if (error.code === NBD_ESHUTDOWN) {
      // proto.md: on NBD_ESHUTDOWN the client MUST initiate a soft disconnect; the part goes out again.
      part.losses++;
      this.#queue.unshift(part);
      conn.destroy(new Error(`server is shutting down (NBD_ESHUTDOWN)`), true);
      return;
    }
    const where = error.offset !== undefined ? ` at byte ${error.offset}` : "";
    const text = error.message !== "" ? `: ${error.message}` : "";
    const cause = new Error(`server error ${nbdErrorName(error.code)}${where}${text}`);
    this.#retry(part, cause, "io");
    this.#pump();
  }

  #retry(part: Part, cause: Error, code: "io" | "timeout"): void {
    part.attempts++;
    const op = part.op;
    const span = sectorSpan(part.offset / SECTOR_SIZE, part.length / SECTOR_SIZE);
    if (part.attempts > this.#opts.retries) {
      this.#fail(
        op,
        new BlockError(
          `${this.description}: reading ${span} failed after ${part.attempts} attempts ` +
            `(read of sectors ${op.lba}..${op.lba + op.count - 1}): ${cause.message}`,
          code,
          { cause },
        ),
      );
      return;
    }
    if (op.settled) return;
    this.stats.retries++;
    const delayMs =
      code === "timeout"
        ? 0
        : backoffDelay(part.attempts, this.#opts.retryDelayMs, this.#opts.maxRetryDelayMs);
    this.#opts.onEvent({
      kind: "retry",
      source: this.description,
      lba: part.offset / SECTOR_SIZE,
      count: part.length / SECTOR_SIZE,
      attempt: part.attempts,
      delayMs,
      error: cause,
    });
    const requeue = () => {
      if (this.#closed || op.settled) return;
      this.#queue.unshift(part);
      this.#pump();
    };
    if (delayMs === 0) requeue();
    else this.#sleeper.later(delayMs, requeue);
  }

  #checkTimeouts(): void {
    const conn = this.#conn;
    if (conn === null || !conn.ready || conn.pending.size === 0) return;
    const now = performance.now();
    const timeoutMs = this.#opts.timeoutMs;
    const expired: Part[] = [];
    for (const attempt of conn.pending.values()) {
      if (attempt.abandoned || now - attempt.sentAt < timeoutMs) continue;
      conn.abandon(attempt);
      expired.push(attempt.part);
    }
    if (expired.length === 0) return;
    // A connection that delivers nothing at all is presumed dead (half-open TCP, hung server);
    // one whose slots fill up with abandoned requests is recycled. Either way the expired
    // requests are retried on the next connection.
    const stalled = now - conn.lastProgress >= timeoutMs;
    if (stalled || conn.abandoned >= Math.max(1, this.#opts.maxInFlight / 2)) {
      conn.destroy(
        new Error(stalled ? `connection stalled for ${timeoutMs} ms` : "too many abandoned requests"),
      );
    }
    expired.sort((a, b) => b.offset - a.offset); // requeued at the front, so lowest offset first
    for (const part of expired) {
      this.stats.timeouts++;
      this.#opts.onEvent({
        kind: "timeout",
        source: this.description,
        lba: part.offset / SECTOR_SIZE,
        count: part.length / SECTOR_SIZE,
        timeoutMs,
      });
      this.#retry(part, new Error(`no reply within ${timeoutMs} ms`), "timeout");
    }
    this.#pump();
  }

  #onGone(conn: Connection, error: Error, protocol: boolean): void {
    if (conn !== this.#conn) return;
    this.#conn = null;
    if (this.#closed) return;
    const live = [...conn.pending.values()].filter((a) => !a.abandoned);
    if (protocol) {
      // A server that broke the protocol is not trusted with the requests it had.
      for (const attempt of live) this.#fail(attempt.part.op, error);
    } else {
      const requeue: Part[] = [];
      for (const attempt of live) {
        const part = attempt.part;
        if (part.op.settled) continue;
        part.losses++;
        if (part.losses > Math.max(1, this.#opts.reconnectAttempts)) {
          this.#fail(
            part.op,
            new BlockError(
              `${this.description}: connection lost ${part.losses} times while reading ` +
                `${sectorSpan(part.offset / SECTOR_SIZE, part.length / SECTOR_SIZE)}: ${errorMessage(error)}`,
              "io",
              { cause: error },
            ),
          );
        } else {
          requeue.push(part);
        }
      }
      requeue.sort((a, b) => a.offset - b.offset);
      this.#queue.unshift(...requeue);
    }
    if (this.#queue.some((p) => !p.op.settled)) this.#reconnect(error);
  }

  #reconnect(cause: Error): void {
    if (this.#connecting !== null || this.#closed) return;
    this.#connecting = this.#connectLoop(cause)
      .then(
        (conn) => {
          if (this.#closed) {
            void conn.close();
            return;
          }
          this.#conn = conn;
          this.#info = conn.info;
          this.stats.reconnects++;
          this.#opts.onEvent({
            kind: "reconnected",
            source: this.description,
            attempts: this.#lastAttempts,
            reissued: this.#queue.length,
          });
          this.#pump();
        },
        (cause: unknown) => {
          const error =
            cause instanceof BlockError
              ? cause
              : new BlockError(`${this.description}: ${errorMessage(cause)}`, "io", { cause });
          if (error.code === "changed") this.#fatal = error;
          const queue = this.#queue;
          this.#queue = [];
          for (const part of queue) this.#fail(part.op, error);
        },
      )
      .finally(() => {
        this.#connecting = null;
        if (this.#queue.length > 0 && this.#conn === null && !this.#closed && this.#fatal === null) {
          this.#reconnect(new Error("not connected"));
        }
      });
  }

  async #connectLoop(cause: Error): Promise<Connection> {
    const opts = this.#opts;
    let lastError: unknown = cause;
    for (let attempt = 1; attempt <= opts.reconnectAttempts; attempt++) {
      const delayMs = backoffDelay(attempt, opts.retryDelayMs, opts.maxRetryDelayMs);
      opts.onEvent({
        kind: "reconnecting",
        source: this.description,
        attempt,
        delayMs,
        error: lastError instanceof Error ? lastError : new Error(String(lastError)),
      });
      await this.#sleeper.sleep(delayMs);
      if (this.#closed) throw new BlockError(`${this.description}: source is closed`, "closed");
      let conn: Connection;
      try {
        conn = await Connection.open(this.target, opts, this.#events, this.stats);
      } catch (error) {
        if (isPermanent(error)) throw error;
        lastError = error;
        continue;
      }
      if (conn.info.size !== this.#info.size) {
        await conn.close();
        throw new BlockError(
          `${this.description}: the export changed on the server since the deployment started ` +
            `(size was ${this.#info.size} bytes, is ${conn.info.size} bytes after reconnecting)`,
          "changed",
        );
      }
      this.#lastAttempts = attempt;
      return conn;
    }
    throw new BlockError(
      `${this.description}: connection lost (${errorMessage(cause)}) and ` +
        `${opts.reconnectAttempts} reconnect attempts failed; last error: ${errorMessage(lastError)}`,
      "io",
      { cause: lastError },
    );
  }
}

/** Opens an NBD export by URL. */
export function openNbd(url: string, options: NbdOptions = {}): Promise<NbdSource> {
  return NbdSource.open(url, options);
}
